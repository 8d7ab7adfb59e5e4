from typing import Dict, Optional, Sequence, Tuple, TypeVar, Union

import pyarrow as pa

from ._kernel import Kernel

B = TypeVar("B", pa.RecordBatch, pa.Table)

PriceColumns = Union[Sequence[str], Dict[str, str]]

class CrossExchangeSpread(Kernel):
    def __init__(self, a_column: str, b_column: str) -> None: ...

class ArbitrageOpportunities(Kernel):
    venues: Tuple[str, ...]
    def __init__(self, price_columns: Optional[PriceColumns] = None,
                 fees_bps: Union[float, Dict[str, float]] = 0.0,
                 min_edge_bps: float = 0.0, *, ask_columns: Optional[PriceColumns] = None,
                 bid_columns: Optional[PriceColumns] = None) -> None: ...

def venue_name(column: str) -> str: ...
def cross_exchange_spread(batch: B, a_column: str, b_column: str) -> B: ...
def arbitrage_opportunities(batch: B, price_columns: Optional[PriceColumns] = None,
                            fees_bps: Union[float, Dict[str, float]] = 0.0,
                            min_edge_bps: float = 0.0, *,
                            ask_columns: Optional[PriceColumns] = None,
                            bid_columns: Optional[PriceColumns] = None) -> B: ...
