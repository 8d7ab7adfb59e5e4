"""Multi-input nodes: time-ordered merge, time-aligned zip, and plain union.

Event-time alignment (merge and zip): every input is expected in event-time order (as a Kafka
partition per symbol, or a sorted Parquet file, is).  Each input's watermark is the largest
event time it has delivered; the *frontier* is the smallest watermark over the inputs still
running.  Rows strictly before the frontier can no longer be preceded by anything that arrives
later, so they are released: merge emits them sorted by time (stable: ties keep input order),
zip emits one batch per input covering the same span ``[previous frontier, frontier)``.  When
an input ends, it stops holding the frontier back.  A live input that has reported nothing for
``idle_timeout_ms`` is left out of the frontier until it delivers again (its rows, if older
than the frontier by then, are released at once).

A row dated more than ``max_skew`` past every input's watermark would hold its input's later
rows behind it (and starve that input of pulls): it is held back until other rows confirm the
jump, else rejected to the dead letter (:class:`~sabot.api._ops.SkewGuard`; counted, reason
``beyond_max_skew``, capped in memory as :class:`~sabot.api._ops.DeadLetter`).

Commits are held per input until every row that input delivered before the commit has been
released downstream.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Deque, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from ._events import IDLE, Close, Commit, Event, _Idle, close_iterator
from ..timeunits import INT64_MAX, check_unit, column_ns, duration_ns, ms_to_ns
from ._ops import (DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ROWS, DEFAULT_MAX_SKEW, REASON_SKEW,
                   DeadLetter, SkewGuard)

logger = logging.getLogger(__name__)

#: Default idle timeout of the streaming ASOF join's right side (a quiet venue), ms.
DEFAULT_ASOF_IDLE_TIMEOUT_MS = 5_000

_MIN = np.iinfo(np.int64).min
_MAX = np.iinfo(np.int64).max


def concat_promote(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate tables whose schemas may differ (missing columns → null)."""
    tables = [t for t in tables if t is not None]
    if not tables:
        return pa.table({})
    if all(t.schema.equals(tables[0].schema) for t in tables[1:]):
        return pa.concat_tables(tables)
    return pa.concat_tables(tables, promote_options="permissive")


class _Input:
    __slots__ = ("it", "buffer", "schema", "watermark", "done", "idle_since", "rows_in",
                 "rows_out", "held", "guard", "deferred")

    def __init__(self, it: Iterator[Event]) -> None:
        self.it = it
        self.buffer: List[pa.RecordBatch] = []
        self.schema: Optional[pa.Schema] = None
        self.watermark: Optional[int] = None
        self.done = False
        self.idle_since: Optional[float] = None
        self.rows_in = 0
        self.rows_out = 0
        self.held: Deque[Tuple[int, Commit]] = deque()
        self.guard: Optional[SkewGuard] = None
        # commits that arrived while rows were held back as suspects
        self.deferred: List[Commit] = []


class Aligner:
    """Pulls from several inputs and releases rows before the event-time frontier."""

    def __init__(self, iterators: Sequence[Iterator[Event]], on: str,
                 idle_timeout_ms: Optional[float], max_skew: Any = DEFAULT_MAX_SKEW,
                 dead: Optional[DeadLetter] = None, on_unit: Optional[str] = None) -> None:
        self.inputs = [_Input(it) for it in iterators]
        #: unit of an integer ``on`` column (None: ns; see :mod:`sabot.timeunits`)
        self.on_unit = None if on_unit is None else check_unit(on_unit)
        if max_skew is not None:
            skew_ns = duration_ns(max_skew, "max_skew")
            for inp in self.inputs:
                inp.guard = SkewGuard(skew_ns)
        self.dead = dead if dead is not None else DeadLetter("merge/zip")
        self.skew_rejected = 0
        self.on = on
        self.idle_timeout_s = None if idle_timeout_ms is None else idle_timeout_ms / 1000.0
        self.closes: List[Close] = []
        self.frontier = _MIN
        self._rr = 0

    def close(self) -> None:
        for inp in self.inputs:
            close_iterator(inp.it)
        for c in self.closes:  # not handed downstream (error or early stop): close here
            c.run()
        self.closes = []

    @property
    def finished(self) -> bool:
        return all(i.done for i in self.inputs)

    def _excluded(self, inp: _Input, now: float) -> bool:
        return (self.idle_timeout_s is not None and inp.idle_since is not None
                and now - inp.idle_since >= self.idle_timeout_s)

    def _choose(self) -> _Input:
        now = time.monotonic()
        live = [i for i in self.inputs if not i.done]
        active = [i for i in live if not self._excluded(i, now)]
        if active:
            # the input holding the frontier back: no watermark yet first, then the smallest
            return min(active, key=lambda i: _MIN if i.watermark is None else i.watermark)
        self._rr = (self._rr + 1) % len(live)
        return live[self._rr]

    def pull(self) -> bool:
        """Pull one event from the input that holds the frontier back; True if it was IDLE."""
        inp = self._choose()
        try:
            ev = next(inp.it)
        except StopIteration:
            inp.done = True
            return False
        if isinstance(ev, pa.RecordBatch):
            if ev.num_rows:
                if self.on not in ev.schema.names:
                    raise KeyError(f"time column {self.on!r} not found; columns present: "
                                   f"{', '.join(ev.schema.names)}")
                ts = column_ns(ev.column(self.on), self.on, self.on_unit)
                batch: Optional[pa.RecordBatch] = ev
                if inp.guard is not None:
                    peer = max((i.watermark for i in self.inputs
                                if i is not inp and i.watermark is not None), default=None)
                    batch, ts, rejected = inp.guard.admit(ev, ts, peer=peer, check=ts != _MIN)
                    self._reject(rejected)
                self._buffer(inp, batch, ts)
            inp.schema = inp.schema or ev.schema
            inp.idle_since = None
        elif isinstance(ev, Commit):
            if inp.guard is not None and inp.guard.pending:
                inp.deferred.append(ev)
            else:
                inp.held.append((inp.rows_in, ev))
        elif isinstance(ev, Close):
            self.closes.append(ev)
        elif isinstance(ev, _Idle):
            if inp.idle_since is None:
                inp.idle_since = time.monotonic()
            return True
        return False

    def _buffer(self, inp: _Input, batch: Optional[pa.RecordBatch], ts: np.ndarray) -> None:
        if batch is not None and batch.num_rows:
            mx = int(ts.max())
            inp.watermark = mx if inp.watermark is None else max(inp.watermark, mx)
            inp.buffer.append(batch)
            inp.rows_in += batch.num_rows
        if inp.deferred and (inp.guard is None or not inp.guard.pending):
            inp.held.extend((inp.rows_in, c) for c in inp.deferred)
            inp.deferred.clear()

    def _reject(self, rows: Optional[pa.Table]) -> None:
        if rows is None or not rows.num_rows:
            return
        self.skew_rejected += rows.num_rows
        self.dead.add(rows, REASON_SKEW)
        logger.warning("%s: %d row(s) dated more than max_skew past every input's watermark "
                       "dead-lettered", self.dead.owner, rows.num_rows)

    def finish_guards(self) -> None:
        """End of the inputs: suspects still held are admitted or dead-lettered."""
        for inp in self.inputs:
            if inp.guard is None:
                continue
            batch, ts, rejected = inp.guard.finish()
            self._reject(rejected)
            self._buffer(inp, batch, ts)

    def current_frontier(self) -> int:
        now = time.monotonic()
        marks = []
        for inp in self.inputs:
            if inp.done or self._excluded(inp, now):
                continue
            if inp.watermark is None:
                return _MIN
            marks.append(inp.watermark)
        return min(marks) if marks else _MAX

    def take(self, frontier: int) -> List[Optional[pa.Table]]:
        """Per input, the buffered prefix of rows with time < frontier (all when _MAX)."""
        out: List[Optional[pa.Table]] = []
        for inp in self.inputs:
            if not inp.buffer:
                out.append(None)
                continue
            table = concat_promote([pa.Table.from_batches([b]) for b in inp.buffer])
            if frontier == _MAX:
                cut = table.num_rows
            else:
                ts = column_ns(table.column(self.on), self.on, self.on_unit)
                later = np.flatnonzero(ts >= frontier)
                cut = int(later[0]) if len(later) else table.num_rows
            taken, rest = table.slice(0, cut), table.slice(cut)
            inp.buffer = rest.to_batches() if rest.num_rows else []
            inp.rows_out += cut
            out.append(taken if cut else None)
        self.frontier = max(self.frontier, frontier)
        return out

    def released_commits(self, final: bool = False) -> List[Commit]:
        out = []
        for inp in self.inputs:
            if final and inp.deferred:
                inp.held.extend((inp.rows_in, c) for c in inp.deferred)
                inp.deferred.clear()
            while inp.held and (final or inp.held[0][0] <= inp.rows_out):
                out.append(inp.held.popleft()[1])
        return out


def merge_events(iterators: Sequence[Iterator[Event]], on: str,
                 idle_timeout_ms: Optional[float], max_skew: Any = DEFAULT_MAX_SKEW,
                 dead: Optional[DeadLetter] = None,
                 on_unit: Optional[str] = None) -> Iterator[Event]:
    """Time-ordered union of inputs (see module docstring); rows rejected as beyond
    ``max_skew`` go to ``dead`` (a fresh capped :class:`DeadLetter` when not given)."""
    al = Aligner(iterators, on, idle_timeout_ms, max_skew, dead, on_unit)
    try:
        while not al.finished:
            was_idle = al.pull()
            frontier = al.current_frontier()
            emitted = False
            if frontier > al.frontier or (frontier == _MAX and any(i.buffer for i in al.inputs)):
                parts = [t for t in al.take(frontier) if t is not None]
                if parts:
                    merged = concat_promote(parts)
                    if len(parts) > 1:
                        merged = merged.take(
                            pa.compute.sort_indices(merged, [(on, "ascending")]))
                    for b in merged.combine_chunks().to_batches():
                        emitted = True
                        yield b
            yield from al.released_commits()
            if was_idle and not emitted:
                yield IDLE
        al.finish_guards()
        for t in (al.take(_MAX),):
            parts = [x for x in t if x is not None]
            if parts:
                merged = concat_promote(parts)
                merged = merged.take(pa.compute.sort_indices(merged, [(on, "ascending")]))
                yield from merged.combine_chunks().to_batches()
        yield from al.released_commits(final=True)
        handed, al.closes = al.closes, []
        yield from handed
    finally:
        al.close()


ZipItem = Tuple[Optional[pa.RecordBatch], ...]


def _as_batch(table: Optional[pa.Table], schema: Optional[pa.Schema]) -> Optional[pa.RecordBatch]:
    if table is None:
        return pa.RecordBatch.from_pylist([], schema=schema) if schema is not None else None
    return table.combine_chunks().to_batches()[0] if table.num_rows else (
        pa.RecordBatch.from_pylist([], schema=table.schema))


def zip_events(iterators: Sequence[Iterator[Event]], on: str,
               idle_timeout_ms: Optional[float], max_skew: Any = DEFAULT_MAX_SKEW,
               dead: Optional[DeadLetter] = None,
               on_unit: Optional[str] = None) -> Iterator[Any]:
    """Tuples of per-input batches covering the same event-time span, interleaved with
    Commit/Close/IDLE events (the caller runs those); ``max_skew`` and ``dead`` as for
    :func:`merge_events`."""
    al = Aligner(iterators, on, idle_timeout_ms, max_skew, dead, on_unit)
    try:
        while not al.finished:
            was_idle = al.pull()
            frontier = al.current_frontier()
            if frontier > al.frontier and frontier != _MAX:
                parts = al.take(frontier)
                if any(p is not None for p in parts):
                    yield tuple(_as_batch(p, i.schema) for p, i in zip(parts, al.inputs))
            yield from al.released_commits()
            if was_idle:
                yield IDLE
        al.finish_guards()
        parts = al.take(_MAX)
        if any(p is not None for p in parts):
            yield tuple(_as_batch(p, i.schema) for p, i in zip(parts, al.inputs))
        yield from al.released_commits(final=True)
        handed, al.closes = al.closes, []
        yield from handed
    finally:
        al.close()


def union_events(iterators: Sequence[Iterator[Event]]) -> Iterator[Event]:
    """Batches of all inputs as they come (round robin), no ordering across inputs."""
    live = list(iterators)
    closes: List[Close] = []
    try:
        while live:
            for it in list(live):
                try:
                    ev = next(it)
                except StopIteration:
                    live.remove(it)
                    continue
                if isinstance(ev, Close):
                    closes.append(ev)
                else:
                    yield ev
        handed, closes = closes, []
        yield from handed
    finally:
        for it in iterators:
            close_iterator(it)
        for c in closes:
            c.run()


class AsofJoinOp:
    """State holder for a streaming ASOF join node (``Stream.asof_join``).

    Wraps :class:`sabot.fintech.StreamingAsofJoinKernel` (its semantics: pandas.merge_asof on the
    whole inputs; late right rows counted and dead-lettered).  Left rows are emitted as they
    become final; the node pulls from whichever input is behind in event time.

    Bounds: a row of either side dated more than ``max_skew_ns`` past both sides' watermarks is
    held back until other rows confirm the jump, else rejected to the dead letter
    (:class:`~sabot.api._ops.SkewGuard`).  Once the right side has reported nothing for
    ``idle_timeout_ms`` (a quiet venue), the right watermark is declared at the left's, so the
    left rows waiting for it are emitted (joined with the right rows known) and commits flow;
    right rows that arrive later behind that point are late.  The dead letter (late right rows,
    rows beyond the skew) is capped, see :class:`~sabot.api._ops.DeadLetter`.
    """

    kind = "asof_join"
    holds_commits = False

    def __init__(self, kernel: Any, tolerance_ns: Optional[int] = None, *,
                 idle_timeout_ms: Optional[float] = DEFAULT_ASOF_IDLE_TIMEOUT_MS,
                 max_skew: Any = DEFAULT_MAX_SKEW, dead_letter_path: Any = None,
                 dead_letter_max_rows: int = DEAD_LETTER_MAX_ROWS,
                 dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES) -> None:
        if idle_timeout_ms is not None and idle_timeout_ms < 0:
            raise ValueError(f"idle_timeout_ms must be >= 0 (or None), got {idle_timeout_ms}")
        self.kernel = kernel
        #: the unit of an integer ``on`` column: the kernel's (every time of the join —
        #: matching, tolerance, watermarks, max_skew, idle release — is read in it)
        self.on_unit: str = check_unit(getattr(kernel, "on_unit", "ns"))
        if tolerance_ns is None:  # the kernel's tolerance (None: unbounded)
            tol_ms = getattr(kernel, "tolerance_ms", None)
            tolerance_ns = None if tol_ms is None else ms_to_ns(tol_ms)
        #: how far past a right row the left side must be before that row's commit can run
        #: (unbounded tolerance: only at the end)
        self.tolerance_ns = INT64_MAX if tolerance_ns is None else int(tolerance_ns)
        self.idle_timeout_s = None if idle_timeout_ms is None else idle_timeout_ms / 1000.0
        skew_ns = None if max_skew is None else duration_ns(max_skew, "max_skew")
        self.guards = (None if skew_ns is None
                       else {"left": SkewGuard(skew_ns), "right": SkewGuard(skew_ns)})
        self.name = self.kind
        self.dead = DeadLetter(self.kind, max_rows=dead_letter_max_rows,
                               max_bytes=dead_letter_max_bytes, path=dead_letter_path)
        kernel.dead_letter_sink = self.dead.add
        self.rows_in = self.rows_out = 0
        self.right_rows_in = 0
        self.skew_rejected = 0
        self.idle_releases = 0
        self._restored = False

    def set_position(self, index: int) -> None:
        by = self.kernel.by
        tol = ("unbounded" if self.tolerance_ns == INT64_MAX
               else f"{self.tolerance_ns / 1e6:g}ms")
        self.name = f"{self.kind} #{index} (by={by}, {self.kernel.direction}, tolerance={tol})"
        self.dead.owner = self.name

    def dead_letters(self) -> List[DeadLetter]:
        return [self.dead]

    def begin_run(self) -> None:
        if not self._restored:
            self.reset()
        self._restored = False
        self.rows_in = self.rows_out = self.right_rows_in = 0
        self.skew_rejected = self.idle_releases = 0

    def reset(self) -> None:
        self.kernel.reset()
        self.dead.reset()
        for g in (self.guards or {}).values():
            g.reset()

    def state_dict(self) -> dict:
        d: dict = {"kernel": self.kernel.state_dict()}
        if self.guards is not None:
            d["guards"] = {side: g.state_dict() for side, g in self.guards.items()}
        return d

    def load_state_dict(self, state: Any) -> None:
        self.kernel.load_state_dict(state["kernel"])
        for side, g in (self.guards or {}).items():
            if "guards" in state:
                g.load_state_dict(state["guards"][side])
            else:
                g.reset()
        self._restored = True

    @property
    def late_count(self) -> int:
        return self.kernel.late_count

    def dead_letter(self) -> pa.Table:
        """Rejected rows kept in memory: late right rows and rows beyond ``max_skew`` (of
        either side; :meth:`dead_letter_reasons` tells which)."""
        return self.dead.table()

    def dead_letter_reasons(self) -> List[str]:
        return self.dead.reasons()

    def metrics(self) -> dict:
        return {"rows_in": self.rows_in, "right_rows_in": self.right_rows_in,
                "rows_out": self.rows_out, "late_count": self.kernel.late_count,
                "skew_rejected": self.skew_rejected, "idle_releases": self.idle_releases,
                **self.dead.metrics()}

    def fail(self, exc: BaseException) -> Exception:
        from ._ops import StreamOperatorError

        err = StreamOperatorError(f"{self.name} failed: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    def reject(self, rows: Optional[pa.Table], side: str) -> None:
        if rows is None or not rows.num_rows:
            return
        self.skew_rejected += rows.num_rows
        self.dead.add(rows, REASON_SKEW)
        logger.warning("%s: %d %s row(s) dated more than max_skew past the watermarks "
                       "dead-lettered", self.name, rows.num_rows, side)

    @property
    def holding(self) -> bool:
        """Rows are held back as suspects (their commits must wait)."""
        return any(g.pending for g in (self.guards or {}).values())


def asof_events(left: Iterator[Event], right: Iterator[Event], op: AsofJoinOp,
                on: str) -> Iterator[Event]:
    """Drive a streaming ASOF join; commits are held until the rows they cover are final:
    a left commit once every left row before it was emitted, a right commit once the left
    side has passed its right rows' time plus the tolerance and those left rows were emitted.

    Input choice: the side behind in event time, except that once the right side has been idle
    (IDLE events only) for ``op.idle_timeout_s`` — also before its first row: a venue down from
    the start does not stall the join either — the left side is pulled (the right one whenever
    the left has nothing, and every eighth pull) and the right watermark follows the left one
    (see :class:`AsofJoinOp`)."""
    kernel = op.kernel
    inputs = {"left": _Input(left), "right": _Input(right)}
    held_left: Deque[Tuple[int, Commit]] = deque()
    held_right: List[List[Any]] = []  # [right time at commit, left-row threshold or None, commit]
    closes: List[Close] = []
    # commits that arrived while rows were held back as suspects: registered once those rows
    # are admitted (and counted) or dead-lettered
    deferred: List[Tuple[str, Commit]] = []
    turn = 0

    def emit(out: Any) -> Iterator[pa.RecordBatch]:
        if out is not None and out.num_rows:
            op.rows_out += out.num_rows
            yield out

    def register(side: str, commit: Commit) -> None:
        if side == "left":
            held_left.append((op.rows_in, commit))
        else:
            rm = inputs["right"].watermark
            held_right.append([rm if rm is not None else _MIN, None, commit])

    def release(final: bool = False) -> Iterator[Commit]:
        if deferred and (final or not op.holding):
            for side, commit in deferred:
                register(side, commit)
            deferred.clear()
        while held_left and (final or held_left[0][0] <= op.rows_out):
            yield held_left.popleft()[1]
        keep = []
        for entry in held_right:
            if final or (entry[1] is not None and op.rows_out >= entry[1]):
                yield entry[2]
            else:
                keep.append(entry)
        held_right[:] = keep

    def right_quiet() -> bool:
        rw = inputs["right"]
        return (op.idle_timeout_s is not None and rw.idle_since is not None
                and time.monotonic() - rw.idle_since >= op.idle_timeout_s)

    def feed(side: str, batch: pa.RecordBatch, ts: np.ndarray) -> Any:
        inp = inputs[side]
        mx = int(ts.max())
        inp.watermark = mx if inp.watermark is None else max(inp.watermark, mx)
        try:
            if side == "left":
                op.rows_in += batch.num_rows
                return kernel.process_left(batch)
            op.right_rows_in += batch.num_rows
            return kernel.process_right(batch)
        except Exception as exc:
            raise op.fail(exc) from exc

    def after_left() -> Iterator[Event]:
        lw = inputs["left"]
        for entry in held_right:
            if entry[1] is None and lw.watermark is not None \
                    and lw.watermark - op.tolerance_ns > entry[0]:
                entry[1] = op.rows_in
        if right_quiet() and lw.watermark is not None:
            try:
                out = kernel.advance_right_watermark(lw.watermark)
            except Exception as exc:
                raise op.fail(exc) from exc
            if out is not None and out.num_rows:
                op.idle_releases += out.num_rows
            yield from emit(out)

    try:
        while not (inputs["left"].done and inputs["right"].done):
            lw, rw = inputs["left"], inputs["right"]
            if lw.done:
                side = "right"
            elif rw.done:
                side = "left"
            elif right_quiet():
                # a quiet venue must not stop the join: pull the left side, and the right one
                # whenever the left has nothing (and every few pulls), to notice it is back
                turn += 1
                side = "right" if lw.idle_since is not None or turn % 8 == 0 else "left"
            else:
                lm = _MIN if lw.watermark is None else lw.watermark
                rm = _MIN if rw.watermark is None else rw.watermark
                side = "right" if rm <= lm else "left"
            inp = inputs[side]
            try:
                ev = next(inp.it)
            except StopIteration:
                inp.done = True
                continue
            if isinstance(ev, pa.RecordBatch):
                if not ev.num_rows:
                    continue
                inp.idle_since = None
                ts = (column_ns(ev.column(on), on, op.on_unit) if on in ev.schema.names
                      else None)
                if ts is None:
                    raise op.fail(KeyError(f"{side} input has no {on!r} column; columns "
                                           f"present: {', '.join(ev.schema.names)}"))
                batch: Optional[pa.RecordBatch] = ev
                if op.guards is not None:
                    other = inputs["right" if side == "left" else "left"].watermark
                    batch, ts, rejected = op.guards[side].admit(
                        ev, ts, peer=other, check=ts != _MIN)
                    op.reject(rejected, side)
                if batch is not None and batch.num_rows:
                    yield from emit(feed(side, batch, ts))
                if side == "left":
                    yield from after_left()
                yield from release()
            elif isinstance(ev, Commit):
                if op.holding:
                    deferred.append((side, ev))
                else:
                    register(side, ev)
                yield from release()
            elif isinstance(ev, Close):
                closes.append(ev)
            else:
                if isinstance(ev, _Idle):
                    if inp.idle_since is None:
                        inp.idle_since = time.monotonic()
                    if side == "right":
                        yield from after_left()  # the timeout may just have passed
                        yield from release()
                yield ev
        for side in ("right", "left"):
            if op.guards is None:
                break
            batch, ts, rejected = op.guards[side].finish()
            op.reject(rejected, side)
            if batch is not None and batch.num_rows:
                yield from emit(feed(side, batch, ts))
        try:
            out = kernel.flush()
        except Exception as exc:
            raise op.fail(exc) from exc
        yield from emit(out)
        yield from release(final=True)
        handed, closes = closes, []
        yield from handed
    finally:
        close_iterator(left)
        close_iterator(right)
        for c in closes:
            c.run()
