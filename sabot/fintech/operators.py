"""Ready-made Stream operators over kernels (``create_*_operator``) and their two wrappers.

An operator is a callable ``batch -> batch`` usable as ``stream.map(op)``, with
``state_dict()`` / ``load_state_dict(d)`` / ``reset()`` so a Stream can checkpoint it:

* :class:`SymbolKeyedOperator` runs one kernel class with ``by=symbol_column``: independent
  state per symbol, kept in the kernel's per-key slots (not one Python object per symbol).
* :class:`StatelessKernelOperator` runs a function ``fn(batch, **kwargs)``. It activates its own
  :class:`StateScope` around each call, so function-form kernels called inside ``fn`` keep
  their state across batches exactly as in a Stream operator (and stateless ones simply run).
  Its name is historical: the function itself holds no state, its kernels' state is in the
  scope and checkpointed with the operator.

Both are also what ``stream.map`` makes of a kernel instance and of a function: a Stream
operator checkpoints a kernel passed to it and the scope of a function, so
``stream.map(EWMA(alpha=0.94))``, ``stream.map(lambda b: ewma(b, alpha=0.94))`` and these
wrappers all restore exactly; a kernel merely captured by a function is refused by a
checkpointed Stream (see :mod:`sabot.fintech._scope`).

The ``create_*_operator`` factories import their kernel when called, so this module imports
even where a kernel module is not built.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Optional

from ._kernel import Kernel
from ._scope import StateScope

OPERATOR_STATE_VERSION = 1


class SymbolKeyedOperator:
    """A stateful kernel with per-symbol state, as a Stream operator.

    ``kernel``: a kernel class (built as ``kernel(**kernel_kwargs, by=symbol_column)``) or a
    kernel instance (rebuilt from its configuration with ``by=symbol_column`` unless it already
    has that ``by``). Output equals the kernel run on each symbol's rows alone.
    """

    def __init__(self, kernel: Any, symbol_column: str = "symbol", **kernel_kwargs: Any) -> None:
        if not isinstance(symbol_column, str):
            raise TypeError(f"symbol_column must be a column name, got {symbol_column!r}")
        if isinstance(kernel, Kernel):
            if kernel_kwargs:
                raise TypeError("pass kernel arguments with a kernel class, not with an instance")
            if kernel.by == symbol_column:
                instance = kernel
            elif kernel.by is not None:
                raise ValueError(f"kernel {kernel!r} is keyed by {kernel.by!r}, "
                                 f"not by symbol_column {symbol_column!r}")
            else:
                cls = type(kernel)
                kernel_kwargs = dict(kernel.config)
                instance = self._build(cls, kernel_kwargs, symbol_column)
        elif isinstance(kernel, type) and issubclass(kernel, Kernel):
            instance = self._build(kernel, kernel_kwargs, symbol_column)
        else:
            raise TypeError(f"kernel must be a Kernel class or instance, got {kernel!r}")
        if instance.stride == 0:
            raise TypeError(f"{type(instance).__name__} keeps no state; "
                            "use StatelessKernelOperator for stateless kernels")
        self.kernel = instance
        self.symbol_column = symbol_column

    @staticmethod
    def _build(cls: type, kwargs: Dict[str, Any], by: str) -> Kernel:
        try:
            return cls(**kwargs, by=by)
        except TypeError as exc:
            if "keyword argument 'by'" not in str(exc):
                raise                          # another argument: the kernel's own message
            raise TypeError(f"{cls.__name__} cannot be keyed by {by!r} ({exc}); a kernel "
                            "without by= keeps no state: use StatelessKernelOperator") from exc

    def __call__(self, batch: Any) -> Any:
        return self.kernel(batch)

    process_batch = __call__

    @property
    def output_names(self) -> list:
        return self.kernel.output_names

    def state_dict(self) -> Dict[str, Any]:
        return {"version": OPERATOR_STATE_VERSION, "kernel": self.kernel.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("version") != OPERATOR_STATE_VERSION:
            raise ValueError(f"unsupported operator state version {state.get('version')!r}")
        self.kernel.load_state_dict(state["kernel"])

    def reset(self) -> None:
        self.kernel.reset()

    def clone(self) -> "SymbolKeyedOperator":
        """A fresh operator of the same kernel configuration (independent state)."""
        return SymbolKeyedOperator(type(self.kernel)(**self.kernel.config), self.symbol_column)

    def __repr__(self) -> str:
        return f"SymbolKeyedOperator({self.kernel!r})"


class StatelessKernelOperator:
    """``fn(batch, **kwargs)`` as a Stream operator.

    ``fn`` runs inside this operator's own state scope, so a function-form kernel inside it
    (``lambda b: ewma(b, alpha=0.9)``) continues across batches and is checkpointed by
    ``state_dict()``; a stateless ``fn`` has empty state.
    """

    def __init__(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self.kwargs = kwargs
        self.scope = StateScope()

    def __call__(self, batch: Any) -> Any:
        with self.scope.active():
            return self.fn(batch, **self.kwargs)

    process_batch = __call__

    def state_dict(self) -> Dict[str, Any]:
        return {"version": OPERATOR_STATE_VERSION, "scope": self.scope.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("version") != OPERATOR_STATE_VERSION:
            raise ValueError(f"unsupported operator state version {state.get('version')!r}")
        self.scope.load_state_dict(state["scope"])

    def reset(self) -> None:
        self.scope.reset()

    def clone(self) -> "StatelessKernelOperator":
        """The same function and arguments with a fresh state scope."""
        return StatelessKernelOperator(self.fn, **self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", repr(self.fn))
        return f"StatelessKernelOperator({name}, {self.kwargs!r})"


def _kernel_named(name: str) -> Any:
    """``sabot.fintech.<name>``, imported now (kernels written elsewhere may not be built)."""
    fintech = importlib.import_module("sabot.fintech")
    try:
        return getattr(fintech, name)
    except AttributeError:
        raise ImportError(f"sabot.fintech.{name} is not available in this build") from None


def create_ewma_operator(alpha: float = 0.94, column: Optional[str] = None, *,
                         symbol_column: str = "symbol") -> SymbolKeyedOperator:
    """Per-symbol ``ewma`` (class :class:`EWMA`)."""
    return SymbolKeyedOperator(_kernel_named("EWMA"), symbol_column, column=column, alpha=alpha)


def create_log_returns_operator(price_column: Optional[str] = None, *,
                                symbol_column: str = "symbol") -> SymbolKeyedOperator:
    """Per-symbol ``log_return`` (class :class:`LogReturns`; ``price_column`` None reads
    ``price``, else ``close``)."""
    return SymbolKeyedOperator(_kernel_named("LogReturns"), symbol_column,
                               price_column=price_column)


def create_ofi_operator(*, symbol_column: str = "symbol", **columns: str) -> SymbolKeyedOperator:
    """Per-symbol order-flow imbalance (class ``OFI``; ``columns`` are its column arguments)."""
    return SymbolKeyedOperator(_kernel_named("OFI"), symbol_column, **columns)


def create_vwap_operator(price_column: Optional[str] = None, volume_column: str = "volume", *,
                         symbol_column: str = "symbol") -> SymbolKeyedOperator:
    """Per-symbol cumulative ``vwap`` (class ``VWAP``; ``price_column`` None reads ``price``,
    else ``close``)."""
    return SymbolKeyedOperator(_kernel_named("VWAP"), symbol_column,
                               price_column=price_column, volume_column=volume_column)


def create_midprice_operator(**columns: str) -> StatelessKernelOperator:
    """``midprice`` = (bid+ask)/2 as an operator (stateless; ``columns``: bid/ask column args).

    The column arguments are checked now (a wrong keyword is refused here, not on the first
    batch)."""
    importlib.import_module("sabot.fintech.microstructure").Midprice(**columns)
    return StatelessKernelOperator(_kernel_named("midprice"), **columns)
