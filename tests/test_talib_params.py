"""TA-Lib agreement at every parameter, not only the defaults; the naming rule; bars.

Hypothesis draws the parameters (periods 2-200, MACD fast < slow, signal 2-50, Bollinger k
0.5-4) and, under the same draws, checks split invariance and ``by=`` (per symbol).  Data are a
few hundred rows with nulls, NaN and flat runs; the reference is TA-Lib on the valid rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import talib
from hypothesis import given, settings, strategies as st

from kernel_testing import (
    assert_by_equivalent, assert_matches, assert_split_invariant, market_table, scatter,
    to_numpy, valid_mask,
)
from sabot.api import Stream
from sabot.fintech import (
    ATR, EMA, MACD, OBV, RSI, SMA, BollingerBands, Diff, DonchianChannel, Lag, RollingMax,
    RollingMin, RollingStd, StochasticOsc, atr, bollinger_bands, corwin_schultz_spread, diff,
    donchian_channel, ema, garman_klass_vol, lag, log_returns, macd, obv, parkinson_vol,
    rolling_max, rolling_min, rolling_std, rsi, sma, stochastic_osc, tick_rule, vwap,
)

ROWS = 320
SCALES = (1.0, 1e-6, 1e6)
TABLES = {(draw, scale): market_table(ROWS, draw, scale=scale)
          for draw in (1, 2) for scale in SCALES}
KEYED = market_table(900, 3)          # three interleaved symbols for split and by=

periods = st.integers(2, 200)
tables = st.sampled_from(sorted(TABLES))
cuts = st.lists(st.integers(0, KEYED.num_rows), max_size=4)
SETTINGS = settings(max_examples=40, deadline=None)


def valid(t, *names):
    mask = valid_mask(*[t[n] for n in names])
    return mask, [to_numpy(t[n])[mask] for n in names]


def invariants(make, outputs, split_cuts):
    """Split invariance (keyed and not) and by= equal to each symbol alone, for one draw."""
    assert_split_invariant(lambda: make(None), KEYED, split_cuts, outputs)
    assert_split_invariant(lambda: make("symbol"), KEYED, split_cuts, outputs)
    assert_by_equivalent(lambda: make("symbol"), lambda: make(None), KEYED, outputs)


# -- single-length indicators ---------------------------------------------------------------
@SETTINGS
@given(key=tables, n=periods, split_cuts=cuts)
def test_ema_sma_rsi_any_period(key, n, split_cuts):
    t = TABLES[key]
    mask, (p,) = valid(t, "price")
    assert_matches(ema(t, period=n)["ema"], scatter(mask, talib.EMA(p, n)), name=f"ema {n}")
    assert_matches(sma(t, window=n)["sma"], scatter(mask, talib.SMA(p, n)), name=f"sma {n}")
    assert_matches(rsi(t, period=n)["rsi"], scatter(mask, talib.RSI(p, n)), rtol=1e-9,
                   atol=1e-9, name=f"rsi {n}")
    invariants(lambda by: EMA(period=n, by=by), ["ema"], split_cuts)
    invariants(lambda by: SMA(window=n, by=by), ["sma"], split_cuts)
    invariants(lambda by: RSI(period=n, by=by), ["rsi"], split_cuts)


@SETTINGS
@given(key=tables, n=periods, split_cuts=cuts)
def test_atr_any_period(key, n, split_cuts):
    t = TABLES[key]
    mask, (h, l, c) = valid(t, "high", "low", "price")
    assert_matches(atr(t, period=n)["atr"], scatter(mask, talib.ATR(h, l, c, n)), name=f"atr {n}")
    invariants(lambda by: ATR(n, by=by), ["atr"], split_cuts)


@SETTINGS
@given(key=tables, n=periods, split_cuts=cuts)
def test_rolling_std_min_max_any_window(key, n, split_cuts):
    t = TABLES[key]
    mask, (p,) = valid(t, "price")
    assert_matches(rolling_max(t, "price", window=n)["rolling_max"], scatter(mask, talib.MAX(p, n)),
                   name=f"max {n}")
    assert_matches(rolling_min(t, "price", window=n)["rolling_min"], scatter(mask, talib.MIN(p, n)),
                   name=f"min {n}")
    # TA-Lib STDDEV is the population std (ddof=0), from sums of squares: its own rounding is
    # about eps * price**2 / std, hence the tolerance relative to the price level
    assert_matches(rolling_std(t, "price", window=n, ddof=0)["rolling_std"],
                   scatter(mask, talib.STDDEV(p, n, 1.0)), rtol=1e-7, atol=1e-9 * p.max(),
                   name=f"std {n}")
    invariants(lambda by: RollingMax("price", n, by=by), ["rolling_max"], split_cuts)
    invariants(lambda by: RollingMin("price", n, by=by), ["rolling_min"], split_cuts)
    invariants(lambda by: RollingStd("price", n, ddof=0, by=by), ["rolling_std"], split_cuts)


def test_obv_matches_talib_and_invariants():
    for key, t in TABLES.items():
        mask, (p, v) = valid(t, "price", "volume")
        assert_matches(obv(t)["obv"], scatter(mask, talib.OBV(p, v)), rtol=1e-12, name="obv")
    invariants(lambda by: OBV(by=by), ["obv"], [50, 51, 480])


# -- several lengths and multipliers --------------------------------------------------------
@st.composite
def macd_periods(draw):
    slow = draw(st.integers(3, 200))
    fast = draw(st.integers(2, slow - 1))
    return fast, slow, draw(st.integers(2, 50))


@SETTINGS
@given(key=tables, fss=macd_periods(), split_cuts=cuts)
def test_macd_any_periods(key, fss, split_cuts):
    fast, slow, signal = fss
    t = TABLES[key]
    mask, (p,) = valid(t, "price")
    out = macd(t, fast_period=fast, slow_period=slow, signal_period=signal)
    atol = 1e-12 * np.nanmax(np.abs(p))      # a difference of two EMAs: rounding of the price
    for name, ref in zip(("macd", "macd_signal", "macd_hist"), talib.MACD(p, fast, slow, signal)):
        assert_matches(out[name], scatter(mask, ref), atol=atol, name=f"{name} {fss}")
    invariants(lambda by: MACD(fast_period=fast, slow_period=slow, signal_period=signal, by=by),
               ["macd", "macd_signal", "macd_hist"], split_cuts)


@SETTINGS
@given(key=tables, n=periods, k=st.floats(0.5, 4.0), split_cuts=cuts)
def test_bollinger_any_window_and_k(key, n, k, split_cuts):
    t = TABLES[key]
    mask, (p,) = valid(t, "price")
    upper, mid, lower = talib.BBANDS(p, n, k, k, 0)
    out = bollinger_bands(t, window=n, k=k)
    for name, ref in (("bb_upper", upper), ("bb_mid", mid), ("bb_lower", lower)):
        assert_matches(out[name], scatter(mask, ref), rtol=1e-9, atol=1e-12 * p.max(),
                       name=f"{name} {n} {k}")
    invariants(lambda by: BollingerBands(window=n, k=k, by=by),
               ["bb_mid", "bb_upper", "bb_lower"], split_cuts)


@SETTINGS
@given(key=tables, k=periods, d=st.integers(1, 50), split_cuts=cuts)
def test_stochastic_any_windows(key, k, d, split_cuts):
    t = TABLES[key]
    mask, (h, l, c) = valid(t, "high", "low", "price")
    fast_k, fast_d = talib.STOCHF(h, l, c, k, d, 0)
    out = stochastic_osc(t, k_window=k, d_window=d)
    assert_matches(out["stoch_k"], scatter(mask, fast_k), rtol=1e-9, atol=1e-9, name="stoch_k")
    assert_matches(out["stoch_d"], scatter(mask, fast_d), rtol=1e-9, atol=1e-9, name="stoch_d")
    invariants(lambda by: StochasticOsc(k, d, by=by), ["stoch_k", "stoch_d"], split_cuts)


# -- the naming rule -------------------------------------------------------------------------
def test_old_names_are_aliases_of_the_new():
    t = TABLES[(1, 1.0)]
    pairs = [
        (macd(t, fast=5, slow=13, signal=4), macd(t, fast_period=5, slow_period=13,
                                                  signal_period=4), "macd_signal"),
        (MACD(fast=5, slow=13)(t), MACD(fast_period=5, slow_period=13)(t), "macd"),
        (stochastic_osc(t, k_period=9, d_period=2), stochastic_osc(t, k_window=9, d_window=2),
         "stoch_d"),
        (StochasticOsc(k_period=9)(t), StochasticOsc(k_window=9)(t), "stoch_k"),
        (lag(t, "price", k=3), lag(t, "price", lag=3), "price_lag3"),
        (Diff("price", k=2)(t), diff(t, "price", lag=2), "price_diff2"),
    ]
    for old, new, name in pairs:
        assert old.column(name).equals(new.column(name)), name
    # positional calls are unchanged
    assert macd(t, None, 5, 13, 4).column("macd").equals(
        macd(t, fast_period=5, slow_period=13, signal_period=4).column("macd"))
    # the configuration (and so a kernel's repr and checkpoint) speaks the new names
    assert MACD(fast=5).config["fast_period"] == 5
    assert Lag("price", k=2).config == {"column": "price", "lag": 2}


@pytest.mark.parametrize("call, kernel, keyword, suggestion", [
    (lambda t: sma(t, period=5), "sma", "period", "window"),
    (lambda t: SMA(period=5), "sma", "period", "window"),
    (lambda t: rsi(t, window=5), "rsi", "window", "period"),
    (lambda t: ATR(timeperiod=5), "atr", "timeperiod", "period"),
    (lambda t: bollinger_bands(t, nbdevup=2.0), "bollinger_bands", "nbdevup", "k"),
    (lambda t: macd(t, fastperiod=3), "macd", "fastperiod", "fast_period"),
    (lambda t: ema(t, colum="price"), "ema", "colum", "column"),
])
def test_a_wrong_keyword_names_kernel_keyword_and_accepted_names(call, kernel, keyword,
                                                                  suggestion):
    with pytest.raises(TypeError) as err:
        call(TABLES[(1, 1.0)])
    message = str(err.value)
    assert message.startswith(f"{kernel}() got an unexpected keyword argument {keyword!r}")
    assert "accepts" in message and f"did you mean {suggestion!r}" in message


def _kernel_forms():
    """Every kernel class and function form exported by sabot.fintech (not the joins)."""
    import inspect

    import sabot.fintech as fintech
    from sabot.fintech._kernel import Kernel

    for name in fintech.__all__:
        obj = getattr(fintech, name)
        module = getattr(obj, "__module__", "") or ""
        if module.endswith(("asof", "_scope", "symbols", "operators")):
            continue
        if isinstance(obj, type) and issubclass(obj, Kernel):
            yield name, obj, None
        elif callable(obj) and not isinstance(obj, type):
            yield name, obj, [p for p in inspect.signature(obj).parameters.values()
                              if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("name, form, required", list(_kernel_forms()),
                         ids=[n for n, _, _ in _kernel_forms()])
def test_every_kernel_refuses_an_unknown_keyword_by_name(name, form, required):
    if required is None:                     # a class: as many positional columns as it needs
        for args in ((), ("x",), ("x", "y")):
            try:
                form(*args, lenght=3)
            except TypeError as err:
                if "positional argument" in str(err):
                    continue
                message = str(err)
                break
        else:
            pytest.fail(f"{name}: no TypeError")
    else:
        with pytest.raises(TypeError) as err:
            form(*[None] * len(required), lenght=3)
        message = str(err.value)
        assert message.startswith(f"{name}() got an unexpected keyword argument 'lenght'")
    assert "got an unexpected keyword argument 'lenght'; it accepts " in message, message


#: The keywords the function forms took before the naming rule, every one still accepted.
EARLIER_KEYWORDS = {
    "ema": ["alpha"], "sma": ["window"], "macd": ["fast", "slow", "signal"], "rsi": ["period"],
    "bollinger_bands": ["window", "k"], "kalman_1d": ["q", "r"], "donchian_channel": ["window"],
    "stochastic_osc": ["k_period", "d_period"], "log_returns": ["price_column"],
    "ewma": ["alpha"], "ewcov": ["alpha"], "rolling_zscore": ["window"],
    "realized_var": ["returns_column", "window"], "bipower_var": ["returns_column", "window"],
    "medrv": ["returns_column", "window"], "riskmetrics_vol": ["returns_column", "lambda_param"],
    "kyle_lambda": ["returns_column", "volume_column", "window"],
    "amihud_illiquidity": ["returns_column", "volume_column", "window"],
    "roll_spread": ["returns_column", "window"],
    "corwin_schultz_spread": ["high_column", "low_column", "window"],
    "vwap": ["price_column", "volume_column"], "cusum": ["column", "k", "h"],
    "historical_var": ["column", "alpha", "window"],
    "historical_cvar": ["column", "alpha", "window"],
    "cornish_fisher_var": ["alpha"], "lag": ["column", "k"], "diff": ["column", "k"],
    "rolling_min": ["column", "window"], "rolling_max": ["column", "window"],
    "rolling_std": ["column", "window"], "rolling_skew": ["column", "window"],
    "rolling_kurt": ["column", "window"], "autocorr": ["column", "lag", "window"],
    "stale_quote_detector": ["max_age_ms"], "price_band_guard": ["ref_column", "pct"],
    "fat_finger_guard": ["ref_column", "pct", "notional_max"],
    "circuit_breaker": ["column", "ref_column", "pct"], "throttle_check": ["rate_limit"],
    "outlier_flag_mad": ["column", "window", "k"], "forward_points": ["T_years"],
    "cip_basis": ["T_years"], "carry_signal": ["risk_adj_factor"],
    "funding_apr": ["funding_freq_hours"], "basis_annualized": ["T_days"],
    "hayashi_yoshida_cov": ["window_ms"], "hayashi_yoshida_corr": ["window_ms"],
    "xcorr_leadlag": ["max_lag", "alpha"], "pairs_spread": ["hedge_ratio"],
    "kalman_hedge_ratio": ["q", "r"], "optimal_ac_schedule": ["Q", "T", "sigma", "gamma", "eta"],
}


@pytest.mark.parametrize("name", sorted(EARLIER_KEYWORDS))
def test_the_earlier_keywords_are_accepted(name):
    import inspect

    import sabot.fintech as fintech
    from sabot.fintech._naming import accepted_names

    params = [p for p in inspect.signature(getattr(fintech, name)).parameters
              if p != "renamed"]
    missing = set(EARLIER_KEYWORDS[name]) - set(accepted_names(name, params))
    assert not missing, f"{name} no longer takes {sorted(missing)}"


def test_the_alias_table_knows_the_defaults_of_the_new_names():
    """RENAMED records each new name's default (to tell an explicit new name from an
    untouched one): it must be the function form's default."""
    import inspect

    import sabot.fintech as fintech
    from sabot.fintech._naming import RENAMED

    for kernel, table in RENAMED.items():
        params = inspect.signature(getattr(fintech, kernel)).parameters
        for old, (new, default) in table.items():
            assert params[new].default == default, (kernel, new)


def test_a_keyed_operator_passes_the_kernels_own_keyword_error_on():
    from sabot.fintech import EWMA, SymbolKeyedOperator
    from sabot.fintech.microstructure import Midprice

    with pytest.raises(TypeError, match=r"^ewma\(\) got an unexpected keyword argument 'alhpa'"):
        SymbolKeyedOperator(EWMA, alhpa=0.3)
    with pytest.raises(TypeError, match="Midprice cannot be keyed by 'symbol'"):
        SymbolKeyedOperator(Midprice)


def test_an_old_name_with_its_new_name_is_refused():
    t = TABLES[(1, 1.0)]
    with pytest.raises(TypeError, match="'fast' and its new name 'fast_period'"):
        macd(t, fast=3, fast_period=5)
    with pytest.raises(TypeError, match="'k' and its new name 'lag'"):
        Lag("price", k=1, lag=2)


def test_a_checkpoint_under_the_old_names_restores():
    """State saved by a kernel configured under the old names loads into the renamed one."""
    t = TABLES[(2, 1.0)]
    first = MACD(fast_period=4, slow_period=9, signal_period=3)
    first(t.slice(0, 100))
    saved = first.state_dict()
    saved["config"] = {"column": None, "fast": 4, "slow": 9, "signal": 3}
    restored = MACD(fast_period=4, slow_period=9, signal_period=3)
    restored.load_state_dict(saved)
    whole = MACD(fast_period=4, slow_period=9, signal_period=3)(t)
    assert restored(t.slice(100)).column("macd").equals(whole.column("macd").slice(100))


def test_a_stream_scope_saved_under_the_old_names_restores():
    """A Stream operator's scope saved before the rule (its calls keyed by the old argument
    names and defaults) continues the same computation, not a fresh one."""
    from sabot.fintech._scope import StateScope

    t = TABLES[(2, 1.0)]
    first, second = t.slice(0, 150), t.slice(150)

    def step(batch):
        return atr(stochastic_osc(macd(batch, fast=4, slow=9, signal=3), k_period=5), period=6)

    outputs = ("macd", "stoch_d", "atr")
    scope = StateScope()
    with scope.active():
        step(first)
    saved = scope.state_dict()
    old_names = {"fast_period": "fast", "slow_period": "slow", "signal_period": "signal",
                 "k_window": "k_period", "d_window": "d_period"}
    for name, kernel_state in saved["kernels"].items():     # as the scope wrote them then
        assert "close_column', None" in name or "MACD" in name
        for new, old in old_names.items():
            name = name.replace(f"'{new}'", f"'{old}'")
        name = name.replace("('close_column', None)", "('close_column', 'price')")
        config = {old_names.get(k, k): ("price" if k == "close_column" and v is None else v)
                  for k, v in kernel_state["config"].items()}
        saved.setdefault("old", {})[name] = {**kernel_state, "config": config}
    restored = StateScope()
    restored.load_state_dict({"version": saved["version"], "kernels": saved["old"]})
    with restored.active():
        got = step(second)
    whole = step(t)
    for name in outputs:
        assert got.column(name).equals(whole.column(name).slice(150)), name


# -- kernels read the project's own bars -----------------------------------------------------
def _bars() -> pa.Table:
    """OHLCV bars of three symbols from Stream.tumbling over a few thousand trades."""
    rng = np.random.default_rng(11)
    n = 6000
    symbols = np.array(["BTC-USD", "ETH-USD", "SOL-USD"])[rng.integers(0, 3, n)]
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    trades = pa.table({
        "timestamp": pa.array(1_700_000_000_000_000_000 + np.arange(n) * 50_000_000,
                              pa.timestamp("ns", tz="UTC")),
        "symbol": pa.array(symbols),
        "price": price,
        "volume": rng.exponential(1.0, n),
    })
    return Stream.from_table(trades, batch_size=500).key_by("symbol").tumbling("1s").collect()


BARS = _bars()


def test_bars_from_tumbling_need_no_renames():
    bars = BARS
    assert {"open", "high", "low", "close", "volume"} <= set(bars.column_names)
    assert "price" not in bars.column_names
    one = bars.filter(pa.compute.equal(bars["symbol"], "ETH-USD"))
    o, h, l, c, v = (to_numpy(one[n]) for n in ("open", "high", "low", "close", "volume"))
    assert_matches(atr(one, period=7)["atr"], talib.ATR(h, l, c, 7), name="atr on bars")
    fk, fd = talib.STOCHF(h, l, c, 9, 3, 0)
    out = stochastic_osc(one, k_window=9, d_window=3)
    assert_matches(out["stoch_k"], fk, rtol=1e-9, atol=1e-9, name="stoch_k on bars")
    assert_matches(obv(one)["obv"], talib.OBV(c, v), rtol=1e-12, name="obv on bars")
    assert_matches(ema(one, period=5)["ema"], talib.EMA(c, 5), name="ema on bars")
    assert_matches(rsi(one, period=5)["rsi"], talib.RSI(c, 5), rtol=1e-9, atol=1e-9,
                   name="rsi on bars")
    don = donchian_channel(one, window=6)
    assert_matches(don["donchian_high"], talib.MAX(h, 6), name="donchian high on bars")
    assert_matches(don["donchian_low"], talib.MIN(l, 6), name="donchian low on bars")
    assert_matches(vwap(one)["vwap"], np.cumsum(c * v) / np.cumsum(v), name="vwap on bars")
    assert_matches(log_returns(one)["log_return"], np.r_[np.nan, np.log(c[1:] / c[:-1])],
                   rtol=1e-12, name="log returns on bars")
    signs, last = [None], None                   # a zero tick repeats the last sign
    for step in np.diff(c):
        last = 1 if step > 0 else -1 if step < 0 else last
        signs.append(last)
    assert tick_rule(one)["trade_sign"].to_pylist() == signs
    # the range estimators read open/high/low/close by default
    for fn, col in ((garman_klass_vol, "garman_klass_vol"), (parkinson_vol, "parkinson_vol"),
                    (corwin_schultz_spread, "corwin_schultz_spread")):
        assert fn(one)[col].null_count < one.num_rows, col
    # per symbol, on all the bars at once
    keyed = atr(bars, period=7, by="symbol")
    rows = np.flatnonzero(to_numpy(pa.compute.equal(bars["symbol"], "ETH-USD")))
    assert to_numpy(keyed["atr"].take(rows)).tolist() == pytest.approx(
        talib.ATR(h, l, c, 7).tolist(), nan_ok=True)


def test_price_is_preferred_to_close_when_both_are_present():
    t = pa.table({"price": [1.0, 2.0, 4.0], "close": [10.0, 20.0, 40.0],
                  "high": [1.0, 2.0, 4.0], "low": [1.0, 2.0, 4.0]})
    assert ema(t, alpha=1.0)["ema"].to_pylist() == [1.0, 2.0, 4.0]
    assert atr(t, period=1)["atr"].to_pylist()[1:] == [1.0, 2.0]


def test_a_batch_without_price_or_close_names_the_argument():
    t = pa.table({"high": [1.0], "low": [1.0], "mid": [1.0]})
    with pytest.raises(KeyError, match="close_column: no 'price' or 'close'.*pass close_column="):
        atr(t)
    with pytest.raises(KeyError, match="price_column: no 'price' or 'close'.*pass price_column="):
        obv(pa.table({"mid": [1.0], "volume": [1.0]}))
    with pytest.raises(ValueError, match="several numeric columns.*pass column="):
        ema(t)


def test_returns_inputs_read_the_output_of_log_returns():
    """A returns input without a name reads ``returns``, else ``log_return`` (what
    ``log_returns`` appends): the cross-asset estimators chain without renames."""
    from sabot.fintech import hayashi_yoshida_cov, realized_var, xcorr_leadlag

    a, b = (log_returns(TABLES[(draw, 1.0)].select(["timestamp", "price"])) for draw in (1, 2))
    named = [t.rename_columns(["timestamp", "price", "returns"]) for t in (a, b)]
    assert hayashi_yoshida_cov(a, b)["hy_cov"].equals(hayashi_yoshida_cov(*named)["hy_cov"])
    assert xcorr_leadlag(a, b, max_lag=3) == xcorr_leadlag(*named, max_lag=3)
    assert realized_var(a, window=5)["realized_var"].null_count < a.num_rows
    with pytest.raises(KeyError, match="batch_a returns_column: no 'returns' or 'log_return'"):
        hayashi_yoshida_cov(TABLES[(1, 1.0)], b)
