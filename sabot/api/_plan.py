"""The plan of a Stream: nodes that turn their inputs' events into events.

A plan is a tree of nodes built by the Stream API and run by :mod:`._runtime`: sources
(:class:`SourceNode`, :class:`KafkaNode`), single-input operators (:class:`OpNode`), the ASOF
join (:class:`AsofNode`) and the multi-input nodes of union and merge (:class:`MultiNode`).
:func:`checkpoint_chain` holds the one rule for state checkpoints: a linear plan from exactly
one Kafka source.  This module knows nothing of Kafka clients, checkpoints or metrics: a Kafka
node only asks its source for events.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from ._align import AsofJoinOp, asof_events
from ._events import Close, Commit, Event, TaskSwitch, close_iterator
from ._ops import Operator


class _Node:
    """A plan node: ``events()`` runs it once over its inputs' events."""

    depth = 0
    name = "node"

    def events(self) -> Iterator[Event]:
        raise NotImplementedError

    def inputs(self) -> List["_Node"]:
        return []

    def operators(self) -> List[Operator]:
        ops: List[Operator] = []
        for n in self.inputs():
            for op in n.operators():
                if op not in ops:
                    ops.append(op)
        return ops

    def metrics(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for n in self.inputs():
            out.update(n.metrics())
        return out


class _Source(_Node):
    """Batches (or Tables) from a factory of iterables: tables, Parquet files, generators."""

    def __init__(self, name: str, factory: Callable[[], Iterator[Any]]) -> None:
        self.name = name
        self.factory = factory
        self.rows = 0

    def events(self) -> Iterator[Event]:
        """The items' batches (empty ones skipped).  Ending the run early (a stop, an error,
        cancellation) closes the factory's iterator too: a generator's ``finally`` (an open
        file, a connection) runs now, not when it is garbage-collected."""
        self.rows = 0
        items = iter(self.factory())
        try:
            for item in items:
                if isinstance(item, pa.Table):
                    batches = item.to_batches()
                elif isinstance(item, pa.RecordBatch):
                    batches = [item]
                else:
                    raise TypeError(f"{self.name}: expected RecordBatch or Table items, "
                                    f"got {type(item).__name__}")
                for b in batches:
                    if b.num_rows:
                        self.rows += b.num_rows
                        yield b
        finally:
            close_iterator(items)

    def metrics(self) -> Dict[str, Any]:
        return {self.name: {"rows": self.rows}}


class _KafkaNode(_Node):
    """A Kafka source (:class:`~._kafka.KafkaSource`): its events and counters."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.name = source.name

    def events(self) -> Iterator[Event]:
        return self.source.events()

    def metrics(self) -> Dict[str, Any]:
        return {self.name: dict(self.source.metrics)}


class _OpNode(_Node):
    """One operator over its parent's events.  With ``changelog_topic`` (``tasks`` set by the
    TaskManager) each source partition has its own clone of ``op``, chosen by TaskSwitch
    events; ``op`` itself then only counts rows."""

    def __init__(self, parent: _Node, op: Operator) -> None:
        self.parent = parent
        self.op = op
        self.tasks: Optional[Dict[Tuple[str, int], Operator]] = None
        self.depth = parent.depth + 1
        op.set_position(self.depth)
        self.name = op.name

    def inputs(self) -> List[_Node]:
        return [self.parent]

    def operators(self) -> List[Operator]:
        ops = self.parent.operators()
        return ops + [self.op] if self.op not in ops else ops

    def metrics(self) -> Dict[str, Any]:
        out = self.parent.metrics()
        m = self.op.metrics()
        for clone in (self.tasks or {}).values():  # operator counters summed over owned tasks
            for k, v in clone.metrics().items():
                if k not in ("rows_in", "rows_out") and isinstance(v, (int, float)):
                    m[k] = m.get(k, 0) + v
        out[self.op.name] = m
        return out

    def events(self) -> Iterator[Event]:
        op = counter = self.op
        tasks = self.tasks
        # per-partition tasks checkpoint offsets with their state: no commit is held back
        holds = op.holds_commits and tasks is None
        it = self.parent.events()
        closes: List[Close] = []
        try:
            for ev in it:
                if isinstance(ev, pa.RecordBatch):
                    counter.rows_in += ev.num_rows
                    for out in op.process(ev):
                        if out.num_rows:
                            counter.rows_out += out.num_rows
                            yield out
                    if holds:
                        yield from op.released()
                elif isinstance(ev, Commit):
                    if holds:
                        op.hold(ev)
                        yield from op.released()
                    else:
                        yield ev
                elif isinstance(ev, TaskSwitch):
                    if tasks is not None:
                        op = tasks.get(ev.tp)
                        if op is None:
                            raise RuntimeError(f"{self.name}: batch from {ev.tp[0]}/{ev.tp[1]}, "
                                               "a partition this process does not own")
                    yield ev
                elif isinstance(ev, Close):
                    closes.append(ev)
                else:
                    yield ev
            for tp, task_op in (list(tasks.items()) if tasks is not None else [(None, op)]):
                outs = [out for out in task_op.finish() if out.num_rows]
                if outs and tp is not None:
                    yield TaskSwitch(tp)
                for out in outs:
                    counter.rows_out += out.num_rows
                    yield out
            if holds:
                yield from op.released(final=True)
            handed, closes = closes, []
            yield from handed
        finally:
            close_iterator(it)
            for c in closes:  # not handed downstream (error or early stop): close here
                c.run()


class _AsofNode(_Node):
    """The streaming ASOF join of a left and a right plan (see :func:`~._align.asof_events`)."""

    def __init__(self, left: _Node, right: _Node, op: AsofJoinOp, on: str) -> None:
        self.left, self.right, self.op, self.on = left, right, op, on
        self.depth = max(left.depth, right.depth) + 1
        op.set_position(self.depth)
        self.name = op.name

    def inputs(self) -> List[_Node]:
        return [self.left, self.right]

    def operators(self) -> List[Any]:
        ops = super().operators()
        return ops + [self.op]

    def metrics(self) -> Dict[str, Any]:
        out = super().metrics()
        out[self.op.name] = self.op.metrics()
        return out

    def events(self) -> Iterator[Event]:
        return asof_events(self.left.events(), self.right.events(), self.op, self.on)


class _MultiNode(_Node):
    """Several plans combined by ``run`` (union, merge, zip)."""

    def __init__(self, name: str, nodes: Sequence[_Node],
                 run: Callable[[List[Iterator[Event]]], Iterator[Event]]) -> None:
        self.name = name
        self.nodes = list(nodes)
        self.run = run
        self.depth = max(n.depth for n in self.nodes) + 1

    def inputs(self) -> List[_Node]:
        return self.nodes

    def events(self) -> Iterator[Event]:
        return self.run([n.events() for n in self.nodes])


def kafka_sources(node: _Node) -> List[Any]:
    """The Kafka sources of the plan under ``node`` (each once)."""
    found: List[Any] = []
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, _KafkaNode) and n.source not in found:
            found.append(n.source)
        todo.extend(n.inputs())
    return found


def checkpoint_chain(node: _Node, what: str) -> Tuple[Any, List[_OpNode]]:
    """The Kafka source and operator nodes (source side first) of a linear plan from exactly
    one Kafka source: the only plans whose state ``what`` (``checkpoint_dir``,
    ``changelog_topic``) can checkpoint.  ValueError naming what stands in the way."""
    chain: List[_OpNode] = []
    n = node
    while isinstance(n, _OpNode):
        chain.append(n)
        n = n.parent
    if not isinstance(n, _KafkaNode):
        raise ValueError(f"{what} needs a linear plan from exactly one from_kafka source "
                         f"(no union, merge, zip or asof_join); found {n.name}")
    return n.source, chain[::-1]


# public names of the plan nodes
Node = _Node
SourceNode = _Source
KafkaNode = _KafkaNode
OpNode = _OpNode
AsofNode = _AsofNode
MultiNode = _MultiNode
