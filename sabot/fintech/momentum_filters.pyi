from typing import Optional, TypeVar

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)

class EMA(Kernel):
    def __init__(self, column: Optional[str] = None, alpha: Optional[float] = None, *,
                 period: Optional[int] = None, by: Optional[str] = None) -> None: ...

class SMA(Kernel):
    def __init__(self, column: Optional[str] = None, window: int = 20, *,
                 by: Optional[str] = None) -> None: ...

# Old names still accepted (sabot.fintech._naming.RENAMED) are keyword-only below.

class MACD(Kernel):
    def __init__(self, column: Optional[str] = None, fast_period: int = 12,
                 slow_period: int = 26, signal_period: int = 9, *, by: Optional[str] = None,
                 fast: int = ..., slow: int = ..., signal: int = ...) -> None: ...

class RSI(Kernel):
    def __init__(self, column: Optional[str] = None, period: int = 14, *,
                 by: Optional[str] = None) -> None: ...

class BollingerBands(Kernel):
    def __init__(self, column: Optional[str] = None, window: int = 20, k: float = 2.0, *,
                 by: Optional[str] = None) -> None: ...

class Kalman1D(Kernel):
    def __init__(self, column: Optional[str] = None, q: float = 0.001, r: float = 0.1, *,
                 by: Optional[str] = None) -> None: ...

class DonchianChannel(Kernel):
    def __init__(self, column: Optional[str] = None, window: int = 20, *,
                 high_column: Optional[str] = None, low_column: Optional[str] = None,
                 by: Optional[str] = None) -> None: ...

class StochasticOsc(Kernel):
    def __init__(self, k_window: int = 14, d_window: int = 3, *, high_column: str = "high",
                 low_column: str = "low", close_column: Optional[str] = None,
                 by: Optional[str] = None, k_period: int = ..., d_period: int = ...) -> None: ...

class ATR(Kernel):
    def __init__(self, period: int = 14, *, high_column: str = "high", low_column: str = "low",
                 close_column: Optional[str] = None, by: Optional[str] = None) -> None: ...

class OBV(Kernel):
    def __init__(self, *, price_column: Optional[str] = None, volume_column: str = "volume",
                 by: Optional[str] = None) -> None: ...

def ema(batch: B, column: Optional[str] = None, alpha: Optional[float] = None, *,
        period: Optional[int] = None, by: Optional[str] = None) -> B: ...
def sma(batch: B, column: Optional[str] = None, window: int = 20, *,
        by: Optional[str] = None) -> B: ...
def macd(batch: B, column: Optional[str] = None, fast_period: int = 12, slow_period: int = 26,
         signal_period: int = 9, *, by: Optional[str] = None, fast: int = ..., slow: int = ...,
         signal: int = ...) -> B: ...
def rsi(batch: B, column: Optional[str] = None, period: int = 14, *,
        by: Optional[str] = None) -> B: ...
def bollinger_bands(batch: B, column: Optional[str] = None, window: int = 20, k: float = 2.0, *,
                    by: Optional[str] = None) -> B: ...
def kalman_1d(batch: B, column: Optional[str] = None, q: float = 0.001, r: float = 0.1, *,
              by: Optional[str] = None) -> B: ...
def donchian_channel(batch: B, column: Optional[str] = None, window: int = 20, *,
                     high_column: Optional[str] = None, low_column: Optional[str] = None,
                     by: Optional[str] = None) -> B: ...
def stochastic_osc(batch: B, k_window: int = 14, d_window: int = 3, *, high_column: str = "high",
                   low_column: str = "low", close_column: Optional[str] = None,
                   by: Optional[str] = None, k_period: int = ..., d_period: int = ...) -> B: ...
def atr(batch: B, period: int = 14, *, high_column: str = "high", low_column: str = "low",
        close_column: Optional[str] = None, by: Optional[str] = None) -> B: ...
def obv(batch: B, *, price_column: Optional[str] = None, volume_column: str = "volume",
        by: Optional[str] = None) -> B: ...
