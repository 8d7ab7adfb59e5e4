"""Time units: the one place where sabot converts between seconds, ms, µs and ns.

Inside sabot every time is an int64 count of **nanoseconds since the Unix epoch** (UTC), and
every duration an int64 count of nanoseconds.  This module turns what users hand over into that:

* Arrow timestamp columns of any unit (``timestamp[s]``, ``[ms]``, ``[us]``, ``[ns]``, with or
  without a time zone) carry their unit and are converted exactly;
* durations: strings (``"500ms"``, ``"1s"``, ``"5m"``, ``"1h"``), ``datetime.timedelta``,
  ``numpy.timedelta64``, or a plain number of milliseconds (the ``*_ms`` parameters);
* integer time columns, by the rule below.

**The rule for integer time columns.**  An int64 (or other integer) column has no unit of its
own, so the operation that reads it is told the unit with its ``on_unit`` argument (``'s'``,
``'ms'``, ``'us'`` or ``'ns'``); without one, integers are nanoseconds since the epoch.  Where the
unit is set:

* ``Stream.tumbling(..., on_unit=)``, ``Stream.merge(..., on_unit=)``,
  ``Stream.zip(..., on_unit=)``: default ``'ns'``;
* ``Stream.asof_join(..., on_unit=)`` and the ASOF kernels (``asof_join``,
  ``AsofJoinKernel``, ``StreamingAsofJoinKernel``): default ``'ms'`` (exchange timestamps);
  every part of a streaming join — the kernel's matching, the tolerance, the watermarks that
  release commits, ``max_skew`` and the idle release — reads the column in that unit;
* kernels with a time input (e.g. ``stale_quote_detector``, ``throttle_check``): nanoseconds.

An Arrow timestamp column ignores ``on_unit``: its type says its unit.  When no ``on_unit`` was
given and an integer column's values look like seconds, milliseconds or microseconds since the
epoch (between 2001 and 2100 in that unit, i.e. the first hours of 1970 in nanoseconds), the
reader raises ``ValueError`` naming the column, a value and the ``on_unit`` to pass, instead of
silently treating them as nanoseconds.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.types as pat

#: Nanoseconds per unit of the units an integer time column may be in.
UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}

#: Nanoseconds per unit of the units a duration string may use.
DURATION_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                    "m": 60_000_000_000, "min": 60_000_000_000, "h": 3_600_000_000_000,
                    "d": 86_400_000_000_000}

INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|min|h|d)\s*")

# An integer column read as nanoseconds whose values fall in one of these ranges is, in all
# likelihood, epoch time in a coarser unit (2001-09-09 .. 2100-01-01 in that unit).
_LOOKS_LIKE = (("s", 1_000_000_000, 4_102_444_800), ("ms", 1_000_000_000_000, 4_102_444_800_000),
               ("us", 1_000_000_000_000_000, 4_102_444_800_000_000))


def check_unit(unit: Any, what: str = "on_unit") -> str:
    """``unit`` if it is one of ``'s'``, ``'ms'``, ``'us'``, ``'ns'``; ValueError naming ``what``."""
    if not isinstance(unit, str) or unit not in UNIT_NS:
        raise ValueError(f"{what} must be one of 'ns', 'us', 'ms', 's'; got {unit!r}")
    return unit


def unit_ns(unit: str, what: str = "on_unit") -> int:
    """Nanoseconds in one ``unit``."""
    return UNIT_NS[check_unit(unit, what)]


def ms_to_ns(ms: Union[int, float]) -> int:
    """A number of milliseconds as integer nanoseconds (rounded to the nearest)."""
    return int(round(float(ms) * 1_000_000))


def seconds_to_ns(seconds: Union[int, float]) -> int:
    """A number of seconds as integer nanoseconds (rounded to the nearest)."""
    return int(round(float(seconds) * UNIT_NS["s"]))


def duration_ns(value: Any, what: str = "duration", *, allow_zero: bool = False) -> int:
    """A duration as integer nanoseconds: ``'500ms'``, ``'1s'``, ``'5m'``, ``'1h'``, ``'1d'``,
    a ``timedelta``, a ``numpy.timedelta64`` or a number of milliseconds.  ValueError /
    TypeError naming ``what`` and the value; negative (and, unless ``allow_zero``, zero)
    durations are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a duration string, timedelta or milliseconds; "
                        f"got {value!r}")
    if isinstance(value, _dt.timedelta):
        ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    elif isinstance(value, np.timedelta64):
        ns = int(value.astype("timedelta64[ns]").astype(np.int64))
    elif isinstance(value, (int, float, np.integer, np.floating)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be a finite number of milliseconds, got {value!r}")
        ns = ms_to_ns(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if not m:
            raise ValueError(f"{what} {value!r}: expected e.g. '500ms', '1s', '5m', '1h'")
        ns = int(round(float(m.group(1)) * DURATION_UNIT_NS[m.group(2)]))
    else:
        raise TypeError(f"{what} must be a duration string, timedelta or milliseconds; "
                        f"got {type(value).__name__}")
    if ns < 0 or (ns == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else 'positive'}, got {value!r}")
    return ns


def to_ns(value: int, unit: str) -> int:
    """An integer time ``value`` in ``unit`` as nanoseconds."""
    return int(value) * unit_ns(unit)


def _looks_coarser(values: np.ndarray) -> Optional[str]:
    """The unit integer times seem to be in when read as ns would put them in early 1970."""
    if not len(values):
        return None
    lo, hi = int(values.min()), int(values.max())
    if lo == INT64_MIN:  # nulls were filled with INT64_MIN
        valid = values[values != INT64_MIN]
        if not len(valid):
            return None
        lo = int(valid.min())
    for unit, low, high in _LOOKS_LIKE:
        if low <= lo and hi < high:
            return unit
    return None


def column_ns(column: Union[pa.Array, pa.ChunkedArray], name: str,
              on_unit: Optional[str] = None) -> np.ndarray:
    """A time column as an int64 numpy array of nanoseconds since the epoch (nulls → INT64_MIN).

    Timestamp columns are converted by their type's unit; integer columns are read in
    ``on_unit`` (None: nanoseconds, with the plausibility check of the module docstring).
    TypeError naming the column for any other type; ValueError for values that overflow."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    factor = 1
    if pat.is_timestamp(t):
        if t.unit != "ns":
            try:
                column = column.cast(pa.timestamp("ns", tz=t.tz))
            except pa.ArrowInvalid as exc:
                raise ValueError(f"time column {name!r} ({t}) does not fit in int64 "
                                 f"nanoseconds: {exc}") from None
        column = column.view(pa.int64())
    elif pat.is_integer(t):
        if t != pa.int64():
            column = column.cast(pa.int64())
        if on_unit is not None:
            factor = unit_ns(on_unit)
    else:
        unit = on_unit or "ns"
        raise TypeError(f"time column {name!r} has type {t}; expected a timestamp or an "
                        f"integer ({unit})")
    if column.null_count:  # (a compute call costs ~15 µs: a one-row batch pays it per column)
        column = column.fill_null(INT64_MIN)
    values = column.to_numpy(zero_copy_only=False)
    if factor != 1:
        valid = values != INT64_MIN
        limit = INT64_MAX // factor
        if len(values) and (np.abs(values[valid]) > limit).any():
            bad = int(values[valid][np.abs(values[valid]) > limit][0])
            raise ValueError(f"time column {name!r}: {bad} {on_unit} does not fit in int64 "
                             "nanoseconds")
        values = np.where(valid, values * np.int64(factor), values)
    elif pat.is_integer(t) and on_unit is None:
        coarser = _looks_coarser(values)
        if coarser is not None:
            sample = int(values[values != INT64_MIN][0])
            raise ValueError(f"time column {name!r} holds integers like {sample}, which read as "
                             f"nanoseconds are in early 1970; if they are {coarser} since the "
                             f"epoch pass on_unit={coarser!r} (or on_unit='ns' to read them as "
                             "nanoseconds)")
    return values


def array_ns(column: Union[pa.Array, pa.ChunkedArray], name: str,
             on_unit: Optional[str] = None) -> pa.Array:
    """:func:`column_ns` as an Arrow int64 array (nulls stay null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column_ns(column, name, on_unit)
    mask = np.asarray(column.is_null()) if column.null_count else None
    return pa.array(values, pa.int64(), mask=mask)
