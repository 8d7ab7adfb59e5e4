"""An independent (pandas) reference for pricing USDT quotes in USD, shared by the tests.

Each quote in USDT with the latest usable Kraken ``USDT/USD`` quote at or before it, no older
than ``max_age_ms`` (``pandas.merge_asof``): ``bid · rate bid``, ``ask · rate ask``, symbol
``BASE/USD``; a USDT quote without such a rate is dropped."""
from __future__ import annotations

import numpy as np
import pandas as pd


def price_usdt_in_usd(quotes: pd.DataFrame, rates: pd.DataFrame, max_age_ms: float = 10_000.0,
                      bid: str = "bid", ask: str = "ask") -> pd.DataFrame:
    """``quotes`` (``timestamp``, ``symbol``, ``bid``/``ask`` columns named by ``bid``/``ask``)
    with its USDT rows priced through ``rates`` (a venue's quotes: ``exchange``, ``symbol``,
    ``timestamp``, ``bid``, ``ask``); adds ``fx_bid``/``fx_ask`` (NaN on USD rows)."""
    r = rates
    if "exchange" in r.columns:
        r = r[r.exchange == "kraken"]
    r = r[(r.symbol == "USDT/USD") & (r.bid > 0) & (r.bid <= r.ask)]
    r = r[["timestamp", "bid", "ask"]].rename(columns={"bid": "fx_bid", "ask": "fx_ask"})
    r = r.astype({"fx_bid": float, "fx_ask": float})
    r["timestamp"] = r["timestamp"].astype(quotes["timestamp"].dtype)
    q = quotes.sort_values("timestamp", kind="stable").drop(
        columns=[c for c in ("fx_bid", "fx_ask") if c in quotes.columns])
    usdt = q.symbol.str.endswith("/USDT").to_numpy()
    m = pd.merge_asof(q, r.sort_values("timestamp", kind="stable"), on="timestamp",
                      tolerance=pd.Timedelta(milliseconds=max_age_ms), direction="backward")
    keep = ~(usdt & m.fx_bid.isna().to_numpy())
    m, usdt = m[keep].copy(), usdt[keep]
    m.loc[~usdt, ["fx_bid", "fx_ask"]] = np.nan
    m[bid] = np.where(usdt, m[bid] * m.fx_bid, m[bid])
    m[ask] = np.where(usdt, m[ask] * m.fx_ask, m[ask])
    m["symbol"] = m.symbol.str.replace("/USDT", "/USD", regex=False)
    return m.reset_index(drop=True)
