"""The rolling variance block (``_window.pxd``: sliding Welford with an error-budget re-sum)
through its three users, rolling_std, bollinger_bands and rolling_zscore, on the inputs that
exercise its special paths: extreme level jumps (the re-sum about an inaccurate running mean
falls back to two passes), windows that turn constant mid-stream (exact state), infinities
(null while one is in the window, exact again after), long series at a large level (many
periodic re-sums about a moved shift) and state saved with the older header meaning.

References are numpy two-pass formulas written out here and pandas."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from kernel_testing import assert_matches, to_numpy
from sabot.fintech import (
    BollingerBands, RollingStd, RollingZScore, bollinger_bands, rolling_std, rolling_zscore,
)


def two_pass(v: np.ndarray, window: int):
    """Window means and M2 = Σ(x − mean)² by two passes (the second removes the first's
    rounding), NaN-padded for the warm-up rows."""
    w = sliding_window_view(v, window)
    mean = w.mean(axis=1)
    d = w - mean[:, None]
    rest = d.mean(axis=1)
    m2 = ((d - rest[:, None]) ** 2).sum(axis=1)
    pad = np.full(window - 1, np.nan)
    const = np.ptp(w, axis=1) == 0
    return (np.concatenate([pad, mean + rest]), np.concatenate([pad, m2]),
            np.concatenate([np.zeros(window - 1, bool), const]))


def check_all_users(v: np.ndarray, window: int, rtol: float = 1e-9) -> None:
    """rolling_std (ddof 0 and 1), bollinger_bands (k = 2) and rolling_zscore against
    ``two_pass``; the zscore's x − mean cancels at a large level: atol = 1e-13 x level / std."""
    t = pa.table({"x": v})
    mean, m2, const = two_pass(v, window)
    for ddof in (0, 1):
        assert_matches(rolling_std(t, "x", window=window, ddof=ddof)["rolling_std"],
                       np.sqrt(m2 / (window - ddof)), rtol=rtol, name=f"std ddof={ddof}")
    sd = np.sqrt(m2 / window)
    bands = bollinger_bands(t, "x", window=window)
    assert_matches(bands["bb_mid"], mean, rtol=1e-12, name="bb_mid")
    got_width = to_numpy(bands["bb_upper"]) - to_numpy(bands["bb_mid"])
    ok = ~np.isnan(sd)
    assert np.allclose(got_width[ok], 2.0 * sd[ok], rtol=rtol, atol=1e-12 * np.abs(mean[ok]))
    sample = np.sqrt(m2 / (window - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(const, np.nan, (v - mean) / sample)
        atol = np.nan_to_num(1e-13 * np.abs(mean) / sample)
    assert_matches(rolling_zscore(t, "x", window=window)["zscore"], z, rtol=rtol, atol=atol,
                   name="zscore")


@pytest.mark.parametrize("window", [5, 20, 300])
def test_extreme_level_jumps_then_tiny_spread(window):
    """Steps of 1e15 then noise of 1e-6: when a step leaves the window, the running mean is
    off by far more than the spread left, so the re-sum needs its second pass."""
    rng = np.random.default_rng(40)
    level = np.repeat([1e15, 1.0, -3e14, 7.0, 2e9, 0.5], 2 * window)
    v = level + rng.normal(0, 1e-6, level.size)
    check_all_users(v, window)


@pytest.mark.parametrize("window", [20, 300])
def test_long_series_at_a_large_level(window):
    """A random walk at 1e9 with steps of 1e-2 over many periodic re-sums."""
    rng = np.random.default_rng(41)
    v = 1e9 + np.cumsum(rng.normal(0, 1e-2, 6000))
    check_all_users(v, window)


@pytest.mark.parametrize("window", [3, 20])
def test_windows_turning_constant_are_exact(window):
    """Random values, then one value repeated past the window (std exactly 0, bands exactly
    the value, zscore null), then random values again."""
    rng = np.random.default_rng(42)
    v = np.concatenate([100 + rng.normal(0, 1, 50), np.full(2 * window, 0.1),
                        100 + rng.normal(0, 1, 50), np.full(window + 3, -7.3),
                        rng.normal(0, 1e-3, 30)])
    check_all_users(v, window)
    t = pa.table({"x": v})
    std = to_numpy(rolling_std(t, "x", window=window)["rolling_std"])
    bands = bollinger_bands(t, "x", window=window)
    z = rolling_zscore(t, "x", window=window)["zscore"]
    for start, value in ((50, 0.1), (100 + 2 * window, -7.3)):
        rows = np.arange(start + window - 1, start + 2 * window if value == 0.1 else
                         start + window + 3)
        assert np.all(std[rows] == 0.0)
        for name in ("bb_mid", "bb_upper", "bb_lower"):
            assert np.all(to_numpy(bands[name])[rows] == value), name
        assert all(z[int(r)].as_py() is None for r in rows)


def test_infinite_values_are_null_while_in_the_window():
    """pandas: NaN std and mean for a window holding ±inf; exact again once it has left."""
    rng = np.random.default_rng(43)
    v = 50 + rng.normal(0, 1, 200)
    v[[30, 31, 90, 150]] = [np.inf, -np.inf, np.inf, np.inf]
    v[100:140] = 4.0                          # a constant stretch after an infinity
    window = 10
    t = pa.table({"x": v})
    s = pd.Series(v).rolling(window)
    for ddof in (0, 1):
        assert_matches(rolling_std(t, "x", window=window, ddof=ddof)["rolling_std"],
                       s.std(ddof=ddof).to_numpy(), rtol=1e-9, atol=1e-12,
                       name=f"std ddof={ddof}")
    bands = bollinger_bands(t, "x", window=window)
    assert_matches(bands["bb_mid"], s.mean().to_numpy(), rtol=1e-12, name="bb_mid")
    width = 2.0 * s.std(ddof=0).to_numpy()
    assert_matches(bands["bb_upper"], s.mean().to_numpy() + width, rtol=1e-9, name="bb_upper")
    assert_matches(bands["bb_lower"], s.mean().to_numpy() - width, rtol=1e-9, name="bb_lower")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (v - s.mean().to_numpy()) / s.std(ddof=1).to_numpy()
    z[np.abs(s.std(ddof=1).to_numpy()) < 1e-12] = np.nan   # constant windows: null
    assert_matches(rolling_zscore(t, "x", window=window)["zscore"], z, rtol=1e-9,
                   atol=1e-9, name="zscore")


@pytest.mark.parametrize("make,outputs", [
    (lambda: RollingStd("x", window=7, ddof=0), ["rolling_std"]),
    (lambda: BollingerBands("x", window=7), ["bb_mid", "bb_upper", "bb_lower"]),
    (lambda: RollingZScore("x", window=7), ["zscore"]),
])
def test_state_with_a_total_push_count_continues(make, outputs):
    """Header slot 6 once held the total push count (it now counts pushes since the last
    periodic re-sum); a state saved that way resumes with a re-sum and the same values."""
    rng = np.random.default_rng(44)
    v = 1e4 + np.cumsum(rng.normal(0, 1, 900))
    first, second = pa.table({"x": v[:500]}), pa.table({"x": v[500:]})
    plain = make()
    plain(first)
    expected = plain(second)
    saved = make()
    saved(first)
    d = saved.state_dict()
    state = np.frombuffer(d["state"], dtype=np.float64).copy()
    state[6] = 500.0                          # the old meaning: pushes so far
    d["state"] = state.tobytes()
    restored = make()
    restored.load_state_dict(d)
    got = restored(second)
    for name in outputs:
        assert_matches(got[name], to_numpy(expected[name]), rtol=1e-12, name=name)
