"""The runtime of a Stream: the one run loop, and what a run owns (checkpoints, tasks, metrics).

Every way of running a plan — iterating it, ``to_parquet``, ``to_kafka``, ``Stream.zip`` — goes
through :func:`drive`, which consumes the plan's events and

* hands each batch (or, for ``zip``, each tuple of batches) to its caller,
* runs each :class:`~._events.Commit` (through the sink's ``ack`` when there is a sink) and
  then lets the checkpointer decide whether to checkpoint (every operator is between batches),
* treats an idle signal as a point between batches too,
* keeps :class:`~._events.Close` events until the run ends, then closes the sources,
* stops at the first point between batches after :meth:`Stream.stop`,
* at the end runs the sink's ``finish``, a final checkpoint, and releases the checkpointer.

:func:`prepare_run` restores the run's state before any event is read: a
:class:`~._checkpoint.Checkpointer` (``checkpoint_dir``) or :class:`~._tasks.TaskManager`
(``changelog_topic``), chosen by :func:`checkpointer_for`, and the Prometheus endpoints of
``metrics_port``.  The sources never import this layer: a Kafka source only yields events and
keeps its positions; the runtime reads them and commits them with each checkpoint.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional

import pyarrow as pa

from ._checkpoint import Checkpointer
from ._events import IDLE, Close, Commit, Event, TaskSwitch, close_iterator
from ._plan import Node, checkpoint_chain, kafka_sources
from ._tasks import TaskManager

logger = logging.getLogger(__name__)


def checkpointer_for(stream: Any, node: Node) -> Any:
    """The Checkpointer (``checkpoint_dir``) or TaskManager (``changelog_topic``) of a plan, or
    None when no Kafka source asks for checkpoints.  The plan must be linear from exactly one
    Kafka source (:func:`~._plan.checkpoint_chain`; ValueError otherwise)."""
    wanted = [s for s in kafka_sources(node)
              if s.checkpoint_dir is not None or s.changelog_topic is not None]
    if not wanted:
        return None
    what = "changelog_topic" if wanted[0].changelog_topic is not None else "checkpoint_dir"
    source, chain = checkpoint_chain(node, what)
    if source.changelog_topic is not None:
        return TaskManager(stream, source, chain)
    return Checkpointer(stream, source)


class RunHooks:
    """Per-run checkpointing and metrics, called by :func:`drive` (no-ops when not configured)."""

    def __init__(self, checkpointer: Any = None, metrics: Any = None,
                 stop: Optional[threading.Event] = None) -> None:
        self.checkpointer = checkpointer
        self.latency = metrics.latency if metrics is not None else None
        self._servers = list(metrics.servers) if metrics is not None else []
        self._next_check = 0.0
        self._stop = stop

    def stopping_at(self, ev: Any) -> bool:
        """:meth:`Stream.stop` was called and the run may end after ``ev``: after a commit or
        idle signal (every operator between batches; consistent with the source's
        positions), or after any batch when there is nothing to checkpoint."""
        return (self._stop is not None and self._stop.is_set()
                and (self.checkpointer is None
                     or not isinstance(ev, (pa.RecordBatch, TaskSwitch))))

    def bind_flush(self, flush: Optional[Callable[[], None]]) -> None:
        """Give a TaskManager the sink's flush (it checkpoints inside group rebalances)."""
        if self.checkpointer is not None and hasattr(self.checkpointer, "sink_flush"):
            self.checkpointer.sink_flush = flush

    def batch(self, batch: pa.RecordBatch) -> None:
        if self.latency is not None:
            self.latency.observe_batch(batch)

    def commit(self, flush: Optional[Callable[[], None]]) -> None:
        """A commit or an idle source reached the end of the plan: every operator is between
        batches.  Also (once a second) restarts a metrics endpoint whose thread died."""
        if self._servers and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + 1.0
            for server in self._servers:
                server.ensure_running()
        if self.checkpointer is not None:
            self.checkpointer.on_commit(flush)

    def end(self, flush: Optional[Callable[[], None]]) -> None:
        if self.checkpointer is not None:
            self.checkpointer.checkpoint(flush)

    def close(self) -> None:
        """The run is over: release what the checkpointer holds (checkpoint directory lock)."""
        if self.checkpointer is not None and hasattr(self.checkpointer, "close"):
            self.checkpointer.close()


def drive(events: Iterator[Event], hooks: RunHooks, *,
          ack: Optional[Callable[[Commit], None]] = None,
          finish: Optional[Callable[[], None]] = None,
          flush: Optional[Callable[[], None]] = None) -> Iterator[Any]:
    """The one run loop: yield every batch (or ``zip`` tuple) of ``events`` to the caller.

    ``ack``: how a commit is run (a sink defers it until its rows are durable; default: run it
    at once, i.e. once the caller has asked for the next batch).  ``finish``: the sink's final
    flush, run when the events end and before the final checkpoint and before the sources
    close.  ``flush``: what a checkpoint flushes first (the sink).  Closing the generator early
    (``take``, an error in the caller) closes the sources and releases the checkpointer without
    a final checkpoint."""
    hooks.bind_flush(flush)
    closes: List[Close] = []
    try:
        for ev in events:
            if isinstance(ev, pa.RecordBatch):
                hooks.batch(ev)
                yield ev
            elif isinstance(ev, tuple):
                yield ev
            elif isinstance(ev, Commit):
                if ack is None:
                    ev.run()
                else:
                    ack(ev)
                hooks.commit(flush)
            elif ev is IDLE:
                hooks.commit(flush)
            elif isinstance(ev, Close):
                closes.append(ev)
            if hooks.stopping_at(ev):
                break
        if finish is not None:
            finish()
        hooks.end(flush)
    finally:
        close_iterator(events)
        for c in closes:
            c.run()
        hooks.close()


async def _settle(call: Future, stop: Optional[threading.Event] = None) -> None:
    """Wait until ``call`` (running on a worker thread) has finished, whatever it returns or
    raises, ignoring cancellation requests meanwhile: the thread cannot be interrupted, and
    what it is running must not be touched before it returns.  ``stop`` is set again every
    tenth of a second (a run that was just starting clears its stop event once)."""
    while not call.done():
        if stop is not None:
            stop.set()
        waiter = asyncio.wrap_future(call)
        waiter.add_done_callback(_retrieve)
        try:
            await asyncio.wait([waiter], timeout=0.1)
        except asyncio.CancelledError:
            continue  # asked again to stop: the call still runs


def _retrieve(waiter: "asyncio.Future[Any]") -> None:
    """Mark a waiter's outcome as seen (the call's failure is reported by its caller)."""
    if not waiter.cancelled():
        waiter.exception()


def _failure(call: Future) -> Optional[BaseException]:
    return None if call.cancelled() else call.exception()


async def aiter_in_thread(it: Iterator[Any],
                          stop: Optional[threading.Event] = None) -> AsyncIterator[Any]:
    """Iterate the blocking run ``it`` (a :func:`drive` generator) from async code, one
    ``next`` per call on a worker thread of its own.

    Leaving early — task cancellation (Ctrl+C under ``asyncio.run`` cancels the main task),
    ``break``, an error in the loop body — ends the run cleanly: a ``next`` still running in
    the worker is asked to return at the next point between batches (``stop``, the run's stop
    event; the plan's sources return an event at least every poll interval), the run is
    closed once that call has returned (a generator cannot be closed while it runs: closing it
    from the event loop meanwhile raised "generator already executing"), which closes every
    source and Kafka consumer, and the worker thread has ended before this generator finishes.
    The cancellation itself still propagates, as asyncio requires."""
    done = object()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sabot-stream")
    pending: Optional[Future] = None
    finished = False
    try:
        while True:
            pending = worker.submit(next, it, done)
            item = await asyncio.wrap_future(pending)
            pending = None
            if item is done:
                finished = True
                return
            yield item
    finally:
        try:
            if pending is not None and not pending.done():
                # interrupted (cancelled) while the worker reads: the task is still running
                # here, so wait for the read to return, then close on the worker
                await _settle(pending, stop)
                if _failure(pending) is not None:
                    logger.warning("stream interrupted; its last read had failed: %r",
                                   _failure(pending))
                closing = worker.submit(close_iterator, it)
                await _settle(closing)
                failure = _failure(closing)
                if failure is not None:
                    logger.warning("closing the interrupted stream failed: %r", failure)
            else:
                # nothing runs on the worker: close now, in this step (an abandoned loop is
                # closed by asyncio's finalizer task, which may get only one step before the
                # event loop shuts down)
                try:
                    close_iterator(it)
                except Exception as exc:
                    if finished:
                        raise
                    logger.warning("closing the interrupted stream failed: %r", exc)
        finally:
            worker.shutdown(wait=True)


class UncheckpointedStateError(ValueError):
    """An operator of a checkpointed Stream uses state that its checkpoint would not hold."""


def check_checkpointable(operators: List[Any]) -> None:
    """Refuse (UncheckpointedStateError naming operator and object) a plan in which an operator
    uses a stateful object it does not checkpoint: a restore would silently lose its state."""
    problems = [f"{op.name}: {what}" for op in operators
                for what in (op.unsaved_state() if hasattr(op, "unsaved_state") else [])]
    if problems:
        raise UncheckpointedStateError(
            "state that a checkpoint would not hold: " + "; ".join(problems) + " — pass the "
            "kernel itself (stream.map(EWMA(alpha=0.94))) or call its function form inside the "
            "function (lambda b: ewma(b, alpha=0.94)), so its state is part of the operator")


def prepare_run(stream: Any, node: Node, stop: threading.Event) -> RunHooks:
    """Restore the run's checkpoint (``checkpoint_dir`` / ``changelog_topic``) and start the
    metrics endpoints (``metrics_port``) of every Kafka source of the plan; the run's hooks."""
    kafka = kafka_sources(node)
    ckpt = checkpointer_for(stream, node)
    if ckpt is not None:
        check_checkpointable(node.operators())
        ckpt.restore()
    stream.last_checkpointer = ckpt
    ports = sorted({s.metrics_port for s in kafka if s.metrics_port is not None})
    if ports and stream._stream_metrics is None:
        from ..metrics import StreamMetrics, serve

        metrics = StreamMetrics(stream, name=node.name)
        for port in ports:
            server = serve(port)
            server.add(metrics)
            metrics.servers.append(server)
        stream._stream_metrics = metrics
    elif stream._stream_metrics is not None:
        for server in stream._stream_metrics.servers:
            server.ensure_running()
    stop.clear()
    return RunHooks(ckpt, stream._stream_metrics, stop)
