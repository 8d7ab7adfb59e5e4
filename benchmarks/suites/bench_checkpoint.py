"""asv: checkpoint write and restore for 1,000 symbols x 10 stateful kernels."""
from __future__ import annotations

import tempfile

import numpy as np
import pyarrow as pa

from sabot.api import Stream
from sabot.fintech import (bollinger_bands, ema, ewma, kalman_1d, macd, rolling_std, rsi, sma,
                           vwap, welford_mean_var)
from sabot.state import LocalCheckpointStore


def ticks(n_symbols: int, per_symbol: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = n_symbols * per_symbol
    sym = np.tile(np.arange(n_symbols), per_symbol)
    price = 100 + np.cumsum(rng.normal(0, 0.1, n))
    return pa.table({"symbol": pa.array([f"S{i:04d}/USD" for i in sym]),
                     "price": price, "volume": rng.uniform(1, 10, n)})


def features(b):
    b = ewma(b, "price", by="symbol")
    b = ema(b, "price", period=10, by="symbol")
    b = sma(b, "price", window=20, by="symbol")
    b = rsi(b, "price", by="symbol")
    b = macd(b, "price", by="symbol")
    b = bollinger_bands(b, "price", by="symbol")
    b = kalman_1d(b, "price", by="symbol")
    b = rolling_std(b, "price", window=20, by="symbol")
    b = vwap(b, by="symbol")
    return welford_mean_var(b, "price", by="symbol")


def build_stream(table: pa.Table | None = None) -> Stream:
    table = table if table is not None else ticks(1000, 20)
    return Stream.from_table(table, batch_size=5000).map(features)


class CheckpointSuite:
    timeout = 120

    def setup(self):
        self.table = ticks(1000, 20)
        self.stream = build_stream(self.table)
        for _ in self.stream:
            pass
        self.dir = tempfile.TemporaryDirectory()
        self.store = LocalCheckpointStore(self.dir.name)
        self.store.save({"t": {0: 1}}, self.stream.state_dict())

    def teardown(self):
        self.dir.cleanup()

    def time_checkpoint_write(self):
        self.store.save({"t": {0: 1}}, self.stream.state_dict())

    def time_checkpoint_restore(self):
        build_stream(self.table).load_state_dict(self.store.load_latest()["state"])

    def track_checkpoint_bytes(self):
        return self.store.last_size_bytes
