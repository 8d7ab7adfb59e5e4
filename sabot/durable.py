"""Durability on disk: the one place that fsyncs a path.

A file's data is made durable with ``os.fsync`` on its descriptor; a new or renamed *name* is
durable only once its directory is fsynced too.  Every store and sink that commits offsets or
deletes parts after a write (checkpoints, ``to_parquet``, the collectors' Parquet sink) calls
:func:`fsync_path` on the directory first.
"""
from __future__ import annotations

import os
from typing import Union

__all__ = ["fsync_path"]


def fsync_path(path: Union[str, "os.PathLike[str]"]) -> None:
    """fsync a file or a directory by path; ``OSError`` when it cannot be opened or synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
