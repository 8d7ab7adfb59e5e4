"""The collector interface each exchange implements once (spec stream_and_collectors.md §2).

An exchange file only knows its URL, subscribe messages, parser and symbol mapping; the shared
connection loop (:mod:`sabot.collectors.connection`) and sinks (:mod:`sabot.collectors.sinks`) do
the rest.  :meth:`ExchangeCollector.parse` turns one raw frame into a :class:`Parsed` result whose
``kind`` tells the loop what happened (records, an ack, an exchange error, ...).
"""
from __future__ import annotations

import abc
import calendar
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from sabot.symbols import DEFAULT_QUOTE_ALIASES, normalize_symbol

__all__ = [
    "DATA", "CONTROL", "SUBSCRIBED", "ERROR", "UNKNOWN", "RECONNECT", "KIND_NAMES",
    "Parsed", "ExchangeCollector", "rfc3339_to_ns", "Record",
]

#: Frame kinds returned by :meth:`ExchangeCollector.parse`.
DATA = 0        # ``records`` holds normalised ticker records (possibly empty: state-only update)
CONTROL = 1     # heartbeat, status, pong, ...: nothing to record
SUBSCRIBED = 2  # subscription acknowledged; ``detail`` says what
ERROR = 3       # the exchange reported an error; ``detail`` is its text
UNKNOWN = 4     # malformed or unsupported frame; ``detail`` says why
RECONNECT = 5   # the server announced it will drop us (Binance ``serverShutdown``)
KIND_NAMES = ("data", "control", "subscribed", "error", "unknown", "reconnect")

Record = dict[str, Any]
_NO_RECORDS: list[Record] = []


class Parsed(NamedTuple):
    kind: int
    records: list[Record] = _NO_RECORDS
    detail: str = ""


_HOUR_EPOCH: dict[str, int] = {}


def rfc3339_to_ns(s: str) -> int:
    """Exact integer nanoseconds since the epoch of an RFC 3339 time (``2026-09-30T02:39:53.78865513Z``).

    Parsed by slicing (no datetime, no float): 0-9 fractional digits, ``Z`` or ``±HH:MM`` offset.
    The epoch seconds of each ``YYYY-MM-DDTHH`` prefix are cached (``calendar.timegm``).
    Raises ``ValueError`` naming the string when it is not RFC 3339.
    """
    try:
        hour = _HOUR_EPOCH.get(s[:13])
        if hour is None:
            if s[4] != "-" or s[7] != "-" or s[10] not in "Tt ":
                raise ValueError
            hour = calendar.timegm(
                (int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), 0, 0, 0, 0, 0)
            )
            if len(_HOUR_EPOCH) > 4096:
                _HOUR_EPOCH.clear()
            _HOUR_EPOCH[s[:13]] = hour
        if s[13] != ":" or s[16] != ":":
            raise ValueError
        ns = (hour + int(s[14:16]) * 60 + int(s[17:19])) * 1_000_000_000
        i = 19
        n = len(s)
        if i < n and s[i] == ".":
            j = i + 1
            while j < n and s[j].isdigit():
                j += 1
            frac = s[i + 1 : j]
            if not frac or len(frac) > 9:
                raise ValueError
            ns += int(frac) * 10 ** (9 - len(frac))
            i = j
        tz = s[i:]
        if tz == "Z" or tz == "z":
            return ns
        if len(tz) == 6 and tz[0] in "+-" and tz[3] == ":":
            offset = (int(tz[1:3]) * 60 + int(tz[4:6])) * 60_000_000_000
            return ns - offset if tz[0] == "+" else ns + offset
        raise ValueError
    except (ValueError, IndexError, TypeError):
        raise ValueError(f"not an RFC 3339 timestamp: {s!r}") from None


class ExchangeCollector(abc.ABC):
    """One exchange's protocol knowledge: URL, subscribe messages, parser and symbol mapping.

    Subclasses set ``name``, ``default_url``, ``default_symbols`` and implement
    :meth:`subscribe_messages` and :meth:`_parse`.  Instances hold per-connection state only
    where the exchange needs it (Binance's latest 24 h ticker per symbol).
    """

    name: str = ""
    default_url: str = ""
    default_symbols: tuple[str, ...] = ()
    #: Whether the client should send its own WebSocket pings (Binance pings us instead).
    client_pings: bool = True
    #: Seconds of silence after which the watchdog closes the socket (heartbeats arrive ~1/s).
    stale_after: float = 30.0
    #: Logged once per connection when subscribed ({dest}: "Kafka topic 'x'"; {short}: "Kafka").
    subscribed_template: str = "Subscribed; streaming to {dest}"

    def __init__(
        self,
        symbols: list[str] | tuple[str, ...] | None = None,
        quote_aliases: Mapping[str, str] = DEFAULT_QUOTE_ALIASES,
    ) -> None:
        self.symbols: list[str] = list(symbols or self.default_symbols)
        if not self.symbols:
            raise ValueError(f"{self.name}: no symbols to subscribe")
        self.quote_aliases = quote_aliases
        self._symbol_cache: dict[str, str] = {}
        for raw in self.symbols:  # fail fast on a symbol we could not normalise
            self.normalize(raw)

    # -- what each exchange provides ---------------------------------------------------------
    def url(self, base_url: str | None = None) -> str:
        """The WebSocket URL to connect to (``base_url`` overrides the public endpoint)."""
        return base_url or self.default_url

    @abc.abstractmethod
    def subscribe_messages(self) -> list[str]:
        """JSON texts to send after each (re)connect."""

    @abc.abstractmethod
    def _parse(self, msg: Any, recv_ns: int) -> Parsed:
        """Classify one decoded JSON frame; may raise KeyError/TypeError/ValueError on bad data."""

    def on_connect(self) -> None:
        """Reset per-connection state (called before subscribing)."""

    # -- shared ------------------------------------------------------------------------------
    def normalize(self, raw: str) -> str:
        """``BASE/QUOTE`` for this exchange's spelling (cached per raw spelling)."""
        sym = self._symbol_cache.get(raw)
        if sym is None:
            sym = normalize_symbol(raw, self.name, self.quote_aliases)
            self._symbol_cache[raw] = sym
        return sym

    def parse(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """Classify one raw frame; never raises (bad frames come back as ``UNKNOWN``)."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Parsed(UNKNOWN, detail=f"malformed JSON ({exc}): {_excerpt(raw)}")
        if type(msg) is not dict:
            return Parsed(UNKNOWN, detail=f"not a JSON object: {_excerpt(raw)}")
        try:
            return self._parse(msg, recv_ns)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            return Parsed(UNKNOWN, detail=f"bad {type(exc).__name__} {exc}: {_excerpt(raw)}")


def _excerpt(raw: str | bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return text if len(text) <= limit else text[:limit] + "..."


def dumps(obj: Any) -> str:
    """Compact JSON text (subscribe messages)."""
    return orjson.dumps(obj).decode()
