"""The Binance collector; it lives with everything else about the venue in :mod:`sabot.venues.binance`."""
from __future__ import annotations

from sabot.venues.binance import BinanceCollector

__all__ = ["BinanceCollector"]
