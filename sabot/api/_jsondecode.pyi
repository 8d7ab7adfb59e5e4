from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

#: record check bits: finite, positive, nonneg, noctrl, window
CHECKS: Dict[str, int]

def supports(schema: pa.Schema) -> bool: ...

class FlatJsonDecoder:
    def __init__(self, schema: pa.Schema,
                 output_types: Optional[Sequence[pa.DataType]] = None,
                 checks: Optional[Sequence[int]] = None,
                 explain: Optional[Callable[[int, Any, int], str]] = None,
                 max_age_ns: Optional[int] = None,
                 max_ahead_ns: Optional[int] = None) -> None: ...
    def decode(self, values: List[Optional[bytes]], ref_ns: Optional[np.ndarray] = None
               ) -> Tuple[List[pa.Array], List[Tuple[int, str]]]: ...

#: batches of at least this many rows are formatted without the GIL
NOGIL_ROWS: int

def encodable(pa_type: pa.DataType) -> bool: ...

def encode_arrow(columns: List[Tuple[str, Any]], n: int, key_column: int = -1
                 ) -> Tuple[List[bytes], Optional[List[Optional[bytes]]]]: ...

def message_fields(msgs: List[Any], unit_ns: int
                   ) -> Tuple[List[Optional[bytes]], np.ndarray, Dict[Tuple[str, int], int]]: ...
