"""asv suites for the first kernels: 10M rows, whole-table and per 64Ki-row batch."""
import numpy as np
import pyarrow as pa

from sabot import fintech as fk

ROWS = 10_000_000
BATCH_ROWS = 64 * 1024


def _market(rows):
    rng = np.random.default_rng(0)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, rows)))
    symbols = np.array([f"S{i}/USD" for i in range(8)])
    return pa.table({
        "symbol": pa.array(symbols[rng.integers(0, 8, rows)]).dictionary_encode(),
        "price": price, "bid": price * (1 - 1e-4), "ask": price * (1 + 1e-4),
        "bid_size": rng.exponential(2.0, rows), "ask_size": rng.exponential(2.0, rows),
        "high": price * 1.001, "low": price * 0.999, "volume": rng.exponential(5.0, rows),
    }).combine_chunks()


class ElementWise:
    def setup(self):
        self.batch = _market(ROWS).to_batches()[0]

    def time_midprice(self):
        fk.midprice(self.batch)

    def time_microprice(self):
        fk.microprice(self.batch)

    def time_quoted_spread(self):
        fk.quoted_spread(self.batch)

    def time_l1_imbalance(self):
        fk.l1_imbalance(self.batch)


class Recurrences:
    params = [None, "symbol"]
    param_names = ["by"]

    def setup(self, by):
        self.batch = _market(ROWS).to_batches()[0]

    def time_ewma(self, by):
        fk.ewma(self.batch, alpha=0.94, by=by)

    def time_ema_period(self, by):
        fk.ema(self.batch, period=20, by=by)

    def time_sma(self, by):
        fk.sma(self.batch, window=20, by=by)

    def time_rsi(self, by):
        fk.rsi(self.batch, by=by)

    def time_macd(self, by):
        fk.macd(self.batch, by=by)

    def time_bollinger(self, by):
        fk.bollinger_bands(self.batch, by=by)

    def time_rolling_zscore(self, by):
        fk.rolling_zscore(self.batch, window=100, by=by)

    def time_atr(self, by):
        fk.atr(self.batch, by=by)

    def time_ofi(self, by):
        fk.ofi(self.batch, by=by)


class PerBatch:
    def setup(self):
        self.batches = _market(ROWS).to_batches(max_chunksize=BATCH_ROWS)

    def time_ewma_class_per_batch(self):
        k = fk.EWMA(alpha=0.94, by="symbol")
        for b in self.batches:
            k(b)

    def time_rsi_class_per_batch(self):
        k = fk.RSI(by="symbol")
        for b in self.batches:
            k(b)
