"""Peers for fx_crypto, cross_exchange and cross_asset kernels (numpy written tightly, polars)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot import fintech as fk

BATCH_ROWS = 64 * 1024


def fx_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ab = 1.1 * np.exp(rng.normal(0, 1e-3, rows))
    bc = 150.0 * np.exp(rng.normal(0, 1e-3, rows))
    spot = 60000.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, rows)))
    return pa.table({
        "spot_ab": ab, "spot_bc": bc, "spot_ac": ab * bc * np.exp(rng.normal(0, 2e-4, rows)),
        "spot_price": spot, "perp_price": spot * (1 + rng.normal(5e-4, 1e-4, rows)),
        "funding_rate": rng.normal(1e-4, 5e-5, rows),
        "open_interest": 1e6 + np.cumsum(rng.normal(0, 1e3, rows)),
        "coinbase_mid": spot * (1 + rng.normal(0, 2e-4, rows)),
        "kraken_mid": spot * (1 + rng.normal(0, 2e-4, rows)),
        "binance_mid": spot * (1 + rng.normal(0, 2e-4, rows)),
    }).combine_chunks()


def async_pair(rows_a: int, rows_b: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ta = np.unique(rng.integers(0, 50 * rows_a, rows_a)) * 1_000_000
    tb = np.unique(rng.integers(0, 50 * rows_a, rows_b)) * 1_000_000
    ra = np.concatenate([[np.nan], rng.normal(0, 1e-4, ta.size - 1)])
    rb = np.concatenate([[np.nan], rng.normal(0, 1e-4, tb.size - 1)])
    return (pa.record_batch({"timestamp": ta, "returns": ra}),
            pa.record_batch({"timestamp": tb, "returns": rb}))


def numpy_hy_single_window(ta, ra, tb, rb):
    """HY over one window by prefix sums: each A interval (s, e] meets the B intervals
    j with e_b > s and s_b < e (contiguous), so Σ_j r_b = P[hi] − P[lo]."""
    sa, ea, xa = ta[:-1], ta[1:], ra[1:]
    sb, eb, xb = tb[:-1], tb[1:], rb[1:]
    prefix = np.concatenate([[0.0], np.cumsum(xb)])
    lo = np.searchsorted(eb, sa, side="right")
    hi = np.searchsorted(sb, ea, side="left")
    return float(np.dot(xa, prefix[hi] - prefix[lo]))


def kalman_loop(y, x, q, r):
    beta, P = 1.0, 1.0
    out = np.empty(y.size)
    for i in range(y.size):
        Pp = P + q
        S = x[i] * x[i] * Pp + r
        K = Pp * x[i] / S
        beta += K * (y[i] - beta * x[i])
        P = Pp * r / S
        out[i] = beta
    return out


def cases(scale: float = 1.0):
    import polars as pl

    rows = max(int(10_000_000 * scale), BATCH_ROWS)
    table = fx_table(rows)
    batch = table.to_batches()[0]
    ab, bc, ac = (table[c].to_numpy() for c in ("spot_ab", "spot_bc", "spot_ac"))
    spot, perp, rate = (table[c].to_numpy() for c in ("spot_price", "perp_price", "funding_rate"))
    oi = table["open_interest"].to_numpy()
    mids = np.stack([table[c].to_numpy() for c in ("coinbase_mid", "kraken_mid", "binance_mid")])
    t1, fwd, rev, best, out = (np.empty(rows) for _ in range(5))
    route = np.empty(rows, np.int8)
    frame = pl.DataFrame({"ab": ab, "bc": bc, "ac": ac})

    def numpy_triangular():
        np.multiply(ab, bc, out=t1)
        np.divide(t1, ac, out=fwd)
        np.divide(ac, t1, out=rev)
        np.subtract(fwd, 1.0, out=fwd)
        np.multiply(fwd, 1e4, out=fwd)
        np.subtract(rev, 1.0, out=rev)
        np.multiply(rev, 1e4, out=rev)
        np.maximum(fwd, rev, out=best)
        np.copyto(route, np.where(best > 0, np.where(fwd >= rev, 0, 1), 2))

    def polars_triangular():
        f = (pl.col("ab") * pl.col("bc") / pl.col("ac") - 1.0) * 1e4
        r = (pl.col("ac") / (pl.col("ab") * pl.col("bc")) - 1.0) * 1e4
        return frame.select(
            pl.max_horizontal(f, r).alias("edge"),
            pl.when(pl.max_horizontal(f, r) <= 0).then(pl.lit("none"))
            .when(f >= r).then(pl.lit("AB->BC->CA")).otherwise(pl.lit("AC->CB->BA"))
            .cast(pl.Categorical).alias("route"))

    yield "triangular_arbitrage", rows, {
        "sabot": lambda: fk.triangular_arbitrage(batch),
        "numpy out= (edge+route)": numpy_triangular,
        "polars (edge+route)": polars_triangular,
    }

    def numpy_carry():
        np.divide(perp, spot, out=out)
        np.subtract(out, 1.0, out=out)
        np.multiply(out, 365.0 / 90.0, out=out)
        np.multiply(rate, 3.0 * 365.0, out=t1)
        np.add(out, t1, out=out)
        np.multiply(out, 1e4, out=out)
        np.subtract(out, 5.0 * 365.0 / 90.0, out=out)

    yield "cash_and_carry_edge", rows, {
        "sabot": lambda: fk.cash_and_carry_edge(batch, fees_bps=5.0),
        "numpy out=": numpy_carry,
    }
    yield "funding_apr", rows, {
        "sabot": lambda: fk.funding_apr(batch),
        "numpy multiply out=": lambda: np.multiply(rate, 3.0 * 365.0, out=out),
    }
    yield "open_interest_delta", rows, {
        "sabot": lambda: fk.open_interest_delta(batch),
        "numpy subtract out=": lambda: np.subtract(oi[1:], oi[:-1], out=out[1:]),
    }
    yield "cross_exchange_spread", rows, {
        "sabot": lambda: fk.cross_exchange_spread(batch, "coinbase_mid", "kraken_mid"),
        "numpy out=": lambda: np.multiply(
            np.divide(np.subtract(mids[0], mids[1], out=out), mids[0], out=out), 1e4, out=out),
    }
    fees = np.array([6.0, 2.6, 1.0])

    def numpy_arbitrage():
        # uniform-fee shortcut peers would use: lowest vs highest venue (all pairs not needed)
        lo = mids.argmin(axis=0)
        hi = mids.argmax(axis=0)
        p_lo = np.take_along_axis(mids, lo[None], 0)[0]
        p_hi = np.take_along_axis(mids, hi[None], 0)[0]
        gross = (p_hi - p_lo) / p_lo * 1e4
        net = gross - fees[lo] - fees[hi]
        return lo, hi, gross, net, (net >= 0.0) & (net > 0)

    yield "arbitrage_opportunities 3 venues", rows, {
        "sabot": lambda: fk.arbitrage_opportunities(
            batch, ["coinbase_mid", "kraken_mid", "binance_mid"],
            fees_bps={"coinbase": 6.0, "kraken": 2.6, "binance": 1.0}),
        "numpy argmin/argmax": numpy_arbitrage,
    }

    n_hy = max(int(2_000_000 * scale), 10_000)
    a, b = async_pair(n_hy, int(n_hy * 0.7))
    ta, ra = a["timestamp"].to_numpy(), a["returns"].to_numpy(zero_copy_only=False)
    tb, rb = b["timestamp"].to_numpy(), b["returns"].to_numpy(zero_copy_only=False)
    yield "hayashi_yoshida_cov one window", a.num_rows + b.num_rows, {
        "sabot": lambda: fk.hayashi_yoshida_cov(a, b, window_ms=10 ** 12),
        "numpy searchsorted+prefix": lambda: numpy_hy_single_window(ta, ra, tb, rb),
    }
    yield "hayashi_yoshida_cov 1s windows", a.num_rows + b.num_rows, {
        "sabot": lambda: fk.hayashi_yoshida_cov(a, b, window_ms=1000),
    }

    n_x = max(int(1_000_000 * scale), 10_000)
    rng = np.random.default_rng(2)
    xa = rng.normal(size=n_x)
    xb = np.roll(xa, 3) + rng.normal(size=n_x)
    ba, bb = pa.record_batch({"returns": xa}), pa.record_batch({"returns": xb})

    def numpy_xcorr():
        return {k: np.corrcoef(xa[:n_x - k], xb[k:])[0, 1] if k >= 0 else
                np.corrcoef(xa[-k:], xb[:n_x + k])[0, 1] for k in range(-10, 11)}

    yield "xcorr_leadlag max_lag=10", n_x, {
        "sabot": lambda: fk.xcorr_leadlag(ba, bb, max_lag=10),
        "numpy corrcoef per lag": numpy_xcorr,
    }

    n_k = max(int(200_000 * scale), 10_000)
    pb_ = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n_k)))
    pa_ = 1.5 * pb_ + rng.normal(0, 0.05, n_k)
    ka, kb = pa.record_batch({"price": pa_}), pa.record_batch({"price": pb_})
    yield "kalman_hedge_ratio", n_k, {
        "sabot": lambda: fk.kalman_hedge_ratio(ka, kb),
        "python loop": lambda: kalman_loop(pa_, pb_, 0.001, 0.1),
    }
