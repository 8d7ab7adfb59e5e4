"""sabot.fintech: streaming financial kernels over Arrow batches (spec: kernels.md)."""
from ._scope import StateScope, current_scope
from .online_stats import (
    EWCov, EWMA, LogReturns, RollingZScore, WelfordMeanVar,
    ewcov, ewma, log_returns, rolling_zscore, welford_mean_var,
)
from .fx_crypto import (
    BasisAnnualized, CarrySignal, CashAndCarryEdge, CIPBasis, ForwardPoints, FundingAPR,
    FundingCost, OpenInterestDelta, PerpFairPrice, TriangularArbitrage,
    basis_annualized, carry_signal, cash_and_carry_edge, cip_basis, forward_points, funding_apr,
    funding_cost, open_interest_delta, perp_fair_price, triangular_arbitrage,
)
from .cross_asset import (
    KalmanHedgeRatio, PairsSpread,
    hayashi_yoshida_corr, hayashi_yoshida_cov, kalman_hedge_ratio, pairs_spread, xcorr_leadlag,
)
from .cross_exchange import (
    ArbitrageOpportunities, CrossExchangeSpread, arbitrage_opportunities, cross_exchange_spread,
)
from .operators import (
    StatelessKernelOperator, SymbolKeyedOperator, create_ewma_operator,
    create_log_returns_operator, create_midprice_operator, create_ofi_operator,
    create_vwap_operator,
)

__all__ = [
    "StateScope", "current_scope",
    "EWCov", "EWMA", "LogReturns", "RollingZScore", "WelfordMeanVar",
    "ewcov", "ewma", "log_returns", "rolling_zscore", "welford_mean_var",
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
]
