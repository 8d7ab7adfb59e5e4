"""Checkpoints of a Stream's operator/kernel state together with its Kafka positions.

A checkpoint is one file ``checkpoint-<seq>.ckpt`` in a local directory, in the state format
of :mod:`sabot.state.codec` (kind ``"checkpoint"``; data only, never code)::

    header {"kind": "checkpoint", "seq": int, "created": unix seconds,
            "offsets": {"topic": {"partition": next offset to read}},
            "operators": [operator names]}
    body   Stream.state_dict()

written as ``.tmp`` (mode 0600), fsynced, renamed over (atomic on POSIX) and the directory
fsynced, so a process killed at any point leaves either the previous or the new checkpoint,
never a torn one.  The newest ``keep`` checkpoints are kept.

The directory is the pipeline's own: it is created with mode 0700; one owned by another user
or writable by group or others is refused; and the store holds an exclusive ``flock`` on
``<directory>/.lock`` while open, so a second pipeline pointed at the same directory fails at
once with a one-line error instead of interleaving its checkpoints.

Loading takes the newest checkpoint.  A newest file that cannot be read — not this format (a
pickle, garbage), truncated, another format version, a missing or wrong HMAC tag when a state
key is set — is an error naming the file: it is never skipped silently, neither to an older
checkpoint nor to empty state.  With ``reset_state=True`` the checkpoint files are renamed to
``<name>.discarded-<unix time>`` (kept for inspection, no longer loaded) with a WARNING log
line naming them, and the pipeline starts with fresh state from the group's committed offsets.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..durable import fsync_path
from .codec import STATE_FORMAT_VERSION, CheckpointError, decode_record, encode_record

logger = logging.getLogger(__name__)

#: Version of the checkpoint file layout (the state format version).
CHECKPOINT_FORMAT = STATE_FORMAT_VERSION

#: The lock file a store holds in its directory.
LOCK_NAME = ".lock"

_NAME = re.compile(r"^checkpoint-(\d{12})\.ckpt$")


def _checked_offsets(raw: Any, where: str) -> Dict[str, Dict[int, int]]:
    """The header's offsets as ``{topic: {partition: offset}}`` (ints), or CheckpointError."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: header field 'offsets' is not an object")
    out: Dict[str, Dict[int, int]] = {}
    for topic, parts in raw.items():
        if not isinstance(parts, dict):
            raise CheckpointError(f"{where}: offsets of topic {topic!r} are not an object")
        out[topic] = {}
        for part, off in parts.items():
            if not (isinstance(part, str) and part.isdigit()) or type(off) is not int or off < 0:
                raise CheckpointError(f"{where}: invalid offset {topic!r}[{part!r}] = {off!r}")
            out[topic][int(part)] = off
    return out


class LocalCheckpointStore:
    """Checkpoints in a local directory (atomic write-then-rename, newest ``keep`` kept).

    ``state_key``: HMAC-SHA256 key; every checkpoint written carries a tag and every one read
    must carry a valid one (see :mod:`sabot.state.codec`).  ``lock``: take the directory's
    exclusive lock now (released by :meth:`close`)."""

    def __init__(self, directory: Union[str, os.PathLike], keep: int = 2, *,
                 state_key: Optional[bytes] = None, lock: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.state_key = state_key
        self.last_size_bytes = 0
        self.last_write_s = 0.0
        self._lock_fd: Optional[int] = None
        self._prepare_directory()
        if lock:
            self.lock()

    def __repr__(self) -> str:
        return f"LocalCheckpointStore({str(self.directory)!r})"

    def __enter__(self) -> "LocalCheckpointStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- directory ---------------------------------------------------------------------------
    def _prepare_directory(self) -> None:
        """Create the directory (0700) or check an existing one is ours and not shared."""
        d = self.directory
        if not d.exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            else:
                os.chmod(d, 0o700)  # whatever the umask
        try:
            st = os.stat(d)
        except OSError as exc:
            raise CheckpointError(f"checkpoint directory {d}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"checkpoint directory {d} is not a directory")
        if st.st_uid != os.geteuid():
            raise CheckpointError(f"checkpoint directory {d} is owned by uid {st.st_uid}, not "
                                  f"by this user (uid {os.geteuid()}); refusing to use it")
        if st.st_mode & 0o022:
            raise CheckpointError(f"checkpoint directory {d} is writable by group or others "
                                  f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it "
                                  f"(chmod go-w {d})")

    def lock(self) -> None:
        """Take the directory's exclusive lock (CheckpointError when another holds it)."""
        if self._lock_fd is not None:
            return
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CheckpointError(f"checkpoint directory {self.directory}: cannot open lock "
                                  f"file {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(
                    f"checkpoint directory {self.directory} is in use by another pipeline"
                    f"{f' (pid {holder})' if holder else ''}; each pipeline needs its own "
                    "checkpoint_dir") from None
            raise CheckpointError(f"checkpoint directory {self.directory}: cannot lock "
                                  f"{path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the directory's lock (idempotent)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def _files(self) -> List[Path]:
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    # -- write -------------------------------------------------------------------------------
    def save(self, offsets: Dict[str, Dict[int, int]], state: Dict[str, Any]) -> Path:
        """Write a new checkpoint atomically; the path written."""
        t0 = time.perf_counter()
        files = self._files()
        seq = int(_NAME.match(files[-1].name).group(1)) + 1 if files else 1
        ops = state.get("operators") if isinstance(state, dict) else None
        header = {"seq": seq, "created": time.time(),
                  "offsets": {t: {str(int(p)): int(o) for p, o in parts.items()}
                              for t, parts in offsets.items()},
                  "operators": list(ops) if isinstance(ops, dict) else []}
        data = encode_record("checkpoint", header, state, self.state_key)
        final = self.directory / f"checkpoint-{seq:012d}.ckpt"
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_path(self.directory)
        for old in (files + [final])[:-self.keep]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
        self.last_size_bytes = len(data)
        self.last_write_s = time.perf_counter() - t0
        return final

    # -- read --------------------------------------------------------------------------------
    def read(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """One checkpoint file: ``{"format", "seq", "created", "offsets", "operators",
        "state", "path"}``; CheckpointError naming the file when it cannot be read."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
        header, state = decode_record(data, kind="checkpoint", where=str(path),
                                      key=self.state_key)
        seq = header.get("seq")
        if type(seq) is not int or seq < 1:
            raise CheckpointError(f"{path}: header field 'seq' is {seq!r}, not a positive integer")
        m = _NAME.match(path.name)
        if m is not None and seq != int(m.group(1)):
            raise CheckpointError(f"{path}: holds checkpoint seq {header.get('seq')!r}, not "
                                  f"{int(m.group(1))} (a renamed or copied file); refusing it")
        ops = header.get("operators", [])
        if not isinstance(ops, list):
            raise CheckpointError(f"{path}: header field 'operators' is not a list")
        return {"format": CHECKPOINT_FORMAT, "seq": seq, "created": header["created"],
                "offsets": _checked_offsets(header.get("offsets"), str(path)),
                "operators": ops, "state": state, "path": str(path)}

    def load_latest(self, reset_state: bool = False) -> Optional[Dict[str, Any]]:
        """The newest checkpoint, or None when the directory holds none.

        An unreadable newest checkpoint raises CheckpointError naming it, unless
        ``reset_state``: then every checkpoint file is moved aside (renamed
        ``*.discarded-<unix time>``), a WARNING names them, and None is returned."""
        files = self._files()
        if not files:
            return None
        try:
            return self.read(files[-1])
        except CheckpointError as exc:
            if not reset_state:
                raise CheckpointError(f"{exc}. The pipeline will not start on state it cannot "
                                      "read; pass reset_state=True to discard it and start "
                                      "fresh") from None
            self.discard_all(str(exc))
        return None

    def discard_all(self, reason: str) -> List[Path]:
        """Move every checkpoint aside (``<name>.discarded-<unix time>``, no longer loaded)
        with a WARNING naming ``reason`` and the files; the new paths."""
        files = self._files()
        suffix = f".discarded-{int(time.time())}"
        moved = []
        for p in files:
            moved.append(p.with_name(p.name + suffix))
            os.replace(p, moved[-1])
        logger.warning("DISCARDING STATE (reset_state=True): %s; moved %d checkpoint file(s) "
                       "in %s aside (%s); starting with fresh state", reason, len(files),
                       self.directory, ", ".join(p.name for p in moved))
        return moved
