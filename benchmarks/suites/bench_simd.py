"""asv suite: the dividing element-wise kernels on each loop copy (portable, AVX2), 10M rows."""
import numpy as np
import pyarrow as pa

from sabot import fintech as fk
from sabot.fintech import _simd

ROWS = 10_000_000


class DispatchedElementWise:
    params = [_simd.PORTABLE, _simd.AVX2]
    param_names = ["path"]

    def setup(self, path):
        if path not in _simd.available_paths():
            raise NotImplementedError(f"this CPU cannot run {path}")
        self.previous = _simd._use_path(path)
        rng = np.random.default_rng(0)
        price = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, ROWS)))
        self.batch = pa.record_batch({
            "bid": price * (1 - 1e-4), "ask": price * (1 + 1e-4),
            "bid_size": rng.exponential(2.0, ROWS), "ask_size": rng.exponential(2.0, ROWS),
            "exec_price": price * (1 + 5e-5), "midprice": price,
        })

    def teardown(self, path):
        _simd._use_path(self.previous)

    def time_quoted_spread(self, path):
        fk.quoted_spread(self.batch)

    def time_l1_imbalance(self, path):
        fk.l1_imbalance(self.batch)

    def time_effective_spread(self, path):
        fk.effective_spread(self.batch)

    def time_microprice(self, path):
        fk.microprice(self.batch)
