from typing import Optional, Sequence, TypeVar

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)

class Midprice(Kernel):
    def __init__(self, *, bid_column: str = "bid", ask_column: str = "ask") -> None: ...

class Microprice(Kernel):
    def __init__(self, *, bid_column: str = "bid", ask_column: str = "ask",
                 bid_size_column: str = "bid_size", ask_size_column: str = "ask_size") -> None: ...

class QuotedSpread(Kernel):
    def __init__(self, *, bid_column: str = "bid", ask_column: str = "ask") -> None: ...

class EffectiveSpread(Kernel):
    def __init__(self, *, price_column: str = "exec_price", mid_column: str = "midprice") -> None: ...

class L1Imbalance(Kernel):
    def __init__(self, *, bid_size_column: str = "bid_size",
                 ask_size_column: str = "ask_size") -> None: ...

class DepthImbalance(Kernel):
    n_levels: int
    def __init__(self, n_levels: int = 5, *, bid_size_columns: Optional[Sequence[str]] = None,
                 ask_size_columns: Optional[Sequence[str]] = None) -> None: ...

class OFI(Kernel):
    def __init__(self, *, bid_column: str = "bid", ask_column: str = "ask",
                 bid_size_column: str = "bid_size", ask_size_column: str = "ask_size",
                 by: Optional[str] = None) -> None: ...

class VPIN(Kernel):
    def __init__(self, bucket_vol: float = 100000.0, n_buckets: int = 50, *,
                 volume_column: str = "volume", side_column: str = "side",
                 by: Optional[str] = None) -> None: ...

def midprice(batch: B, *, bid_column: str = "bid", ask_column: str = "ask") -> B: ...
def microprice(batch: B, *, bid_column: str = "bid", ask_column: str = "ask",
               bid_size_column: str = "bid_size", ask_size_column: str = "ask_size") -> B: ...
def quoted_spread(batch: B, *, bid_column: str = "bid", ask_column: str = "ask") -> B: ...
def effective_spread(batch: B, *, price_column: str = "exec_price",
                     mid_column: str = "midprice") -> B: ...
def l1_imbalance(batch: B, *, bid_size_column: str = "bid_size",
                 ask_size_column: str = "ask_size") -> B: ...
def depth_imbalance(batch: B, n_levels: int = 5, *,
                    bid_size_columns: Optional[Sequence[str]] = None,
                    ask_size_columns: Optional[Sequence[str]] = None) -> B: ...
def ofi(batch: B, *, bid_column: str = "bid", ask_column: str = "ask",
        bid_size_column: str = "bid_size", ask_size_column: str = "ask_size",
        by: Optional[str] = None) -> B: ...
def multi_level_ofi(batch: B, n_levels: int = 5, *, by: Optional[str] = None) -> B: ...
def vpin(batch: B, bucket_vol: float = 100000.0, n_buckets: int = 50, *,
         volume_column: str = "volume", side_column: str = "side",
         by: Optional[str] = None) -> B: ...
