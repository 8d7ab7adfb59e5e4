"""Ctrl+C and task cancellation during ``zip``/``zip_async``, ``merge`` and ``asof_join``
iteration (sync and async): every source is closed, no worker thread is left, and nothing
raises but the interruption itself."""
from __future__ import annotations

import asyncio
import signal
import threading
from typing import Callable, Dict, List, Optional

import pyarrow as pa
import pytest

from sabot.api import Stream

from stream_data import produce, ticker_table

TS = pa.timestamp("ns", tz="UTC")
WAIT_S = 30.0  # upper bound on any wait for a condition (never reached when things work)


@pytest.fixture(autouse=True)
def ctrl_c_raises_keyboard_interrupt():
    """SIGINT as in a terminal (Python's default handler), whatever the test runner set."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class Source:
    """A generator source that records being closed; ``hold_after`` makes it block (as a
    quiet live feed does) after that many batches until :attr:`gate` is set; ``interrupt_at``
    raises SIGINT (Ctrl+C) in the reading thread before that batch."""

    def __init__(self, name: str, n: int = 40, hold_after: Optional[int] = None,
                 interrupt_at: Optional[int] = None) -> None:
        self.name, self.n, self.hold_after, self.interrupt_at = name, n, hold_after, interrupt_at
        self.closed = threading.Event()
        self.holding = threading.Event()
        self.gate = threading.Event()

    def stream(self) -> Stream:
        def gen():
            try:
                for i in range(self.n):
                    if i == self.hold_after:
                        self.holding.set()
                        self.gate.wait(WAIT_S)
                    if i == self.interrupt_at:
                        signal.raise_signal(signal.SIGINT)
                    yield pa.record_batch({"timestamp": pa.array([i * 1000], TS),
                                           "symbol": ["BTC-USD"], self.name: [float(i)]})
            finally:
                self.closed.set()

        return Stream.from_batches(gen())


PLANS: Dict[str, Callable[[Stream, Stream], object]] = {
    "zip": lambda a, b: Stream.zip(a, b),
    "merge": lambda a, b: Stream.merge(a, b),
    "asof_join": lambda a, b: a.asof_join(b, by="symbol"),
}
ASYNC_PLANS: Dict[str, Callable[[Source, Source], object]] = {
    "zip_async": lambda a, b: Stream.zip_async(a.stream(), b.stream()),
    "merge": lambda a, b: Stream.merge(a.stream(), b.stream()),
    "asof_join": lambda a, b: a.stream().asof_join(b.stream(), by="symbol"),
}


def _stream_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sabot-stream")]


@pytest.mark.parametrize("kind", sorted(ASYNC_PLANS))
def test_cancelling_the_task_while_a_source_is_read_closes_everything(kind):
    a, b = Source("a", hold_after=3), Source("b")
    got: List[object] = []

    async def consume() -> None:
        async for item in ASYNC_PLANS[kind](a, b):
            got.append(item)

    async def main() -> None:
        task = asyncio.create_task(consume())
        assert await asyncio.to_thread(a.holding.wait, WAIT_S)  # the worker is inside a read
        task.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the task while the read is blocked
        a.gate.set()            # the quiet feed sends its next batch
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert a.closed.is_set() and b.closed.is_set()
    assert _stream_threads() == []


@pytest.mark.parametrize("kind", sorted(ASYNC_PLANS))
def test_ctrl_c_under_asyncio_run_ends_cleanly(kind):
    a, b = Source("a"), Source("b")

    async def main() -> None:
        async for _ in ASYNC_PLANS[kind](a, b):
            signal.raise_signal(signal.SIGINT)  # asyncio.run cancels this task
            await asyncio.sleep(WAIT_S)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert a.closed.is_set() and b.closed.is_set()
    assert _stream_threads() == []


@pytest.mark.parametrize("kind", sorted(PLANS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_ctrl_c_inside_a_sync_read_closes_every_source(kind, side):
    a = Source("a", interrupt_at=5 if side == "left" else None)
    b = Source("b", interrupt_at=5 if side == "right" else None)
    left, right = a.stream(), b.stream()  # the caller keeps its streams
    with pytest.raises(KeyboardInterrupt):
        for _ in PLANS[kind](left, right):
            pass
    assert a.closed.is_set() and b.closed.is_set()


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_ctrl_c_in_the_sync_loop_body_closes_every_source(kind):
    a, b = Source("a"), Source("b")
    left, right = a.stream(), b.stream()
    with pytest.raises(KeyboardInterrupt):
        for _ in PLANS[kind](left, right):
            signal.raise_signal(signal.SIGINT)
    assert a.closed.is_set() and b.closed.is_set()


def test_cancelling_zip_async_of_kafka_sources_closes_the_consumers(kafka_broker, unique_topic):
    from sabot.kafka import fast_consumer_config

    streams = []
    for venue in ("coinbase", "kraken"):
        topic = unique_topic(venue)
        kafka_broker.create_topic(topic, partitions=1)
        produce(kafka_broker.bootstrap, topic, ticker_table(venue, 50, seed=3))
        streams.append(Stream.from_kafka(kafka_broker.bootstrap, topic, unique_topic("g"),
                                         from_beginning=True, order_by="timestamp",
                                         **fast_consumer_config()))
    sources = [s.kafka_sources()[0] for s in streams]
    opened: List[bool] = []
    got: List[object] = []

    async def consume() -> None:
        async for pair in Stream.zip_async(*streams, idle_timeout_ms=100):
            opened.extend(s._consumer is not None for s in sources)
            got.append(pair)

    async def main() -> None:
        task = asyncio.create_task(consume())
        while not got and not task.done():  # the first span: both consumers are reading
            await asyncio.wait([task], timeout=0.05)
        task.cancel()  # the worker is now polling the (quiet) topics for the next span
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert got and all(opened)
    assert [s._consumer for s in sources] == [None, None]  # both closed
    assert _stream_threads() == []
