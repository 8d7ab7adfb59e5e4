"""User data in, Arrow inside, the same kind of data out.

Every kernel works on Arrow (``pyarrow.RecordBatch`` / ``pyarrow.Table``).  This module is the
one place that turns what researchers hold — polars and pandas DataFrames and Series, numpy
arrays, pyarrow arrays, anything exposing the Arrow PyCapsule interface (DuckDB relations,
nanoarrow, ...) — into Arrow, and turns a kernel's result back into the kind that was given:

============================  ==================================================================
input                         result
============================  ==================================================================
pyarrow RecordBatch / Table   the same type, unchanged path (no conversion at all)
polars DataFrame              polars DataFrame: the input's columns plus the outputs
pandas DataFrame              pandas DataFrame, the input's index kept
other ``__arrow_c_stream__``  pyarrow Table (a stream carries no recipe to rebuild its owner)
other ``__arrow_c_array__``   pyarrow RecordBatch (a struct array) or Array (any other array)
numpy 1-D array               numpy array of the output (a dict name -> array for several)
pyarrow Array / ChunkedArray  Array / ChunkedArray of the output (RecordBatch / Table for several)
polars / pandas Series        Series named after the output (a DataFrame for several; pandas
                              keeps the index)
============================  ==================================================================

Single arrays and Series are accepted where one input column is read (``ewma(prices)``): the
array becomes that column.  Nothing is copied where Arrow allows: polars, pyarrow and numeric
numpy data are shared, and so are pandas columns of plain numpy numbers (other pandas columns
go through ``pyarrow.Array.from_pandas``).

polars and pandas are optional: neither is ever imported here to check a type — an object can
only be a polars DataFrame if polars is already loaded.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.types as pat

__all__ = ["ACCEPTED", "Converted", "apply", "convert", "is_table", "to_arrow", "type_name"]

ArrowData = Union[pa.RecordBatch, pa.Table]

#: What :func:`convert` accepts, for error messages.
ACCEPTED = ("a pyarrow RecordBatch or Table, a polars or pandas DataFrame, or any object with "
            "__arrow_c_stream__ / __arrow_c_array__ (e.g. a DuckDB relation)")
ACCEPTED_SINGLE = ("; for a kernel reading one column also a 1-D numpy array, a pyarrow Array "
                   "or ChunkedArray, or a polars or pandas Series")

# kinds of input, each with its way back
ARROW = "arrow"
POLARS = "polars"
PANDAS = "pandas"
CAPSULE = "capsule"
NUMPY = "numpy"
PA_ARRAY = "pyarrow array"
POLARS_SERIES = "polars series"
PANDAS_SERIES = "pandas series"
SINGLE_KINDS = frozenset({NUMPY, PA_ARRAY, POLARS_SERIES, PANDAS_SERIES})


def type_name(obj: Any) -> str:
    """``obj``'s type as users know it: ``polars.DataFrame``, ``numpy.ndarray``, ``dict``."""
    t = type(obj)
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module.partition('.')[0]}.{t.__qualname__}"


def _polars_kind(obj: Any) -> Optional[str]:
    """``"frame"``, ``"series"``, ``"lazy"`` for polars objects; None otherwise (and always
    None when polars is not loaded: nothing is imported to find out)."""
    pl = sys.modules.get("polars")
    if pl is None:
        return None
    if isinstance(obj, pl.DataFrame):
        return "frame"
    if isinstance(obj, pl.Series):
        return "series"
    if isinstance(obj, pl.LazyFrame):
        return "lazy"
    return None


def _pandas_kind(obj: Any) -> Optional[str]:
    """``"frame"`` or ``"series"`` for pandas objects; None otherwise (pandas never imported)."""
    pd = sys.modules.get("pandas")
    if pd is None:
        return None
    if isinstance(obj, pd.DataFrame):
        return "frame"
    if isinstance(obj, pd.Series):
        return "series"
    return None


def _plain_strings(data: ArrowData) -> ArrowData:
    """Arrow's view string/binary types (as some capsule producers export them) cast to the
    large string/binary types every kernel reads; other columns untouched (no copy)."""
    fields = []
    changed = False
    for field in data.schema:
        t = field.type
        if pat.is_string_view(t):
            fields.append(field.with_type(pa.large_string()))
            changed = True
        elif pat.is_binary_view(t):
            fields.append(field.with_type(pa.large_binary()))
            changed = True
        else:
            fields.append(field)
    if not changed:
        return data
    return data.cast(pa.schema(fields, metadata=data.schema.metadata))


def _pandas_column(series: Any) -> pa.Array:
    """One pandas column as Arrow.  Plain numpy numbers are shared, not copied (NaN stays NaN:
    every kernel reads NaN as a missing value); anything else — datetimes, strings,
    categoricals, nullable and Arrow-backed dtypes — goes through ``Array.from_pandas`` (its
    missing values become nulls)."""
    values = series.to_numpy(copy=False) if isinstance(series.dtype, np.dtype) else None
    if values is not None and values.dtype.kind in "fiub" and values.ndim == 1:
        return pa.array(values)
    return pa.Array.from_pandas(series)


def _pandas_frame(frame: Any, what: str) -> pa.RecordBatch:
    """A pandas DataFrame's columns (not its index, which the result keeps) as a RecordBatch;
    column names as strings."""
    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: duplicate column names {names}")
    arrays = [_pandas_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
    return pa.RecordBatch.from_arrays(arrays, names=names)


class Converted:
    """User data as Arrow (:attr:`arrow`) and the way back to the kind it came as
    (:meth:`back`)."""

    __slots__ = ("arrow", "kind", "original", "column")

    def __init__(self, arrow: ArrowData, kind: str, original: Any, column: Optional[str]) -> None:
        self.arrow = arrow
        self.kind = kind
        self.original = original
        self.column = column

    @property
    def single(self) -> bool:
        """Whether the input was one array or Series (the result is the output column(s))."""
        return self.kind in SINGLE_KINDS

    def back(self, result: ArrowData, outputs: Sequence[str]) -> Any:
        """``result`` (the Arrow result of a function of :attr:`arrow` that appended or
        replaced the ``outputs`` columns) as the kind of data that was given."""
        kind = self.kind
        if kind in (ARROW, CAPSULE):
            return result
        if kind == POLARS:
            import polars as pl
            return self.original.with_columns(
                [pl.Series(name, result.column(name)) for name in outputs])
        if kind == PANDAS:
            out = self.original.copy(deep=False)
            index = out.index
            for name in outputs:
                series = result.column(name).to_pandas()
                series.index = index
                out[name] = series
            return out
        # one array or Series in: the output column(s) out
        if kind == NUMPY:
            arrays = {name: _to_numpy(result.column(name)) for name in outputs}
            return arrays[outputs[0]] if len(outputs) == 1 else arrays
        if kind == PA_ARRAY:
            return result.column(outputs[0]) if len(outputs) == 1 else result.select(list(outputs))
        if kind == POLARS_SERIES:
            import polars as pl
            if len(outputs) == 1:
                return pl.Series(outputs[0], result.column(outputs[0]))
            return pl.DataFrame([pl.Series(name, result.column(name)) for name in outputs])
        if kind == PANDAS_SERIES:
            import pandas as pd
            index = self.original.index
            columns = {}
            for name in outputs:
                series = result.column(name).to_pandas()
                series.index = index
                series.name = name
                columns[name] = series
            if len(outputs) == 1:
                return columns[outputs[0]]
            return pd.DataFrame(columns, index=index)
        raise AssertionError(f"unknown input kind {kind!r}")


def _to_numpy(column: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
    """A column as numpy: shared memory for numbers without nulls, NaN for nulls in floats."""
    if isinstance(column, pa.ChunkedArray) and column.num_chunks == 1:
        column = column.chunk(0)
    return column.to_numpy(zero_copy_only=False)


def _single(arr: Union[pa.Array, pa.ChunkedArray], column: Optional[str], kind: str,
            original: Any, data_name: str, what: str) -> Converted:
    if column is None:
        raise TypeError(f"{what}: got {data_name}, one column, where a table is needed; "
                        f"expected {ACCEPTED}")
    if isinstance(arr, pa.ChunkedArray):
        return Converted(pa.Table.from_arrays([arr], names=[column]), kind, original, column)
    return Converted(pa.RecordBatch.from_arrays([arr], names=[column]), kind, original, column)


def convert(data: Any, *, column: Optional[str] = None, what: str = "input") -> Converted:
    """``data`` as Arrow, with the way back (see the module docstring).

    ``column``: the name a single array or Series gets (the one column a kernel reads); None
    where several columns are read, and single arrays are refused.  TypeError naming the type
    and what is accepted for anything else; ``what`` names the argument in it."""
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return Converted(data, ARROW, data, None)
    pl_kind = _polars_kind(data)
    if pl_kind == "frame":
        return Converted(data.to_arrow(), POLARS, data, None)
    if pl_kind == "series":
        return _single(data.to_arrow(), column, POLARS_SERIES, data, "a polars Series", what)
    if pl_kind == "lazy":
        raise TypeError(f"{what}: got a polars LazyFrame; call .collect() on it first")
    pd_kind = _pandas_kind(data)
    if pd_kind == "frame":
        return Converted(_pandas_frame(data, what), PANDAS, data, None)
    if pd_kind == "series":
        return _single(_pandas_column(data), column, PANDAS_SERIES, data, "a pandas Series",
                       what)
    if isinstance(data, (pa.Array, pa.ChunkedArray)):
        return _single(data, column, PA_ARRAY, data, f"a pyarrow {type(data).__name__}", what)
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            raise ValueError(f"{what}: a numpy array must be 1-D (one column), got shape "
                             f"{data.shape}")
        return _single(pa.array(data), column, NUMPY, data, "a numpy array", what)
    if hasattr(data, "__arrow_c_stream__"):
        try:
            table = pa.table(data)
        except (TypeError, ValueError, pa.ArrowInvalid):   # a stream of plain (non-struct) arrays
            return _single(pa.chunked_array(data), column, PA_ARRAY, data, type_name(data), what)
        return Converted(_plain_strings(table), CAPSULE, data, None)
    if hasattr(data, "__arrow_c_array__"):
        try:
            batch = pa.record_batch(data)
        except (TypeError, ValueError, pa.ArrowInvalid):   # a plain (non-struct) array
            return _single(pa.array(data), column, PA_ARRAY, data, type_name(data), what)
        return Converted(_plain_strings(batch), CAPSULE, data, None)
    accepted = ACCEPTED + (ACCEPTED_SINGLE if column is not None else "")
    raise TypeError(f"{what}: unsupported type {type_name(data)}; expected {accepted}")


def is_table(data: Any) -> bool:
    """Whether ``data`` is table-like (:func:`to_arrow` takes it): Arrow RecordBatch/Table,
    polars/pandas DataFrame, or another object with the Arrow PyCapsule interface that is not
    a single array or Series."""
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return True
    pl_kind = _polars_kind(data)
    if pl_kind is not None:
        return pl_kind == "frame"
    pd_kind = _pandas_kind(data)
    if pd_kind is not None:
        return pd_kind == "frame"
    if isinstance(data, (pa.Array, pa.ChunkedArray, np.ndarray)):
        return False
    return hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__")


def to_arrow(data: Any, *, what: str = "input") -> ArrowData:
    """A table-like ``data`` (see :data:`ACCEPTED`) as a pyarrow RecordBatch or Table; Arrow
    data itself is returned as is.  TypeError naming the type for anything else."""
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return data
    return convert(data, what=what).arrow


def apply(fn: Callable[[ArrowData], ArrowData], data: Any, outputs: Sequence[str], *,
          column: Optional[str] = None, what: str = "input") -> Any:
    """``fn`` (Arrow in, Arrow out with ``outputs`` appended) on any accepted ``data``, the
    result given back as the kind of ``data``.  ``column``: the column name a single array
    becomes (None: single arrays are refused)."""
    converted = convert(data, column=column, what=what)
    result = fn(converted.arrow)
    return converted.back(result, list(outputs))

