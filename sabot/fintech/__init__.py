"""sabot.fintech: streaming financial kernels over Arrow batches (spec: kernels.md)."""
from ._scope import StateScope, current_scope
from .online_stats import (
    EWCov, EWMA, LogReturns, RollingZScore, WelfordMeanVar,
    ewcov, ewma, log_returns, rolling_zscore, welford_mean_var,
)
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

__all__ = [
    "StateScope", "current_scope",
    "EWCov", "EWMA", "LogReturns", "RollingZScore", "WelfordMeanVar",
    "ewcov", "ewma", "log_returns", "rolling_zscore", "welford_mean_var",
    "BipowerVar", "GarmanKlassVol", "MedRV", "ParkinsonVol", "RealizedVar", "RiskMetricsVol",
    "bipower_var", "garman_klass_vol", "medrv", "parkinson_vol", "realized_var",
    "riskmetrics_vol",
    "AmihudIlliquidity", "CorwinSchultzSpread", "KyleLambda", "RollSpread",
    "amihud_illiquidity", "corwin_schultz_spread", "kyle_lambda", "roll_spread",
    "CUSUM", "VWAP", "CornishFisherVaR", "HistoricalCVaR", "HistoricalVaR",
    "arrival_price_impact", "cornish_fisher_var", "cusum", "historical_cvar", "historical_var",
    "implementation_shortfall", "optimal_ac_schedule", "vwap",
]
