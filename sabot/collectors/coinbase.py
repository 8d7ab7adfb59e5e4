"""The Coinbase collector; it lives with everything else about the venue in :mod:`sabot.venues.coinbase`."""
from __future__ import annotations

from sabot.venues.coinbase import CoinbaseCollector

__all__ = ["CoinbaseCollector"]
