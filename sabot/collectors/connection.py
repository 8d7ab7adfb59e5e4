"""The one connection loop every collector runs (spec stream_and_collectors.md §2).

Connect → send the exchange's subscribe messages → read frames, parse, hand records to the
sinks.  Reconnects forever with exponential backoff plus jitter (``base`` doubling to ``max``,
reset after ``healthy_after`` seconds connected), resubscribing each time; a watchdog closes a
socket silent for ``stale_after`` seconds; Binance's ``serverShutdown`` and 24 h drop are normal
reconnects.  Each reconnect is logged with its gap.  Bad frames are counted and logged (first
few at warning, then debug), exchange errors are logged at error; nothing here is fatal.
"""
from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from dataclasses import dataclass, field

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sabot.collectors.base import (
    DATA, ERROR, RECONNECT, SUBSCRIBED, UNKNOWN, ExchangeCollector,
)
from sabot.collectors.sinks import Sink

__all__ = ["Backoff", "Stats", "ConnectionSettings", "run_collector", "run"]

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
    messages: int = 0
    records: int = 0
    reconnects: int = 0
    skipped: int = 0
    errors: int = 0
    connections: int = 0

    def line(self) -> str:
        return (f"messages={self.messages} records={self.records} reconnects={self.reconnects} "
                f"skipped={self.skipped} exchange_errors={self.errors}")


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


async def run_collector(
    collector: ExchangeCollector,
    sinks: list[Sink],
    settings: ConnectionSettings,
    stop: asyncio.Event,
    stats: Stats | None = None,
) -> Stats:
    """Run until ``stop`` is set; returns the counters.  Sinks are ticked but not closed."""
    stats = stats or Stats()
    backoff = Backoff(settings.backoff_base, settings.backoff_max)
    url = collector.url(settings.url)
    stale_after = settings.stale_after or collector.stale_after
    name = collector.name
    disconnected_at: float | None = None

    async def housekeeping() -> None:
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            for s in sinks:
                s.tick()
            if time.monotonic() - last_status >= settings.status_interval:
                last_status = time.monotonic()
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
                    await _session(ws, collector, sinks, settings, stats, stop, stale_after)
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


async def _session(ws, collector: ExchangeCollector, sinks: list[Sink], settings: ConnectionSettings,
                   stats: Stats, stop: asyncio.Event, stale_after: float) -> None:
    """One connected session: subscribe, then read until closed, stale, stopped or told to go."""
    name = collector.name
    collector.on_connect()
    for text in collector.subscribe_messages():
        await ws.send(text)
    announced = False
    if not collector.subscribe_messages():  # subscribed by URL (Binance combined streams)
        log.info(settings.subscribe_line)
        announced = True
    last_rx = time.monotonic()

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(min(1.0, stale_after / 4))
            if time.monotonic() - last_rx > stale_after:
                log.warning("%s: no message for %.1f s; closing stale connection", name, stale_after)
                await ws.close(code=1000, reason="stale")
                return

    async def stopper() -> None:
        await stop.wait()
        await ws.close(code=1000, reason="collector stopping")

    tasks = [asyncio.create_task(watchdog()), asyncio.create_task(stopper())]
    parse = collector.parse
    time_ns = time.time_ns
    write_fns = [s.write for s in sinks]
    try:
        async for raw in ws:
            recv_ns = time_ns()
            last_rx = time.monotonic()
            stats.messages += 1
            kind, records, detail = parse(raw, recv_ns)
            if kind == DATA:
                for rec in records:
                    for w in write_fns:
                        w(rec)
                stats.records += len(records)
            elif kind == UNKNOWN:
                stats.skipped += 1
                level = logging.WARNING if stats.skipped <= settings.warn_first else logging.DEBUG
                log.log(level, "%s: skipped frame #%d: %s", name, stats.skipped, detail)
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


def run(
    collector: ExchangeCollector,
    sinks: list[Sink],
    settings: ConnectionSettings,
    duration: float | None = None,
    stats: Stats | None = None,
) -> Stats:
    """Blocking entry point: run until ``duration`` elapses, SIGINT or SIGTERM; close sinks."""
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
            await run_collector(collector, sinks, settings, stop, stats)
        finally:
            if timer:
                timer.cancel()

    try:
        asyncio.run(main())
    finally:
        for s in sinks:
            try:
                s.close()
            except Exception:  # one failing sink must not stop the others from closing
                log.exception("%s: closing sink %r failed", collector.name, s)
    return stats


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    log.info("received %s; stopping", signal.Signals(sig).name)
    stop.set()
