from typing import Optional, TypeVar

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)

class LogReturns(Kernel):
    def __init__(self, price_column: Optional[str] = None, *,
                 by: Optional[str] = None) -> None: ...

class WelfordMeanVar(Kernel):
    def __init__(self, column: Optional[str] = None, *, by: Optional[str] = None) -> None: ...

class EWMA(Kernel):
    def __init__(self, column: Optional[str] = None, alpha: float = 0.94, *,
                 by: Optional[str] = None) -> None: ...

class EWCov(Kernel):
    def __init__(self, x_column: str = "x", y_column: str = "y", alpha: float = 0.94, *,
                 by: Optional[str] = None) -> None: ...

class RollingZScore(Kernel):
    def __init__(self, column: Optional[str] = None, window: int = 100, *,
                 by: Optional[str] = None) -> None: ...

def log_returns(batch: B, price_column: Optional[str] = None, *,
                by: Optional[str] = None) -> B: ...
def welford_mean_var(batch: B, column: Optional[str] = None, *, by: Optional[str] = None) -> B: ...
def ewma(batch: B, column: Optional[str] = None, alpha: float = 0.94, *,
         by: Optional[str] = None) -> B: ...
def ewcov(batch: B, x_column: str = "x", y_column: str = "y", alpha: float = 0.94, *,
          by: Optional[str] = None) -> B: ...
def rolling_zscore(batch: B, column: Optional[str] = None, window: int = 100, *,
                   by: Optional[str] = None) -> B: ...
