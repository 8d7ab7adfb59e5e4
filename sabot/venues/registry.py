"""The venue registry's core: :class:`Venue` and the lookups, with no venue of its own.

Kept apart from :mod:`sabot.venues` (which imports the built-in venue modules) so that the
modules every venue builds on (:mod:`sabot.symbols`, :mod:`sabot.schema`) can read the registry
without importing any venue: the import graph stays a tree.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping as _AbcMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Generic, Iterator, Mapping, Optional, Tuple, TypeVar

import pyarrow as pa

__all__ = ["Venue", "register", "unregister", "venues", "venue_names", "get_venue",
           "ticker_topics", "default_fees", "UnknownVenueError", "VenueMapping", "FIELD_CHECKS",
           "MARKETS", "perp_venues", "perp_venue_names"]


class UnknownVenueError(ValueError):
    """A venue name that is not registered (the message lists the known ones)."""


#: How record validation may check a venue's extra column (:attr:`Venue.field_checks`).
FIELD_CHECKS = ("positive", "non_negative", "finite")

#: What a venue trades (:attr:`Venue.market`): ``spot`` books, or ``perp`` (perpetual futures).
MARKETS = ("spot", "perp")


def _resolve(path: str) -> Any:
    """``"package.module:Name"`` → the object (imported on first use)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"expected 'package.module:Name', got {path!r}")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Venue:
    """One exchange, described once.

    ``collector`` and ``simulator`` are ``"module:Class"`` paths (or the classes themselves),
    imported on first use so that reading the registry stays cheap.  ``sim_profile`` shapes the
    local exchange server's quotes: ``noise`` (AR(1) sigma as a fraction of the mid),
    ``half_spread`` (fraction of the mid), ``latency_ms`` (event time behind the wall clock)
    and ``decimals`` (price rounding).  ``field_checks`` says how the collectors' record
    validation checks extra columns: ``{"vwap": "positive"}`` (finite and > 0),
    ``"non_negative"`` (finite and >= 0) or ``"finite"``; unlisted extra columns are stored as
    the parser made them.

    ``market`` is ``"spot"`` (the default) or ``"perp"``.  The venue lists that the spot
    applications iterate (:func:`venues`, :func:`venue_names`, :func:`ticker_topics`,
    :func:`default_fees` and iterating a :class:`VenueMapping`) hold the spot venues only;
    :func:`perp_venues` lists the perpetual-futures ones.  :func:`get_venue` finds either.  A
    name is lower case and may use ``-`` between words (``binance-usdm``).
    """

    name: str
    collector: Any
    simulator: Any
    default_fee_bps: float
    extra_fields: Tuple[pa.Field, ...] = ()
    sim_profile: Mapping[str, float] = field(default_factory=dict)
    ticker_topic: str = ""
    field_checks: Mapping[str, str] = field(default_factory=dict)
    market: str = "spot"

    def __post_init__(self) -> None:
        if (not self.name or not self.name.replace("-", "_").isidentifier()
                or self.name != self.name.lower()):
            raise ValueError(f"venue name must be a lower-case identifier (words may be joined "
                             f"by '-'), got {self.name!r}")
        if self.market not in MARKETS:
            raise ValueError(f"venue {self.name!r}: market={self.market!r}; expected one of "
                             f"{', '.join(MARKETS)}")
        if not self.ticker_topic:
            object.__setattr__(self, "ticker_topic", f"{self.name}-ticker")
        object.__setattr__(self, "extra_fields", tuple(self.extra_fields))
        object.__setattr__(self, "sim_profile", MappingProxyType(dict(self.sim_profile)))
        extra = {f.name for f in self.extra_fields}
        for column, check in dict(self.field_checks).items():
            if column not in extra:
                raise ValueError(f"venue {self.name!r}: field_checks names {column!r}, which is not "
                                 f"one of its extra_fields ({', '.join(sorted(extra)) or 'none'})")
            if check not in FIELD_CHECKS:
                raise ValueError(f"venue {self.name!r}: field_checks[{column!r}]={check!r}; "
                                 f"expected one of {', '.join(FIELD_CHECKS)}")
        object.__setattr__(self, "field_checks", MappingProxyType(dict(self.field_checks)))

    @property
    def collector_class(self) -> Any:
        """The collector class (URL, subscribe messages, parser, symbol spelling)."""
        return _resolve(self.collector) if isinstance(self.collector, str) else self.collector

    @property
    def simulator_class(self) -> Any:
        """The local exchange server class that speaks this venue's protocol."""
        return _resolve(self.simulator) if isinstance(self.simulator, str) else self.simulator

    @property
    def default_symbols(self) -> Tuple[str, ...]:
        """The symbols collected when none are given, in the venue's own spelling."""
        return tuple(self.collector_class.default_symbols)

    @property
    def default_url(self) -> str:
        return str(self.collector_class.default_url)

    def to_exchange_symbol(self, symbol: str) -> str:
        """This venue's spelling of canonical ``BASE/QUOTE`` (``BTC/USD`` -> ``BTC-USD``)."""
        return str(self.collector_class.to_exchange_symbol(symbol))

    def to_canonical_symbol(self, raw: str, quote_aliases: Optional[Mapping[str, str]] = None) -> str:
        """``BASE/QUOTE`` for this venue's spelling ``raw`` (``XXBTZUSD`` -> ``BTC/USD`` on Kraken).

        ``quote_aliases`` defaults to the package's (none: every quote as the venue spells it,
        ``BTCUSDT`` -> ``BTC/USDT``); :data:`sabot.symbols.USDT_AS_USD` reads USDT as USD.
        """
        return str(self.collector_class.to_canonical_symbol(raw, quote_aliases))


_REGISTRY: Dict[str, Venue] = {}


def register(venue: Venue, *, replace: bool = False) -> Venue:
    """Add ``venue`` to the registry (``replace=True`` to redefine a name); returns it."""
    if not isinstance(venue, Venue):
        raise TypeError(f"register() takes a Venue, got {type(venue).__name__}")
    if venue.name in _REGISTRY and not replace:
        raise ValueError(f"venue {venue.name!r} is already registered")
    _REGISTRY[venue.name] = venue
    return venue


def unregister(name: str) -> None:
    """Remove a venue (tests that define their own)."""
    _REGISTRY.pop(name, None)


def venues() -> Tuple[Venue, ...]:
    """Every registered spot venue, in registration order (perpetuals: :func:`perp_venues`)."""
    return tuple(v for v in _REGISTRY.values() if v.market == "spot")


def venue_names() -> Tuple[str, ...]:
    """The names of :func:`venues` (the spot venues)."""
    return tuple(v.name for v in venues())


def perp_venues() -> Tuple[Venue, ...]:
    """Every registered perpetual-futures venue (``market="perp"``), in registration order."""
    return tuple(v for v in _REGISTRY.values() if v.market == "perp")


def perp_venue_names() -> Tuple[str, ...]:
    """The names of :func:`perp_venues`."""
    return tuple(v.name for v in perp_venues())


def get_venue(name: str) -> Venue:
    """The venue called ``name``; :class:`UnknownVenueError` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownVenueError(f"unknown venue {name!r}; known: {', '.join(_REGISTRY)}") from None


def ticker_topics() -> Tuple[str, ...]:
    """The Kafka topic of every spot venue's tickers (``<venue>-ticker``)."""
    return tuple(v.ticker_topic for v in venues())


def default_fees(overrides: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Taker fee per spot venue in basis points, with ``overrides`` applied."""
    fees = {v.name: float(v.default_fee_bps) for v in venues()}
    fees.update(overrides or {})
    return fees


T = TypeVar("T")


class VenueMapping(_AbcMapping, Generic[T]):
    """A read-only ``{venue name: value(venue)}`` view of the registry, read on every access.

    Package-level tables keyed by venue are these views, so a venue registered at any time
    (a plug-in, a test) is in every one of them without editing the package.  A name that is
    not registered raises ``KeyError`` whose message lists the known venues.  Iterating lists
    the spot venues (:func:`venues`); a perpetual-futures venue is found by its name.
    """

    def __init__(self, value: Callable[[Venue], T], what: str = "value") -> None:
        self._value = value
        self._what = what

    def __getitem__(self, name: str) -> T:
        venue = _REGISTRY.get(name) if isinstance(name, str) else None
        if venue is None:
            raise KeyError(f"unknown venue {name!r}; known: {', '.join(_REGISTRY)}")
        return self._value(venue)

    def __iter__(self) -> Iterator[str]:
        return iter(venue_names())

    def __len__(self) -> int:
        return len(venue_names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in _REGISTRY

    def __repr__(self) -> str:
        return f"<{self._what} per venue: {', '.join(_REGISTRY)}>"


