"""Type stub for sabot.fintech.asof (ASOF joins over Arrow batches)."""
from __future__ import annotations

import datetime
from typing import (AbstractSet, Any, Callable, Iterable, Iterator, Literal, Optional, Tuple,
                    TypeVar, Union)

import numpy as np
import pyarrow as pa

BatchLike = Union[pa.RecordBatch, pa.Table]
B = TypeVar("B", pa.RecordBatch, pa.Table)
Direction = Literal["backward", "forward", "nearest"]
OnUnit = Literal["ns", "us", "ms", "s"]
Tolerance = Union[datetime.timedelta, np.timedelta64, int, None]
#: (left venue, right venue): names the output columns without reading rows
Exchanges = Optional[Tuple[Optional[str], Optional[str]]]

PREFIXED_META_KEY: bytes
KNOWN_EXCHANGES: AbstractSet[str]  # every registered venue (a live view)
#: left rows from which string keys are hashed in a second thread while the right is indexed
OVERLAP_MIN_ROWS: int
#: left rows from which the backward merge runs as two halves in two threads
PARALLEL_MIN_ROWS: int

def asof_join(
    left: B,
    right: BatchLike,
    on: str = "timestamp",
    by: Optional[str] = None,
    tolerance_ms: Optional[float] = 1000,
    direction: Direction = "backward",
    *,
    allow_exact_matches: bool = True,
    right_prefix: Optional[str] = None,
    suffix: Optional[str] = None,
    tolerance: Tolerance = None,
    on_unit: OnUnit = "ms",
    sort: bool = False,
    exchanges: Exchanges = None,
) -> B: ...

def asof_join_table(
    left_batch: B,
    right_table: pa.Table,
    on: str = "timestamp",
    by: Optional[str] = None,
    tolerance_ms: Optional[float] = 1000,
    direction: Direction = "backward",
    *,
    allow_exact_matches: bool = True,
    right_prefix: Optional[str] = None,
    suffix: Optional[str] = None,
    tolerance: Tolerance = None,
    on_unit: OnUnit = "ms",
    sort: bool = False,
    exchanges: Exchanges = None,
) -> B: ...

class AsofJoinKernel:
    on: str
    by: Optional[str]
    direction: Direction
    allow_exact_matches: bool
    right_prefix: Optional[str]
    suffix: Optional[str]
    tolerance_ms: Optional[float]
    tolerance: Tolerance
    on_unit: OnUnit
    sort: bool
    exchanges: Exchanges
    right: BatchLike
    def __init__(
        self,
        right: BatchLike,
        on: str = "timestamp",
        by: Optional[str] = None,
        tolerance_ms: Optional[float] = 1000,
        direction: Direction = "backward",
        *,
        allow_exact_matches: bool = True,
        right_prefix: Optional[str] = None,
        suffix: Optional[str] = None,
        tolerance: Tolerance = None,
        on_unit: OnUnit = "ms",
        sort: bool = False,
        exchanges: Exchanges = None,
    ) -> None: ...
    def match_indices(self, left: BatchLike) -> np.ndarray: ...
    def __call__(self, left: B) -> B: ...

class StreamingAsofJoinKernel:
    on: str
    by: Optional[str]
    direction: Direction
    allow_exact_matches: bool
    right_prefix: Optional[str]
    suffix: Optional[str]
    on_unit: OnUnit
    tolerance_ms: Optional[float]
    tolerance: Tolerance
    ordinal_column: Optional[str]
    exchanges: Exchanges
    def __init__(
        self,
        on: str = "timestamp",
        by: Optional[str] = None,
        tolerance_ms: Optional[float] = 1000,
        direction: Direction = "backward",
        *,
        allow_exact_matches: bool = True,
        right_prefix: Optional[str] = None,
        suffix: Optional[str] = None,
        on_unit: OnUnit = "ms",
        tolerance: Tolerance = None,
        ordinal_column: Optional[str] = None,
        max_dead_rows: int = 100_000,
        max_dead_bytes: int = 64 * 1024 * 1024,
        exchanges: Exchanges = None,
    ) -> None: ...
    max_dead_rows: int
    max_dead_bytes: int
    dead_letter_sink: Optional[Callable[[pa.Table, str], None]]
    dead_letter_dropped: int
    def advance_right_watermark(self, t_ns: int) -> pa.RecordBatch: ...
    def process_left(self, batch: BatchLike) -> pa.RecordBatch: ...
    def process_right(self, batch: BatchLike) -> pa.RecordBatch: ...
    def flush(self) -> pa.RecordBatch: ...
    @property
    def late_count(self) -> int: ...
    def dead_letter(self) -> pa.Table: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, d: dict[str, Any]) -> None: ...
    def reset(self) -> None: ...

def asof_join_streaming(
    left_stream: Iterable[BatchLike],
    right_stream: Iterable[BatchLike],
    on: str = "timestamp",
    by: Optional[str] = None,
    tolerance_ms: Optional[float] = 1000,
    direction: Direction = "backward",
    *,
    allow_exact_matches: bool = True,
    right_prefix: Optional[str] = None,
    suffix: Optional[str] = None,
    on_unit: OnUnit = "ms",
    tolerance: Tolerance = None,
    ordinal_column: Optional[str] = None,
    exchanges: Exchanges = None,
) -> Iterator[pa.RecordBatch]: ...
