"""Exchange collectors: WebSocket ticker feeds → normalised records → Parquet and/or Kafka.

One interface (:class:`~sabot.collectors.base.ExchangeCollector`) implemented once per venue in
that venue's module (:mod:`sabot.venues.coinbase`, ...), one connection loop
(:mod:`~sabot.collectors.connection`), one sink layer (:mod:`~sabot.collectors.sinks`).

:data:`COLLECTORS` maps every registered venue to its collector class; it reads the venue
registry on each access, so a venue registered later is included.  The built-in collector
classes are importable from here by name (``from sabot.collectors import CoinbaseCollector``).
"""
from __future__ import annotations

from typing import Any

from sabot.collectors.base import ExchangeCollector, Parsed, rfc3339_to_ns
from sabot.venues.registry import VenueMapping, venues

#: Venue name -> its collector class (a live view of the venue registry).
COLLECTORS: VenueMapping[type[ExchangeCollector]] = VenueMapping(lambda v: v.collector_class, "collector")

_NAMES = ("COLLECTORS", "ExchangeCollector", "Parsed", "rfc3339_to_ns")


def _collector_names() -> list[str]:
    return [v.collector_class.__name__ for v in venues()]


def __getattr__(name: str) -> Any:
    """A registered venue's collector class by its class name (``CoinbaseCollector``); the
    exported names (``__all__``) are the shared ones plus every registered venue's collector."""
    if name == "__all__":
        return [*_NAMES, *_collector_names()]
    for venue in venues():
        cls = venue.collector_class
        if getattr(cls, "__name__", None) == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_collector_names()})
