from typing import Dict, Optional, TypedDict, TypeVar, Union

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)
Batch = Union[pa.RecordBatch, pa.Table]

class LeadLag(TypedDict):
    best_lag: Optional[int]
    best_corr: Optional[float]
    corrs: Dict[int, Optional[float]]

def hayashi_yoshida_cov(batch_a: B, batch_b: Batch, window_ms: int = 60000, *,
                        returns_column: Optional[str] = None,
                        timestamp_column: str = "timestamp") -> B: ...
def hayashi_yoshida_corr(batch_a: B, batch_b: Batch, window_ms: int = 60000, *,
                         returns_column: Optional[str] = None,
                         timestamp_column: str = "timestamp") -> B: ...
def xcorr_leadlag(batch_a: Batch, batch_b: Batch, max_lag: int = 10, alpha: float = 0.94, *,
                  returns_column: Optional[str] = None) -> LeadLag: ...

class PairsSpread(Kernel):
    def __init__(self, hedge_ratio: float = 1.0, *, a_column: str = "price",
                 b_column: str = "price_b") -> None: ...

class KalmanHedgeRatio(Kernel):
    def __init__(self, q: float = 0.001, r: float = 0.1, *, a_column: str = "price",
                 b_column: str = "price", by: Optional[str] = None) -> None: ...
    def __call__(self, batch_a: B, batch_b: Optional[Batch] = None) -> B: ...  # type: ignore[override]

def pairs_spread(batch_a: B, batch_b: Batch, hedge_ratio: float = 1.0, *,
                 price_column: str = "price") -> B: ...
def kalman_hedge_ratio(batch_a: B, batch_b: Batch, q: float = 0.001, r: float = 0.1, *,
                       price_column: str = "price", by: Optional[str] = None) -> B: ...
