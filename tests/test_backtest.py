"""The backtest's risk figures: Sharpe and Sortino from bar returns (``--bar``), annualised only
when the span allows, against a pandas resample and against series with known answers; the
equity figure's time axis, drawdown panel and buy-and-hold reference."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sabot.apps import research

ROOT = Path(__file__).resolve().parents[1]
MINUTES_PER_YEAR = 365 * 24 * 60
T0 = 1_767_225_600_000_000_000 + 17 * 1_000_000_000  # 2026-01-01 00:00:17 UTC, mid-minute


def _pandas_bars(ts_ns: np.ndarray, equity: np.ndarray, rule: str, per_year: float) -> dict:
    """The reference: pandas resample to ``rule`` (last tick per bar, empty bars carried),
    returns from a starting equity of 1."""
    closes = pd.Series(equity, index=pd.to_datetime(ts_ns)).resample(rule).last().ffill()
    r = pd.concat([pd.Series([1.0]), closes.reset_index(drop=True)]).pct_change().dropna()
    down = np.sqrt((r.clip(upper=0.0) ** 2).mean())
    return {"bars": len(r), "sharpe_per_bar": r.mean() / r.std(ddof=1),
            "sortino_per_bar": r.mean() / down,
            "sharpe": r.mean() / r.std(ddof=1) * np.sqrt(per_year),
            "sortino": r.mean() / down * np.sqrt(per_year)}


def test_bar_figures_match_a_pandas_resample_on_irregular_ticks():
    rng = np.random.default_rng(3)
    gaps = rng.exponential(7.0, 1500) * 1e9             # ~3 hours of irregular ticks,
    gaps[500:520] = 240e9                                # with a gap of empty minutes
    ts = T0 + np.cumsum(gaps).astype(np.int64)
    equity = np.cumprod(1.0 + rng.normal(2e-5, 4e-4, len(ts)))
    got = research.bar_metrics(ts, equity, research.parse_bar("1min"))
    ref = _pandas_bars(ts, equity, "1min", MINUTES_PER_YEAR)
    assert got["annualised"] and got["bars"] == ref["bars"] > 100
    for key in ("sharpe_per_bar", "sortino_per_bar", "sharpe", "sortino"):
        assert got[key] == pytest.approx(ref[key], rel=1e-9), key
    # another bar: five minutes
    got5 = research.bar_metrics(ts, equity, research.parse_bar("5min"))
    ref5 = _pandas_bars(ts, equity, "5min", MINUTES_PER_YEAR / 5)
    assert got5["bars"] == ref5["bars"] and got5["sharpe"] == pytest.approx(ref5["sharpe"], rel=1e-9)


def test_known_answer_alternating_minutes():
    """Minute closes alternating +1 % and -0.5 % (with noise between the closes): per-bar mean
    0.25 %, sample sd 0.75 % · √(n/(n-1)), downside deviation √(0.5 · 0.005²)."""
    n = 60
    r = np.where(np.arange(n) % 2 == 0, 0.01, -0.005)
    closes = np.cumprod(1.0 + r)
    ts, eq = [], []
    for k in range(n):  # three ticks a minute; the last one is the close
        start = (T0 // 60_000_000_000 + k) * 60_000_000_000
        for j, factor in enumerate((1.003, 0.998, 1.0)):
            ts.append(start + (10 + 20 * j) * 1_000_000_000)
            eq.append(closes[k] * factor)
    got = research.bar_metrics(np.array(ts), np.array(eq), 60_000_000_000)
    sd = 0.0075 * np.sqrt(n / (n - 1))
    down = np.sqrt(0.5 * 0.005 ** 2)
    assert got["bars"] == n and got["annualised"]
    assert got["mean_return_per_bar"] == pytest.approx(0.0025, rel=1e-9)
    assert got["sharpe_per_bar"] == pytest.approx(0.0025 / sd, rel=1e-9)
    assert got["sortino_per_bar"] == pytest.approx(0.0025 / down, rel=1e-9)
    assert got["sharpe"] == pytest.approx(0.0025 / sd * np.sqrt(MINUTES_PER_YEAR), rel=1e-9)


def test_a_short_span_is_not_annualised_and_says_so(capsys):
    """28 s of ticks are one one-minute bar: no annual figure, a warning, per-bar figures."""
    ts = T0 + np.arange(0, 28_000, 250) * 1_000_000
    mid = 100.0 * np.cumprod(1.0 + np.random.default_rng(5).normal(0, 1e-4, len(ts)))
    args = argparse.Namespace(z_entry=2.0, z_exit=0.5, rsi_low=30.0, rsi_high=70.0, fee_bps=6.0,
                              slippage_bps=1.0, bar="1min")
    z = np.where(np.arange(len(ts)) % 40 < 20, -3.0, 0.0)  # enter and leave a long position
    rsi = np.full(len(ts), 20.0)
    m = research.backtest_symbol(ts, mid, z, rsi, args)
    assert m["bars"] <= 2 and not m["annualised"] and m["sharpe"] is None and m["sortino"] is None
    assert m["trades"] > 0 and m["buy_and_hold_return"] == pytest.approx(mid[-1] / mid[0] - 1)
    research.print_backtest({"BTC/USD": {k: v for k, v in m.items()
                                         if k not in ("equity", "ts_ns", "mid")}}, "1min")
    out, err = capsys.readouterr()
    assert "BTC/USD" in err and "not annualised" in err and "fewer than 30" in err
    assert "*" in out.splitlines()[-1]  # the per-bar figure, marked


def test_backtest_symbol_annualises_the_bar_returns_of_its_equity():
    """14 hours of one-second ticks: the reported Sharpe is the pandas one of its own equity
    resampled to minutes (not the tick Sharpe scaled by the tick rate)."""
    rng = np.random.default_rng(11)
    n = 14 * 3600
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    mid = 65000.0 * np.cumprod(1.0 + rng.normal(0, 5e-5, n))
    z = np.sin(np.arange(n) / 300.0) * 3.0
    rsi = 50.0 + np.sin(np.arange(n) / 300.0) * 40.0
    args = argparse.Namespace(z_entry=2.0, z_exit=0.5, rsi_low=30.0, rsi_high=70.0, fee_bps=6.0,
                              slippage_bps=1.0, bar="1min")
    m = research.backtest_symbol(ts, mid, z, rsi, args)
    ref = _pandas_bars(ts, m["equity"], "1min", MINUTES_PER_YEAR)
    assert m["annualised"] and m["bars"] == ref["bars"] == 14 * 60 + 1  # T0 is mid-minute
    assert m["trades"] > 10
    assert m["sharpe"] == pytest.approx(ref["sharpe"], rel=1e-9)
    assert m["sortino"] == pytest.approx(ref["sortino"], rel=1e-9)
    assert m["span_s"] == pytest.approx(n - 1)


def test_parse_bar_and_a_bad_bar_is_one_line():
    assert research.parse_bar("1min") == research.parse_bar("60s") == 60_000_000_000
    assert research.parse_bar("250ms") == 250_000_000 and research.parse_bar("1d") == 86_400e9
    for bad in ("0s", "1 week", "-5s", "min"):
        with pytest.raises(ValueError, match="--bar: cannot read"):
            research.parse_bar(bad)
    proc = subprocess.run([sys.executable, "-m", "sabot", "backtest", "--bar", "fast"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --bar: cannot read 'fast'; expected a "
                                                "positive length such as 1min, 5s, 250ms, 1h or 1d"]


def test_equity_figure_has_a_time_axis_a_drawdown_panel_and_buy_and_hold(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    class Keep:  # pyplot, keeping the figure open for inspection
        fig = None

        def subplots(self, *a, **k):
            self.fig, axes = plt.subplots(*a, **k)
            return self.fig, axes

        def close(self, fig):
            pass

    ts = T0 + np.arange(0, 600, 1, dtype=np.int64) * 1_000_000_000
    mid = np.linspace(100.0, 110.0, len(ts))
    equity = np.concatenate([np.linspace(1.0, 1.2, 300), np.linspace(1.2, 0.9, 300)])
    keep = Keep()
    out = tmp_path / "eq.png"
    research.plot_equity(keep, {"BTC/USD": {"ts_ns": ts, "equity": equity, "mid": mid}}, out, "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top, dd = keep.fig.axes
    labels = [ln.get_label() for ln in top.get_lines()]
    assert labels == ["BTC/USD strategy", "BTC/USD buy and hold"]
    np.testing.assert_allclose(top.get_lines()[1].get_ydata(), mid / mid[0])
    # the x axis is time: matplotlib date numbers of the ticks
    import matplotlib.dates as mdates
    x = np.asarray(top.get_lines()[0].get_xdata())
    assert mdates.date2num(x[0]) == pytest.approx(
        mdates.date2num(pd.Timestamp(T0, unit="ns").to_pydatetime()))
    assert dd.get_ylabel() == "drawdown (%)" and dd.get_xlabel() == "time (UTC)"
    worst = np.min(dd.get_lines()[0].get_ydata())
    assert worst == pytest.approx(-(1 - 0.9 / 1.2) * 100)
    plt.close(keep.fig)
