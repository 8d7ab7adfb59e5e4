"""asv benchmarks for sabot.fintech.features_safety (1M rows; windows 20 and 1000 show O(1)
per row in the window length). Peers side by side: benchmarks/peers_features.py."""
import numpy as np
import pyarrow as pa

from sabot.fintech import (
    Lag, autocorr, outlier_flag_mad, rolling_kurt, rolling_max, rolling_min, rolling_skew,
    rolling_std, throttle_check, tick_rule,
)

N_ROWS = 1_000_000


def _batch(n=N_ROWS, seed=0):
    rng = np.random.default_rng(seed)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))
    times = 1_700_000_000_000_000_000 + np.cumsum(rng.integers(1, 5_000_000, n))
    return pa.record_batch({
        "symbol": pa.array(rng.choice(["BTC/USD", "ETH/USD", "SOL/USD"], n)),
        "timestamp": pa.array(times, pa.timestamp("ns")),
        "price": price,
    })


class RollingWindows:
    params = [20, 1000]
    param_names = ["window"]

    def setup(self, window):
        self.batch = _batch()

    def time_rolling_std(self, window):
        rolling_std(self.batch, "price", window=window)

    def time_rolling_skew(self, window):
        rolling_skew(self.batch, "price", window=window)

    def time_rolling_kurt(self, window):
        rolling_kurt(self.batch, "price", window=window)

    def time_rolling_min(self, window):
        rolling_min(self.batch, "price", window=window)

    def time_rolling_max(self, window):
        rolling_max(self.batch, "price", window=window)

    def time_autocorr(self, window):
        autocorr(self.batch, "price", lag=1, window=window)

    def time_rolling_std_by_symbol(self, window):
        rolling_std(self.batch, "price", window=window, by="symbol")

    def time_rolling_min_by_symbol(self, window):
        rolling_min(self.batch, "price", window=window, by="symbol")

    def time_rolling_max_by_symbol(self, window):
        rolling_max(self.batch, "price", window=window, by="symbol")


class Features:
    def setup(self):
        self.batch = _batch()

    def time_lag_streaming_10_batches(self):
        kernel = Lag("price", k=5, by="symbol")
        step = N_ROWS // 10
        for start in range(0, N_ROWS, step):
            kernel(self.batch.slice(start, step))

    def time_tick_rule(self):
        tick_rule(self.batch, by="symbol")

    def time_throttle_check(self):
        throttle_check(self.batch, rate_limit=100.0, window_ms=1000, by="symbol")

    def time_outlier_flag_mad_w100(self):
        outlier_flag_mad(self.batch, "price", window=100)
