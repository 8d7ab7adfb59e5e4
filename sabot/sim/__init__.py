"""Local exchange servers for tests, demos and offline development (``python -m sabot.sim --help``)."""
from __future__ import annotations

from sabot.sim.quotes import Quote, RandomWalk, load_scenario, to_raw_symbol
from sabot.sim.servers import CORRUPT_KINDS, SIMULATORS, BinanceSim, CoinbaseSim, KrakenSim, SimServer

__all__ = [
    "SIMULATORS", "SimServer", "CoinbaseSim", "KrakenSim", "BinanceSim", "CORRUPT_KINDS",
    "Quote", "RandomWalk", "load_scenario", "to_raw_symbol",
]
