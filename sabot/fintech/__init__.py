"""sabot.fintech: streaming financial kernels over Arrow batches (spec: kernels.md)."""
from ._scope import StateScope, current_scope
from .online_stats import (
    EWCov, EWMA, LogReturns, RollingZScore, WelfordMeanVar,
    ewcov, ewma, log_returns, rolling_zscore, welford_mean_var,
)

__all__ = [
    "StateScope", "current_scope",
    "EWCov", "EWMA", "LogReturns", "RollingZScore", "WelfordMeanVar",
    "ewcov", "ewma", "log_returns", "rolling_zscore", "welford_mean_var",
]
