"""Checkpoints of a Stream's operator/kernel state together with its Kafka positions.

A checkpoint is one file ``checkpoint-<seq>.ckpt`` in a local directory: a pickle of ::

    {"format": 1, "seq": int, "created": unix seconds,
     "offsets": {"topic": {partition: next offset to read}},
     "state": Stream.state_dict()}

written as ``.tmp``, fsynced, renamed over (atomic on POSIX) and the directory fsynced, so a
process killed at any point leaves either the previous or the new checkpoint, never a torn
one.  The newest ``keep`` checkpoints are kept; loading takes the newest one that unpickles
(an older one is used if the newest is unreadable, with a warning).

Pickle runs code on load: point ``checkpoint_dir`` only at directories you trust.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

logger = logging.getLogger(__name__)

#: Version of the checkpoint file layout (bumped on incompatible changes).
CHECKPOINT_FORMAT = 1

_NAME = re.compile(r"^checkpoint-(\d{12})\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not match the pipeline."""


class LocalCheckpointStore:
    """Checkpoints in a local directory (atomic write-then-rename, newest ``keep`` kept)."""

    def __init__(self, directory: Union[str, os.PathLike], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.last_size_bytes = 0
        self.last_write_s = 0.0

    def __repr__(self) -> str:
        return f"LocalCheckpointStore({str(self.directory)!r})"

    def _files(self) -> List[Path]:
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def save(self, offsets: Dict[str, Dict[int, int]], state: Dict[str, Any]) -> Path:
        """Write a new checkpoint atomically; the path written."""
        t0 = time.perf_counter()
        files = self._files()
        seq = int(_NAME.match(files[-1].name).group(1)) + 1 if files else 1
        payload = {"format": CHECKPOINT_FORMAT, "seq": seq, "created": time.time(),
                   "offsets": offsets, "state": state}
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        final = self.directory / f"checkpoint-{seq:012d}.ckpt"
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in (files + [final])[:-self.keep]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
        self.last_size_bytes = len(data)
        self.last_write_s = time.perf_counter() - t0
        return final

    def load_latest(self) -> Optional[Dict[str, Any]]:
        """The newest readable checkpoint, or None when the directory holds none."""
        for path in reversed(self._files()):
            try:
                with open(path, "rb") as f:
                    payload = pickle.load(f)
            except Exception as exc:  # torn by something other than us, or foreign file
                logger.warning("checkpoint %s unreadable (%s); trying an older one", path, exc)
                continue
            if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path}: unsupported checkpoint format "
                                      f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}"
                                      f"; this version reads format {CHECKPOINT_FORMAT}")
            payload["path"] = str(path)
            return payload
        return None
