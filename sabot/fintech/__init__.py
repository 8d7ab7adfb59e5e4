"""sabot.fintech: streaming financial kernels over Arrow batches (spec: kernels.md)."""
from ._scope import StateScope, current_scope
from .online_stats import (
    EWCov, EWMA, LogReturns, RollingZScore, WelfordMeanVar,
    ewcov, ewma, log_returns, rolling_zscore, welford_mean_var,
)
from .features_safety import (
    Autocorr, CircuitBreaker, Diff, FatFingerGuard, Lag, OutlierFlagMAD, PriceBandGuard,
    RollingKurt, RollingMax, RollingMin, RollingSkew, RollingStd, SignedVolume,
    StaleQuoteDetector, ThrottleCheck, TickRule,
    autocorr, circuit_breaker, diff, fat_finger_guard, lag, outlier_flag_mad, price_band_guard,
    rolling_kurt, rolling_max, rolling_min, rolling_skew, rolling_std, signed_volume,
    stale_quote_detector, throttle_check, tick_rule,
)

__all__ = [
    "StateScope", "current_scope",
    "EWCov", "EWMA", "LogReturns", "RollingZScore", "WelfordMeanVar",
    "ewcov", "ewma", "log_returns", "rolling_zscore", "welford_mean_var",
    "Autocorr", "CircuitBreaker", "Diff", "FatFingerGuard", "Lag", "OutlierFlagMAD",
    "PriceBandGuard", "RollingKurt", "RollingMax", "RollingMin", "RollingSkew", "RollingStd",
    "SignedVolume", "StaleQuoteDetector", "ThrottleCheck", "TickRule",
    "autocorr", "circuit_breaker", "diff", "fat_finger_guard", "lag", "outlier_flag_mad",
    "price_band_guard", "rolling_kurt", "rolling_max", "rolling_min", "rolling_skew",
    "rolling_std", "signed_volume", "stale_quote_detector", "throttle_check", "tick_rule",
]
