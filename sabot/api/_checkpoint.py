"""Periodic checkpoints of a running Stream (driven by the run loop of :mod:`._runtime`).

Consistency: a checkpoint is taken only when a :class:`~._events.Commit` reaches the sink.
At that moment every generator before the sink is suspended between batches, so every
operator has processed exactly the batches the Kafka source has yielded — the source's
``positions``.  Before writing, the sink is flushed (Kafka producer flushed, Parquet file
closed), so every output row derived from records before those positions is durable; then
the checkpoint file is written atomically; then the same positions are committed to the
consumer group.  A restart loads the newest checkpoint into the operators and seeks to its
positions: rows after them are recomputed from the restored state, identical to the first
time (at-least-once output, exactly-once state).

State is data, never code: checkpoint files are in the format of :mod:`sabot.state.codec`.
The source's ``state_key`` (or the ``SABOT_STATE_KEY`` environment variable) authenticates
every file with HMAC-SHA256; ``reset_state=True`` discards a checkpoint that cannot be read,
or that this pipeline's operators do not accept (WARNING), instead of refusing to start.  The checkpoint directory is locked for the run (one
pipeline per directory) and released when the run ends (:meth:`Checkpointer.close`).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ..state import CheckpointError, LocalCheckpointStore
from ..state.codec import state_key_from

logger = logging.getLogger(__name__)


class Checkpointer:
    """Restores and writes checkpoints for one Stream run over one Kafka source."""

    def __init__(self, stream: Any, source: Any) -> None:
        self.stream = stream
        self.source = source
        self.store = LocalCheckpointStore(source.checkpoint_dir,
                                          state_key=state_key_from(
                                              getattr(source, "state_key", None)),
                                          lock=False)
        self.reset_state = bool(getattr(source, "reset_state", False))
        self.interval_s = source.checkpoint_interval_s
        self.last_time = time.monotonic()
        self.last_wall: Optional[float] = None
        self.count = 0
        self.restored_from: Optional[str] = None
        self.last_positions: Dict[Tuple[str, int], int] = {}

    @property
    def age_s(self) -> Optional[float]:
        """Seconds since the last checkpoint written or restored (None before any)."""
        return None if self.last_wall is None else time.time() - self.last_wall

    def restore(self) -> None:
        """Load the newest checkpoint into the operators and the source's start offsets
        (releases the directory's lock when it fails)."""
        try:
            self._restore()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the checkpoint directory (end of the run; idempotent)."""
        self.store.close()

    def _restore(self) -> None:
        self.store.lock()
        payload = self.store.load_latest(reset_state=self.reset_state)
        self.source.restore_offsets = {}
        if payload is None:
            logger.info("%s: no checkpoint in %s; starting fresh", self.source.name,
                        self.store.directory)
            return
        try:
            self.stream.load_state_dict(payload["state"])
        except Exception as exc:  # any state the operators cannot take: data, not a crash
            why = f"{payload['path']} does not match this pipeline: {type(exc).__name__}: {exc}"
            if not self.reset_state:
                raise CheckpointError(f"{why}; pass reset_state=True to discard it and start "
                                      "fresh") from exc
            for op in self.stream.operators():  # some may have taken their part already
                op.reset()
            self.store.discard_all(why)
            return
        offsets = {(t, int(p)): int(o) for t, parts in payload["offsets"].items()
                   for p, o in parts.items()}
        self.source.restore_offsets = offsets
        self.last_positions = dict(offsets)
        self.restored_from = payload["path"]
        self.last_wall = payload["created"]
        logger.info("%s: restored checkpoint %s (%d partition offsets)", self.source.name,
                    payload["path"], len(offsets))

    def on_commit(self, flush: Optional[Callable[[], None]]) -> None:
        """Checkpoint if the interval has passed and the source has moved (called when a
        Commit or an idle signal reaches the sink, i.e. between batches)."""
        if (time.monotonic() - self.last_time >= self.interval_s
                and self.source.positions != self.last_positions):
            self.checkpoint(flush)

    def checkpoint(self, flush: Optional[Callable[[], None]]) -> None:
        """Flush the sink, write the checkpoint, then commit its offsets to the group."""
        if flush is not None:
            flush()
        positions: Dict[Tuple[str, int], int] = dict(self.source.positions)
        self.last_positions = positions
        offsets: Dict[str, Dict[int, int]] = {}
        for (topic, part), off in positions.items():
            offsets.setdefault(topic, {})[part] = off
        path = self.store.save(offsets, self.stream.state_dict())
        self.count += 1
        self.last_time = time.monotonic()
        self.last_wall = time.time()
        logger.debug("%s: checkpoint %s (%d bytes, %.1f ms)", self.source.name, path,
                     self.store.last_size_bytes, self.store.last_write_s * 1e3)
        self.source.commit_positions(positions)

