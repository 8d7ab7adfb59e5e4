"""Kafka source and sink for Stream (confluent-kafka).

Source: micro-batches decoded in bulk (:mod:`._decode`): the source waits up to
``max_latency_ms`` for a first message, then adds whatever else is already fetched (up to
``batch_size``) and hands the batch over at once — it never sleeps out the deadline with
messages in hand; with nothing in that time it reports IDLE.  Undecodable messages are
counted, logged (the first few at warning) and, when ``dead_letter_topic`` is given, produced
there with headers ``sabot.error`` (reason) and ``sabot.source`` (``topic/partition/offset``).
After each batch the source yields a :class:`Commit` of the consumed offsets; the sink runs it
once the batch has passed every operator (at-least-once).  ``commit='sync'`` (default) waits
for the broker's answer there; ``commit='async'`` sends the commit and goes on (failures are
counted in ``commit_errors`` and logged when the answer comes), and commits the last processed
offsets synchronously when the source closes: the live path's choice, since a synchronous
commit holds up the next message by a broker round trip.  Either way a crash re-reads at most
the batches whose commit had not landed.  With ``changelog_topic`` each
batch is split by partition, each part preceded by a :class:`TaskSwitch` (see :mod:`._tasks`),
and offsets are committed only with the changelog records.

Every decoded record is checked at this edge (:class:`~._decode.RecordRules`: finite numbers,
positive prices, non-negative sizes, identifiers without control characters, a timestamp
window around the message's Kafka timestamp); a record that fails is a dead letter like an
undecodable message, its reason naming field and value.  A dead letter that cannot be
delivered holds back every later offset commit (counted in ``commits_withheld``), so it is read
again rather than lost.  ``kafka_config`` (the user's client configuration) reaches the
consumer, the dead-letter producer and, as ``source.kafka_config``, the changelog store.

Sink: JSON values in the ticker record layout of :mod:`sabot.schema` (timestamps as integer
ns), written by a compiled encoder, message key = the ``key`` column, no blocking flush per
message.  A commit runs only once every record before it is delivered: at once when the
producer's queue is empty, else held (processing goes on) until it is, until the oldest held
commit is :attr:`KafkaSink.COMMIT_DELAY_S` old or the source falls idle (then the producer is
flushed), and at the end.  A record that is not delivered is counted and stops the commits;
``to_kafka`` raises :class:`DeliveryError` at the end of the run.

Consumer lag (``metrics_port``) is librdkafka's, from the high watermarks the broker reports.
The embedded broker's listed high watermarks (offset queries) may undercount: a topic read to
its end can hold more records than they add up to.  So there the lag may read low, and a new
group starting at the end (``from_beginning=False``) may start a few records early (reads
them again; loses none).  Nothing here uses a listed high watermark to decide that a topic has
been read to its end: ``stop_at_end`` uses the end-of-partition events of the fetches
themselves, whose watermarks count every record.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import orjson
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.types as pat

from ..kafka import client_config, consumer_config, producer_config, validate_client_config
from ..schema import TICKER_SCHEMA
from ..timeunits import UNIT_NS, column_ns
from ._decode import JsonBatchDecoder, RecordRules
from ._events import IDLE, Close, Commit, Event, TaskSwitch
from ._kafkaloops import produce_all, take_messages

logger = logging.getLogger(__name__)

_MS_NS = UNIT_NS["ms"]  # Kafka message timestamps are milliseconds

#: How many undecodable messages are logged at warning before switching to debug.
WARN_FIRST = 5


#: librdkafka's ``fetch.queue.backoff.ms`` for the source (its default is 1000): how long the
#: fetcher waits before fetching a partition again once the local queue holds
#: ``queued.min.messages``.  Reading a backlog, the queue crosses that bound all the time, and
#: with one second of back-off the source ran dry for about 40% of the run (measured with
#: ``benchmarks/end_to_end.py``).  Needs librdkafka 2.4 or later (not set on older ones).
FETCH_QUEUE_BACKOFF_MS = 10


def source_fetch_defaults() -> Dict[str, Any]:
    """The consumer settings ``from_kafka`` adds to :func:`sabot.kafka.consumer_config`."""
    from confluent_kafka import libversion

    return {"fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS} if libversion()[1] >= 0x02040000 \
        else {}


class KafkaSource:
    """Reads JSON messages from Kafka topics into RecordBatches (see module docstring)."""

    def __init__(self, bootstrap_servers: str, topic: Any, group_id: str, *,
                 schema: Optional[pa.Schema] = None, batch_size: int = 1000,
                 max_latency_ms: float = 50, from_beginning: bool = False,
                 dead_letter_topic: Optional[str] = None, stop_at_end: bool = False,
                 order_by: Optional[str] = None, checkpoint_dir: Optional[Any] = None,
                 checkpoint_interval_s: float = 60.0, metrics_port: Optional[int] = None,
                 changelog_topic: Optional[str] = None, commit: str = "sync",
                 kafka_config: Optional[Mapping[str, Any]] = None,
                 timestamp_window: Any = "auto",
                 **consumer_overrides: Any) -> None:
        if commit not in ("sync", "async"):
            raise ValueError(f"commit must be 'sync' or 'async', got {commit!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_latency_ms <= 0:
            raise ValueError(f"max_latency_ms must be > 0, got {max_latency_ms}")
        self.topics: List[str] = [topic] if isinstance(topic, str) else list(topic)
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.schema = schema if schema is not None else TICKER_SCHEMA
        self.batch_size = int(batch_size)
        self.max_latency_s = max_latency_ms / 1000.0
        self.dead_letter_topic = dead_letter_topic
        self.stop_at_end = stop_at_end
        #: validation of every decoded record (see :class:`~._decode.RecordRules`)
        self.rules = RecordRules.from_window(timestamp_window, from_beginning=from_beginning)
        # librdkafka spells its settings with dots; accept Python-friendly underscores too.
        overrides = {k.replace("_", ".") if "." not in k and k not in ("error_cb", "stats_cb",
                     "log_cb", "throttle_cb", "on_commit") else k: v
                     for k, v in consumer_overrides.items()}
        #: the user's client configuration (security, tuning), laid over the defaults of every
        #: client this source creates: the consumer, the dead-letter producer and, through this
        #: attribute, the changelog store
        self.kafka_config: Dict[str, Any] = validate_client_config(kafka_config)
        base = consumer_config(bootstrap_servers, group_id, from_beginning=from_beginning)
        base.update(source_fetch_defaults())
        self.config = client_config(bootstrap_servers, self.kafka_config, base=base)
        self.config.update(overrides)  # explicit consumer settings win
        #: settings of the dead-letter producer (``dead_letter_topic``)
        self.dead_letter_config = client_config(bootstrap_servers, self.kafka_config,
                                                base=producer_config(bootstrap_servers))
        self.order_by = order_by
        if stop_at_end or order_by:
            self.config["enable.partition.eof"] = True
        self.name = f"from_kafka({','.join(self.topics)})"
        if checkpoint_dir is not None and order_by:
            raise ValueError("checkpoint_dir is not supported together with order_by "
                             "(the re-ordering buffer is not part of the checkpoint)")
        if changelog_topic is not None and checkpoint_dir is not None:
            raise ValueError("checkpoint_dir and changelog_topic are mutually exclusive: state "
                             "goes either to a local directory or to a Kafka changelog topic")
        if changelog_topic is not None and order_by:
            raise ValueError("changelog_topic is not supported together with order_by "
                             "(the re-ordering buffer spans partitions)")
        if changelog_topic is not None and len(self.topics) != 1:
            raise ValueError("changelog_topic supports one source topic (the changelog partition "
                             f"of a task is its source partition); got {self.topics}")
        if checkpoint_interval_s < 0:
            raise ValueError(f"checkpoint_interval_s must be >= 0, got {checkpoint_interval_s}")
        self.checkpoint_dir = checkpoint_dir
        self.changelog_topic = changelog_topic
        #: the run's TaskManager in changelog_topic mode (set by it before the run)
        self.tasks: Any = None
        self.checkpoint_interval_s = float(checkpoint_interval_s)
        #: next offset to read per (topic, partition), over every batch yielded so far
        self.positions: Dict[Tuple[str, int], int] = {}
        #: offsets to seek to on assignment (set from a checkpoint before a run)
        self.restore_offsets: Dict[Tuple[str, int], int] = {}
        self._consumer: Any = None
        #: messages behind the high watermark per (topic, partition) (librdkafka statistics;
        #: an estimate: the embedded broker's high watermarks may undercount)
        self.lag: Dict[Tuple[str, int], int] = {}
        self.metrics_port = metrics_port
        if metrics_port is not None:  # consumer lag for the metrics endpoint of the run
            self.config.setdefault("statistics.interval.ms", 1000)
            self.config["stats_cb"] = self._on_stats
        self.commit_mode = commit
        #: the newest offsets handed to an asynchronous commit, committed again synchronously
        #: on close (an asynchronous commit may still be in flight then)
        self._async_committed: Dict[Tuple[str, int], int] = {}
        if commit == "async":
            user_on_commit = self.config.get("on_commit")

            def on_commit(err: Any, partitions: List[Any]) -> None:
                self._on_async_commit(err, partitions)
                if user_on_commit is not None:
                    user_on_commit(err, partitions)
            self.config["on_commit"] = on_commit
        self.metrics: Dict[str, int] = {}
        self._dlq: Any = None
        #: commits next offsets for the current run (see :meth:`_commit`)
        self._commit_offsets: Any = None
        self._last_withheld_log = 0.0
        self.reset_metrics()

    def _on_async_commit(self, err: Any, partitions: List[Any]) -> None:
        """librdkafka's answer to an asynchronous commit (called from ``consume``)."""
        failed = [p for p in partitions or [] if p.error is not None]
        if err is not None or failed:
            self.metrics["commit_errors"] += 1
            logger.warning("%s: asynchronous offset commit failed (records will be re-read "
                           "unless a later commit lands): %s", self.name, err or failed[0].error)

    def reset_metrics(self) -> None:
        self.metrics = {"messages": 0, "rows": 0, "batches": 0, "decode_errors": 0,
                        "dead_lettered": 0, "dead_letter_errors": 0, "commits": 0,
                        "commit_errors": 0, "consumer_errors": 0, "commits_withheld": 0}

    # ------------------------------------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

        self.reset_metrics()
        self._async_committed.clear()
        decoder = JsonBatchDecoder(self.schema, rules=self.rules)
        consumer = Consumer(self.config)
        dlq = Producer(self.dead_letter_config) if self.dead_letter_topic else None
        assigned: set = set()
        at_eof: set = set()
        msgs: List[Any] = []  # the micro-batch being collected
        closing = False

        def on_assign(c: Any, parts: List[Any]) -> None:
            assigned.update((p.topic, p.partition) for p in parts)
            if self.tasks is not None:
                self.tasks.on_assign(parts)
                c.assign(parts)
                logger.info("%s: assigned %s", self.name, ", ".join(
                    f"{p.topic}[{p.partition}]@{p.offset if p.offset >= 0 else 'committed'}"
                    for p in parts))
                return
            seek = [(p, self.restore_offsets[(p.topic, p.partition)]) for p in parts
                    if (p.topic, p.partition) in self.restore_offsets]
            if seek:
                for p, offset in seek:
                    p.offset = offset
                c.assign(parts)
                logger.info("%s: resumed from checkpoint at %s", self.name,
                            ", ".join(f"{p.topic}[{p.partition}]@{o}" for p, o in seek))
            logger.info("%s: assigned %s", self.name,
                        ", ".join(f"{p.topic}[{p.partition}]" for p in parts))

        def on_revoke(c: Any, parts: List[Any], lost: bool = False) -> None:
            for p in parts:
                assigned.discard((p.topic, p.partition))
                at_eof.discard((p.topic, p.partition))
                self._async_committed.pop((p.topic, p.partition), None)  # not ours to commit
            if self.tasks is not None:
                revoked = {(p.topic, p.partition) for p in parts}
                msgs[:] = [m for m in msgs if (m.topic(), m.partition()) not in revoked]
                # lost (session or poll interval expired): another member may already own
                # them, so their state is dropped, never written over the new owner's records
                self.tasks.on_revoke(sorted(revoked), write=not (closing or lost))
                logger.log(logging.WARNING if lost else logging.INFO, "%s: %s %s", self.name,
                           "lost" if lost else "revoked",
                           ", ".join(f"{t}[{p}]" for t, p in sorted(revoked)))

        def on_lost(c: Any, parts: List[Any]) -> None:
            on_revoke(c, parts, lost=True)

        consumer.subscribe(self.topics, on_assign=on_assign, on_revoke=on_revoke,
                           on_lost=on_lost)
        self._consumer = consumer
        self._dlq = dlq

        def commit_offsets(offsets: Dict[Tuple[str, int], int]) -> None:
            """Commit next offsets (what a run of this run's Commits adds up to)."""
            self._commit_fn(consumer, dlq, [TopicPartition(t, p, o) for (t, p), o
                                            in offsets.items()])()
        self._commit_offsets = commit_offsets
        self.positions = dict(self.restore_offsets)
        orderer = _PartitionOrderer(self.order_by) if self.order_by else None
        closed = False
        handed_off = False

        def close() -> None:
            nonlocal closed, closing
            if closed:
                return
            closed = closing = True
            if dlq is not None:
                dlq.flush(10)
            self._consumer = None
            if self._async_committed:
                self._commit_sync(consumer, [TopicPartition(t, p, o) for (t, p), o
                                             in sorted(self._async_committed.items())])
                self._async_committed.clear()
            consumer.close()
            if self.tasks is not None:
                self.tasks.close()

        try:
            while True:
                msgs.clear()
                deadline = time.monotonic() + self.max_latency_s
                looked = False
                while len(msgs) < self.batch_size:
                    if msgs:  # in hand: add only what is already fetched, then hand over
                        got = consumer.consume(self.batch_size - len(msgs), 0)
                        if not got:
                            break
                    else:  # consume(1, t) returns at the first message (consume(n, t) waits for n)
                        remaining = deadline - time.monotonic()
                        # librdkafka waits whole milliseconds: under one it returns at once,
                        # so after one such look the rest of the window would be a busy loop
                        if remaining <= 0 or (remaining < 0.001 and looked):
                            break
                        got = consumer.consume(1, remaining)
                        looked = True
                    for m in take_messages(got, msgs, at_eof, KafkaError._PARTITION_EOF):
                        self.metrics["consumer_errors"] += 1
                        logger.warning("%s: consumer error: %s", self.name, m.error())
                    if self.stop_at_end and assigned and assigned <= at_eof:
                        break
                finished = self.stop_at_end and assigned and assigned <= at_eof and not msgs
                if orderer is not None:
                    if msgs or orderer.pending:
                        yield from self._emit_ordered(msgs, decoder, consumer, dlq, orderer,
                                                      assigned, at_eof, bool(finished))
                    if finished:
                        break
                    if not msgs:
                        yield IDLE
                elif msgs:
                    yield from self._emit(msgs, decoder, consumer, dlq)
                elif finished:
                    break
                else:
                    yield IDLE
            handed_off = True  # the sink closes us after its final flush and commits
            yield Close(close, self.name)
        finally:
            if not handed_off:
                close()

    def _emit(self, msgs: List[Any], decoder: JsonBatchDecoder, consumer: Any,
              dlq: Any) -> Iterator[Event]:
        from confluent_kafka import TopicPartition

        if self.tasks is not None:
            yield from self._emit_tasks(msgs, decoder, consumer, dlq)
            return
        n = len(msgs)
        result, offsets = _decode_with_offsets(decoder, msgs)
        self.metrics["messages"] += n
        if result.bad:
            self._dead_letter(msgs, result.bad, dlq)
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self.positions.update(offsets)
        batch = result.batch
        if batch.num_rows:
            self.metrics["rows"] += batch.num_rows
            self.metrics["batches"] += 1
            yield batch

        yield self._commit(consumer, dlq, tps, offsets)

    def _commit(self, consumer: Any, dlq: Any, tps: List[Any],
                offsets: Dict[Tuple[str, int], int]) -> Commit:
        """The Commit of next ``offsets``.  It also carries them (``extra['offsets']``) with
        this run's ``extra['commit_offsets']``, so a sink that runs several of them in a row
        may commit their union once instead (same result: later offsets win)."""
        return Commit(self._commit_fn(consumer, dlq, tps), self.name,
                      extra={"offsets": offsets, "commit_offsets": self._commit_offsets})

    def _emit_tasks(self, msgs: List[Any], decoder: JsonBatchDecoder, consumer: Any,
                    dlq: Any) -> Iterator[Event]:
        """One batch per partition, each preceded by its TaskSwitch; a partition's position
        moves once its batch has passed every operator and the sink (the generator resumes)."""
        groups: Dict[Tuple[str, int], List[Any]] = {}
        for m in msgs:
            groups.setdefault((m.topic(), m.partition()), []).append(m)
        self.metrics["messages"] += len(msgs)
        for tp, group in groups.items():
            result = _decode(decoder, group)
            if result.bad:
                self._dead_letter(group, result.bad, dlq)
            batch = result.batch
            if batch.num_rows:
                self.metrics["rows"] += batch.num_rows
                self.metrics["batches"] += 1
                yield TaskSwitch(tp)
                yield batch
            self.positions[tp] = group[-1].offset() + 1
        yield Commit(self._commit_fn(consumer, dlq, []), self.name)

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka statistics → per-partition consumer lag (-1, i.e. unknown, skipped).

        For display only: the lag is computed from the high watermark the broker reports, which
        the embedded broker may undercount, so it may read low (never high) there."""
        try:
            stats = orjson.loads(stats_json)
            for topic, t in stats.get("topics", {}).items():
                for part, p in t.get("partitions", {}).items():
                    lag = p.get("consumer_lag", -1)
                    if int(part) >= 0 and lag is not None and lag >= 0:
                        self.lag[(topic, int(part))] = int(lag)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.debug("%s: unreadable librdkafka statistics: %s", self.name, exc)

    def commit_positions(self, positions: Dict[Tuple[str, int], int]) -> None:
        """Commit ``positions`` (next offsets) to the group, e.g. those of a checkpoint."""
        from confluent_kafka import TopicPartition

        if self._consumer is None or not positions:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        self._commit_fn(self._consumer, self._dlq, tps, force=True)()

    def _commit_fn(self, consumer: Any, dlq: Any, tps: List[Any], force: bool = False):
        def commit() -> None:
            if dlq is not None and not self._dead_letters_delivered(dlq):
                return  # committing would lose the undelivered dead letters: read them again
            if (self.checkpoint_dir is not None or self.changelog_topic is not None) and not force:
                return  # offsets are committed with each checkpoint, matching its state
            if self.commit_mode == "async" and not force:
                try:
                    consumer.commit(offsets=tps, asynchronous=True)
                except Exception as exc:
                    self.metrics["commit_errors"] += 1
                    logger.warning("%s: offset commit failed (records will be re-read): %s",
                                   self.name, exc)
                    return
                self.metrics["commits"] += 1
                self._async_committed.update({(tp.topic, tp.partition): tp.offset for tp in tps})
                return
            self._commit_sync(consumer, tps)
        return commit

    def _dead_letters_delivered(self, dlq: Any) -> bool:
        """Flush the dead-letter producer; False (logged, rate-limited) if any dead letter of
        this run was not delivered: from then on no offset is committed, so the messages are
        read (and dead-lettered) again by the next run instead of being lost."""
        remaining = dlq.flush(30)
        if not remaining and not self.metrics["dead_letter_errors"]:
            return True
        self.metrics["commits_withheld"] += 1
        now = time.monotonic()
        if now - self._last_withheld_log >= 10.0:
            self._last_withheld_log = now
            logger.error("%s: %d dead letter(s) not delivered%s; offsets are not committed "
                         "(the messages will be read again)", self.name,
                         self.metrics["dead_letter_errors"],
                         f", {remaining} still queued" if remaining else "")
        return False

    def _commit_sync(self, consumer: Any, tps: List[Any]) -> None:
        try:
            consumer.commit(offsets=tps, asynchronous=False)
            self.metrics["commits"] += 1
        except Exception as exc:
            self.metrics["commit_errors"] += 1
            logger.warning("%s: offset commit failed (records will be re-read): %s",
                           self.name, exc)

    def _emit_ordered(self, msgs: List[Any], decoder: JsonBatchDecoder, consumer: Any, dlq: Any,
                      orderer: "_PartitionOrderer", assigned: set, at_eof: set,
                      final: bool) -> Iterator[Event]:
        from confluent_kafka import TopicPartition

        if msgs:
            result = _decode(decoder, msgs)
            self.metrics["messages"] += len(msgs)
            bad_idx = set()
            if result.bad:
                self._dead_letter(msgs, result.bad, dlq)
                bad_idx = {i for i, _ in result.bad}
            good = [m for i, m in enumerate(msgs) if i not in bad_idx]
            orderer.add(result.batch, good, msgs)
        out, commit_offsets = orderer.release(assigned, at_eof, final)
        orderer.throttle(consumer, assigned, at_eof)
        self.metrics.update(order_buffered_rows=orderer.rows,
                            order_buffer_peak_rows=orderer.peak_rows,
                            order_paused_partitions=len(orderer.paused),
                            order_pauses=orderer.pauses)
        if out is not None and out.num_rows:
            self.metrics["rows"] += out.num_rows
            self.metrics["batches"] += 1
            yield out
        if commit_offsets:
            tps = [TopicPartition(t, p, o) for (t, p), o in commit_offsets.items()]
            yield self._commit(consumer, dlq, tps, commit_offsets)

    def _dead_letter(self, msgs: List[Any], bad: List[Tuple[int, str]], dlq: Any) -> None:
        for i, reason in bad:
            m = msgs[i]
            where = f"{m.topic()}/{m.partition()}/{m.offset()}"
            self.metrics["decode_errors"] += 1
            count = self.metrics["decode_errors"]
            level = logging.WARNING if count <= WARN_FIRST else logging.DEBUG
            logger.log(level, "%s: message at %s skipped (undecodable or invalid): %s%s", self.name, where,
                       reason, " (further ones logged at debug)" if count == WARN_FIRST else "")
            if dlq is None:
                continue

            def delivered(err: Any, _msg: Any) -> None:
                if err is not None:
                    self.metrics["dead_letter_errors"] += 1
                    logger.error("%s: dead-letter delivery failed: %s", self.name, err)

            headers = [("sabot.error", reason.encode()), ("sabot.source", where.encode())]
            while True:
                try:
                    dlq.produce(self.dead_letter_topic, value=m.value() or b"", key=m.key(),
                                headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    dlq.poll(0.1)
            self.metrics["dead_lettered"] += 1
        dlq.poll(0) if dlq is not None else None


# ----------------------------------------------------------------------------------------------
def _decode(decoder: JsonBatchDecoder, msgs: List[Any]) -> Any:
    """Decode messages; each message's Kafka timestamp (when it has one) is the reference time
    of its record's timestamp window, so a replay judges records by when they were produced."""
    return _decode_with_offsets(decoder, msgs)[0]


def _decode_with_offsets(decoder: JsonBatchDecoder, msgs: List[Any]) -> Tuple[Any, Dict]:
    """:func:`_decode`, and the next offset per (topic, partition) of the messages."""
    from ._jsondecode import message_fields

    values, ref, offsets = message_fields(msgs, _MS_NS)
    return decoder.decode(values, ref), offsets


def json_columns(batch: pa.RecordBatch) -> Tuple[List[str], List[list]]:
    """Column names and Python value lists ready for JSON (timestamps → int ns)."""
    names, lists = [], []
    for name, col in zip(batch.schema.names, batch.columns):
        t = col.type
        if pat.is_dictionary(t):
            col = col.cast(t.value_type)
            t = col.type
        if pat.is_timestamp(t):
            if t.unit != "ns":
                col = col.cast(pa.timestamp("ns", tz=t.tz))
            col = col.cast(pa.int64())
        elif pat.is_date(t) or pat.is_time(t) or pat.is_duration(t):  # their stored integers
            col = col.view(pa.int32() if t.bit_width == 32 else pa.int64())
        names.append(name)
        lists.append(_pylist(col))
    return names, lists


def _pylist(col: pa.Array) -> list:
    """``col.to_pylist()``, through numpy's C ``tolist`` where possible (several times faster)."""
    import numpy as np

    t = col.type
    if pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t):
        if col.null_count == 0:
            return col.to_numpy(zero_copy_only=False).tolist()
        # nulls filled first: an integer column with nulls would otherwise become float64
        # (large integers, such as ns timestamps, rounded)
        values = col.fill_null(False if pat.is_boolean(t) else 0).to_numpy(
            zero_copy_only=False).astype(object)
        values[np.asarray(col.is_null())] = None
        return values.tolist()
    if pat.is_string(t) or pat.is_large_string(t):
        return col.to_numpy(zero_copy_only=False).tolist()
    return col.to_pylist()


def encode_json(batch: pa.RecordBatch) -> List[bytes]:
    """One flat JSON object per row: nulls as null, timestamps as integer ns.  JSON has no
    NaN or infinity: a non-finite float is written as null (and ``from_kafka`` never turns a
    non-finite number into a record either).

    Numbers, booleans, strings and timestamps are written by the compiled encoder straight
    from the Arrow buffers (no Python object per value; floats in their shortest round-trip
    form); a column of any other type (lists, structs, decimals...) is encoded value by value
    with orjson."""
    return encode_json_keys(batch)[0]


def encode_json_keys(batch: pa.RecordBatch, key: Optional[str] = None
                     ) -> Tuple[List[bytes], Optional[List[Optional[bytes]]]]:
    """:func:`encode_json`, and when ``key`` names a string column, its value in every row as
    UTF-8 bytes (None for null) from the same pass; otherwise None for the keys."""
    from ._jsondecode import encode_arrow

    n = batch.num_rows
    # a name given twice is written once, where it first appears, with its last column (as a
    # dict of the row would): a JSON object with a member twice is not decodable
    last = {name: col for name, col in zip(batch.schema.names, batch.columns)}
    columns = [(name, _encoder_column(col)) for name, col in last.items()]
    key_column = -1
    if key is not None and key in last:
        key_column = list(last).index(key)
        if not isinstance(columns[key_column][1], pa.Array) or not (
                pat.is_string(columns[key_column][1].type)
                or pat.is_large_string(columns[key_column][1].type)):
            key_column = -1
    return encode_arrow(columns, n, key_column)


def _encoder_column(col: pa.Array) -> Any:
    """A column as ``encode_arrow`` takes it: the Array itself when its type is read from its
    buffers (after casting a dictionary to its values, dates, times and durations to int64),
    else one JSON text per value (orjson)."""
    from ._jsondecode import encodable

    t = col.type
    if encodable(t):
        return col
    if pat.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    elif pat.is_date(t) or pat.is_time(t) or pat.is_duration(t):  # their integers, as stored
        col = col.view(pa.int32() if t.bit_width == 32 else pa.int64())
        t = col.type
    if encodable(t):
        return col
    dumps = orjson.dumps
    return [dumps(v) for v in _pylist(col)]


class DeliveryError(RuntimeError):
    """``to_kafka`` could not deliver some records (their offsets were not committed)."""


class KafkaSink:
    """Produces batches as JSON messages; flushes before commits.

    A record the producer could not deliver (a failed delivery report, or ``produce``
    refusing it) is counted in ``metrics['undelivered']`` and logged (rate-limited).  From the
    first one on, no offset is committed any more (a later commit would cover the lost record):
    the run goes on delivering the rest, and :meth:`check` raises :class:`DeliveryError` at the
    end, so the records are read again by the next run of the group.

    Delivery reports: librdkafka reports only failed deliveries
    (``delivery.report.only.error``), so a delivered record costs no Python call.  A record
    counts as delivered once it has left the producer's queue without a failure report:
    ``delivered = produced - failed - refused - still queued``, brought up to date at every
    ``write`` and flush (a flush that returns with nothing queued has therefore seen every
    failure report of the records before it).
    """

    #: the longest a commit is held waiting for the delivery of the records before it; then
    #: the sink blocks on a flush and runs it
    COMMIT_DELAY_S = 0.2

    def __init__(self, bootstrap_servers: str, topic: str, key: Optional[str] = "symbol",
                 kafka_config: Optional[Mapping[str, Any]] = None,
                 **producer_overrides: Any) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.key = key
        #: the producer's librdkafka settings: defaults, the client configuration, overrides
        self.config = client_config(bootstrap_servers, kafka_config,
                                    base=producer_config(bootstrap_servers))
        self.config.update(producer_overrides)
        user_on_delivery = self.config.pop("on_delivery", None)
        if user_on_delivery is not None:  # the caller's callback sees every report as before
            self.config["delivery.report.only.error"] = False

            def on_delivery(err: Any, msg: Any) -> None:
                self._on_delivery(err, msg)
                user_on_delivery(err, msg)
            self.config["on_delivery"] = on_delivery
        else:
            self.config["delivery.report.only.error"] = True
            self.config["on_delivery"] = self._on_delivery
        self.producer = Producer(self.config)
        self.metrics = {"produced": 0, "delivered": 0, "delivery_errors": 0, "undelivered": 0}
        self._refused = 0  # records produce() refused (never queued)
        self._last_log = 0.0
        #: commits whose records may not all be delivered yet, oldest first
        self._held: List[Commit] = []
        self._held_since = 0.0

    def _failed(self, count: int, why: Any) -> None:
        self.metrics["undelivered"] += count
        now = time.monotonic()
        if self.metrics["undelivered"] <= WARN_FIRST or now - self._last_log >= 10.0:
            self._last_log = now
            logger.error("to_kafka(%s): record not delivered (%s); %d undelivered so far, "
                         "offsets are no longer committed", self.topic, why,
                         self.metrics["undelivered"])

    def _on_delivery(self, err: Any, msg: Any) -> None:
        """Producer-wide delivery report: failures only (unless a caller asked for all)."""
        if err is not None:
            self.metrics["delivery_errors"] += 1
            self._failed(1, err)

    def _count_delivered(self) -> None:
        """``metrics['delivered']``: produced records that left the queue without a failure."""
        m = self.metrics
        m["delivered"] = (m["produced"] - m["delivery_errors"] - self._refused
                          - len(self.producer))

    def _keys(self, batch: pa.RecordBatch) -> List[Optional[bytes]]:
        """The message key of every row: the ``key`` column's values as UTF-8 text (None for
        null).  A string key column's bytes come from the encoder's pass instead
        (:func:`encode_json_keys`); this is the path of the other types."""
        assert self.key is not None
        if self.key not in batch.schema.names:
            raise KeyError(f"key column {self.key!r} not found; columns present: "
                           f"{', '.join(batch.schema.names)}")
        values = batch.column(self.key).to_pylist()
        return [None if k is None else str(k).encode() for k in values]

    def write(self, batch: pa.RecordBatch) -> None:
        from confluent_kafka import KafkaException

        values, keys = encode_json_keys(batch, self.key)
        if keys is None:
            keys = self._keys(batch) if self.key is not None else [None] * len(values)
        # a full local queue is served (delivery reports) and the row produced again; a row
        # the producer refuses (e.g. larger than message.max.bytes) is counted undelivered
        for _, exc in produce_all(self.producer.produce, self.producer.poll, self.topic,
                                  values, keys, KafkaException):
            self._refused += 1
            self._failed(1, exc.args[0] if exc.args else exc)
        self.metrics["produced"] += len(values)
        self.producer.poll(0)
        self._count_delivered()

    def ack(self, commit: Commit) -> None:
        """Run ``commit`` once every record written before it is delivered, without waiting
        when possible: at once if the producer's queue is already empty, else it is held until
        a later ``ack`` finds the queue empty or the oldest held commit is
        :attr:`COMMIT_DELAY_S` old (then :meth:`settle`).  Held commits run in order."""
        self._held.append(commit)
        if len(self._held) == 1:
            self._held_since = time.monotonic()
        self.producer.poll(0)
        if len(self.producer) == 0 or time.monotonic() - self._held_since >= self.COMMIT_DELAY_S:
            self.settle()

    def settle(self) -> None:
        """Flush (every record written so far delivered or failed), then run the held commits,
        in order; none of them once a record was lost (they would cover it)."""
        self.flush()
        held, self._held = self._held, []
        if self.healthy:
            _run_commits(held)

    @property
    def healthy(self) -> bool:
        """No record has been lost so far (offsets may be committed)."""
        return self.metrics["undelivered"] == 0

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self.producer.flush(timeout_s)
        self._count_delivered()
        if remaining:
            raise DeliveryError(f"to_kafka({self.topic}): {remaining} record(s) not delivered "
                                f"after {timeout_s:.0f}s; their offsets were not committed")

    def close(self, timeout_s: float = 60.0) -> None:
        """The run's last flush: records still queued after ``timeout_s`` were never delivered
        and are counted (the run then reports them through :meth:`check`)."""
        remaining = self.producer.flush(timeout_s)
        self._count_delivered()
        if remaining:
            self._failed(remaining, "still queued when the run ended")

    def check(self) -> None:
        """Raise :class:`DeliveryError` if any record was not delivered."""
        if not self.healthy:
            raise DeliveryError(
                f"to_kafka({self.topic}): {self.metrics['undelivered']} of "
                f"{self.metrics['produced']} record(s) not delivered; offsets were committed "
                "only up to the first failure, so the next run of the group reads them again")


def _run_commits(commits: List[Commit]) -> None:
    """Run ``commits`` in order; a run of consecutive Kafka source commits of one source run
    (same ``extra['commit_offsets']``) is committed once, with the union of their offsets
    (later ones win, as they would running one after the other): one broker round trip."""
    i = 0
    while i < len(commits):
        merge = commits[i].extra.get("commit_offsets")
        j = i + 1
        if merge is not None:
            while j < len(commits) and commits[j].extra.get("commit_offsets") is merge:
                j += 1
        if j - i == 1:
            commits[i].run()
        else:
            offsets: Dict[Tuple[str, int], int] = {}
            for c in commits[i:j]:
                offsets.update(c.extra["offsets"])
            merge(offsets)
        i = j


class _PartitionOrderer:
    """Releases rows in event-time order across a topic's partitions.

    Each partition is in event-time order (one symbol's records go to one partition, produced
    in time order); partitions are fetched unevenly.  Rows are buffered per partition and
    released, sorted by ``on``, once they are older than the smallest latest time over the
    assigned partitions that are not at their end.  The offset committed for a partition is
    that of its first row still buffered (or just past the last message read).

    Bound: the buffer holds about ``max_rows`` rows and ``max_bytes`` Arrow bytes at most (class
    defaults :attr:`MAX_BUFFERED_ROWS`, :attr:`MAX_BUFFERED_BYTES`), plus the batch or two
    already fetched when a pause takes effect.  At either, the partitions that are ahead in event time — every assigned partition not at
    its end except those holding the release frontier back — are paused
    (``consumer.pause``): nothing is dropped, the laggards keep being fetched, the frontier
    moves and releases rows.  Paused partitions are resumed once the buffer is under half of
    both bounds, and any paused partition that becomes a laggard is resumed at once (so the
    frontier can always move).
    """

    #: default bound on buffered rows before the partitions ahead are paused
    MAX_BUFFERED_ROWS = 200_000
    #: default bound on buffered Arrow bytes before the partitions ahead are paused
    MAX_BUFFERED_BYTES = 256 * 1024 * 1024

    def __init__(self, on: str, *, max_rows: Optional[int] = None,
                 max_bytes: Optional[int] = None) -> None:
        self.on = on
        self.max_rows = int(self.MAX_BUFFERED_ROWS if max_rows is None else max_rows)
        self.max_bytes = int(self.MAX_BUFFERED_BYTES if max_bytes is None else max_bytes)
        if self.max_rows < 1 or self.max_bytes < 1:
            raise ValueError(f"order_by buffer bounds must be >= 1, got max_rows={max_rows}, "
                             f"max_bytes={max_bytes}")
        self.buffers: Dict[Tuple[str, int], List[Tuple[pa.Table, Any, Any]]] = {}
        self.latest: Dict[Tuple[str, int], int] = {}
        self.next_offset: Dict[Tuple[str, int], int] = {}
        self.dirty: set = set()
        self.rows = 0
        self.nbytes = 0
        self.peak_rows = 0
        self.paused: set = set()
        self.pauses = 0

    @property
    def pending(self) -> bool:
        return any(self.buffers.values())

    def add(self, batch: pa.RecordBatch, good: List[Any], consumed: List[Any]) -> None:
        import numpy as np

        for m in consumed:
            tp = (m.topic(), m.partition())
            self.next_offset[tp] = m.offset() + 1
            self.dirty.add(tp)
        if not batch.num_rows:
            return
        ts = column_ns(batch.column(self.on), self.on)
        tps = [(m.topic(), m.partition()) for m in good]
        offs = np.fromiter((m.offset() for m in good), dtype=np.int64, count=len(good))
        table = pa.Table.from_batches([batch])
        keys = sorted(set(tps))
        code_of = {tp: i for i, tp in enumerate(keys)}
        part_codes = (np.fromiter((code_of[tp] for tp in tps), dtype=np.int64, count=len(tps))
                      if len(keys) > 1 else None)
        for code, tp in enumerate(keys):
            if part_codes is None:
                sel = slice(None)
                sub = table
            else:
                sel = np.flatnonzero(part_codes == code)
                sub = table.take(pa.array(sel))
            self.buffers.setdefault(tp, []).append((sub, ts[sel], offs[sel]))
            self.rows += sub.num_rows
            self.nbytes += sub.nbytes
            mx = int(ts[sel].max())
            self.latest[tp] = max(self.latest.get(tp, mx), mx)
        self.peak_rows = max(self.peak_rows, self.rows)

    def frontier(self, assigned: set, at_eof: set, final: bool = False) -> int:
        """Rows strictly before this time can be released."""
        import numpy as np

        if final:
            return int(np.iinfo(np.int64).max)
        holding = [tp for tp in assigned if tp not in at_eof]
        if any(tp not in self.latest for tp in holding):
            return int(np.iinfo(np.int64).min)
        return int(min((self.latest[tp] for tp in holding), default=np.iinfo(np.int64).max))

    def release(self, assigned: set, at_eof: set, final: bool):
        import numpy as np

        frontier = self.frontier(assigned, at_eof, final)
        out_tables = []
        for tp, chunks in self.buffers.items():
            if not chunks:
                continue
            table = pa.concat_tables([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            ts = np.concatenate([c[1] for c in chunks])
            offs = np.concatenate([c[2] for c in chunks])
            later = np.flatnonzero(ts >= frontier) if frontier != np.iinfo(np.int64).max else []
            cut = int(later[0]) if len(later) else len(ts)
            if cut:
                out_tables.append(table.slice(0, cut))
                self.dirty.add(tp)
            rest = table.slice(cut) if cut < len(ts) else None
            self.rows -= cut
            self.nbytes -= sum(c[0].nbytes for c in chunks) - (rest.nbytes if rest is not None
                                                                else 0)
            self.buffers[tp] = [(rest, ts[cut:], offs[cut:])] if rest is not None else []
        commit = {}
        for tp in self.dirty:
            rest = self.buffers.get(tp)
            commit[tp] = int(rest[0][2][0]) if rest else self.next_offset[tp]
        self.dirty = {tp for tp in self.dirty if self.buffers.get(tp)}
        if not out_tables:
            return None, commit
        merged = pa.concat_tables(out_tables)
        if len(out_tables) > 1:
            merged = merged.take(pa.compute.sort_indices(merged, [(self.on, "ascending")]))
        return merged.combine_chunks().to_batches()[0] if merged.num_rows else None, commit

    def throttle(self, consumer: Any, assigned: set, at_eof: set) -> None:
        """Pause the partitions ahead while the buffer is over its bound; resume them once it
        is under half, and resume a paused partition as soon as it holds the frontier back."""
        from confluent_kafka import TopicPartition

        self.paused &= assigned  # a revoked partition's pause went with its assignment
        frontier = self.frontier(assigned, at_eof)
        ahead = {tp for tp in assigned if tp not in at_eof and tp in self.latest
                 and self.latest[tp] > frontier}
        if self.rows >= self.max_rows or self.nbytes >= self.max_bytes:
            pause, resume = ahead - self.paused, self.paused - ahead
        elif self.rows <= self.max_rows // 2 and self.nbytes <= self.max_bytes // 2:
            pause, resume = set(), set(self.paused)
        else:
            pause, resume = set(), self.paused - ahead
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in sorted(pause)])
            self.paused |= pause
            self.pauses += 1
            logger.info("order_by buffer at %d rows / %d bytes (bound %d / %d): paused %s",
                        self.rows, self.nbytes, self.max_rows, self.max_bytes,
                        ", ".join(f"{t}[{p}]" for t, p in sorted(pause)))
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in sorted(resume)])
            self.paused -= resume
