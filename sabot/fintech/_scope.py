"""Function forms of kernels, and how they keep their state inside a Stream operator.

**The one function form.**  Every kernel function (``ewma(batch, alpha=0.94)``,
``midprice(batch)``, ``kalman_hedge_ratio(a, b)``) is :func:`call_kernel` of its kernel class,
which chooses by whether the kernel keeps state:

* a kernel without state (``stride == 0`` and no state of its own, e.g. ``Midprice``) is built
  and run — nothing to keep;
* a kernel with state, outside a Stream, is one-shot: ``ewma(batch)`` starts from fresh state;
* a kernel with state, inside a Stream operator (``stream.map(lambda b: ewma(b, alpha=0.94))``),
  is found again in the operator's :class:`StateScope`, which the Stream activates around every
  call, by ``(kernel name, column args, params, by, order of the stateful calls within the
  operator invocation)``.  The same call in the next batch continues the same computation,
  exactly as the class form ``EWMA(alpha=0.94)`` would, and the scope is part of the
  operator's checkpoint.

**Missing values.**  Float outputs with no value (warm-up rows, rows with a missing input) are
Arrow nulls by default; within ``with missing("nan"):`` (or after ``set_missing("nan")``) kernels
built — and function forms called — give NaN instead.  The mode is part of a kernel's
``config`` (``{"nulls": "nan"}``; absent for the default), so a checkpoint restores into a kernel
of the same mode only, and a Stream operator created inside the block keeps its mode.

**State a Stream cannot checkpoint.**  A kernel instance (or any object with ``state_dict``)
that a function merely refers to — captured in a closure, a default argument, a
``functools.partial`` or a module global (``k = EWMA(); stream.map(lambda b: k(b))``) — keeps
its state outside every operator.  :func:`unsaved_state` finds such objects; a Stream with
checkpoints refuses to run (and ``Stream.state_dict()`` refuses to answer) naming them, rather
than restoring without their state.  Pass the kernel itself (``stream.map(k)``) or call its
function form inside the function instead.
"""
from __future__ import annotations

import contextvars
import functools
import types
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from ._columns import (MISSING_MODES, NAN, NULL, _missing, check_missing,  # noqa: F401
                       current_missing, missing, set_missing)

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

    def __init__(self, missing: Optional[str] = None) -> None:
        self._instances: Dict[Tuple[str, Any, int], Any] = {}
        self._call_index = 0
        self._pending: Dict[str, Any] = {}
        #: the :func:`missing` mode of the block this scope was created in (None: outside any),
        #: in effect whenever the scope is active
        self.missing: Optional[str] = _missing.get() if missing is None else check_missing(missing)

    @contextmanager
    def active(self) -> Iterator["StateScope"]:
        """Make this scope current for one operator invocation (resets the call order)."""
        self._call_index = 0
        token = _current.set(self)
        mode_token = _missing.set(self.missing) if self.missing is not None else None
        try:
            yield self
        finally:
            if mode_token is not None:
                _missing.reset(mode_token)
            _current.reset(token)

    def instance_for(self, kernel_cls: type, config: Dict[str, Any], factory: Callable[[], Any]) -> Any:
        key = (kernel_cls.__name__, _freeze(config), self._call_index)
        self._call_index += 1
        inst = self._instances.get(key)
        if inst is None:
            inst = factory()
            pending = self._pending.pop(self._key_name(key), None)
            if pending is None and self._pending:    # saved before the naming rule: old names
                from ._naming import earlier_config
                old = earlier_config(getattr(inst, "name", ""), config)
                if old is not None:
                    pending = self._pending.pop(self._key_name((key[0], _freeze(old), key[2])),
                                                None)
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


#: kernel classes seen keeping state (their calls go straight to the scope)
_STATEFUL: Set[type] = set()
#: (kernel class, frozen configuration) -> whether its instances keep no state
_STATELESS: Dict[Tuple[type, Any], bool] = {}


def keeps_state(kernel: Any) -> bool:
    """Whether a kernel instance carries state from one batch to the next: per-key state rows
    (``stride > 0``) or state of its own (a ``state_dict`` of its own class)."""
    if getattr(kernel, "stride", 1) != 0:
        return True
    from ._kernel import Kernel

    return type(kernel).state_dict is not Kernel.state_dict


def call_kernel(kernel_cls: type, *inputs: Any, **config: Any) -> Any:
    """The function form of ``kernel_cls`` on ``inputs`` (one batch, or two for paired
    kernels): a fresh instance, or — inside a Stream operator, for a kernel that keeps
    state — the operator scope's instance for this call (see the module docstring)."""
    scope = _current.get()
    if scope is None:
        return kernel_cls(**config)(*inputs)
    if kernel_cls not in _STATEFUL:
        key = (kernel_cls, _freeze(config))
        stateless = _STATELESS.get(key)
        if stateless is None:
            probe = kernel_cls(**config)
            stateless = _STATELESS[key] = not keeps_state(probe)
            if stateless:
                return probe(*inputs)
            _STATEFUL.add(kernel_cls)
        elif stateless:
            return kernel_cls(**config)(*inputs)
    return scope.instance_for(kernel_cls, config, lambda: kernel_cls(**config))(*inputs)


# -- state a Stream operator would not checkpoint ---------------------------------------------
def _stateful(obj: Any) -> bool:
    """An object whose state lives in itself: a kernel that keeps state, or anything else with
    ``state_dict`` / ``load_state_dict`` (operators, joins)."""
    if isinstance(obj, type) or isinstance(obj, types.ModuleType):
        return False
    from ._kernel import Kernel

    if isinstance(obj, Kernel):
        return keeps_state(obj)
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None))


def _code_names(code: types.CodeType) -> Set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def unsaved_state(fn: Any, *, owner_saves_fn: bool = True) -> List[str]:
    """Stateful objects reachable from the callable ``fn`` whose state a Stream operator around
    ``fn`` would not checkpoint, each described as ``"<where>: <object>"``.

    The operator checkpoints ``fn`` itself when it has ``state_dict`` (``owner_saves_fn``) and
    every function-form kernel called inside it (its scope).  Looked at: closure cells, default
    arguments, ``functools.partial`` arguments, the object behind a bound method, and module
    globals the function's code names — following plain Python functions found there."""
    found: List[str] = []
    seen: Set[int] = set()

    def visit(obj: Any, where: str, depth: int) -> None:
        if id(obj) in seen or depth > 4:
            return
        seen.add(id(obj))
        if _stateful(obj):
            found.append(f"{where}: {obj!r}")
            return
        if isinstance(obj, functools.partial):
            visit(obj.func, f"{where}.func", depth + 1)
            for i, arg in enumerate(obj.args):
                visit(arg, f"{where} argument {i}", depth + 1)
            for name, arg in obj.keywords.items():
                visit(arg, f"{where} argument {name}", depth + 1)
        elif isinstance(obj, types.MethodType):
            visit(obj.__self__, f"{where} (bound to)", depth + 1)
        elif isinstance(obj, types.FunctionType):
            fname = obj.__qualname__
            for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                visit(value, f"{fname} captures {name!r}", depth + 1)
            for value in (obj.__defaults__ or ()):
                visit(value, f"{fname} default argument", depth + 1)
            for name, value in (obj.__kwdefaults__ or {}).items():
                visit(value, f"{fname} default argument {name!r}", depth + 1)
            glb = obj.__globals__
            for name in sorted(_code_names(obj.__code__)):
                if name in glb:
                    visit(glb[name], f"{fname} uses global {name!r}", depth + 1)

    if owner_saves_fn and _stateful(fn):
        return []  # the operator checkpoints fn itself (and its own state_dict covers it)
    if isinstance(fn, (types.FunctionType, types.MethodType, functools.partial)):
        visit(fn, "the function", 0)
    elif isinstance(getattr(fn, "__self__", None), object) and not isinstance(
            getattr(fn, "__self__", None), (types.ModuleType, type(None))):
        visit(fn.__self__, "the method (bound to)", 1)  # a method of a compiled class
    elif not isinstance(fn, type) and hasattr(fn, "__call__"):
        call = getattr(type(fn), "__call__", None)
        if isinstance(call, types.FunctionType):  # a callable object of a Python class
            for name, value in vars(fn).items() if hasattr(fn, "__dict__") else ():
                visit(value, f"{type(fn).__name__}.{name}", 1)
    return found
