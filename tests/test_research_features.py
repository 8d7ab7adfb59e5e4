"""Trade and book features (``sabot research features``, ``sabot.apps.features``) and the
``depth_imbalance`` kernel, against independent numpy/pandas references of the published
definitions: VWAP = Σp·q/Σq; VPIN (Easley, López de Prado & O'Hara 2012) over equal-volume
buckets, trades split across bucket boundaries; Kyle's lambda as the OLS slope of Δprice on
signed volume; OFI (Cont, Kukanov & Stoikov 2014); depth imbalance (ΣB − ΣA)/(ΣB + ΣA).

Two symbols are interleaved in every table, so each check is per symbol; the stateful
features are checked for split invariance through ``Stream.from_table``.  One test records a
local Coinbase server with ``sabot collect`` and runs ``sabot research features`` on the files.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from sabot.api import Stream
from sabot.apps.features import (auto_bucket_volume, book_features, feature_bars,
                                 trade_features)
from sabot.cli import main as sabot_main
from sabot.fintech import (DepthImbalance, depth_imbalance, l1_imbalance, missing,
                           multi_level_ofi, ofi)

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = np.array(["AAA-USD", "BBB-USD"])
T0 = 1_767_000_000_000_000_000
LEVELS = 10


# -- generated records -----------------------------------------------------------------------
def make_trades(n: int, draw: int) -> pa.Table:
    """Interleaved trades of two symbols: prices on a tick grid (zero ticks happen), sizes in
    eighths (sums are exact, so bucket boundaries are hit exactly too)."""
    rng = np.random.default_rng(draw)
    sym = SYMBOLS[rng.integers(0, 2, n)]
    base = np.where(sym == SYMBOLS[0], 100.0, 20.0)
    steps = rng.integers(-2, 3, n) * 0.25
    price = np.empty(n)
    for s in SYMBOLS:
        m = sym == s
        price[m] = base[m] + np.cumsum(steps[m])
    return pa.table({
        "exchange": ["testvenue"] * n,
        "symbol": sym,
        "timestamp": pa.array(T0 + np.arange(n) * 37_000_000, pa.timestamp("ns", tz="UTC")),
        "price": price,
        "size": rng.integers(1, 40, n) / 8.0,
        "side": np.where(rng.random(n) < 0.55, "buy", "sell"),
    })


def make_book(n: int, draw: int) -> pa.Table:
    """Interleaved book rows of two symbols: best prices move by ticks (up, down, unchanged),
    ten levels per side, the deeper levels sometimes missing (a thin book)."""
    rng = np.random.default_rng(draw)
    sym = SYMBOLS[rng.integers(0, 2, n)]
    mid = np.empty(n)
    for s in SYMBOLS:
        m = sym == s
        mid[m] = 50.0 + np.cumsum(rng.integers(-1, 2, m.sum()) * 0.5)
    cols = {"exchange": ["testvenue"] * n, "symbol": sym,
            "timestamp": pa.array(T0 + np.arange(n) * 41_000_000, pa.timestamp("ns", tz="UTC")),
            "bid": mid - 0.5, "ask": mid + 0.5}
    depth = rng.integers(1, LEVELS + 1, (n, 2))          # levels present per side
    price = {"bid": cols["bid"], "ask": cols["ask"]}
    for i in range(1, LEVELS + 1):
        for k, (side, away) in enumerate((("bid", -1), ("ask", 1))):
            size = rng.integers(0, 30, n) / 4.0
            if i > 1:                                  # 1 to 2 ticks behind the level above
                price[side] = price[side] + away * 0.5 * rng.integers(1, 3, n)
            there = i <= depth[:, k]
            cols[f"{side}_price_{i}"] = pa.array(np.where(there, price[side], np.nan),
                                                 from_pandas=True)
            cols[f"{side}_size_{i}"] = pa.array(np.where(there, size, np.nan), from_pandas=True)
    cols["bid_size"] = cols["bid_size_1"]
    cols["ask_size"] = cols["ask_size_1"]
    return pa.table(cols)


def col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(float)


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-12, what: str = "",
                 atol: float = 1e-300) -> None:
    assert got.shape == want.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(want)), \
        f"{what}: null at {np.flatnonzero(np.isnan(got) != np.isnan(want))[:5]}"
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=atol, err_msg=what)


# -- references, per symbol ------------------------------------------------------------------
def ref_vwap(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.cumsum(p * q) / np.cumsum(q)


def ref_vpin(q: np.ndarray, buy: np.ndarray, V: float, n: int) -> np.ndarray:
    """VPIN after each trade: bucket k holds the volume in [kV, (k+1)V) of the cumulative
    volume; a trade's volume lies in [c_before, c_after) and goes to the buckets it overlaps;
    VPIN = Σ|V_buy − V_sell| / (n·V) over the last n complete buckets."""
    after = np.cumsum(q)
    before = after - q
    n_total = int(after[-1] // V) + 1
    buy_vol = np.zeros(n_total)
    sell_vol = np.zeros(n_total)
    for c0, c1, is_buy in zip(before, after, buy):
        for k in range(int(c0 // V), min(int(np.ceil(c1 / V)), n_total)):
            overlap = min(c1, (k + 1) * V) - max(c0, k * V)
            if overlap > 0:
                (buy_vol if is_buy else sell_vol)[k] += overlap
    imbalance = np.abs(buy_vol - sell_vol)
    out = np.full(len(q), np.nan)
    for i, c1 in enumerate(after):
        full = int(c1 // V)                       # buckets complete after trade i
        if full >= n:
            out[i] = imbalance[full - n:full].sum() / (n * V)
    return out


def ref_kyle(p: np.ndarray, signed: np.ndarray, window: int) -> np.ndarray:
    """OLS slope of Δp_t on q_t over the last ``window`` trades that have a Δp (numpy polyfit)."""
    dp = np.diff(p, prepend=np.nan)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(dp))
    for j in range(window - 1, len(valid)):
        rows = valid[j - window + 1:j + 1]
        x, y = signed[rows], dp[rows]
        if np.var(x) > 0:
            out[valid[j]] = np.polyfit(x, y, 1)[0]
    return out


def ref_ofi(b, a, B, A) -> np.ndarray:
    """e_n = 1[b_n ≥ b_{n−1}]B_n − 1[b_n ≤ b_{n−1}]B_{n−1} − 1[a_n ≤ a_{n−1}]A_n
    + 1[a_n ≥ a_{n−1}]A_{n−1} (Cont, Kukanov & Stoikov 2014, eq. 10), pandas shifts."""
    f = pd.DataFrame({"b": b, "a": a, "B": B, "A": A})
    p = f.shift(1)
    e = ((f.b >= p.b) * f.B - (f.b <= p.b) * p.B - (f.a <= p.a) * f.A + (f.a >= p.a) * p.A)
    e[p.b.isna()] = np.nan
    return e.to_numpy(float)


def ref_depth_imbalance(book: pa.Table, levels: int) -> np.ndarray:
    bid = np.column_stack([col(book, f"bid_size_{i}") for i in range(1, levels + 1)])
    ask = np.column_stack([col(book, f"ask_size_{i}") for i in range(1, levels + 1)])
    B, A = np.nansum(bid, axis=1), np.nansum(ask, axis=1)
    none = np.isnan(bid).all(axis=1) & np.isnan(ask).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (B - A) / (B + A)
    out[none | (B + A == 0)] = np.nan
    return out


def check_trade_features(trades: pa.Table, out: pa.Table, V, n_buckets: int, window: int) -> None:
    """Every trade feature of ``out`` against the references, symbol by symbol; ``V`` is one
    bucket volume or a {symbol: bucket volume} mapping."""
    sym = trades.column("symbol").to_numpy(zero_copy_only=False)
    p, q = col(trades, "price"), col(trades, "size")
    buy = trades.column("side").to_numpy(zero_copy_only=False) == "buy"
    osym = out.column("symbol").to_numpy(zero_copy_only=False)
    assert sorted(osym) == sorted(sym)
    for s in np.unique(sym):
        m, o = sym == s, osym == s
        signed = np.where(buy[m], q[m], -q[m])
        v = V[s] if isinstance(V, dict) else V
        assert_close(col(out, "signed_volume")[o], signed, 0, f"{s} signed_volume")
        assert_close(col(out, "vwap")[o], ref_vwap(p[m], q[m]), 1e-12, f"{s} vwap")
        assert_close(col(out, "vpin")[o], ref_vpin(q[m], buy[m], v, n_buckets), 1e-9, f"{s} vpin")
        # a slope of 0 comes out as ±1e-17 from either side's rounding: an absolute floor
        assert_close(col(out, "kyle_lambda")[o], ref_kyle(p[m], signed, window), 1e-6,
                     f"{s} kyle_lambda", atol=1e-12)


def ref_multi_level_ofi(book: pa.Table, level: int) -> np.ndarray:
    """Xu, Gould & Howison (2018): the OFI of level m from its own prices and sizes, per
    symbol, over the rows where that level is there (a missing level is no event)."""
    sym = book.column("symbol").to_numpy(zero_copy_only=False)
    b, a, B, A = (col(book, f"{c}_{level}") for c in ("bid_price", "ask_price", "bid_size",
                                                      "ask_size"))
    out = np.full(book.num_rows, np.nan)
    for s in np.unique(sym):
        rows = np.flatnonzero((sym == s) & ~np.isnan(b + a + B + A))
        out[rows] = ref_ofi(b[rows], a[rows], B[rows], A[rows])
    return out


def check_book_features(book: pa.Table, out: pa.Table, levels: int) -> None:
    sym = book.column("symbol").to_numpy(zero_copy_only=False)
    osym = out.column("symbol").to_numpy(zero_copy_only=False)
    want_depth = ref_depth_imbalance(book, levels)
    for m in range(1, levels + 1):
        assert_close(col(out, f"ofi_{m}"), ref_multi_level_ofi(book, m), 0, f"ofi_{m}")
    assert f"ofi_{levels + 1}" not in out.column_names
    for s in np.unique(sym):
        m, o = sym == s, osym == s
        b, a, B, A = (col(book, c)[m] for c in ("bid", "ask", "bid_size", "ask_size"))
        assert_close(col(out, "ofi")[o], ref_ofi(b, a, B, A), 0, f"{s} ofi")
        with np.errstate(invalid="ignore", divide="ignore"):
            l1 = np.where(B + A != 0, (B - A) / (B + A), np.nan)
        assert_close(col(out, "l1_imbalance")[o], l1, 0, f"{s} l1_imbalance")
        assert_close(col(out, "depth_imbalance")[o], want_depth[m], 1e-15,
                     f"{s} depth_imbalance")


# -- the kernel ------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [1, 3, 5, 8, 9, 10])
def test_depth_imbalance_matches_the_formula_at_every_depth(levels):
    """Up to eight levels a side run in one kernel pass, more in steps: every depth agrees."""
    book = make_book(400, draw=levels)
    got = depth_imbalance(book, n_levels=levels)
    assert got.column_names == book.column_names + ["depth_imbalance"]
    assert_close(col(got, "depth_imbalance"), ref_depth_imbalance(book, levels), 1e-15)
    if levels == 1:
        assert got["depth_imbalance"].equals(l1_imbalance(book)["l1_imbalance"])


def test_depth_imbalance_nulls_one_sided_books_and_named_columns():
    t = pa.table({"b1": [None, 0.0, 2.0, None, 1.0], "b2": [None, 0.0, None, None, 1.0],
                  "a1": [None, 0.0, None, 3.0, 1.0], "a2": [None, 0.0, None, float("nan"), 3.0]})
    k = DepthImbalance(2, bid_size_columns=["b1", "b2"], ask_size_columns=["a1", "a2"])
    # all missing, zero depth -> null; one side only -> +1 / -1; missing levels add nothing
    assert k(t)["depth_imbalance"].to_pylist() == [None, None, 1.0, -1.0, -1.0 / 3.0]
    with missing("nan"):
        out = depth_imbalance(t, 2, bid_size_columns=["b1", "b2"], ask_size_columns=["a1", "a2"])
    assert np.isnan(out["depth_imbalance"].to_numpy()[:2]).all()
    assert k.clone().config == k.config and k.output_names == ["depth_imbalance"]
    assert isinstance(depth_imbalance(t.to_pandas(), 2, bid_size_columns=["b1", "b2"],
                                      ask_size_columns=["a1", "a2"]), pd.DataFrame)


def test_depth_imbalance_errors_name_the_parameter_and_value():
    book = make_book(5, draw=1)
    with pytest.raises(KeyError, match="bid_size_columns 'bid_size_11' not found"):
        depth_imbalance(book, n_levels=11)
    with pytest.raises(ValueError, match="ask_size_columns names 1 columns; n_levels is 2"):
        DepthImbalance(2, ask_size_columns=["ask_size_1"])
    with pytest.raises(ValueError, match="n_levels"):
        depth_imbalance(book, n_levels=0)
    with pytest.raises(TypeError, match="did you mean 'n_levels'"):
        depth_imbalance(book, levels=3)


def test_multi_level_ofi_keeps_an_existing_ofi_and_its_first_level_is_ofi():
    book = make_book(300, draw=12)
    full = book.drop_columns([f"{side}_{i}" for side in ("bid_price", "bid_size", "ask_price", "ask_size")
                              for i in (1,)])
    full = full.append_column("bid_price_1", book["bid"]).append_column("ask_price_1", book["ask"]) \
        .append_column("bid_size_1", book["bid_size"]).append_column("ask_size_1", book["ask_size"])
    with_ofi = ofi(full, by="symbol")
    out = multi_level_ofi(with_ofi, 3, by="symbol")
    assert out.column_names == with_ofi.column_names + ["ofi_1", "ofi_2", "ofi_3"]
    assert out["ofi"].equals(with_ofi["ofi"]) and out["ofi_1"].equals(with_ofi["ofi"])
    again = multi_level_ofi(out, 3, by="symbol")
    assert again.column_names == out.column_names and again.equals(out)
    with pytest.raises(TypeError, match="did you mean 'n_levels'"):
        multi_level_ofi(book, levels=2)


# -- trade and book features against the references ------------------------------------------
def test_trade_features_per_symbol_match_the_references():
    trades = make_trades(1500, draw=3)
    out = trade_features(trades, vpin_bucket_volume=8.0, vpin_buckets=5, kyle_window=12)
    assert out.num_rows == trades.num_rows
    assert np.isfinite(col(out, "vpin")).sum() > 1000      # the buckets fill: VPIN is checked
    check_trade_features(trades, out, 8.0, 5, 12)


def test_tick_rule_sign_when_asked():
    """sign='tick': +1 uptick, -1 downtick, a zero tick repeats the last sign (Lee-Ready tick
    test); the first trade and zero ticks before any move have no sign."""
    trades = make_trades(600, draw=4)
    out = trade_features(trades, vpin_bucket_volume=8.0, vpin_buckets=5, kyle_window=12,
                         sign="tick")
    sym = trades.column("symbol").to_numpy(zero_copy_only=False)
    p, q = col(trades, "price"), col(trades, "size")
    for s in SYMBOLS:
        m = sym == s
        sign, last = [], np.nan
        for d in np.diff(p[m], prepend=np.nan):
            last = 1.0 if d > 0 else -1.0 if d < 0 else last
            sign.append(last)
        assert_close(col(out, "signed_volume")[m], np.array(sign) * q[m], 0, s)


def test_book_features_per_symbol_match_the_references():
    book = make_book(1200, draw=5)
    check_book_features(book, book_features(book, n_levels=7), 7)


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 399), max_size=6), batch=st.integers(1, 400))
def test_stateful_features_are_split_invariant_in_a_stream(cuts, batch):
    """The live form (one ``.map`` on a Stream) gives the table's columns in any batching."""
    trades, book = make_trades(400, draw=6), make_book(400, draw=7)
    kw = dict(vpin_bucket_volume=6.0, vpin_buckets=4, kyle_window=9)
    edges = [0, *sorted(set(cuts)), 400]
    pieces = [trades.slice(a, b - a) for a, b in zip(edges, edges[1:]) if b > a]
    split = pa.Table.from_batches([b for t in pieces for b in t.to_batches()])
    for table, run, names in ((split, lambda s: trade_features(s, **kw), ("vwap", "vpin", "kyle_lambda", "signed_volume")),
                              (book, lambda s: book_features(s, n_levels=4), ("ofi", "depth_imbalance", "ofi_1", "ofi_4"))):
        whole = run(table)
        streamed = run(Stream.from_table(table, batch_size=batch)).collect()
        for name in names:
            assert_close(col(streamed, name), col(whole, name), 0, name)
    check_trade_features(trades, trade_features(split, **kw), 6.0, 4, 9)


def test_feature_bars_against_pandas():
    trades, book = make_trades(800, draw=8), make_book(700, draw=9)
    tf = trade_features(trades, vpin_bucket_volume=8.0, vpin_buckets=5, kyle_window=12)
    bf = book_features(book, n_levels=5)
    bars = feature_bars(tf, bf, 1_000_000_000).to_pandas()
    t = tf.to_pandas()
    t["bar"] = t.timestamp.dt.floor("1s")
    t["pq"] = t.price * t["size"]
    g = t.groupby(["symbol", "bar"])
    want = pd.DataFrame({"bar_vwap": g.pq.sum() / g["size"].sum(),
                         "signed_volume": g.signed_volume.sum(), "trades": g.size(),
                         "vpin": g.vpin.last(), "vwap": g.vwap.last()})
    b = bf.to_pandas()
    b["bar"] = b.timestamp.dt.floor("1s")
    gb = b.groupby(["symbol", "bar"])
    want = want.join(pd.DataFrame({"ofi": gb.ofi.sum(min_count=1),
                                   "depth_imbalance": gb.depth_imbalance.last()}), how="outer")
    got = bars.set_index(["symbol", "bar"]).sort_index()
    assert list(got.index) == list(want.index)
    for name in want.columns:
        assert_close(got[name].to_numpy(float), want[name].to_numpy(float), 1e-12, name)


# -- real files: the local Coinbase server, sabot collect, sabot research features ----------
def test_recorded_trades_and_book_from_the_local_server(tmp_path, capsys):
    from sabot.sim import SIMULATORS

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lines: list = []
    recorded = threading.Event()

    def read(stream) -> None:                     # the collector's own counts of what it holds
        for line in stream:
            lines.append(line)
            m = re.search(r" status: .* book=(\d+) .*trades=(\d+)", line)
            if m and int(m.group(1)) >= 100 and int(m.group(2)) >= 150:
                recorded.set()

    with SIMULATORS["coinbase"](rate=200) as sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sabot", "collect", "coinbase", "--url", sim.url, "-F",
             "-o", str(tmp_path / "coinbase.parquet"), "--channels", "trades,book",
             "--status-interval", "0.2", "--duration", "120"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
        reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
        reader.start()
        try:
            assert recorded.wait(90), "".join(lines)[-3000:]
            proc.send_signal(signal.SIGINT)       # a clean stop writes the files
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(10)
        proc.stderr.close()
    assert proc.returncode == 0, "".join(lines)[-3000:]
    trades = pq.read_table(tmp_path / "coinbase-trades.parquet")
    book = pq.read_table(tmp_path / "coinbase-book.parquet")
    assert trades.num_rows >= 150 and book.num_rows >= 100
    assert len(set(trades.column("symbol").to_pylist())) >= 2

    out = tmp_path / "f.parquet"
    rc = sabot_main(["research", "features", "--parquet", str(tmp_path), "--bar", "500ms",
                        "--kyle-window", "10", "--levels", "10", "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    for s in set(trades.column("symbol").to_pylist()):
        assert s in printed
    bars = pq.read_table(out).to_pandas().set_index(["symbol", "bar"]).sort_index()

    # the reference rows: per symbol, the documented automatic bucket volume
    totals = trades.to_pandas().groupby("symbol")["size"].sum()
    V = {s: auto_bucket_volume(v) for s, v in totals.items()}
    sym = trades.column("symbol").to_numpy(zero_copy_only=False)
    ref = trades.to_pandas()
    ref["signed_volume"] = np.where(ref.side == "buy", ref["size"], -ref["size"])
    ref["vwap"] = ref["vpin"] = ref["kyle_lambda"] = np.nan
    for s in np.unique(sym):
        m = sym == s
        r = ref[m]
        ref.loc[m, "vwap"] = ref_vwap(r.price.to_numpy(), r["size"].to_numpy())
        ref.loc[m, "vpin"] = ref_vpin(r["size"].to_numpy(), (r.side == "buy").to_numpy(), V[s], 50)
        ref.loc[m, "kyle_lambda"] = ref_kyle(r.price.to_numpy(), r.signed_volume.to_numpy(), 10)
    assert ref.vpin.notna().sum() > 0
    ref["bar"] = ref.timestamp.dt.floor("500ms")
    ref["pq"] = ref.price * ref["size"]
    g = ref.groupby(["symbol", "bar"])
    want = pd.DataFrame({"trades": g.size(), "bar_vwap": g.pq.sum() / g["size"].sum(),
                         "signed_volume": g.signed_volume.sum(), "vwap": g.vwap.last(),
                         "vpin": g.vpin.last(), "kyle_lambda": g.kyle_lambda.last()})
    bk = book.to_pandas()
    bk["ofi"] = np.nan
    for s in bk.symbol.unique():
        m = (bk.symbol == s).to_numpy()
        r = bk[m]
        bk.loc[m, "ofi"] = ref_ofi(r.bid.to_numpy(), r.ask.to_numpy(), r.bid_size.to_numpy(),
                                   r.ask_size.to_numpy())
    bk["depth_imbalance"] = ref_depth_imbalance(book, 10)
    levels = {f"ofi_{m}": ref_multi_level_ofi(book, m) for m in range(1, 11)}
    for name, values in levels.items():
        bk[name] = values
    bk["bar"] = bk.timestamp.dt.floor("500ms")
    gb = bk.groupby(["symbol", "bar"])
    want = want.join(pd.DataFrame({"book_updates": gb.size(), "ofi": gb.ofi.sum(min_count=1),
                                   "depth_imbalance": gb.depth_imbalance.last(),
                                   **{n: gb[n].sum(min_count=1) for n in levels}}), how="outer")
    assert list(bars.index) == list(want.index)
    for name in want.columns:
        assert_close(bars[name].to_numpy(float), want[name].to_numpy(float), 1e-9, name)


def test_function_mistakes_name_the_argument():
    trades = make_trades(20, draw=2)
    two = pa.concat_tables([trades, trades.set_column(0, "exchange", pa.array(["other"] * 20))])
    with pytest.raises(ValueError, match=r"trade_features: rows of 2 venues \(other, testvenue\)"):
        trade_features(two, vpin_bucket_volume=1.0)
    for kw, match in ((dict(vpin_bucket_volume=0.0), "vpin_bucket_volume: must be a positive number, got 0.0"),
                      (dict(vpin_bucket_volume=1.0, kyle_window=1), "kyle_window: must be a whole number >= 2, got 1"),
                      (dict(vpin_bucket_volume=1.0, sign="lee"), "sign: 'lee' is not one of side, tick")):
        with pytest.raises(ValueError, match=match):
            trade_features(trades, **kw)
    with pytest.raises(ValueError, match="n_levels: must be a whole number >= 1, got True"):
        book_features(make_book(5, draw=2), n_levels=True)


def test_automatic_bucket_volume_is_round_and_fills_enough_buckets():
    assert [auto_bucket_volume(t, 200) for t in (200.0, 390.0, 400.0, 999.0, 1000.0, 0.37)] == \
        [1.0, 1.0, 2.0, 2.0, 5.0, 0.001]
    assert auto_bucket_volume(0.0) == 1.0 and auto_bucket_volume(float("nan")) == 1.0


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert sabot_main(["research", "features", "--parquet", str(tmp_path / "none")]) == 2
    assert sabot_main(["research", "features", "--parquet", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --parquet: {tmp_path / 'none'} is not a directory",
                   f"error: no trades or book rows in {tmp_path} (*-trades.parquet, "
                   "*-book.parquet: sabot collect --channels trades,book)"]
    pq.write_table(make_trades(10, draw=1), tmp_path / "x-trades.parquet")
    assert sabot_main(["research", "features", "--parquet", str(tmp_path), "--bar", "soon"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --bar 'soon': expected e.g. '500ms', '1s', '5m', '1h'")
    pq.write_table(make_book(10, draw=1), tmp_path / "x-book.parquet")
    assert sabot_main(["research", "features", "--parquet", str(tmp_path), "--levels", "11"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: testvenue book rows in {tmp_path}: bid_size_columns 'bid_size_11' not found")


def test_live_form_on_a_kafka_trades_topic(kafka_broker, unique_topic):
    """``trade_features`` on ``Stream.from_kafka`` of a trades topic (the real broker, three
    partitions keyed by symbol, small batches): per symbol the table form's values."""
    from sabot.schema import TRADE_SCHEMA
    from stream_data import produce

    trades = make_trades(600, draw=21)
    n = trades.num_rows
    trades = pa.table({
        **{c: trades.column(c) for c in ("exchange", "symbol")},
        "raw_symbol": trades.column("symbol"), "timestamp": trades.column("timestamp"),
        "recv_timestamp": trades.column("timestamp"),
        **{c: trades.column(c) for c in ("price", "size", "side")},
        "trade_id": [str(i) for i in range(n)], "sequence": pa.array(range(n), pa.int64()),
        "time_source": ["exchange"] * n}, schema=TRADE_SCHEMA)
    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, trades)
    kw = dict(vpin_bucket_volume=6.0, vpin_buckets=4, kyle_window=9)
    stream = Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"),
                               schema=TRADE_SCHEMA, batch_size=50, from_beginning=True,
                               stop_at_end=True)
    live = trade_features(stream, **kw).collect()
    assert live.num_rows == n
    check_trade_features(trades, live, 6.0, 4, 9)


def test_stream_form_state_restores_from_a_checkpoint():
    """The live form's kernels live in the operator's scope: a stream stopped halfway, its
    ``state_dict`` loaded into a new stream, continues exactly (the table form's values)."""
    trades, book = make_trades(500, draw=31), make_book(500, draw=32)
    for table, run in ((trades, lambda s: trade_features(s, vpin_bucket_volume=6.0,
                                                         vpin_buckets=4, kyle_window=9)),
                       (book, lambda s: book_features(s, n_levels=3))):
        first = run(Stream.from_table(table.slice(0, 230), 64))
        out1 = first.collect()
        second = run(Stream.from_table(table.slice(230), 64))
        second.load_state_dict(first.state_dict())
        got = pa.concat_tables([out1, second.collect()])
        whole = run(table)
        for name in whole.column_names[table.num_columns:]:
            assert_close(col(got, name), col(whole, name), 0, name)


def test_research_on_a_directory_takes_only_the_ticker_files(tmp_path):
    """The collectors write ``-trades``/``-book`` files beside the ticker file: ``sabot research
    --parquet DIR`` reads the ticker file and leaves the others out."""
    import pyarrow.parquet as pq

    from sabot.apps.research import parquet_inputs
    from sabot.collectors.books import BOOK_SCHEMA
    from sabot.schema import TRADE_SCHEMA, exchange_schema

    pq.write_table(exchange_schema("coinbase").empty_table(), tmp_path / "coinbase.parquet")
    pq.write_table(TRADE_SCHEMA.empty_table(), tmp_path / "coinbase-trades.parquet")
    pq.write_table(BOOK_SCHEMA.empty_table(), tmp_path / "coinbase-book.parquet")
    (tmp_path / "notes.parquet").write_bytes(b"not parquet")
    assert parquet_inputs(tmp_path) == [str(tmp_path / "coinbase.parquet")]
