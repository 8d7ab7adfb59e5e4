"""Record validation at the edge: one check every collector's records pass before any sink.

The parsers turn frames into records; :class:`RecordValidator` decides whether a record may be
stored.  A record is rejected (counted by reason, logged rate-limited, optionally written to a
dead-letter file) when:

* a price (``bid``, ``ask``, ``price``) is not a finite number > 0;
* a size or volume (``bid_size``, ``ask_size``, ``volume_24h``) is not a finite number >= 0;
* an extra column a venue declares checked (``Venue.field_checks``: Kraken's ``vwap`` is a
  price, its ``change_pct`` a change that only has to be finite) fails that check;
* a boolean stands where a number belongs (``bid=True``), or a required value is missing;
* the event ``timestamp`` lies more than ``max_age_s`` before or ``max_ahead_s`` after now;
* the symbol was not subscribed, or holds control characters.

Trade records (:class:`TradeValidator`) are checked the same way for symbol and time; their
``price`` and ``size`` must be finite numbers > 0, ``side`` ``"buy"`` or ``"sell"`` and
``trade_id`` non-empty text.

Reasons name the field and the value (``bid=nan``, ``timestamp=2999-01-01T00:00:00Z``) so a
rejected record can be found again in the dead-letter file.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any, Callable

import orjson

from sabot.collectors.base import Record, has_control_chars

__all__ = ["RecordValidator", "TradeValidator", "BookValidator", "DeadLetter", "RateLimitedLog", "REASONS", "ns_text", "BASE_CHECKS",
           "field_checks"]

log = logging.getLogger("sabot.collectors")

#: Rejection reasons (the keys of ``Stats.rejected_by``).
REASONS = (
    "not_a_number", "boolean", "missing", "non_finite", "non_positive", "negative",
    "timestamp_too_old", "timestamp_ahead", "unsubscribed_symbol", "control_characters",
    "unserializable", "invalid_side",
)

#: The common columns' checks; venues add their extra columns' (:func:`field_checks`).
BASE_CHECKS: Mapping[str, str] = {"bid": "positive", "ask": "positive", "price": "positive",
                                  "bid_size": "non_negative", "ask_size": "non_negative",
                                  "volume_24h": "non_negative"}
_REQUIRED = frozenset({"bid", "ask", "bid_size", "ask_size"})
_INF = math.inf


def ns_text(ns: Any) -> str:
    """RFC 3339 text of integer ns when representable (years 1-9999), else the number itself."""
    try:
        sec, frac = divmod(int(ns), 1_000_000_000)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{text}.{frac:09d}Z".replace(".000000000Z", "Z")
    except (OverflowError, ValueError, OSError, TypeError):
        return repr(ns)


def field_checks() -> dict[str, str]:
    """Column -> check (``positive``, ``non_negative``, ``finite``): the common columns' and
    every registered venue's extra columns' (:attr:`sabot.venues.Venue.field_checks`)."""
    from sabot.venues.registry import venues  # (importing it registers the built-in venues too)

    checks = dict(BASE_CHECKS)
    for venue in venues():
        for column, check in venue.field_checks.items():
            checks.setdefault(column, check)
    return checks


class RecordValidator:
    """Checks (and leaves unchanged) records from one collector; see the module docstring.

    ``symbols`` maps each subscribed symbol as data frames spell it to the user's spelling
    (:meth:`ExchangeCollector.payload_symbols`).  ``checks`` (column -> ``positive``,
    ``non_negative`` or ``finite``) defaults to :func:`field_checks` at construction: the
    common columns and every registered venue's checked extra columns.  ``now_ns`` is
    injectable for tests.
    """

    def __init__(self, symbols: Mapping[str, str], max_age_s: float = 86_400.0,
                 max_ahead_s: float = 60.0, now_ns: Callable[[], int] = time.time_ns,
                 checks: Mapping[str, str] | None = None) -> None:
        if max_age_s <= 0 or max_ahead_s < 0:
            raise ValueError(f"max_age_s={max_age_s!r} must be > 0 and max_ahead_s={max_ahead_s!r} >= 0")
        checks = field_checks() if checks is None else {**BASE_CHECKS, **checks}
        unknown = {k: v for k, v in checks.items() if v not in ("positive", "non_negative", "finite")}
        if unknown:
            raise ValueError(f"checks {unknown} must be 'positive', 'non_negative' or 'finite'")
        self._positive = tuple(k for k, v in checks.items() if v == "positive")
        self._non_negative = tuple(k for k, v in checks.items() if v == "non_negative")
        self._any_finite = tuple(k for k, v in checks.items() if v == "finite")
        self.symbols = dict(symbols)
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_ahead_ns = int(max_ahead_s * 1e9)
        self.now_ns = now_ns

    def check(self, rec: Record) -> tuple[str, str] | None:
        """``None`` when ``rec`` may be stored, else ``(reason, text)``; ``text`` names field and value."""
        raw = rec.get("raw_symbol")
        if raw not in self.symbols:
            return _not_subscribed(raw)
        get = rec.get
        # fast path per field: a float in range (NaN fails every comparison); else find out why
        for name in self._positive:
            x = get(name)
            if not (type(x) is float and 0.0 < x < _INF) and (x is not None or name in _REQUIRED):
                bad = _bad_number(x, name, 1)
                if bad is not None:
                    return bad
        for name in self._non_negative:
            x = get(name)
            if not (type(x) is float and 0.0 <= x < _INF) and (x is not None or name in _REQUIRED):
                bad = _bad_number(x, name, 0)
                if bad is not None:
                    return bad
        for name in self._any_finite:
            x = get(name)
            if not (type(x) is float and -_INF < x < _INF) and x is not None:
                bad = _bad_number(x, name, -1)
                if bad is not None:
                    return bad
        return self._check_time(rec)

    def _check_time(self, rec: Record) -> tuple[str, str] | None:
        ts = rec.get("timestamp")
        if type(ts) is not int:
            return "missing", f"timestamp={ts!r} is not an integer time"
        now = self.now_ns()
        if ts < now - self.max_age_ns:
            return ("timestamp_too_old",
                    f"timestamp={ns_text(ts)} is more than {self.max_age_ns / 1e9:g} s before now")
        if ts > now + self.max_ahead_ns:
            return ("timestamp_ahead",
                    f"timestamp={ns_text(ts)} is more than {self.max_ahead_ns / 1e9:g} s ahead of now")
        return None


class TradeValidator(RecordValidator):
    """Checks trade records: subscribed symbol, ``price``/``size`` finite and > 0, ``side``
    ``"buy"``/``"sell"``, a ``trade_id``, and the event time window (see the module docstring)."""

    def __init__(self, symbols: Mapping[str, str], max_age_s: float = 86_400.0,
                 max_ahead_s: float = 60.0, now_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(symbols, max_age_s, max_ahead_s, now_ns, checks={})

    def check(self, rec: Record) -> tuple[str, str] | None:
        raw = rec.get("raw_symbol")
        if raw not in self.symbols:
            return _not_subscribed(raw)
        for name in ("price", "size"):
            x = rec.get(name)
            if not (type(x) is float and 0.0 < x < _INF):
                bad = _bad_number(x, name, 1)
                if bad is None and x is None:
                    bad = ("missing", f"{name}=None is required")
                if bad is not None:
                    return bad
        side = rec.get("side")
        if side != "buy" and side != "sell":
            return "invalid_side", f"side={side!r} is not 'buy' or 'sell'"
        tid = rec.get("trade_id")
        if type(tid) is not str or not tid:
            return "missing", f"trade_id={tid!r} is not an identifier"
        if has_control_chars(tid):
            return "control_characters", f"trade_id={tid!r} contains control characters"
        return self._check_time(rec)



class BookValidator(RecordValidator):
    """Checks book records: a subscribed symbol and the event time window.  Prices and sizes
    were checked by the book itself (a value it cannot hold drops the book until resync)."""

    def __init__(self, symbols: Mapping[str, str], max_age_s: float = 86_400.0,
                 max_ahead_s: float = 60.0, now_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(symbols, max_age_s, max_ahead_s, now_ns, checks={})

    def check(self, rec: Record) -> tuple[str, str] | None:
        raw = rec.get("raw_symbol")
        if raw not in self.symbols:
            return _not_subscribed(raw)
        return self._check_time(rec)


def _not_subscribed(raw: Any) -> tuple[str, str]:
    """Why a record whose ``raw_symbol`` is not a subscribed symbol is rejected."""
    if isinstance(raw, str) and has_control_chars(raw):
        return "control_characters", f"raw_symbol={raw!r} contains control characters"
    return "unsubscribed_symbol", f"raw_symbol={raw!r} was not subscribed"


def _bad_number(x: Any, name: str, sign: int) -> tuple[str, str] | None:
    """Why ``x`` is not acceptable for field ``name`` (sign 1: > 0, 0: >= 0, -1: any finite)."""
    t = type(x)
    if t is not float:
        if x is None:
            return ("missing", f"{name}=None is required") if name in _REQUIRED else None
        if t is bool:
            return "boolean", f"{name}={x!r} is a boolean, not a number"
        if t is not int:
            return "not_a_number", f"{name}={x!r} is not a number"
    if x != x or x == _INF or x == -_INF:
        return "non_finite", f"{name}={x!r} is not finite"
    if sign > 0 and x <= 0:
        return "non_positive", f"{name}={x!r} is not positive"
    if sign == 0 and x < 0:
        return "negative", f"{name}={x!r} is negative"
    return None


class RateLimitedLog:
    """The first ``first`` events logged at warning, then at most one summary line per ``every_s``."""

    def __init__(self, what: str, first: int = 5, every_s: float = 10.0) -> None:
        self.what = what
        self.first = first
        self.every_s = every_s
        self.count = 0
        self._quiet = 0
        self._next = 0.0

    def __call__(self, text: str) -> None:
        self.count += 1
        if self.count <= self.first:
            log.warning("%s #%d: %s", self.what, self.count, text)
            if self.count == self.first:
                self._next = time.monotonic() + self.every_s
            return
        self._quiet += 1
        now = time.monotonic()
        if now >= self._next:
            log.warning("%s: %d more (total %d), latest: %s", self.what, self._quiet, self.count, text)
            self._quiet = 0
            self._next = now + self.every_s
        else:
            log.debug("%s #%d: %s", self.what, self.count, text)


def _jsonable(value: Any) -> Any:
    """Values orjson cannot write (ints beyond 64 bits, NaN/inf) as their text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if type(value) is int and not -(2 ** 63) <= value < 2 ** 63:
        return str(value)
    if type(value) is float and (value != value or value in (_INF, -_INF)):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value


class DeadLetter:
    """JSON lines of what was not stored: ``{"time", "exchange", "reason", "detail", "record"|"frame"}``.

    Appends to ``path``, one unbuffered write per entry (entries are rare; each one is on disk
    or counted as lost).  A write that fails (disk full, ...) is counted in ``errors`` and logged
    rate-limited, never raised: the collector keeps running and its exit code reports the loss.
    """

    def __init__(self, path: str | os.PathLike, exchange: str) -> None:
        self.path = os.fspath(path)
        self.exchange = exchange
        self._f = open(self.path, "ab", buffering=0)  # OSError here is a user mistake, reported at start
        self.written = 0
        self.errors = 0
        self._errors_log = RateLimitedLog(f"{exchange}: dead-letter write to {self.path} failed")

    def write(self, reason: str, detail: str, *, record: Record | None = None,
              frame: str | bytes | None = None) -> None:
        entry: dict[str, Any] = {"time": ns_text(time.time_ns()), "exchange": self.exchange,
                                 "reason": reason, "detail": detail}
        if record is not None:
            entry["record"] = record
        if frame is not None:
            entry["frame"] = frame
        try:
            line = orjson.dumps(_jsonable(entry)) + b"\n"
            n = self._f.write(line)
            if n != len(line):
                raise OSError(f"short write ({n} of {len(line)} bytes)")
            self.written += 1
        except (OSError, ValueError, TypeError) as exc:
            self.errors += 1
            self._errors_log(str(exc))

    def tick(self) -> None:
        """Nothing buffered: kept for the sink-like housekeeping loop."""

    def close(self) -> None:
        try:
            os.fsync(self._f.fileno())
        except OSError:
            pass  # not a regular file (a pipe, /dev/null): nothing to sync
        finally:
            try:
                self._f.close()
            except OSError:
                pass
