"""The collector interface each exchange implements once.

A venue module (:mod:`sabot.venues.coinbase`, ...) only knows its URL, subscribe messages, parser
and symbol spelling both ways; the shared
connection loop (:mod:`sabot.collectors.connection`) and sinks (:mod:`sabot.collectors.sinks`) do
the rest.  :meth:`ExchangeCollector.parse` turns one raw frame into a :class:`Parsed` result whose
``kind`` tells the loop what happened (records, an ack, an exchange error, ...).

Channels: a collector records the channels named in ``channels`` (``("ticker",)`` unless told
otherwise) among the ones its class offers (``supported_channels``).  Ticker records come back
as ``DATA``, trade records as ``TRADES``; the loop routes each kind to its channel's sinks.  A
collector written for tickers only needs none of this: it keeps working unchanged.
"""
from __future__ import annotations

import abc
import calendar
import functools
import json
import unicodedata
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from sabot.symbols import DEFAULT_QUOTE_ALIASES, normalize_symbol

__all__ = [
    "DATA", "CONTROL", "SUBSCRIBED", "ERROR", "UNKNOWN", "RECONNECT", "REJECTED", "KIND_NAMES",
    "Parsed", "ExchangeCollector", "rfc3339_to_ns", "Record", "int64", "num", "has_control_chars",
    "TRADES", "KIND_CHANNELS", "TradeIds", "UnknownChannelError", "ms_to_ns", "BOOK",
]

#: Frame kinds returned by :meth:`ExchangeCollector.parse`.
DATA = 0        # ``records`` holds normalised ticker records (possibly empty: state-only update)
CONTROL = 1     # heartbeat, status, pong, ...: nothing to record
SUBSCRIBED = 2  # subscription acknowledged; ``detail`` says what
ERROR = 3       # the exchange reported an error; ``detail`` is its text
UNKNOWN = 4     # malformed or unsupported frame; ``detail`` says why
RECONNECT = 5   # the server announced it will drop us (Binance ``serverShutdown``)
REJECTED = 6    # the exchange refused subscribed symbols: ``records`` holds ``{"raw_symbol": ...}``
                # (one per symbol, in the user's spelling), ``detail`` the exchange's text
TRADES = 7      # ``records`` holds normalised trade records (:data:`sabot.schema.TRADE_SCHEMA`)
BOOK = 8        # ``records`` holds book rows (:data:`sabot.collectors.books.BOOK_SCHEMA`), possibly none
KIND_NAMES = ("data", "control", "subscribed", "error", "unknown", "reconnect", "rejected", "trades", "book")
#: The channel whose sinks receive the records of each record-carrying kind.
KIND_CHANNELS = {DATA: "ticker", TRADES: "trades", BOOK: "book"}

Record = dict[str, Any]
_NO_RECORDS: list[Record] = []


class Parsed(NamedTuple):
    kind: int
    records: list[Record] = _NO_RECORDS
    detail: str = ""


#: ``parsed((kind, records, detail))``: a :class:`Parsed` built in C (hot path; the NamedTuple
#: constructor is pure Python).
parsed = functools.partial(tuple.__new__, Parsed)


_SECOND_EPOCH_NS: dict[str, int] = {}
_FRACTION_SCALE = tuple(10 ** (9 - n) for n in range(10))


def rfc3339_to_ns(s: str) -> int:
    """Exact integer nanoseconds since the epoch of an RFC 3339 time (``2026-09-30T02:39:53.78865513Z``).

    Parsed by slicing (no datetime, no float): 0-9 fractional digits, ``Z`` or ``±HH:MM`` offset.
    Fast path: the epoch ns of each ``YYYY-MM-DDTHH:MM:SS`` prefix is cached, the fraction is
    ``int(digits) * 10**(9 - len(digits))``.  Raises ``ValueError`` naming the string otherwise.
    """
    base = _SECOND_EPOCH_NS.get(s[:19])
    if base is not None and s[-1] == "Z":
        n = len(s)
        if n == 20:
            return base
        if s[19] == "." and 21 < n <= 30:
            frac = s[20:-1]
            if frac.isdigit():
                return base + int(frac) * _FRACTION_SCALE[n - 21]
    return _rfc3339_slow(s)


def _rfc3339_slow(s: str) -> int:
    try:
        if not s.isascii():
            raise ValueError
        if s[4] != "-" or s[7] != "-" or s[10] not in "Tt" or s[13] != ":" or s[16] != ":":
            raise ValueError
        fields = (s[0:4], s[5:7], s[8:10], s[11:13], s[14:16], s[17:19])
        if not all(f.isdigit() for f in fields):
            raise ValueError
        y, mo, d, h, mi, sec = map(int, fields)
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and sec <= 60):
            raise ValueError
        ns = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) * 1_000_000_000
        if len(_SECOND_EPOCH_NS) >= 4096:
            _SECOND_EPOCH_NS.clear()
        _SECOND_EPOCH_NS[s[:19]] = ns
        i, n = 19, len(s)
        if i < n and s[i] == ".":
            j = i + 1
            while j < n and s[j].isdigit():
                j += 1
            frac = s[i + 1 : j]
            if not frac or len(frac) > 9:
                raise ValueError
            ns += int(frac) * _FRACTION_SCALE[len(frac)]
            i = j
        tz = s[i:]
        if tz == "Z" or tz == "z":
            return ns
        if len(tz) == 6 and tz[0] in "+-" and tz[3] == ":" and tz[1:3].isdigit() and tz[4:6].isdigit():
            offset = (int(tz[1:3]) * 60 + int(tz[4:6])) * 60_000_000_000
            return ns - offset if tz[0] == "+" else ns + offset
        raise ValueError
    except (ValueError, IndexError, TypeError, AttributeError):
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
    #: Whether one refused symbol makes the exchange refuse the whole subscribe message, so the
    #: rest must be subscribed again (Coinbase); Kraken refuses symbol by symbol.
    resubscribe_after_reject: bool = False
    #: Whether the exchange refuses an unlisted symbol by silence rather than an error (Binance):
    #: a symbol without any data some seconds after subscribing is then reported.
    rejects_by_silence: bool = False
    #: The channels this collector can record (``ticker``, ``trades``), in their usual order.
    supported_channels: tuple[str, ...] = ("ticker",)

    def __init__(
        self,
        symbols: list[str] | tuple[str, ...] | None = None,
        quote_aliases: Mapping[str, str] = DEFAULT_QUOTE_ALIASES,
        channels: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        self.symbols: list[str] = list(symbols or self.default_symbols)
        if not self.symbols:
            raise ValueError(f"{self.name}: no symbols to subscribe")
        #: The channels recorded (a subset of ``supported_channels``, without repeats).
        self.channels: tuple[str, ...] = self.check_channels(channels)
        #: Trade ids already recorded on this run (snapshots after a reconnect repeat them).
        self.trade_ids = TradeIds()
        #: Symbols the exchange refused (dropped from ``symbols``); a refusal repeated for
        #: another channel's subscription names them again.
        self.refused: set[str] = set()
        self.quote_aliases = quote_aliases
        self._symbol_cache: dict[str, str] = {}
        #: Frames the connection loop sends after the current one is handled (a book resubscribe).
        self.outbox: list[str] = []
        #: Books resubscribed / resynchronised because they could no longer be trusted.
        self.book_resyncs = 0
        for raw in self.symbols:  # fail fast on a symbol we could not normalise
            if has_control_chars(raw):
                raise ValueError(f"{self.name}: symbol {raw!r} contains control characters")
            self.normalize(raw)

    @classmethod
    def check_channels(cls, channels: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        """``channels`` without repeats, or :class:`UnknownChannelError` naming the first one this
        collector does not offer and the ones it does; ``None`` means ``("ticker",)``."""
        if channels is None:
            return ("ticker",)
        out: list[str] = []
        for ch in channels:
            if ch not in cls.supported_channels:
                raise UnknownChannelError(
                    f"{cls.name}: unknown channel {ch!r}; accepted: {', '.join(cls.supported_channels)}")
            if ch not in out:
                out.append(ch)
        if not out:
            raise UnknownChannelError(
                f"{cls.name}: no channel given; accepted: {', '.join(cls.supported_channels)}")
        return tuple(out)

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

    def books_waiting(self) -> int | None:
        """Books waiting for a snapshot (out of sync), or ``None`` when no book is recorded:
        subscribed symbols without a book in ``self.books.books`` (a venue whose books are
        kept otherwise says so itself)."""
        books = getattr(self, "books", None)
        if books is None:
            return None
        held = books.books
        return sum(1 for s in self.symbols if s not in held)

    # -- symbol spelling (class-level: the registry, the simulators and the kernels use it) ----
    @classmethod
    def to_canonical_symbol(cls, raw: str, quote_aliases: Mapping[str, str] | None = None) -> str:
        """``BASE/QUOTE`` for this exchange's spelling ``raw``; ``quote_aliases`` defaults to the
        package's (none: every quote as spelled, ``BTCUSDT`` -> ``BTC/USDT``)."""
        aliases = DEFAULT_QUOTE_ALIASES if quote_aliases is None else quote_aliases
        return normalize_symbol(raw, cls.name, aliases)

    @classmethod
    def to_exchange_symbol(cls, symbol: str) -> str:
        """The exchange's spelling of canonical ``BASE/QUOTE`` (default: ``BASE/QUOTE`` itself).

        Text without ``/`` is taken to be in the exchange's spelling already and returned as is.
        Exchanges spelling symbols otherwise (``BTC-USD``, ``BTCUSDT``) override this.
        """
        if "/" not in symbol:
            return symbol
        base, sep, quote = symbol.partition("/")
        if not base or not quote or "/" in quote:
            raise ValueError(f"{cls.name}: symbol {symbol!r} is not BASE/QUOTE")
        return f"{base}/{quote}"

    @classmethod
    def split_exchange_symbol(cls, text: str) -> tuple[str, str] | None:
        """``(base, quote)`` of an upper-case symbol without separator that only this exchange
        spells that way (Kraken's ``XXBTZUSD``), or ``None`` to apply the generic rules
        (a known quote suffix: ``BTCUSDT``).  Used by :func:`sabot.symbols.split_symbol`.
        """
        return None

    def payload_symbols(self) -> dict[str, str]:
        """Subscribed symbols as the exchange spells them in data frames -> the user's spelling.

        A record whose ``raw_symbol`` is not a key here was not subscribed (and is rejected).
        """
        return {raw: raw for raw in self.symbols}

    def reject_symbol(self, raw: str) -> bool:
        """Drop ``raw`` (the exchange refused it) from the subscription; False if not subscribed."""
        if raw not in self.symbols:
            return False
        self.symbols.remove(raw)
        refused = getattr(self, "refused", None)
        if refused is not None:
            refused.add(raw)
        return True

    # -- shared ------------------------------------------------------------------------------
    def normalize(self, raw: str) -> str:
        """``BASE/QUOTE`` for this exchange's spelling (cached per raw spelling)."""
        sym = self._symbol_cache.get(raw)
        if sym is None:
            sym = normalize_symbol(raw, self.name, self.quote_aliases)
            if len(self._symbol_cache) < 4096:  # bounded: frames may carry any symbol at all
                self._symbol_cache[raw] = sym
        return sym

    def record_symbol(self, raw: Any) -> Any:
        """``BASE/QUOTE`` for a symbol in a data frame, or ``raw`` itself when that text cannot be
        normalised: such a record was not subscribed, and the record validation rejects it by
        name instead of the whole frame being skipped.  A symbol that is not text raises."""
        try:
            return self.normalize(raw)
        except ValueError:
            if type(raw) is str:  # anything but text stays a malformed frame
                return raw
            raise

    def parse(self, raw: str | bytes, recv_ns: int) -> Parsed:
        """Classify one raw frame; never raises (bad frames come back as ``UNKNOWN``)."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # orjson refuses numbers beyond float64 (``1e999``); the standard library reads them
            # as infinities, which the collector's record validation then rejects by field.
            try:
                msg = json.loads(raw)
            except (ValueError, TypeError, RecursionError):
                return Parsed(UNKNOWN, detail=f"malformed JSON ({exc}): {_excerpt(raw)}")
        if type(msg) is not dict:
            return Parsed(UNKNOWN, detail=f"not a JSON object: {_excerpt(raw)}")
        try:
            return self._parse(msg, recv_ns)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            return Parsed(UNKNOWN, detail=f"bad {type(exc).__name__} {exc}: {_excerpt(raw)}")


class UnknownChannelError(ValueError):
    """A channel the collector does not offer (the message names the accepted ones)."""


class TradeIds:
    """Trade ids already recorded, per raw symbol: the last ``keep`` of each (bounded memory).

    Venues resend recent trades as a snapshot on every subscribe; :meth:`fresh` tells which of
    them were not recorded yet, so a reconnect fills the gap without writing any trade twice.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._seen: dict[str, dict[str, None]] = {}
        self.duplicates = 0  # trades skipped because already recorded

    def fresh(self, raw_symbol: str, trade_id: str) -> bool:
        """True (and remembered) the first time ``trade_id`` is seen for ``raw_symbol``."""
        seen = self._seen.get(raw_symbol)
        if seen is None:
            if len(self._seen) >= 4096:  # frames may carry any symbol: stay bounded
                self._seen.clear()
            seen = self._seen[raw_symbol] = {}
        if trade_id in seen:
            self.duplicates += 1
            return False
        seen[trade_id] = None
        if len(seen) > self.keep:
            del seen[next(iter(seen))]  # the oldest (dicts keep insertion order)
        return True


def ms_to_ns(value: Any, field: str) -> int:
    """Integer milliseconds since the epoch (a JSON integer) as integer nanoseconds, else
    ``ValueError`` naming ``field``."""
    if type(value) is int and 0 <= value < 9_223_372_036_854:
        return value * 1_000_000
    raise ValueError(f"{field} {value!r} is not a time in integer milliseconds")


_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def int64(value: Any, field: str) -> int:
    """``value`` if it is a JSON integer that fits the int64 column, else ``ValueError`` naming ``field``."""
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return value
    raise ValueError(f"{field} {value!r} is not a 64-bit integer")


def num(value: Any) -> Any:
    """A JSON price/size value as float: numbers and decimal strings convert, ``None`` stays.

    Booleans are returned unchanged (``float(True)`` would silently make ``1.0``), so the record
    validation step rejects them naming the field.  Text that is not a number raises
    ``ValueError`` (the frame is malformed).
    """
    t = type(value)
    if t is float:
        return value
    if t is str or t is int:
        try:
            return float(value)
        except OverflowError:  # an integer beyond float64
            return float("inf") if value > 0 else float("-inf")
    if value is None or t is bool:
        return value
    raise TypeError(f"expected a number, got {value!r}")


def has_control_chars(text: str) -> bool:
    """Whether ``text`` holds a control character (C0, DEL, C1 or any other Unicode ``Cc``/``Cf``)."""
    if text.isprintable():
        return False
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in text)


def _excerpt(raw: str | bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return text if len(text) <= limit else text[:limit] + "..."


def dumps(obj: Any) -> str:
    """Compact JSON text (subscribe messages)."""
    return orjson.dumps(obj).decode()
