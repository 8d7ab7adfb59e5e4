"""The one connection loop every collector runs.

Connect → send the exchange's subscribe messages → read frames, parse, hand records to the
sinks.  Reconnects forever with exponential backoff plus jitter (``base`` doubling to ``max``,
reset after ``healthy_after`` seconds connected), resubscribing each time; a watchdog closes a
socket silent for ``stale_after`` seconds (or without data for ``data_stale_after`` seconds while
keepalives continue); Binance's ``serverShutdown`` and 24 h drop are normal reconnects.  Each
reconnect is logged with its gap.

Every record passes :class:`~sabot.collectors.validate.RecordValidator` before any sink: a bad
one is counted by reason in :class:`Stats`, logged rate-limited and written to the dead-letter
file when one is configured.  Bad frames are counted and logged the same way, exchange errors
are logged at error.  A symbol the exchange refuses is logged once with the exchange's text and
dropped from the subscription; only when no symbol is left does the loop stop (``Stats.fatal``).
A sink that raises is counted and logged, never fatal.

Channels: ``sinks`` is either a list (every record goes to each of them: the ticker-only
collectors) or ``{channel: [sinks]}``; each record goes to its channel's sinks only (ticker
records, ``DATA``, to ``"ticker"``; trade records, ``TRADES``, to ``"trades"``) after its
channel's validation (:class:`~sabot.collectors.validate.TradeValidator` for trades).
Book rows (``BOOK``) go to ``"book"``.  After each frame the loop sends what the collector put
in its ``outbox`` (a book resubscribe); ``book_resyncs`` is copied into :class:`Stats`.
"""
from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sabot.collectors.base import (
    BOOK, DATA, ERROR, KIND_CHANNELS, RECONNECT, REJECTED, SUBSCRIBED, TRADES, UNKNOWN, ExchangeCollector, Record,
)
from sabot.collectors.sinks import Sink
from sabot.collectors.validate import BookValidator, DeadLetter, RateLimitedLog, RecordValidator, TradeValidator

#: Sinks for every record (a list: the ticker channel) or per channel (``{"trades": [...]}``).
Sinks = Union[list, Mapping[str, list]]


def channel_sinks(sinks: Sinks) -> dict[str, list]:
    """``{channel: [sinks]}`` for either form of ``sinks`` (a list is the ticker channel's)."""
    if isinstance(sinks, Mapping):
        return {ch: list(s) for ch, s in sinks.items()}
    return {"ticker": list(sinks)}


def all_sinks(sinks: Sinks) -> list:
    """Every sink once, in channel order."""
    out: list = []
    for group in channel_sinks(sinks).values():
        out.extend(s for s in group if not any(s is o for o in out))
    return out

__all__ = ["Backoff", "Stats", "ConnectionSettings", "run_collector", "run", "rejection_metrics"]

log = logging.getLogger("sabot.collectors")


@dataclass
class Backoff:
    """Exponential backoff with jitter: delay = U(0.5, 1) * min(max, base * 2**attempt)."""

    base: float = 1.0
    max: float = 60.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = min(self.max, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Stats:
    """The connection loop's counters (read by the status line, the exit summary and metrics)."""

    messages: int = 0
    records: int = 0  # records that passed validation and were handed to every sink
    reconnects: int = 0
    skipped: int = 0  # malformed or unknown frames
    errors: int = 0  # exchange error messages
    connections: int = 0
    rejected: int = 0  # records refused by validation (or by a sink that could not store them)
    rejected_by: dict[str, int] = field(default_factory=dict)
    write_errors: int = 0  # sink calls that raised (the sinks count their own I/O retries)
    symbols_rejected: list[str] = field(default_factory=list)
    fatal: str | None = None  # why the loop stopped on its own (no symbol accepted)
    by_channel: dict[str, int] = field(default_factory=dict)  # records stored, per channel
    duplicate_trades: int = 0  # snapshot trades already recorded (skipped, never written twice)
    book_resyncs: int = 0  # books resubscribed after a checksum mismatch or a sequence gap
    books_waiting: int | None = None  # books waiting for a snapshot (None: no book channel)

    def line(self) -> str:
        # the first five fields keep their order: tools parse this line (``make demo``)
        text = (f"messages={self.messages} records={self.records} reconnects={self.reconnects} "
                f"skipped={self.skipped} exchange_errors={self.errors} rejected={self.rejected}")
        if set(self.by_channel) - {"ticker"}:
            text += "".join(f" {ch}={n}" for ch, n in sorted(self.by_channel.items()))
        if self.duplicate_trades:
            text += f" duplicate_trades={self.duplicate_trades}"
        if self.book_resyncs:
            text += f" book_resyncs={self.book_resyncs}"
        if self.books_waiting is not None:
            text += f" books_waiting={self.books_waiting}"
        if self.rejected_by:
            text += " rejected_by[" + ",".join(f"{k}={v}" for k, v in sorted(self.rejected_by.items())) + "]"
        return text


@dataclass
class ConnectionSettings:
    url: str | None = None
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    healthy_after: float = 60.0
    stale_after: float | None = None  # default: the exchange's
    status_interval: float = 30.0
    warn_first: int = 5  # first N bad frames logged at warning, the rest at debug
    open_timeout: float = 10.0
    subscribe_line: str = "Subscribed"
    data_stale_after: float | None = None  # reconnect after this long without data (keepalives aside)
    max_age_s: float = 86_400.0  # records with an event time older than this are rejected
    max_ahead_s: float = 60.0  # ... or further ahead of the local clock than this
    symbol_timeout: float = 30.0  # exchanges refusing by silence: report symbols without data by then


class _Edge:
    """What the loop does with records and frames it cannot store: count, log, dead-letter."""

    def __init__(self, collector: ExchangeCollector, settings: ConnectionSettings, stats: Stats,
                 dead_letter: DeadLetter | None) -> None:
        self.name = collector.name
        self.stats = stats
        self.dead_letter = dead_letter
        # a venue with more than one record kind brings its own (RecordValidator-based) checks
        validator_class = getattr(collector, "validator_class", RecordValidator)
        self.validator = validator_class(collector.payload_symbols(), settings.max_age_s,
                                         settings.max_ahead_s)
        #: Each record-carrying kind's validation (``DATA``: tickers, ``TRADES``: trades).
        self.validators = {DATA: self.validator,
                           TRADES: TradeValidator(collector.payload_symbols(), settings.max_age_s,
                                                  settings.max_ahead_s),
                           BOOK: BookValidator(collector.payload_symbols(), settings.max_age_s,
                                               settings.max_ahead_s)}
        self.reject_log = RateLimitedLog(f"{collector.name}: rejected record")
        self.write_log = RateLimitedLog(f"{collector.name}: sink write failed")
        self.seen: set[str] = set()  # payload symbols that produced a record
        self.silent_reported: set[str] = set()

    def set_symbols(self, symbols: dict[str, str]) -> None:
        """The subscribed symbols changed (the exchange refused some)."""
        for v in self.validators.values():
            v.symbols = dict(symbols)

    def reject(self, reason: str, text: str, record: Record, frame: Any = None) -> None:
        stats = self.stats
        stats.rejected += 1
        stats.rejected_by[reason] = stats.rejected_by.get(reason, 0) + 1
        self.reject_log(f"{reason}: {text}")
        if self.dead_letter is not None:
            self.dead_letter.write(reason, text, record=record, frame=frame)

    def skipped(self, detail: str, frame: Any) -> None:
        if self.dead_letter is not None:
            self.dead_letter.write("malformed_frame", detail, frame=frame)

    def write_failed(self, sink: Any, exc: BaseException) -> None:
        self.stats.write_errors += 1
        self.write_log(f"{type(sink).__name__}: {type(exc).__name__}: {exc}")


async def run_collector(
    collector: ExchangeCollector,
    sinks: Sinks,
    settings: ConnectionSettings,
    stop: asyncio.Event,
    stats: Stats | None = None,
    dead_letter: DeadLetter | None = None,
) -> Stats:
    """Run until ``stop`` is set; returns the counters.  Sinks are ticked but not closed.

    ``sinks``: a list (every record) or ``{channel: [sinks]}`` (see the module docstring)."""
    stats = stats if stats is not None else Stats()
    edge = _Edge(collector, settings, stats, dead_letter)
    routes = channel_sinks(sinks)
    sinks = all_sinks(sinks)
    for s in sinks:
        if hasattr(s, "on_reject"):
            s.on_reject = edge.reject
    backoff = Backoff(settings.backoff_base, settings.backoff_max)
    url = collector.url(settings.url)
    stale_after = settings.stale_after or collector.stale_after
    name = collector.name
    disconnected_at: float | None = None

    async def housekeeping() -> None:
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            for s in [*sinks, *([dead_letter] if dead_letter is not None else [])]:
                try:
                    s.tick()
                except Exception as exc:  # a sink must never stop the collector
                    edge.write_failed(s, exc)
            if time.monotonic() - last_status >= settings.status_interval:
                last_status = time.monotonic()
                waiting = getattr(collector, "books_waiting", None)
                if waiting is not None:
                    stats.books_waiting = waiting()
                log.info("%s status: %s", name, stats.line())

    keeper = asyncio.create_task(housekeeping())
    try:
        while not stop.is_set():
            connected_at = None
            try:
                ws = await asyncio.wait_for(
                    websockets.connect(
                        url,
                        max_size=None,
                        ping_interval=20 if collector.client_pings else None,
                        ping_timeout=20,
                        open_timeout=settings.open_timeout,
                        compression=None,
                    ),
                    settings.open_timeout + 1,
                )
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                log.warning("%s: connect to %s failed: %s", name, url, exc)
            else:
                connected_at = time.monotonic()
                stats.connections += 1
                if disconnected_at is not None:
                    stats.reconnects += 1
                    log.warning("%s: reconnected (#%d) after a gap of %.3f s",
                                name, stats.reconnects, connected_at - disconnected_at)
                else:
                    log.info("%s: connected to %s", name, url)
                try:
                    await _session(ws, collector, routes, settings, stats, stop, stale_after, edge)
                except ConnectionClosed as exc:
                    log.warning("%s: connection closed: %s", name, exc)
                except OSError as exc:
                    log.warning("%s: connection error: %s", name, exc)
                finally:
                    await ws.close()
                disconnected_at = time.monotonic()
            if stop.is_set():
                break
            if connected_at is not None and time.monotonic() - connected_at >= settings.healthy_after:
                backoff.reset()
            delay = backoff.next_delay()
            log.info("%s: reconnecting in %.2f s (%s)", name, delay, stats.line())
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
    finally:
        keeper.cancel()
        try:
            await keeper
        except asyncio.CancelledError:
            pass
    log.info("%s final: %s", name, stats.line())
    return stats


async def _session(ws, collector: ExchangeCollector, routes: dict[str, list], settings: ConnectionSettings,
                   stats: Stats, stop: asyncio.Event, stale_after: float, edge: _Edge) -> None:
    """One connected session: subscribe, then read until closed, stale, stopped or told to go."""
    name = collector.name
    session_start = time.monotonic()
    collector.on_connect()
    for text in collector.subscribe_messages():
        await ws.send(text)
    announced = False
    if not collector.subscribe_messages():  # subscribed by URL (Binance combined streams)
        log.info(settings.subscribe_line)
        announced = True
    last_rx = last_data = time.monotonic()
    data_stale_after = settings.data_stale_after
    silence_check = collector.rejects_by_silence and settings.symbol_timeout > 0

    async def watchdog() -> None:
        period = min(1.0, stale_after / 4, *( [data_stale_after / 4] if data_stale_after else []))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - last_rx > stale_after:
                log.warning("%s: no message for %.1f s; closing stale connection", name, stale_after)
                await ws.close(code=1000, reason="stale")
                return
            if data_stale_after and now - last_data > data_stale_after:
                log.warning("%s: no data for %.1f s (the connection is alive); reconnecting",
                            name, data_stale_after)
                await ws.close(code=1000, reason="no data")
                return
            if silence_check and now - session_start >= settings.symbol_timeout:
                _report_silent_symbols(collector, edge, settings.symbol_timeout, stats, stop)

    async def stopper() -> None:
        await stop.wait()
        await ws.close(code=1000, reason="collector stopping")

    tasks = [asyncio.create_task(watchdog()), asyncio.create_task(stopper())]
    parse = collector.parse
    time_ns = time.time_ns
    validators = edge.validators
    # record-carrying kind -> (its channel, its sinks); a channel nobody asked for has no sinks
    kind_sinks = {k: (ch, routes.get(ch, [])) for k, ch in KIND_CHANNELS.items()}
    by_channel = stats.by_channel
    trade_ids = getattr(collector, "trade_ids", None)
    outbox = getattr(collector, "outbox", None)
    if outbox is None:  # a collector class that does not call ExchangeCollector.__init__
        outbox = []
    seen = edge.seen
    derived = getattr(collector, "derived", None)
    if derived is None:  # a collector that derives no records from another channel's frames
        derived = []

    def deliver(kind: int, records: list[Record], raw: Any) -> None:
        """Validate ``records`` of a record-carrying ``kind`` and hand them to their channel's sinks."""
        channel, sinks = kind_sinks[kind]
        check = validators[kind].check
        if trade_ids is not None:
            stats.duplicate_trades = trade_ids.duplicates
        if kind == BOOK:
            stats.book_resyncs = collector.book_resyncs
        for rec in records:
            bad = check(rec)
            if bad is not None:
                edge.reject(bad[0], bad[1], rec, raw)
                continue
            seen.add(rec["raw_symbol"])
            for sink in sinks:
                try:
                    sink.write(rec)
                except Exception as exc:  # the sinks guard their I/O; this is the backstop
                    edge.write_failed(sink, exc)
            stats.records += 1
            by_channel[channel] = by_channel.get(channel, 0) + 1

    # a venue's own work beside the reading (Binance: REST book snapshots), handed ``deliver``
    session_task = getattr(collector, "session_task", None)
    if session_task is not None:
        tasks.append(asyncio.create_task(session_task(deliver)))
    try:
        async for raw in ws:
            recv_ns = time_ns()
            last_rx = time.monotonic()
            stats.messages += 1
            kind, records, detail = parse(raw, recv_ns)
            if outbox:  # a book to resubscribe: send it right away, then count it
                for text in outbox:
                    await ws.send(text)
                outbox.clear()
                stats.book_resyncs = collector.book_resyncs
            if kind == DATA or kind == TRADES or kind == BOOK:
                if records:
                    last_data = last_rx
                    deliver(kind, records, raw)
                elif trade_ids is not None:
                    stats.duplicate_trades = trade_ids.duplicates
                if derived:  # another channel's records made from this frame (Coinbase:
                    for extra_kind, extra in derived:  # tickers from top-of-book changes)
                        deliver(extra_kind, extra, raw)
                    derived.clear()
            elif kind == UNKNOWN:
                stats.skipped += 1
                level = logging.WARNING if stats.skipped <= settings.warn_first else logging.DEBUG
                log.log(level, "%s: skipped frame #%d: %s", name, stats.skipped, detail)
                edge.skipped(detail, raw)
            elif kind == REJECTED:
                if await _symbols_refused(ws, collector, records, detail, edge, stats):
                    stop.set()
                    break
            elif kind == ERROR:
                stats.errors += 1
                log.error("%s exchange error: %s", name, detail)
            elif kind == SUBSCRIBED:
                if not announced:
                    log.info(settings.subscribe_line)
                    announced = True
                log.debug("%s subscription ack: %s", name, detail)
            elif kind == RECONNECT:
                log.warning("%s: server announced %s; reconnecting", name, detail)
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _symbols_refused(ws: Any, collector: ExchangeCollector, records: list[Record], detail: str,
                           edge: _Edge, stats: Stats) -> bool:
    """Log and drop each refused symbol; subscribe the rest again where the exchange needs it.

    Returns True when no symbol is left (the caller stops the collector).
    """
    name = collector.name
    dropped = False
    for r in records:
        raw = r["raw_symbol"]
        if collector.reject_symbol(raw):
            dropped = True
            stats.symbols_rejected.append(raw)
            log.error("%s refused symbol %r (%s): %s", name, raw, collector.normalize(raw), detail)
    if not dropped:  # the same refusal again, for another channel: already handled
        return False
    edge.set_symbols(collector.payload_symbols())
    if not collector.symbols:
        stats.fatal = (f"{name} accepted none of the symbols "
                       f"({', '.join(stats.symbols_rejected)}); nothing to collect")
        log.error("%s", stats.fatal)
        return True
    if collector.resubscribe_after_reject:
        log.info("%s: subscribing the remaining symbols %s", name, ", ".join(collector.symbols))
        for text in collector.subscribe_messages():
            await ws.send(text)
    return False


def _report_silent_symbols(collector: ExchangeCollector, edge: _Edge, timeout: float, stats: Stats,
                           stop: asyncio.Event) -> None:
    """Exchanges that refuse an unlisted symbol by silence: name every symbol without data yet."""
    payload = collector.payload_symbols()
    silent = [(p, raw) for p, raw in payload.items() if p not in edge.seen and p not in edge.silent_reported]
    for p, raw in silent:
        edge.silent_reported.add(p)
        log.error("%s: no data for symbol %r (%s) within %g s of subscribing; %s sends nothing for a "
                  "symbol it does not list", collector.name, raw, collector.normalize(raw), timeout,
                  collector.name)
    if silent and not edge.seen and stats.fatal is None:
        stats.fatal = (f"{collector.name}: no data for any subscribed symbol "
                       f"({', '.join(sorted(payload.values()))}) within {timeout:g} s")
        log.error("%s", stats.fatal)
        stop.set()


def rejection_metrics(stats: Stats, exchange: str) -> Callable[[], Iterable[Any]]:
    """Prometheus families for the loop's rejections: ``sabot_collector_rejected_total{exchange,reason}``,
    ``sabot_collector_write_errors_total{exchange}`` and ``sabot_collector_book_resyncs_total{exchange}``
    (read from ``stats`` at scrape time)."""

    def families() -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("sabot_collector_rejected", "Records rejected at the edge, by reason",
                                  labels=["exchange", "reason"])
        for reason, n in sorted(stats.rejected_by.items()):
            fam.add_metric([exchange, reason], n)
        yield fam
        w = CounterMetricFamily("sabot_collector_write_errors", "Sink writes that raised",
                                labels=["exchange"])
        w.add_metric([exchange], stats.write_errors)
        yield w
        b = CounterMetricFamily("sabot_collector_book_resyncs",
                                "Books resubscribed after a checksum mismatch or a sequence gap",
                                labels=["exchange"])
        b.add_metric([exchange], stats.book_resyncs)
        yield b

    return families


def run(
    collector: ExchangeCollector,
    sinks: Sinks,
    settings: ConnectionSettings,
    duration: float | None = None,
    stats: Stats | None = None,
    dead_letter: DeadLetter | None = None,
) -> Stats:
    """Blocking entry point: run until ``duration`` elapses, SIGINT or SIGTERM; close sinks.

    ``sinks``: a list (every record) or ``{channel: [sinks]}``."""
    stats = stats if stats is not None else Stats()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, _on_signal, sig, stop)
            except (NotImplementedError, RuntimeError):  # not the main thread / platform
                pass
        timer = loop.call_later(duration, stop.set) if duration else None
        try:
            await run_collector(collector, sinks, settings, stop, stats, dead_letter)
        finally:
            if timer:
                timer.cancel()

    try:
        asyncio.run(main())
    finally:
        for s in all_sinks(sinks):
            try:
                s.close()
            except Exception:  # one failing sink must not stop the others from closing
                log.exception("%s: closing sink %r failed", collector.name, s)
        if dead_letter is not None:
            dead_letter.close()
    return stats


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    log.info("received %s; stopping", signal.Signals(sig).name)
    stop.set()
