"""Exchange collectors: WebSocket ticker feeds → normalised records → Parquet and/or Kafka.

One interface (:class:`~sabot.collectors.base.ExchangeCollector`) implemented per exchange, one
connection loop (:mod:`~sabot.collectors.connection`), one sink layer (:mod:`~sabot.collectors.sinks`).
"""
from __future__ import annotations

from sabot.collectors.base import ExchangeCollector, Parsed, rfc3339_to_ns
from sabot.collectors.binance import BinanceCollector
from sabot.collectors.coinbase import CoinbaseCollector
from sabot.collectors.kraken import KrakenCollector

COLLECTORS: dict[str, type[ExchangeCollector]] = {
    "coinbase": CoinbaseCollector,
    "kraken": KrakenCollector,
    "binance": BinanceCollector,
}

__all__ = [
    "COLLECTORS", "ExchangeCollector", "Parsed", "rfc3339_to_ns",
    "CoinbaseCollector", "KrakenCollector", "BinanceCollector",
]
