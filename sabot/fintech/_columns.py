"""Column resolution, input checks and the missing-value mode shared by every kernel."""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.types as pat

BatchLike = Union[pa.RecordBatch, pa.Table]

#: Column names never chosen automatically for ``column=None``.
NON_VALUE_COLUMNS = frozenset({"timestamp", "recv_timestamp", "sequence"})

#: Columns a price input without a name reads, first present wins: ticks/quotes, then bars.
PRICE_COLUMNS = ("price", "close")


def is_numeric_type(t: pa.DataType) -> bool:
    return pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t)


def check_batch(batch: object) -> BatchLike:
    """``batch`` itself when it is a RecordBatch or Table.  For functions that take Arrow only
    (kernels take more, see :mod:`sabot.interop`): TypeError naming the type given and, for
    data :func:`sabot.interop.to_arrow` converts, how to convert it."""
    if not isinstance(batch, (pa.RecordBatch, pa.Table)):
        from .. import interop

        hint = ("; convert it with sabot.interop.to_arrow(...)" if interop.is_table(batch)
                else "")
        raise TypeError(
            f"expected a pyarrow.RecordBatch or pyarrow.Table, got {interop.type_name(batch)}"
            f"{hint}"
        )
    return batch


def require_column(schema: pa.Schema, name: str, role: str = "column") -> pa.Field:
    """The field called ``name``; ``KeyError`` naming it and the columns present."""
    idx = schema.get_field_index(name)
    if idx < 0:
        raise KeyError(
            f"{role} {name!r} not found; columns present: {', '.join(schema.names) or '(none)'}"
        )
    return schema.field(idx)


def require_numeric(schema: pa.Schema, name: str, role: str = "column") -> pa.Field:
    field = require_column(schema, name, role)
    t = field.type
    if pat.is_dictionary(t):
        t = t.value_type
    if not is_numeric_type(t):
        raise TypeError(
            f"{role} {name!r} has type {field.type}; expected a numeric type "
            "(float, integer or decimal)"
        )
    return field


def resolve_value_column(
    schema: pa.Schema, column: Optional[str], by: Optional[str] = None, role: str = "column"
) -> str:
    """``column`` if given; else ``price`` if present, else ``close`` (the project's own OHLCV
    bars); else, for a kernel's generic ``column`` (``role``), the only numeric column.

    The automatic choice skips the ``by`` column and time/sequence columns. Anything else is
    ambiguous and raises ``ValueError`` listing the candidates.
    """
    if column is not None:
        require_numeric(schema, column, role)
        return column
    for name in PRICE_COLUMNS:
        if name in schema.names:
            require_numeric(schema, name, role)
            return name
    if role != "column":            # a price input (price_column, close_column): price or close
        raise KeyError(
            f"{role}: no 'price' or 'close' column; columns present: "
            f"{', '.join(schema.names) or '(none)'}; pass {role}=..."
        )
    candidates = [
        f.name
        for f in schema
        if f.name != by
        and f.name not in NON_VALUE_COLUMNS
        and is_numeric_type(f.type.value_type if pat.is_dictionary(f.type) else f.type)
    ]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"no numeric column to use; pass {role}=...; columns present: "
            f"{', '.join(schema.names)}"
        )
    raise ValueError(
        f"ambiguous input: several numeric columns ({', '.join(candidates)}) and no 'price' "
        f"or 'close'; pass {role}=..."
    )


def with_columns(batch: BatchLike, named_arrays: Iterable[tuple]) -> BatchLike:
    """Append columns, replacing (in place, same position) any that already exist.

    Schema metadata is kept.  ``append_column``/``set_column`` (not rebuilding the schema from
    a list of fields) keep the per-call overhead at a couple of microseconds for small batches.
    """
    for name, array in named_arrays:
        i = batch.schema.get_field_index(name)
        field = pa.field(name, array.type)
        if i < 0:
            batch = batch.append_column(field, array)
        else:
            batch = batch.set_column(i, field, array)
    return batch


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__")
    ):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)  # type: ignore[arg-type]
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_unit_interval(name: str, value: object, *, open_left: bool = True) -> float:
    """A parameter in (0, 1] (``open_left``) or [0, 1]."""
    v = float(value)  # type: ignore[arg-type]
    ok = (0.0 < v <= 1.0) if open_left else (0.0 <= v <= 1.0)
    if not ok:
        interval = "(0, 1]" if open_left else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    v = float(value)  # type: ignore[arg-type]
    if not (v >= 0.0 if allow_zero else v > 0.0) or v != v:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def unique_names(names: Sequence[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"duplicate column name {n!r}")
        seen.add(n)


# -- missing values in float outputs: null (default) or NaN --------------------------------
#: Float outputs with no value (warm-up rows, rows with a missing input) are Arrow nulls.
NULL = "null"
#: Float outputs with no value are NaN (no validity bitmap: ``.to_numpy()`` works zero-copy).
NAN = "nan"
MISSING_MODES = (NULL, NAN)

_default_missing = NULL
_missing: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "sabot_kernel_missing", default=None
)


def check_missing(mode: Any) -> str:
    """``mode`` if it is ``"null"`` or ``"nan"``; ValueError naming it otherwise."""
    if mode not in MISSING_MODES:
        raise ValueError(f"nulls must be 'null' or 'nan', got {mode!r}")
    return mode


def set_missing(mode: str) -> str:
    """Set the process-wide default for float outputs with no value: ``"null"`` (Arrow
    nulls, the default) or ``"nan"``; the previous default is returned.  Kernels take the
    mode in effect when they are built (function forms: when called)."""
    global _default_missing
    previous = _default_missing
    _default_missing = check_missing(mode)
    return previous


def current_missing() -> str:
    """The mode kernels built now use: the innermost :func:`missing` block, else the
    process-wide default."""
    mode = _missing.get()
    return _default_missing if mode is None else mode


@contextmanager
def missing(mode: str) -> Iterator[None]:
    """Within the block, kernels built (and function forms called) give ``mode`` for float
    outputs with no value: ``"nan"`` or ``"null"``.  A Stream operator created within the
    block (``stream.map(...)``) keeps the mode wherever the stream later runs."""
    token = _missing.set(check_missing(mode))
    try:
        yield
    finally:
        _missing.reset(token)
