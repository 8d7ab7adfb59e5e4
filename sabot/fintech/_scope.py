"""State scopes: how function-form kernels keep their state inside a Stream operator.

Outside a Stream a kernel function is one-shot: ``ewma(batch)`` starts from fresh state.
Inside a Stream operator (``stream.map(lambda b: ewma(b, alpha=0.94))``) the Stream activates
the operator's :class:`StateScope` around every call, and each kernel function call finds its
kernel instance in that scope by ``(kernel name, column args, params, by, order of the call
within the operator invocation)``.  The same call in the next batch therefore continues the
same computation, exactly as the class form ``EWMA(alpha=0.94)`` would.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

_current: contextvars.ContextVar[Optional["StateScope"]] = contextvars.ContextVar(
    "sabot_kernel_state_scope", default=None
)

SCOPE_STATE_VERSION = 1


def _freeze(value: Any) -> Any:
    """A hashable, order-independent form of a kernel configuration value."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class StateScope:
    """Kernel instances owned by one Stream operator, found again on every call."""

    def __init__(self) -> None:
        self._instances: Dict[Tuple[str, Any, int], Any] = {}
        self._call_index = 0
        self._pending: Dict[str, Any] = {}

    @contextmanager
    def active(self) -> Iterator["StateScope"]:
        """Make this scope current for one operator invocation (resets the call order)."""
        self._call_index = 0
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def instance_for(self, kernel_cls: type, config: Dict[str, Any], factory: Callable[[], Any]) -> Any:
        key = (kernel_cls.__name__, _freeze(config), self._call_index)
        self._call_index += 1
        inst = self._instances.get(key)
        if inst is None:
            inst = factory()
            pending = self._pending.pop(self._key_name(key), None)
            if pending is not None:
                inst.load_state_dict(pending)
            self._instances[key] = inst
        return inst

    @staticmethod
    def _key_name(key: Tuple[str, Any, int]) -> str:
        return f"{key[2]}:{key[0]}:{key[1]!r}"

    def state_dict(self) -> Dict[str, Any]:
        kernels = {self._key_name(k): inst.state_dict() for k, inst in self._instances.items()}
        kernels.update(self._pending)
        return {"version": SCOPE_STATE_VERSION, "kernels": kernels}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore; instances not yet created pick their state up when first called."""
        if state.get("version") != SCOPE_STATE_VERSION:
            raise ValueError(f"unsupported scope state version {state.get('version')!r}")
        by_name = {self._key_name(k): inst for k, inst in self._instances.items()}
        self._pending = {}
        for name, kernel_state in state["kernels"].items():
            if name in by_name:
                by_name[name].load_state_dict(kernel_state)
            else:
                self._pending[name] = kernel_state

    def reset(self) -> None:
        self._instances.clear()
        self._pending.clear()
        self._call_index = 0


def current_scope() -> Optional[StateScope]:
    return _current.get()


def call_kernel(kernel_cls: type, batch: Any, **config: Any) -> Any:
    """Run a kernel function: a fresh instance, or the active scope's instance for this call."""
    scope = _current.get()
    if scope is None:
        return kernel_cls(**config)(batch)
    return scope.instance_for(kernel_cls, config, lambda: kernel_cls(**config))(batch)
