"""Peers for the first kernels: element-wise, recurrences, rolling windows, keys, batching."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot import fintech as fk

BATCH_ROWS = 64 * 1024
N_SYMBOLS = 8


def market(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, rows)))
    spread = price * 1e-4
    symbols = np.array([f"S{i}/USD" for i in range(N_SYMBOLS)])
    return pa.table({
        "symbol": pa.array(symbols[rng.integers(0, N_SYMBOLS, rows)]).dictionary_encode(),
        "price": price,
        "bid": price - spread,
        "ask": price + spread,
        "bid_size": rng.exponential(2.0, rows),
        "ask_size": rng.exponential(2.0, rows),
    }).combine_chunks()


def cases(scale: float = 1.0):
    import pandas as pd
    import polars as pl
    import talib
    try:                             # tulipy (Tulip Indicators) is optional: not in the bench extras
        import tulipy
    except ModuleNotFoundError:
        tulipy = None

    rows = max(int(10_000_000 * scale), BATCH_ROWS)
    table = market(rows)
    batch = table.to_batches()[0]
    p = table["price"].to_numpy()
    b = table["bid"].to_numpy()
    a = table["ask"].to_numpy()
    B = table["bid_size"].to_numpy()
    A = table["ask_size"].to_numpy()
    out = np.empty(rows)
    series = pd.Series(p)
    frame = pl.DataFrame({"price": p, "symbol": table["symbol"].to_numpy(zero_copy_only=False)})
    pframe = frame.to_pandas()
    batches = table.to_batches(max_chunksize=BATCH_ROWS)

    def per_batch(make):
        def run():
            k = make()
            for piece in batches:
                k(piece)
        return run

    yield "midprice", rows, {
        "sabot": lambda: fk.midprice(batch),
        "numpy np.add(a, b, out=)": lambda: np.add(b, a, out=out),
        "numpy (b+a)*0.5": lambda: np.multiply(np.add(b, a, out=out), 0.5, out=out),
        "polars": lambda: pl.DataFrame({"b": b, "a": a}).select((pl.col("b") + pl.col("a")) * 0.5),
    }
    yield "microprice", rows, {
        "sabot": lambda: fk.microprice(batch),
        "numpy np.add(a, b, out=)": lambda: np.add(b, a, out=out),
        "numpy expression": lambda: (b * A + a * B) / (A + B),
    }
    yield "quoted_spread", rows, {
        "sabot": lambda: fk.quoted_spread(batch),
        "numpy np.add(a, b, out=)": lambda: np.add(b, a, out=out),
        "numpy expression": lambda: (a - b) / ((a + b) * 0.5) * 1e4,
    }
    yield "l1_imbalance", rows, {
        "sabot": lambda: fk.l1_imbalance(batch),
        "numpy np.add(a, b, out=)": lambda: np.add(B, A, out=out),
        "numpy expression": lambda: (B - A) / (B + A),
    }
    yield "ewma alpha=0.94", rows, {
        "sabot": lambda: fk.ewma(batch, alpha=0.94),
        "pandas ewm(adjust=False)": lambda: series.ewm(alpha=0.94, adjust=False).mean(),
        "polars ewm_mean": lambda: frame.select(pl.col("price").ewm_mean(alpha=0.94, adjust=False)),
    }
    yield "ema period=20", rows, {
        "sabot": lambda: fk.ema(batch, period=20),
        "talib EMA": lambda: talib.EMA(p, 20),
    }
    yield "sma window=20", rows, {
        "sabot": lambda: fk.sma(batch, window=20),
        "talib SMA": lambda: talib.SMA(p, 20),
        "pandas rolling mean": lambda: series.rolling(20).mean(),
        "polars rolling_mean": lambda: frame.select(pl.col("price").rolling_mean(20)),
    }
    yield "rsi period=14", rows, {
        "sabot": lambda: fk.rsi(batch),
        "talib RSI": lambda: talib.RSI(p, 14),
    }
    yield "macd 12/26/9", rows, {
        "sabot": lambda: fk.macd(batch),
        "talib MACD": lambda: talib.MACD(p),
    }
    yield "bollinger 20, 2", rows, {
        "sabot": lambda: fk.bollinger_bands(batch),
        "talib BBANDS": lambda: talib.BBANDS(p, 20, 2.0, 2.0, 0),
        "pandas rolling mean/std": lambda: (series.rolling(20).mean(), series.rolling(20).std(ddof=0)),
        **({"tulipy bbands": lambda: tulipy.bbands(p, 20, 2.0)} if tulipy is not None else {}),
    }
    log_p = np.empty(rows)
    yield "log_returns", rows, {
        "sabot": lambda: fk.log_returns(batch),
        "numpy log + subtract into buffers": lambda: (
            np.log(p, out=log_p), np.subtract(log_p[1:], log_p[:-1], out=out[1:])),
        "polars log().diff()": lambda: frame.select(pl.col("price").log().diff()),
    }
    yield "rolling_zscore window=100", rows, {
        "sabot": lambda: fk.rolling_zscore(batch, window=100),
        "pandas rolling": lambda: (series - series.rolling(100).mean()) / series.rolling(100).std(),
        "polars rolling": lambda: frame.select((pl.col("price") - pl.col("price").rolling_mean(100))
                                               / pl.col("price").rolling_std(100)),
    }
    yield "ewma by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.ewma(batch, alpha=0.94, by="symbol"),
        "sabot without keys": lambda: fk.ewma(batch, alpha=0.94),
        "polars ewm_mean.over": lambda: frame.select(
            pl.col("price").ewm_mean(alpha=0.94, adjust=False).over("symbol")),
        "pandas groupby ewm": lambda: pframe.groupby("symbol", observed=True)["price"].transform(
            lambda s: s.ewm(alpha=0.94, adjust=False).mean()),
    }
    yield "sma by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.sma(batch, window=20, by="symbol"),
        "sabot without keys": lambda: fk.sma(batch, window=20),
        "polars rolling_mean.over": lambda: frame.select(pl.col("price").rolling_mean(20).over("symbol")),
    }
    yield "ema by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.ema(batch, period=20, by="symbol"),
        "sabot without keys": lambda: fk.ema(batch, period=20),
        "polars ewm_mean.over": lambda: frame.select(                  # alpha = 2/(20+1)
            pl.col("price").ewm_mean(alpha=2 / 21, adjust=False).over("symbol")),
    }
    yield "rsi by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.rsi(batch, by="symbol"),
        "sabot without keys": lambda: fk.rsi(batch),
    }
    yield "macd by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.macd(batch, by="symbol"),
        "sabot without keys": lambda: fk.macd(batch),
    }
    yield "bollinger by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.bollinger_bands(batch, by="symbol"),
        "sabot without keys": lambda: fk.bollinger_bands(batch),
        "polars rolling_mean/std.over": lambda: frame.select(
            pl.col("price").rolling_mean(20).over("symbol").alias("mid"),
            pl.col("price").rolling_std(20, ddof=0).over("symbol").alias("sd")),
    }
    yield "rolling_std by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.rolling_std(batch, "price", window=20, by="symbol"),
        "sabot without keys": lambda: fk.rolling_std(batch, "price", window=20),
        "polars rolling_std.over": lambda: frame.select(pl.col("price").rolling_std(20).over("symbol")),
    }
    yield "rolling_zscore by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.rolling_zscore(batch, window=100, by="symbol"),
        "sabot without keys": lambda: fk.rolling_zscore(batch, window=100),
        "polars rolling.over": lambda: frame.select(
            ((pl.col("price") - pl.col("price").rolling_mean(100))
             / pl.col("price").rolling_std(100)).over("symbol")),
    }
    yield "rolling_min by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.rolling_min(batch, "price", window=20, by="symbol"),
        "sabot without keys": lambda: fk.rolling_min(batch, "price", window=20),
        "polars rolling_min.over": lambda: frame.select(pl.col("price").rolling_min(20).over("symbol")),
    }
    yield "rolling_max by=symbol (8 keys)", rows, {
        "sabot": lambda: fk.rolling_max(batch, "price", window=20, by="symbol"),
        "sabot without keys": lambda: fk.rolling_max(batch, "price", window=20),
        "polars rolling_max.over": lambda: frame.select(pl.col("price").rolling_max(20).over("symbol")),
    }
    yield "EWMA class per 64Ki batch", rows, {
        "sabot": per_batch(lambda: fk.EWMA(alpha=0.94)),
        "sabot one-shot": lambda: fk.ewma(batch, alpha=0.94),
    }
    yield "RSI class per 64Ki batch", rows, {
        "sabot": per_batch(lambda: fk.RSI()),
        "sabot one-shot": lambda: fk.rsi(batch),
    }
