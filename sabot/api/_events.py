"""What flows through a Stream plan besides data batches.

A plan is a chain of generators.  Each yields, in order:

* :class:`pyarrow.RecordBatch` — data;
* :class:`Commit` — "every record before this point has been read": a sink runs it once all
  data yielded before it has passed every operator and is durable in the sink (at-least-once);
* :data:`IDLE` — a live source had nothing within its latency budget (lets multi-input nodes
  and async iteration make progress; never shown to users);
* :class:`Close` — the source's last event; run after everything else;
* :class:`TaskSwitch` — (``changelog_topic`` mode only) the batches that follow come from this
  source partition: every operator node switches to that partition's operator clone.

Operators that hold rows in state (windows, joins) hold the commits that cover those rows
until the rows have been emitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

import pyarrow as pa


@dataclass
class Commit:
    """Acknowledge records read by a source (e.g. commit Kafka offsets)."""

    run: Callable[[], None]
    source: str = ""
    #: event-time frontier used by nodes that hold commits (set by them)
    extra: dict = field(default_factory=dict)


@dataclass
class Close:
    """Release a source's resources once the plan has drained."""

    run: Callable[[], None]
    source: str = ""


@dataclass(frozen=True)
class TaskSwitch:
    """The following batches belong to the task (source partition) ``tp = (topic, partition)``."""

    tp: tuple


class _Idle:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IDLE"


IDLE = _Idle()

Event = Union[pa.RecordBatch, Commit, Close, _Idle, TaskSwitch]
EventIterator = Iterator[Event]


def close_iterator(it: object) -> None:
    """Close a generator (runs its ``finally`` blocks now, not at garbage collection)."""
    close = getattr(it, "close", None)
    if close is not None:
        close()
