from typing import Optional, Tuple, TypeVar

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)

ARB_ROUTES: Tuple[str, str, str]

class TriangularArbitrage(Kernel):
    def __init__(self, fees_bps: Optional[float] = None, *, ab_column: str = "spot_ab",
                 bc_column: str = "spot_bc", ac_column: str = "spot_ac",
                 fees_column: Optional[str] = None) -> None: ...

class ForwardPoints(Kernel):
    def __init__(self, T_years: float = 1.0, *, spot_column: str = "spot",
                 r_dom_column: str = "r_dom", r_for_column: str = "r_for") -> None: ...

class CIPBasis(Kernel):
    def __init__(self, T_years: float = 1.0, *, spot_column: str = "spot",
                 forward_column: str = "forward", r_dom_column: str = "r_dom",
                 r_for_column: str = "r_for") -> None: ...

class CarrySignal(Kernel):
    def __init__(self, risk_adj_factor: float = 1.0, *, r_dom_column: str = "r_dom",
                 r_for_column: str = "r_for",
                 volatility_column: Optional[str] = None) -> None: ...

class FundingAPR(Kernel):
    def __init__(self, funding_freq_hours: float = 8.0, *,
                 funding_rate_column: str = "funding_rate") -> None: ...

class FundingCost(Kernel):
    def __init__(self, *, position_column: str = "position", price_column: str = "price",
                 funding_rate_column: str = "funding_rate") -> None: ...

class BasisAnnualized(Kernel):
    def __init__(self, T_days: float = 90.0, *, perp_column: str = "perp_price",
                 spot_column: str = "spot_price") -> None: ...

class OpenInterestDelta(Kernel):
    def __init__(self, open_interest_column: str = "open_interest", *,
                 by: Optional[str] = None) -> None: ...

class PerpFairPrice(Kernel):
    def __init__(self, funding_freq_hours: float = 8.0, *, spot_column: str = "spot_price",
                 funding_rate_column: str = "funding_rate") -> None: ...

class CashAndCarryEdge(Kernel):
    def __init__(self, fees_bps: float = 0.0, *, T_days: float = 90.0,
                 funding_freq_hours: float = 8.0, spot_column: str = "spot_price",
                 perp_column: str = "perp_price",
                 funding_rate_column: str = "funding_rate") -> None: ...

def triangular_arbitrage(batch: B, fees_bps: Optional[float] = None, *,
                         ab_column: str = "spot_ab", bc_column: str = "spot_bc",
                         ac_column: str = "spot_ac") -> B: ...
def forward_points(batch: B, T_years: float = 1.0, *, spot_column: str = "spot",
                   r_dom_column: str = "r_dom", r_for_column: str = "r_for") -> B: ...
def cip_basis(batch: B, T_years: float = 1.0, *, spot_column: str = "spot",
              forward_column: str = "forward", r_dom_column: str = "r_dom",
              r_for_column: str = "r_for") -> B: ...
def carry_signal(batch: B, risk_adj_factor: float = 1.0, *, r_dom_column: str = "r_dom",
                 r_for_column: str = "r_for", volatility_column: str = "volatility") -> B: ...
def funding_apr(batch: B, funding_freq_hours: float = 8.0, *,
                funding_rate_column: str = "funding_rate") -> B: ...
def funding_cost(batch: B, *, position_column: str = "position", price_column: str = "price",
                 funding_rate_column: str = "funding_rate") -> B: ...
def basis_annualized(batch: B, T_days: float = 90.0, *, perp_column: str = "perp_price",
                     spot_column: str = "spot_price") -> B: ...
def open_interest_delta(batch: B, open_interest_column: str = "open_interest", *,
                        by: Optional[str] = None) -> B: ...
def perp_fair_price(batch: B, funding_freq_hours: float = 8.0, *,
                    spot_column: str = "spot_price",
                    funding_rate_column: str = "funding_rate") -> B: ...
def cash_and_carry_edge(batch: B, fees_bps: float = 0.0, *, T_days: float = 90.0,
                        funding_freq_hours: float = 8.0, spot_column: str = "spot_price",
                        perp_column: str = "perp_price",
                        funding_rate_column: str = "funding_rate") -> B: ...
