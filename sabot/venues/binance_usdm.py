"""Binance USDⓈ-M perpetual futures: everything sabot knows about the venue, in one module.

Registered as ``binance-usdm`` with ``market="perp"`` (so the spot applications, which iterate
:func:`sabot.venues.venues`, leave it out; :func:`sabot.venues.perp_venues` lists it), 5 bps
taker fee by default.  Symbols are spelled ``BTCUSDT`` in payloads and ``btcusdt`` in stream
names; the contracts are USDT-margined, so ``BTC/USD`` is spelled ``BTCUSDT`` as on Binance spot.
The local exchange server is :class:`sabot.sim.binance_usdm.BinanceUsdmSim`.

Collector: combined streams ``<s>@bookTicker`` + ``<s>@markPrice@1s`` on
``wss://fstream.binance.com/stream?streams=...``.  Two record kinds come out of one connection:

* **perp ticker** (Kafka topic ``binance-usdm-perp-ticker``), one per futures ``bookTicker``
  frame ``{"e":"bookTicker","u","E","T","s","b","B","a","A"}``: the common ticker columns with
  ``timestamp`` = the exchange event time ``E``, ``sequence`` = ``u`` and the extra column
  ``transaction_time`` = ``T`` (unlike spot's bookTicker, the futures one carries both times);
* **funding** (topic ``binance-usdm-funding``), one per ``markPriceUpdate`` frame
  ``{"e":"markPriceUpdate","E","s","p","i","P","r","T"}``: ``mark_price`` (p),
  ``index_price`` (i), ``estimated_settle_price`` (P), ``funding_rate`` (r, per funding
  interval, positive: longs pay shorts) and ``next_funding_time`` (T) - see
  :data:`FUNDING_SCHEMA`.

Records pass the shared validation (:mod:`sabot.collectors.validate`): a ticker as every spot
ticker; a funding record needs ``mark_price`` and ``index_price`` finite and > 0 (and
``estimated_settle_price`` when present), ``funding_rate`` finite, ``next_funding_time`` an
integer time, and the same symbol and event-time checks (:class:`PerpRecordValidator`).

Sinks: with ``-F`` the tickers go to the ``-o`` file and the funding records to the file next
to it named ``<stem>-funding.parquet`` (:class:`PerpParquetSink`); with ``-k`` the tickers go to
``--topic`` and the funding records to the matching funding topic (:func:`funding_topic_for`,
:class:`PerpKafkaSink`).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa

from sabot.collectors.base import (
    DATA, ExchangeCollector, Parsed, Record,
    has_control_chars, int64, num, parsed,
)
from sabot.collectors.validate import RecordValidator, _bad_number, ns_text
from sabot.venues.binance import control_message
from sabot.venues.registry import Venue, register

__all__ = ["BinanceUsdmCollector", "PerpRecordValidator", "PerpKafkaSink", "PerpParquetSink",
           "FUNDING_SCHEMA", "FUNDING_TOPIC", "VENUE", "funding_topic_for", "funding_path_for",
           "is_funding_record"]

NAME = "binance-usdm"

log = logging.getLogger("sabot.collectors")

# (sabot.schema and the sinks are imported where used: sabot.schema imports the venue registry,
# which imports this module)
TS_NS_UTC = pa.timestamp("ns", tz="UTC")

#: The funding record (one per ``markPriceUpdate``); Kafka carries the same fields as flat JSON
#: with the times as integer nanoseconds since the epoch.
FUNDING_SCHEMA = pa.schema([
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("raw_symbol", pa.string(), nullable=False),
    pa.field("timestamp", TS_NS_UTC, nullable=False),
    pa.field("recv_timestamp", TS_NS_UTC, nullable=False),
    pa.field("mark_price", pa.float64()),
    pa.field("index_price", pa.float64()),
    pa.field("estimated_settle_price", pa.float64()),
    pa.field("funding_rate", pa.float64()),
    pa.field("next_funding_time", TS_NS_UTC),
    pa.field("time_source", pa.string()),  # what ``timestamp`` is (sabot.schema): "exchange"
])

#: How a funding record's values are checked (as ``Venue.field_checks`` spells checks).
FUNDING_CHECKS: Mapping[str, str] = {"mark_price": "positive", "index_price": "positive",
                                     "estimated_settle_price": "positive", "funding_rate": "finite"}
#: The funding values a record cannot go without.
FUNDING_REQUIRED = ("mark_price", "index_price", "funding_rate", "next_funding_time")

_MS_LIMIT = (2 ** 63 - 1) // 1_000_000  # the largest ms that still fits int64 ns
_SIGN = {"positive": 1, "non_negative": 0, "finite": -1}
_INF = math.inf


def is_funding_record(record: Mapping[str, Any]) -> bool:
    """Whether a record from this venue is a funding record (else it is a perp ticker)."""
    return "funding_rate" in record


def funding_topic_for(ticker_topic: str) -> str:
    """The funding topic that goes with a perp ticker topic: ``binance-usdm-perp-ticker`` ->
    ``binance-usdm-funding``; any other name gets ``-funding`` appended."""
    suffix = "-perp-ticker"
    if ticker_topic.endswith(suffix) and len(ticker_topic) > len(suffix):
        return ticker_topic[: -len(suffix)] + "-funding"
    return ticker_topic + "-funding"


def funding_path_for(path: str | Path) -> Path:
    """The funding Parquet file next to the tickers' ``path``: ``x.parquet`` -> ``x-funding.parquet``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-funding{path.suffix or '.parquet'}")


def _ms_to_ns(value: Any, field: str) -> int:
    """A millisecond time from a frame as integer ns; ``ValueError`` naming ``field`` otherwise."""
    ms = int64(value, field)
    if not -_MS_LIMIT <= ms <= _MS_LIMIT:
        raise ValueError(f"{field} {value!r} ms is out of the nanosecond time range")
    return ms * 1_000_000


class PerpRecordValidator(RecordValidator):
    """The shared record validation, plus the funding record's own fields.

    A perp ticker is checked exactly as a spot ticker.  A funding record is rejected (reason
    naming field and value) when a required value (:data:`FUNDING_REQUIRED`) is missing, a
    value breaks :data:`FUNDING_CHECKS`, ``next_funding_time`` is not an integer time, or its
    symbol or event ``timestamp`` fails the same checks as a ticker's.
    """

    def check(self, rec: Record) -> tuple[str, str] | None:
        if not is_funding_record(rec):
            return super().check(rec)
        raw = rec.get("raw_symbol")
        if raw not in self.symbols:
            if isinstance(raw, str) and has_control_chars(raw):
                return "control_characters", f"raw_symbol={raw!r} contains control characters"
            return "unsubscribed_symbol", f"raw_symbol={raw!r} was not subscribed"
        for name in FUNDING_REQUIRED:
            if rec.get(name) is None:
                return "missing", f"{name}=None is required"
        for name, check in FUNDING_CHECKS.items():
            x = rec.get(name)
            if x is None or (type(x) is float and -_INF < x < _INF
                             and (check == "finite" or x > 0)):
                continue
            bad = _bad_number(x, name, _SIGN[check])
            if bad is not None:
                return bad
        nft = rec["next_funding_time"]
        if type(nft) is not int:
            return "not_a_number", f"next_funding_time={nft!r} is not an integer time"
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


class PerpKafkaSink:
    """One Kafka producer (:class:`~sabot.collectors.sinks.KafkaSink`) for both record kinds:
    tickers to ``topic``, funding records to :func:`funding_topic_for` ``(topic)``.

    Its delivery counters (``delivered``, ``undelivered``, ...: the exit code) cover both;
    ``produced_by_topic`` splits what was produced.  Every other attribute is the producer
    sink's.
    """

    def __init__(self, bootstrap: str | None, topic: str, *args: Any, **kwargs: Any) -> None:
        from sabot.collectors.sinks import KafkaSink

        self._sink = KafkaSink(bootstrap, topic, *args, **kwargs)
        self.ticker_topic = topic
        self.funding_topic = funding_topic_for(topic)
        self.produced_by_topic: dict[str, int] = {topic: 0, self.funding_topic: 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_sink"], name)

    @property
    def on_reject(self) -> Callable[..., None] | None:
        return self._sink.on_reject

    @on_reject.setter
    def on_reject(self, callback: Callable[..., None] | None) -> None:
        self._sink.on_reject = callback

    def _to(self, topic: str, call: Callable[[], None]) -> None:
        self._sink.topic = topic
        try:
            call()
        finally:
            self._sink.topic = self.ticker_topic

    def check(self, timeout: float = 10.0) -> None:
        """Both topics: unreachable raises ``KafkaUnavailable``; an unlisted topic is logged."""
        self._sink.check(timeout)
        self._to(self.funding_topic, lambda: self._sink.check(timeout))

    def write(self, record: Record) -> None:
        topic = self.funding_topic if is_funding_record(record) else self.ticker_topic
        before = self._sink.produced
        self._to(topic, lambda: self._sink.write(record))
        self.produced_by_topic[topic] += self._sink.produced - before

    def tick(self) -> None:
        self._sink.tick()

    def close(self, timeout: float | None = None) -> None:
        self._sink.close(timeout)
        log.info("Kafka: produced %s",
                 ", ".join(f"{n} to '{t}'" for t, n in self.produced_by_topic.items()))


class PerpParquetSink:
    """Two Parquet files, one per record kind: tickers in ``path``, funding records in
    :func:`funding_path_for` ``(path)``; each a crash-safe :class:`ParquetSink`.

    Presents the one-sink interface the collector application reads: ``path`` and
    ``parts_dir`` are the tickers' file, ``rows_written``, ``unwritten`` and ``write_errors``
    add up both, ``finalise_error`` names whichever file could not be finalised.
    """

    def __init__(self, path: str | Path, exchange: str, *args: Any, **kwargs: Any) -> None:
        from sabot.collectors.sinks import ParquetSink

        self.tickers = ParquetSink(path, exchange, *args, **kwargs)
        self.funding = ParquetSink(funding_path_for(path), exchange, *args, **kwargs)
        self.funding.schema = FUNDING_SCHEMA  # the funding file's rows
        self.path = self.tickers.path
        self.funding_path = self.funding.path
        self.parts_dir = self.tickers.parts_dir

    @property
    def on_reject(self) -> Callable[..., None] | None:
        return self.tickers.on_reject

    @on_reject.setter
    def on_reject(self, callback: Callable[..., None] | None) -> None:
        self.tickers.on_reject = callback
        self.funding.on_reject = callback

    @property
    def rows_written(self) -> int:
        return self.tickers.rows_written + self.funding.rows_written

    @property
    def unwritten(self) -> int:
        return self.tickers.unwritten + self.funding.unwritten

    @property
    def write_errors(self) -> int:
        return self.tickers.write_errors + self.funding.write_errors

    @property
    def buffered(self) -> int:
        return self.tickers.buffered + self.funding.buffered

    @property
    def finalise_error(self) -> str | None:
        errors = [f"{s.path}: {s.finalise_error}" for s in (self.tickers, self.funding)
                  if s.finalise_error]
        return "; ".join(errors) or None

    def write(self, record: Record) -> None:
        (self.funding if is_funding_record(record) else self.tickers).write(record)

    def tick(self) -> None:
        self.tickers.tick()
        self.funding.tick()

    def close(self) -> None:
        self.tickers.close()
        self.funding.close()
        log.info(
            "Parquet: %d perp tickers in '%s', %d funding records in '%s'",
            self.tickers.rows_written, self.tickers.path, self.funding.rows_written, self.funding.path)


class BinanceUsdmCollector(ExchangeCollector):
    """USDⓈ-M futures ``bookTicker`` (perp tickers) and ``markPrice@1s`` (funding records)."""

    name = NAME
    default_url = "wss://fstream.binance.com"
    default_symbols = ("BTCUSDT", "ETHUSDT")
    client_pings = False  # the server pings; websockets answers with a pong
    subscribed_template = "Connected! Streaming to {short}..."
    stale_after = 60.0
    rejects_by_silence = True  # an unlisted symbol's streams send nothing, as on spot
    #: The mark-price stream: ``markPrice@1s`` (every second) or ``markPrice`` (every 3 s).
    mark_price_stream = "markPrice@1s"
    #: What the shared loop and the collector application use for the two record kinds.
    validator_class = PerpRecordValidator
    kafka_sink = PerpKafkaSink
    parquet_sink = PerpParquetSink

    @classmethod
    def to_exchange_symbol(cls, symbol: str) -> str:
        """``BTC/USD`` -> ``BTCUSDT`` (the contracts are USDT-margined), ``BTC/USDT`` ->
        ``BTCUSDT``; text without ``/`` is returned as is."""
        if "/" not in symbol:
            return symbol
        base, quote = super().to_exchange_symbol(symbol).split("/")
        return f"{base}{'USDT' if quote == 'USD' else quote}"

    def payload_symbols(self) -> dict[str, str]:
        """Payloads spell symbols in upper case (``"s":"BTCUSDT"``) whatever the stream name's case."""
        return {raw.upper(): raw for raw in self.symbols}

    def url(self, base_url: str | None = None) -> str:
        base = (base_url or self.default_url).rstrip("/")
        if "streams=" in base:
            return base
        streams = "/".join(f"{s.lower()}@{kind}" for s in self.symbols
                           for kind in ("bookTicker", self.mark_price_stream))
        return f"{base}/stream?streams={streams}"

    def subscribe_messages(self) -> list[str]:
        return []  # the combined-stream URL subscribes

    def _parse(self, msg: dict, recv_ns: int) -> Parsed:
        data = msg.get("data")
        if data is None:
            data = msg  # raw (/ws/) payload or a control reply
        elif type(data) is not dict:
            raise TypeError("'data' is not an object")
        event = data.get("e")
        if event == "bookTicker":
            raw = data["s"]
            return parsed((DATA, [{
                "exchange": NAME,
                "symbol": self._symbol_cache.get(raw) or self.record_symbol(raw),
                "raw_symbol": raw,
                "timestamp": _ms_to_ns(data["E"], "E"),
                "recv_timestamp": recv_ns,
                "bid": num(data["b"]),
                "ask": num(data["a"]),
                "bid_size": num(data["B"]),
                "ask_size": num(data["A"]),
                "price": None,
                "volume_24h": None,
                "sequence": int64(data["u"], "u"),
                "time_source": "exchange",  # E: the futures bookTicker carries its event time
                "transaction_time": _ms_to_ns(data["T"], "T"),
            }], ""))
        if event == "markPriceUpdate":
            raw = data["s"]
            return parsed((DATA, [{
                "exchange": NAME,
                "symbol": self._symbol_cache.get(raw) or self.record_symbol(raw),
                "raw_symbol": raw,
                "timestamp": _ms_to_ns(data["E"], "E"),
                "recv_timestamp": recv_ns,
                "mark_price": num(data["p"]),
                "index_price": num(data["i"]),
                "estimated_settle_price": num(data.get("P")),
                "funding_rate": num(data["r"]),
                "next_funding_time": _ms_to_ns(data["T"], "T"),
                "time_source": "exchange",
            }], ""))
        return control_message(msg, event)


#: The funding records' Kafka topic.
FUNDING_TOPIC = funding_topic_for(f"{NAME}-perp-ticker")

VENUE = register(Venue(
    name=NAME,
    collector=BinanceUsdmCollector,
    simulator="sabot.sim.binance_usdm:BinanceUsdmSim",
    default_fee_bps=5.0,
    extra_fields=(pa.field("transaction_time", TS_NS_UTC),),
    sim_profile={"noise": 1.5e-4, "half_spread": 0.1e-4, "latency_ms": 15.0, "decimals": 1},
    ticker_topic=f"{NAME}-perp-ticker",
    market="perp",
))
