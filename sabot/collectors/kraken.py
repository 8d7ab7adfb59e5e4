"""The Kraken collector; it lives with everything else about the venue in :mod:`sabot.venues.kraken`."""
from __future__ import annotations

from sabot.venues.kraken import KrakenCollector

__all__ = ["KrakenCollector"]
