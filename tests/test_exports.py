"""sabot.fintech exports every name of the spec (kernels.md: 86 names and the §2 classes)."""
import inspect

import sabot.fintech as fintech

SPEC_FUNCTIONS = """
log_returns welford_mean_var ewma ewcov rolling_zscore
midprice microprice quoted_spread effective_spread l1_imbalance ofi vpin
realized_var bipower_var medrv riskmetrics_vol parkinson_vol garman_klass_vol
kyle_lambda amihud_illiquidity roll_spread corwin_schultz_spread
triangular_arbitrage forward_points cip_basis carry_signal funding_apr funding_cost basis_annualized
open_interest_delta perp_fair_price cash_and_carry_edge
vwap implementation_shortfall optimal_ac_schedule arrival_price_impact cusum historical_var
historical_cvar cornish_fisher_var
ema sma macd rsi bollinger_bands kalman_1d donchian_channel stochastic_osc atr obv
lag diff rolling_min rolling_max rolling_std rolling_skew rolling_kurt autocorr signed_volume
tick_rule stale_quote_detector price_band_guard fat_finger_guard circuit_breaker throttle_check
outlier_flag_mad
hayashi_yoshida_cov hayashi_yoshida_corr xcorr_leadlag pairs_spread kalman_hedge_ratio
normalize_symbols cross_exchange_spread arbitrage_opportunities
""".split()

SPEC_ASOF = "asof_join asof_join_table AsofJoinKernel StreamingAsofJoinKernel asof_join_streaming".split()

SPEC_OPERATORS = """
SymbolKeyedOperator StatelessKernelOperator create_ewma_operator create_ofi_operator
create_log_returns_operator create_midprice_operator create_vwap_operator
""".split()

SPEC_CLASSES = """
LogReturns WelfordMeanVar EWMA EWCov RollingZScore OFI VPIN RealizedVar BipowerVar MedRV
RiskMetricsVol ParkinsonVol GarmanKlassVol KyleLambda AmihudIlliquidity RollSpread
CorwinSchultzSpread OpenInterestDelta VWAP CUSUM HistoricalVaR HistoricalCVaR CornishFisherVaR
EMA SMA MACD RSI BollingerBands Kalman1D DonchianChannel StochasticOsc ATR OBV Lag Diff
RollingMin RollingMax RollingStd RollingSkew RollingKurt Autocorr TickRule StaleQuoteDetector
CircuitBreaker ThrottleCheck OutlierFlagMAD KalmanHedgeRatio
""".split()


def test_spec_counts():
    assert len(SPEC_FUNCTIONS) == 74
    assert len(SPEC_FUNCTIONS) + len(SPEC_ASOF) + len(SPEC_OPERATORS) == 86


def test_every_spec_name_is_exported_and_callable():
    missing = [n for n in SPEC_FUNCTIONS + SPEC_ASOF + SPEC_OPERATORS + SPEC_CLASSES
               if n not in fintech.__all__ or not callable(getattr(fintech, n, None))]
    assert missing == []


def test_stateful_classes_checkpoint():
    for name in SPEC_CLASSES:
        cls = getattr(fintech, name)
        for method in ("state_dict", "load_state_dict", "reset"):
            assert callable(getattr(cls, method, None)), f"{name}.{method}"


def test_all_lists_only_real_names():
    assert sorted(set(fintech.__all__)) == sorted(fintech.__all__)
    for name in fintech.__all__:
        assert hasattr(fintech, name), name
    assert {n for n in dir(fintech) if not n.startswith("_") and not inspect.ismodule(
        getattr(fintech, n))} >= set(fintech.__all__)
