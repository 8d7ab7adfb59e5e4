"""Waiting on a condition in tests (never on a fixed sleep: the machine may be busy)."""
from __future__ import annotations

import time
from typing import Callable


def wait_for(condition: Callable[[], object], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout_s`` passed; its last value as a bool."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(every_s)
