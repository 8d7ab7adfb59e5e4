"""sabot.fintech: streaming financial kernels over Arrow batches.

Every kernel takes a RecordBatch or Table and returns the same type with its output columns
appended. Stateful kernels have a class form that carries state across batches (and per key
with ``by=``); inside a Stream operator the function form does the same: every function form is
:func:`~sabot.fintech._scope.call_kernel` of its class, which keeps a stateful kernel in the
operator's checkpointed scope and simply runs a stateless one (see ``_scope``).

Kernels also take polars and pandas DataFrames, numpy arrays, Series and Arrow-capsule objects
and give back the same kind (:mod:`sabot.interop`).  Float outputs with no value are nulls, or
NaN within ``missing("nan")`` / after ``set_missing("nan")``.

Integer time columns are nanoseconds since the epoch unless an ``on_unit`` says otherwise (the
ASOF joins: milliseconds by default); see :mod:`sabot.timeunits`.
"""
from ._scope import StateScope, current_missing, current_scope, missing, set_missing
from .online_stats import (
    EWCov, EWMA, LogReturns, RollingZScore, WelfordMeanVar,
    ewcov, ewma, log_returns, rolling_zscore, welford_mean_var,
)
from .microstructure import (
    OFI, VPIN, DepthImbalance,
    depth_imbalance, effective_spread, l1_imbalance, microprice, midprice, multi_level_ofi, ofi,
    quoted_spread, vpin,
)
from .momentum_filters import (
    ATR, EMA, MACD, OBV, RSI, SMA, BollingerBands, DonchianChannel, Kalman1D, StochasticOsc,
    atr, bollinger_bands, donchian_channel, ema, kalman_1d, macd, obv, rsi, sma, stochastic_osc,
)
from . import symbols as _symbols
from .asof import AsofJoinKernel, StreamingAsofJoinKernel, asof_join_streaming
from . import asof as _asof
from .volatility import (
    BipowerVar, GarmanKlassVol, MedRV, ParkinsonVol, RealizedVar, RiskMetricsVol,
    bipower_var, garman_klass_vol, medrv, parkinson_vol, realized_var, riskmetrics_vol,
)
from .liquidity import (
    AmihudIlliquidity, CorwinSchultzSpread, KyleLambda, RollSpread,
    amihud_illiquidity, corwin_schultz_spread, kyle_lambda, roll_spread,
)
from .execution_risk import (
    CUSUM, VWAP, CornishFisherVaR, HistoricalCVaR, HistoricalVaR,
    arrival_price_impact, cornish_fisher_var, cusum, historical_cvar, historical_var,
    implementation_shortfall, optimal_ac_schedule, vwap,
)
from .fx_crypto import (
    BasisAnnualized, CarrySignal, CashAndCarryEdge, CIPBasis, ForwardPoints, FundingAPR,
    FundingCost, OpenInterestDelta, PerpFairPrice, TriangularArbitrage,
    basis_annualized, carry_signal, cash_and_carry_edge, cip_basis, forward_points, funding_apr,
    funding_cost, open_interest_delta, perp_fair_price, triangular_arbitrage,
)
from .cross_asset import KalmanHedgeRatio, PairsSpread
from . import cross_asset as _cross_asset
from .cross_exchange import (
    ArbitrageOpportunities, CrossExchangeSpread, arbitrage_opportunities, cross_exchange_spread,
)
from .operators import (
    StatelessKernelOperator, SymbolKeyedOperator, create_ewma_operator,
    create_log_returns_operator, create_midprice_operator, create_ofi_operator,
    create_vwap_operator,
)
from .features_safety import (
    Autocorr, CircuitBreaker, Diff, FatFingerGuard, Lag, OutlierFlagMAD, PriceBandGuard,
    RollingKurt, RollingMax, RollingMin, RollingSkew, RollingStd, SignedVolume,
    StaleQuoteDetector, ThrottleCheck, TickRule,
    autocorr, circuit_breaker, diff, fat_finger_guard, lag, outlier_flag_mad, price_band_guard,
    rolling_kurt, rolling_max, rolling_min, rolling_skew, rolling_std, signed_volume,
    stale_quote_detector, throttle_check, tick_rule,
)


from ..interop import tables_in_kind_out as _tables_in_kind_out

# The functions taking whole tables that are not on the kernel base (which converts for every
# other kernel) take any table-like data too (polars, pandas, Arrow capsule objects), the
# result as the kind of the first table (see :mod:`sabot.interop`): the ASOF joins, the
# two-table kernels and symbol normalisation.
asof_join = _tables_in_kind_out(_asof.asof_join)
asof_join_table = _tables_in_kind_out(_asof.asof_join_table, names=("left_batch", "right_table"))
_PAIR = ("batch_a", "batch_b")
pairs_spread = _tables_in_kind_out(_cross_asset.pairs_spread, _PAIR)
kalman_hedge_ratio = _tables_in_kind_out(_cross_asset.kalman_hedge_ratio, _PAIR)
hayashi_yoshida_cov = _tables_in_kind_out(_cross_asset.hayashi_yoshida_cov, _PAIR)
hayashi_yoshida_corr = _tables_in_kind_out(_cross_asset.hayashi_yoshida_corr, _PAIR)
xcorr_leadlag = _tables_in_kind_out(_cross_asset.xcorr_leadlag, _PAIR)
normalize_symbols = _tables_in_kind_out(_symbols.normalize_symbols, ("batch",))

__all__ = [
    "StateScope", "current_scope",
    "current_missing", "missing", "set_missing",
    # online_stats
    "EWCov", "EWMA", "LogReturns", "RollingZScore", "WelfordMeanVar",
    "ewcov", "ewma", "log_returns", "rolling_zscore", "welford_mean_var",
    # microstructure
    "OFI", "VPIN", "DepthImbalance",
    "depth_imbalance", "effective_spread", "l1_imbalance", "microprice", "midprice",
    "multi_level_ofi", "ofi", "quoted_spread", "vpin",
    # momentum_filters
    "ATR", "EMA", "MACD", "OBV", "RSI", "SMA", "BollingerBands", "DonchianChannel", "Kalman1D",
    "StochasticOsc",
    "atr", "bollinger_bands", "donchian_channel", "ema", "kalman_1d", "macd", "obv", "rsi", "sma",
    "stochastic_osc",
    # cross-exchange
    "normalize_symbols",
    # asof
    "asof_join", "asof_join_table", "AsofJoinKernel", "StreamingAsofJoinKernel",
    "asof_join_streaming",
    "BipowerVar", "GarmanKlassVol", "MedRV", "ParkinsonVol", "RealizedVar", "RiskMetricsVol",
    "bipower_var", "garman_klass_vol", "medrv", "parkinson_vol", "realized_var",
    "riskmetrics_vol",
    "AmihudIlliquidity", "CorwinSchultzSpread", "KyleLambda", "RollSpread",
    "amihud_illiquidity", "corwin_schultz_spread", "kyle_lambda", "roll_spread",
    "CUSUM", "VWAP", "CornishFisherVaR", "HistoricalCVaR", "HistoricalVaR",
    "arrival_price_impact", "cornish_fisher_var", "cusum", "historical_cvar", "historical_var",
    "implementation_shortfall", "optimal_ac_schedule", "vwap",
    # fx_crypto, cross_asset, cross_exchange, operators
    "BasisAnnualized", "CarrySignal", "CashAndCarryEdge", "CIPBasis", "ForwardPoints",
    "FundingAPR", "FundingCost", "OpenInterestDelta", "PerpFairPrice", "TriangularArbitrage",
    "basis_annualized", "carry_signal", "cash_and_carry_edge", "cip_basis", "forward_points",
    "funding_apr", "funding_cost", "open_interest_delta", "perp_fair_price",
    "triangular_arbitrage",
    "KalmanHedgeRatio", "PairsSpread",
    "hayashi_yoshida_corr", "hayashi_yoshida_cov", "kalman_hedge_ratio", "pairs_spread",
    "xcorr_leadlag",
    "ArbitrageOpportunities", "CrossExchangeSpread", "arbitrage_opportunities",
    "cross_exchange_spread",
    "StatelessKernelOperator", "SymbolKeyedOperator", "create_ewma_operator",
    "create_log_returns_operator", "create_midprice_operator", "create_ofi_operator",
    "create_vwap_operator",
    # features_safety
    "Autocorr", "CircuitBreaker", "Diff", "FatFingerGuard", "Lag", "OutlierFlagMAD",
    "PriceBandGuard", "RollingKurt", "RollingMax", "RollingMin", "RollingSkew", "RollingStd",
    "SignedVolume", "StaleQuoteDetector", "ThrottleCheck", "TickRule",
    "autocorr", "circuit_breaker", "diff", "fat_finger_guard", "lag", "outlier_flag_mad",
    "price_band_guard", "rolling_kurt", "rolling_max", "rolling_min", "rolling_skew",
    "rolling_std", "signed_volume", "stale_quote_detector", "throttle_check", "tick_rule",
]
