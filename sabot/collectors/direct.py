"""Collector records straight into a decision in the same process (``sabot monitor --direct``).

The collectors' connection loops hand every parsed, validated record to their sinks one at a
time (:class:`~sabot.collectors.sinks.Sink`).  :class:`DecisionSink` is such a sink: it puts the
record in one queue shared by every venue's loop (:class:`DirectDecisions`), in the order the
loops handed them over, and the queue decides on what it holds as one Arrow batch as soon as the
event loop is free again - after the frame that brought the records has gone to every sink.  A
frame's records are therefore decided on together, and records that arrived while a decision
ran are decided on together next: no broker round trip between receiving a quote and deciding
on it, while the same loop still produces every record to Kafka (``KafkaSink`` beside it).

Nothing is skipped: every record handed over is decided on exactly once (a batch Arrow cannot
build is split so that only a record that cannot be converted is set aside, counted in
``rejected`` and logged rate-limited); a decision that raises is counted in ``errors`` and
logged, never fatal for the loops.  With ``record_path`` every record decided on is written
as a JSON line ``{"batch": n, "record": {...}}`` in arrival order, so a run can be replayed
through the same decision afterwards.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO, Any, Callable, Optional

import orjson
import pyarrow as pa

from sabot.collectors.base import Record
from sabot.collectors.validate import RateLimitedLog
from sabot.schema import TICKER_SCHEMA

__all__ = ["DecisionSink", "DirectDecisions", "read_arrivals"]

log = logging.getLogger(__name__)


class DirectDecisions:
    """One queue of records from every venue's connection loop, decided on in arrival order.

    ``decide(batch)`` gets the queued records as one :class:`pyarrow.RecordBatch` in
    ``schema`` (default: the common ticker columns; a record's other fields are left out),
    unless ``decide`` has a ``decide_records(records, count)`` that takes them as they are
    (:meth:`sabot.apps.monitor.ArrivalDecision.decide_records`: no Arrow batch for a tick).
    It runs on the event loop of the connection loops (``loop.call_soon``); outside an event
    loop each record is decided on at once."""

    def __init__(self, decide: Callable[[pa.RecordBatch], None], schema: pa.Schema = TICKER_SCHEMA,
                 record_path: Optional[Path] = None) -> None:
        self.decide = decide
        #: ``decide.decide_records(records, count)``, if ``decide`` has it: decides on the
        #: records as they are (calling ``count(n)`` first) and returns True, or returns False
        #: having done nothing, and they go as one Arrow batch to ``decide``
        self._decide_records: Optional[Callable[[list, Callable[[int], None]], bool]] = \
            getattr(decide, "decide_records", None)
        self.schema = schema
        self._pending: list[Record] = []
        self._scheduled = False
        self._record: Optional[IO[bytes]] = open(record_path, "wb") if record_path else None
        #: records decided on, batches decided on, decisions that raised, records set aside
        self.records = 0
        self.batches = 0
        self.errors = 0
        self.rejected = 0
        self._error_log = RateLimitedLog("direct decision failed")
        self._reject_log = RateLimitedLog("direct decision: record set aside")

    def sink(self, venue: str) -> "DecisionSink":
        """A sink for ``venue``'s connection loop that feeds this queue."""
        return DecisionSink(self, venue)

    def put(self, record: Record) -> None:
        """Queue ``record``; the decision on it is scheduled for when the event loop is free."""
        self._pending.append(record)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a direct call): decide now
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Decide on every queued record now (one batch, in arrival order)."""
        self._scheduled = False
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            # the decision on the records themselves, when it takes them (no Arrow batch)
            done = self._decide_records is not None and self._decide_records(rows, self._count)
        except Exception as exc:  # one bad batch must not stop the collectors
            done = True
            self._failed(exc)
        if not done:
            batch = self._batch(rows)
            if batch is None or not batch.num_rows:
                return
            self._count(batch.num_rows)
            try:
                self.decide(batch)
            except Exception as exc:  # one bad batch must not stop the collectors
                self._failed(exc)
        if self._record is not None:  # after the decision: writing it must not delay it
            try:
                for row in rows:
                    self._record.write(orjson.dumps({"batch": self.batches, "record": row}) + b"\n")
            except (OSError, TypeError) as exc:
                self.errors += 1
                self._error_log(f"arrival record not written: {type(exc).__name__}: {exc}")

    def _count(self, n: int) -> None:
        """A batch of ``n`` records is about to be decided on."""
        self.batches += 1
        self.records += n

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self._error_log(f"{type(exc).__name__}: {exc}")
        log.debug("direct decision failed", exc_info=True)

    def _batch(self, rows: list[Record]) -> Optional[pa.RecordBatch]:
        try:
            return pa.RecordBatch.from_pylist(rows, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        good = []
        for row in rows:  # find the record(s) Arrow cannot convert; keep the others in order
            try:
                pa.RecordBatch.from_pylist([row], schema=self.schema)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                self.rejected += 1
                self._reject_log(f"{row.get('exchange')} {row.get('symbol')}: "
                                 f"{type(exc).__name__}: {exc}")
            else:
                good.append(row)
        rows[:] = good
        return pa.RecordBatch.from_pylist(good, schema=self.schema) if good else None

    def close(self) -> None:
        """Decide on what is still queued and close the arrival record."""
        self.flush()
        if self._record is not None:
            self._record.close()
            self._record = None


class DecisionSink:
    """The sink protocol (``write`` / ``tick`` / ``close``) in front of a :class:`DirectDecisions`.

    ``close`` decides on what is queued but leaves the queue open (several venues share it)."""

    def __init__(self, decisions: DirectDecisions, venue: str) -> None:
        self.decisions = decisions
        self.venue = venue
        self.written = 0
        self.on_reject: Any = None

    def write(self, record: Record) -> None:
        self.written += 1
        self.decisions.put(record)

    def tick(self) -> None:
        self.decisions.flush()

    def close(self) -> None:
        self.decisions.flush()


def read_arrivals(path: Path) -> list[tuple[int, Record]]:
    """The ``(batch, record)`` pairs of an arrival record written by :class:`DirectDecisions`."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                item = orjson.loads(line)
                out.append((int(item["batch"]), item["record"]))
    return out
