"""The venue registry: every exchange sabot speaks, described once.

A :class:`Venue` says everything the rest of the package needs to know about one exchange: its
name, the Kafka topic its tickers go to, its default taker fee, the extra columns its records
carry, how the local exchange server simulates it, and where its collector (URL, subscribe
messages, parser, symbol spelling) and its local exchange server live.  Every list of venues in
the package (broker topics, collector CLI, simulators, the demo, the monitor's fees, schemas)
is derived from here, so adding an exchange is one module that calls :func:`register`::

    from sabot.venues import Venue, register
    register(Venue(name="bitstamp", collector="mypkg.bitstamp:BitstampCollector",
                   simulator="mypkg.bitstamp:BitstampSim", default_fee_bps=30.0))

Built-in venues are registered when this package is imported, in a fixed order (Coinbase,
Kraken, Binance); :func:`venues` returns them in registration order.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

import pyarrow as pa

__all__ = ["Venue", "register", "unregister", "venues", "venue_names", "get_venue",
           "ticker_topics", "default_fees", "UnknownVenueError"]


class UnknownVenueError(ValueError):
    """A venue name that is not registered (the message lists the known ones)."""


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
    and ``decimals`` (price rounding).
    """

    name: str
    collector: Any
    simulator: Any
    default_fee_bps: float
    extra_fields: Tuple[pa.Field, ...] = ()
    sim_profile: Mapping[str, float] = field(default_factory=dict)
    ticker_topic: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"venue name must be a lower-case identifier, got {self.name!r}")
        if not self.ticker_topic:
            object.__setattr__(self, "ticker_topic", f"{self.name}-ticker")
        object.__setattr__(self, "extra_fields", tuple(self.extra_fields))
        object.__setattr__(self, "sim_profile", MappingProxyType(dict(self.sim_profile)))

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

    def schema(self) -> pa.Schema:
        """The normalised ticker schema followed by this venue's extra columns."""
        from sabot.schema import TICKER_FIELDS

        return pa.schema(list(TICKER_FIELDS) + list(self.extra_fields))


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
    """Every registered venue, in registration order."""
    return tuple(_REGISTRY.values())


def venue_names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def get_venue(name: str) -> Venue:
    """The venue called ``name``; :class:`UnknownVenueError` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownVenueError(f"unknown venue {name!r}; known: {', '.join(_REGISTRY)}") from None


def ticker_topics() -> Tuple[str, ...]:
    """The Kafka topic of every venue's tickers (``<venue>-ticker``)."""
    return tuple(v.ticker_topic for v in _REGISTRY.values())


def default_fees(overrides: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Taker fee per venue in basis points, with ``overrides`` applied."""
    fees = {v.name: float(v.default_fee_bps) for v in _REGISTRY.values()}
    fees.update(overrides or {})
    return fees


def _register_builtins() -> None:
    ts = pa.timestamp("ns", tz="UTC")
    register(Venue(
        name="coinbase",
        collector="sabot.collectors.coinbase:CoinbaseCollector",
        simulator="sabot.sim.servers:CoinbaseSim",
        default_fee_bps=6.0,
        extra_fields=(pa.field("product_id", pa.string()), pa.field("parent_timestamp", ts)),
        sim_profile={"noise": 2e-4, "half_spread": 0.5e-4, "latency_ms": 40.0, "decimals": 2},
    ))
    register(Venue(
        name="kraken",
        collector="sabot.collectors.kraken:KrakenCollector",
        simulator="sabot.sim.servers:KrakenSim",
        default_fee_bps=16.0,
        extra_fields=(pa.field("vwap", pa.float64()), pa.field("change_pct", pa.float64())),
        sim_profile={"noise": 3e-4, "half_spread": 1.0e-4, "latency_ms": 60.0, "decimals": 1},
    ))
    register(Venue(
        name="binance",
        collector="sabot.collectors.binance:BinanceCollector",
        simulator="sabot.sim.servers:BinanceSim",
        default_fee_bps=10.0,
        extra_fields=(pa.field("last_price", pa.float64()), pa.field("price_change_pct", pa.float64()),
                      pa.field("num_trades", pa.int64())),
        sim_profile={"noise": 1.5e-4, "half_spread": 0.2e-4, "latency_ms": 20.0, "decimals": 2},
    ))


_register_builtins()
