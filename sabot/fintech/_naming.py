"""The one naming rule of kernel parameters, the old names still accepted, and the error for
a keyword a kernel does not take.

The rule (``docs/naming.md`` shows it with examples):

* **Lengths in rows.** ``window``: the rows of a sliding window (a value leaves the result
  ``window`` rows later: sma, bollinger_bands, donchian_channel, rolling_*, realized_var, ...).
  ``period``: the N of a recursive average, which never forgets a value (EMA's k = 2/(N+1),
  Wilder's 1/N: ema, rsi, atr).  A kernel with several lengths names each
  ``<role>_window`` / ``<role>_period`` (macd: ``fast_period``, ``slow_period``,
  ``signal_period``; stochastic_osc: ``k_window``, ``d_window``).  Rows back: ``lag``.
  Counts of other things: ``n_<things>``; durations carry their unit (``window_ms``).
* **Smoothing and multipliers.** ``alpha``: the weight of the newest value, in (0, 1];
  ``lambda_param``: a decay, 1 - alpha (RiskMetrics' lambda); ``k``: a multiple of a dispersion
  (Bollinger's sigma, MAD, CUSUM's slack).
* **Input columns.** ``column``: a kernel's one value input; without a name it reads ``price``,
  else ``close``, else the only numeric column.  Every other input is ``<role>_column``,
  defaulting to the role's own column (``high``, ``low``, ``open``, ``volume``, ``bid``,
  ...); a price input (``price_column``, ``close_column``) without a name reads ``price``, else
  ``close``, so kernels run on ticks and on the bars of ``Stream.tumbling`` alike; a returns
  input reads ``returns``, else ``log_return`` (what ``log_returns`` appends).
* **Outputs.** One output is named after the indicator (``sma``, ``rsi``, ``atr``) or the
  quantity a transform yields (``log_return``, ``zscore``); several share a short prefix
  (``macd``, ``macd_signal``, ``macd_hist``; ``bb_mid``, ...).

Names that changed when the rule was introduced stay accepted (:data:`RENAMED`, the one table);
giving an old name and its new name together, or any keyword a kernel does not take, is a
``TypeError`` naming the kernel, the keyword and the accepted names.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable, Mapping, Tuple

#: kernel (function) name -> {old keyword: (new keyword, its default)}.  The default tells an
#: explicitly given new name apart from an untouched one when both names are passed.
RENAMED: Dict[str, Dict[str, Tuple[str, Any]]] = {
    "macd": {"fast": ("fast_period", 12), "slow": ("slow_period", 26),
             "signal": ("signal_period", 9)},
    "stochastic_osc": {"k_period": ("k_window", 14), "d_period": ("d_window", 3)},
    "lag": {"k": ("lag", 1)},
    "diff": {"k": ("lag", 1)},
}

#: A keyword often meant for another spelling under the rule: suggested when a kernel takes it.
_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "period": ("window",), "window": ("period",), "timeperiod": ("period", "window"),
    "length": ("window", "period"), "lookback": ("window", "period"), "n": ("window", "period"),
    "span": ("period",), "fastperiod": ("fast_period",), "slowperiod": ("slow_period",),
    "signalperiod": ("signal_period",), "nbdev": ("k",), "nbdevup": ("k",), "nbdevdn": ("k",),
    "fastk_period": ("k_window",), "fastd_period": ("d_window",), "decay": ("lambda_param",),
    "col": ("column",), "price_column": ("column",), "close_column": ("column",),
    "value_column": ("column",), "price": ("column", "price_column"),
    "close": ("close_column", "column"), "key": ("by",), "symbol_column": ("by",),
}


def _suggestion(keyword: str, accepted: Iterable[str]) -> str:
    accepted = list(accepted)
    meant = [name for name in _SYNONYMS.get(keyword, ()) + (f"{keyword}_column",)
             if name in accepted]
    meant += [m for m in difflib.get_close_matches(keyword, accepted, n=1) if m not in meant]
    return f"; did you mean {meant[0]!r}?" if meant else ""


def _unknown(kernel: str, keyword: str, accepted: Iterable[str]) -> TypeError:
    accepted = list(accepted)
    return TypeError(
        f"{kernel}() got an unexpected keyword argument {keyword!r}; it accepts "
        f"{', '.join(accepted)}{_suggestion(keyword, accepted)}"
    )


def renamed(kernel: str, extra: Mapping[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
    """``given`` (a kernel's parameters as bound, in signature order) with the old names in
    ``extra`` (the keywords its signature did not take) moved to their new names.

    Raises ``TypeError`` for a keyword that is neither a parameter nor an old name, and for an
    old name given with its new name set away from its default."""
    table = RENAMED.get(kernel, {})
    out = dict(given)
    for keyword, value in extra.items():
        if keyword not in table:
            raise _unknown(kernel, keyword, list(given) + [o for o in table if o not in given])
        new, default = table[keyword]
        if new in extra or not _same(out.get(new, default), default):
            raise TypeError(f"{kernel}() got {keyword!r} and its new name {new!r}; "
                            f"give only {new!r}")
        out[new] = value
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:                         # an object whose == is not a plain bool
        return a is b


def accepted_names(kernel: str, parameters: Iterable[str]) -> list:
    """The keywords a kernel takes: its parameters, then its old names still accepted."""
    params = list(parameters)
    return params + [old for old in RENAMED.get(kernel, {}) if old not in params]


#: kernel name -> {price input: its default before it read ``price``, else ``close``}.  A
#: configuration recorded with that old default reads the same column now (the old one
#: required ``price``, which the new default reads first).
CHANGED_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "atr": {"close_column": "price"},
    "stochastic_osc": {"close_column": "price"},
    "obv": {"price_column": "price"},
    "vwap": {"price_column": "price"},
    "log_returns": {"price_column": "price"},
    "tick_rule": {"price_column": "price"},
}


def upgrade_config(kernel: str, config: Mapping[str, Any]) -> Dict[str, Any]:
    """A kernel configuration recorded before the rule (a checkpoint written then) as the
    same kernel records it now: old names under the new ones, and an old default of a price
    input as the new default.  Other configurations are returned unchanged."""
    table = RENAMED.get(kernel, {})
    out = {table[k][0] if k in table else k: v for k, v in config.items()}
    for name, old_default in CHANGED_DEFAULTS.get(kernel, {}).items():
        if name in out and _same(out[name], old_default):
            out[name] = None
    return out


def upgrade_state(state: Mapping[str, Any], config: Mapping[str, Any]) -> Mapping[str, Any]:
    """A kernel's ``state_dict`` for a kernel configured as ``config``: as it is when its
    configuration is ``config``, else with its configuration upgraded (:func:`upgrade_config`),
    so that state saved before the rule loads into the same kernel configured under it."""
    saved = state.get("config")
    if saved == config or not isinstance(saved, Mapping) or not isinstance(state.get("kernel"),
                                                                            str):
        return state
    out = dict(state)
    out["config"] = upgrade_config(state["kernel"], saved)
    return out


def earlier_config(kernel: str, config: Mapping[str, Any]) -> Any:
    """The arguments a function form passed for ``config`` before the rule (old names, old
    default of a price input), or None when they were the same: how a Stream operator's state
    scope saved the call then, so that its checkpoint is found again."""
    old_names = {new: old for old, (new, _) in RENAMED.get(kernel, {}).items()}
    old_defaults = CHANGED_DEFAULTS.get(kernel, {})
    out = {}
    for name, value in config.items():
        if name in old_defaults and value is None:
            value = old_defaults[name]
        out[old_names.get(name, name)] = value
    return None if out == dict(config) else out
