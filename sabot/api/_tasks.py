"""Scale-out: per-partition tasks whose state is checkpointed to a Kafka changelog topic.

``Stream.from_kafka(bootstrap, topic, group_id, changelog_topic="my-pipeline-state")``

Kafka-Streams-style tasks: one task per source partition.  Every operator of the (linear) plan
is cloned per task (:meth:`~._ops.Operator.clone`: same configuration, fresh state); the
source splits each micro-batch by partition and announces each part with a
:class:`~._events.TaskSwitch`, so every operator node runs that partition's clone.  Records
keyed by symbol put each symbol in one partition, so keyed kernels (``by='symbol'``) give
exactly the single-process results.  State that is not keyed becomes per-partition.

Kafka's consumer-group protocol distributes the tasks (no home-made cluster):

* on assignment, each gained partition's latest changelog record is read
  (:class:`~sabot.state.KafkaChangelogStore`), loaded into fresh clones, and the partition
  is sought to the record's offset; without a record the task starts fresh from the group's
  committed offset (or ``auto.offset.reset``);
* on revocation (inside ``consume``, so every batch yielded before has passed every operator
  and the sink), the sink is flushed, each revoked task's state and position is written to
  the changelog and flushed, its offset committed, and the task dropped;
* every ``checkpoint_interval_s`` (at a Commit or idle signal reaching the sink), at a clean
  stop and at the end of the stream, the same is done for every task whose position moved.
* partitions *lost* (this member's session or ``max.poll.interval.ms`` expired, so another
  member may own them already) are dropped without writing.

Not fenced: a member stalled between two polls for longer than the session timeout, whose
loss librdkafka has not noticed yet, could still write a periodic record after the new
owner restored (Kafka Streams fences this with transactions; not done here).

Offsets are committed only together with a written record, never per batch.  A process
killed with SIGKILL loses nothing: its partitions move to the survivors after the session
timeout, which resume from its last record (rows after it are recomputed identically:
at-least-once output, exactly-once state).  The changelog partition of a task is the source
partition number, so only one source topic is supported and the changelog topic needs at
least as many partitions (it is created with as many, ``cleanup.policy=compact``).

Operator counters in ``Stream.metrics`` (e.g. a window's ``late_count``) are summed over the
tasks this process owns at the moment; a window's late rows stay in its task clone.  With the
eager rebalance protocol every rebalance revokes and re-assigns all partitions, so each member
re-reads its tasks' records then (tens of ms per rebalance on a local broker).

Changelog records are data, never code (:mod:`sabot.state.codec`): a record that is not in
the state format, belongs to another task, or fails the ``state_key`` HMAC check stops the
run with :class:`~sabot.state.CheckpointError` naming ``topic/partition/offset``, and so does
one whose state the operators do not accept, unless ``reset_state=True``, which discards it
with a WARNING and starts that task fresh.  Every client of the store gets the source's
``kafka_config`` (SASL/TLS) when it has one.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..state import CheckpointError, KafkaChangelogStore
from ..state.codec import state_key_from

logger = logging.getLogger(__name__)

TaskId = Tuple[str, int]


class TaskManager:
    """Owns the per-partition operator clones of one Stream run and their changelog records."""

    def __init__(self, stream: Any, source: Any, op_nodes: List[Any]) -> None:
        self.stream = stream
        self.source = source
        self.op_nodes = op_nodes  # the plan's operator nodes, source side first
        self.store = KafkaChangelogStore(
            source.bootstrap_servers, source.changelog_topic,
            kafka_config=getattr(source, "kafka_config", None),
            state_key=state_key_from(getattr(source, "state_key", None)),
            reset_state=bool(getattr(source, "reset_state", False)))
        self.interval_s = source.checkpoint_interval_s
        #: the sink's flush (registered by the sink loop; None when iterating)
        self.sink_flush: Optional[Callable[[], None]] = None
        #: offset of the last record written or restored per owned task
        self.recorded: Dict[TaskId, int] = {}
        self.last_time = time.monotonic()
        self.last_wall: Optional[float] = None
        self.count = 0
        #: (task, offset, seconds) of every record restored in this run (handover evidence)
        self.restored: List[Tuple[TaskId, int, float]] = []
        self.handover_s: List[float] = []  # duration of each on_assign (restore of all gains)
        for node in op_nodes:  # a plan whose operators cannot be cloned is rejected now
            try:
                node.op.clone()
            except TypeError as exc:
                raise ValueError(f"changelog_topic needs operators that can be cloned per "
                                 f"partition: {exc}") from exc

    @property
    def age_s(self) -> Optional[float]:
        """Seconds since the last record written or restored (None before any)."""
        return None if self.last_wall is None else time.time() - self.last_wall

    def restore(self) -> None:
        """Prepare a run: create the changelog topic if missing; no task is owned yet."""
        topic = self.source.topics[0]
        try:
            partitions = self.store.partitions_of(topic)
        except KeyError as exc:
            raise ValueError(f"changelog_topic: source topic {topic!r} not found; create it "
                             "first (the changelog needs its partition count)") from exc
        self.store.ensure_topic(partitions)
        self.source.restore_offsets = {}
        self.source.tasks = self
        self.recorded = {}
        for node in self.op_nodes:
            node.tasks = {}

    # -- group callbacks (run inside consumer.consume, i.e. between batches) ------------------
    def on_assign(self, parts: List[Any]) -> None:
        """Restore every gained partition's task and set ``part.offset`` to its record's."""
        t0 = time.perf_counter()
        gained = [(p.topic, p.partition) for p in parts]
        records = self.store.read(gained)
        for p in parts:
            tp = (p.topic, p.partition)
            record = records[tp]
            clones = [node.op.clone() for node in self.op_nodes]
            if record is not None:
                try:
                    for i, clone in enumerate(clones):
                        clone.load_state_dict(record["state"][i])
                except Exception as exc:  # any state the operators cannot take: data
                    why = (f"{record['where']} does not match this pipeline: "
                           f"{type(exc).__name__}: {exc}")
                    if not self.store.reset_state:
                        raise CheckpointError(f"{why}; pass reset_state=True to discard it "
                                              "and start the task fresh") from exc
                    self.store.records_discarded += 1
                    self.store.records_restored -= 1  # counted when read, not restored
                    logger.warning("DISCARDING STATE (reset_state=True): %s; task %s/%d starts "
                                   "with fresh state from the group's committed offset", why,
                                   tp[0], tp[1])
                    clones = [node.op.clone() for node in self.op_nodes]
                    record = None
            if record is not None:
                p.offset = record["offset"]
                self.source.positions[tp] = record["offset"]
                self.recorded[tp] = record["offset"]
                self.last_wall = max(self.last_wall or 0.0, record["created"])
                self.restored.append((tp, record["offset"], self.store.last_read_s))
                logger.info("%s: task %s/%d restored from changelog %s at offset %d",
                            self.source.name, tp[0], tp[1], self.store.topic, record["offset"])
            else:
                logger.info("%s: task %s/%d has no usable changelog record; starting fresh",
                            self.source.name, tp[0], tp[1])
            for node, clone in zip(self.op_nodes, clones):
                node.tasks[tp] = clone
        self.handover_s.append(time.perf_counter() - t0)
        logger.info("%s: %d task(s) assigned, %d restored from the changelog in %.1f ms",
                    self.source.name, len(parts), sum(r is not None for r in records.values()),
                    self.handover_s[-1] * 1e3)

    def on_revoke(self, tps: List[TaskId], write: bool = True) -> None:
        """Checkpoint the revoked tasks (unless ``write`` is False: the run is failing or has
        already written its final checkpoint), then drop them."""
        if write:
            t0 = time.perf_counter()
            moved = [tp for tp in tps if self._moved(tp)]
            self._write(moved)
            logger.info("%s: %d task(s) revoked, %d checkpointed to the changelog in %.1f ms",
                        self.source.name, len(tps), len(moved), (time.perf_counter() - t0) * 1e3)
        for tp in tps:
            for node in self.op_nodes:
                node.tasks.pop(tp, None)
            self.recorded.pop(tp, None)
            self.source.positions.pop(tp, None)

    # -- periodic checkpoints (same interface as Checkpointer) --------------------------------
    def on_commit(self, flush: Optional[Callable[[], None]]) -> None:
        if time.monotonic() - self.last_time >= self.interval_s:
            moved = [tp for tp in self.source.positions if self._moved(tp)]
            if moved:
                self._write(moved, flush)

    def checkpoint(self, flush: Optional[Callable[[], None]]) -> None:
        """Write every task whose position moved (clean stop, end of stream)."""
        self._write([tp for tp in self.source.positions if self._moved(tp)], flush)

    def _moved(self, tp: TaskId) -> bool:
        pos = self.source.positions.get(tp)
        return pos is not None and pos != self.recorded.get(tp)

    def _write(self, tps: List[TaskId], flush: Optional[Callable[[], None]] = None) -> None:
        """Flush the sink, write and flush the tasks' records, then commit their offsets."""
        if not tps:
            return
        flush = flush if flush is not None else self.sink_flush
        if flush is not None:
            flush()
        positions = {tp: self.source.positions[tp] for tp in tps}
        for tp, offset in positions.items():
            state = {i: node.tasks[tp].state_dict() for i, node in enumerate(self.op_nodes)}
            self.store.write(tp, offset, state)
        self.store.flush()
        self.recorded.update(positions)
        self.count += 1
        self.last_time = time.monotonic()
        self.last_wall = time.time()
        logger.debug("%s: changelog records for %s", self.source.name,
                     ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(positions.items())))
        self.source.commit_positions(positions)

    def close(self) -> None:
        self.store.close()

