"""Type stubs for sabot.fintech.liquidity (Cython)."""
from typing import Optional, TypeVar

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)

class KyleLambda(Kernel):
    def __init__(self, returns_column: str = "log_return",
                 volume_column: str = "signed_volume", window: int = 20, *,
                 by: Optional[str] = None) -> None: ...
    def __call__(self, batch: B) -> B: ...

class AmihudIlliquidity(Kernel):
    def __init__(self, returns_column: str = "log_return", volume_column: str = "volume",
                 window: int = 20, *, by: Optional[str] = None) -> None: ...
    def __call__(self, batch: B) -> B: ...

class RollSpread(Kernel):
    def __init__(self, returns_column: str = "log_return", window: int = 20, *,
                 by: Optional[str] = None) -> None: ...
    def __call__(self, batch: B) -> B: ...

class CorwinSchultzSpread(Kernel):
    def __init__(self, high_column: str = "high", low_column: str = "low", window: int = 2, *,
                 by: Optional[str] = None) -> None: ...
    def __call__(self, batch: B) -> B: ...

def kyle_lambda(batch: B, returns_column: str = "log_return",
                volume_column: str = "signed_volume", window: int = 20, *,
                by: Optional[str] = None) -> B: ...
def amihud_illiquidity(batch: B, returns_column: str = "log_return",
                       volume_column: str = "volume", window: int = 20, *,
                       by: Optional[str] = None) -> B: ...
def roll_spread(batch: B, returns_column: str = "log_return", window: int = 20, *,
                by: Optional[str] = None) -> B: ...
def corwin_schultz_spread(batch: B, high_column: str = "high", low_column: str = "low",
                          window: int = 2, *, by: Optional[str] = None) -> B: ...
