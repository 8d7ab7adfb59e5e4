from typing import List, Optional, Sequence, Tuple

import pyarrow as pa

def supports(schema: pa.Schema) -> bool: ...

class FlatJsonDecoder:
    def __init__(self, schema: pa.Schema,
                 output_types: Optional[Sequence[pa.DataType]] = None) -> None: ...
    def decode(self, values: List[Optional[bytes]]) -> Tuple[List[pa.Array], List[Tuple[int, str]]]: ...
