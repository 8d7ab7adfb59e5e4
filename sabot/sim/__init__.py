"""Local exchange servers for tests, demos and offline development (``python -m sabot.sim --help``).

:data:`SIMULATORS` maps every registered venue (:mod:`sabot.venues`) to its simulator class; each
class lives in its venue's simulator writer (:mod:`sabot.sim.coinbase`, ...) and is importable
from here by name (``from sabot.sim import KrakenSim``).
"""
from __future__ import annotations

from typing import Any

from sabot.sim.quotes import Quote, RandomWalk, load_scenario, to_raw_symbol
from sabot.sim.servers import CORRUPT_KINDS, SIMULATORS, SimServer
from sabot.venues import perp_venues, venues

_NAMES = ("SIMULATORS", "SimServer", "CORRUPT_KINDS", "Quote", "RandomWalk", "load_scenario", "to_raw_symbol")


def _simulator_names_of(v: Any) -> str:
    return v.simulator.rpartition(":")[2] if isinstance(v.simulator, str) else v.simulator.__name__


def _simulator_names() -> list[str]:
    return [_simulator_names_of(v) for v in (*venues(), *perp_venues())]


def __getattr__(name: str) -> Any:
    """A registered venue's simulator class by its class name (``KrakenSim``); the exported names
    (``__all__``) are the shared ones plus every registered venue's simulator."""
    if name == "__all__":
        return [*_NAMES, *_simulator_names()]
    from sabot.sim import servers

    try:
        return getattr(servers, name)
    except AttributeError:
        for venue in perp_venues():  # perpetual-futures venues are not in SIMULATORS' listing
            if _simulator_names_of(venue) == name:
                return venue.simulator_class
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_simulator_names()})
