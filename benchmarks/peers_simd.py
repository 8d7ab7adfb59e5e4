"""Peers for the run-time dispatched (portable / AVX2) dividing element-wise kernels.

``sabot`` runs the copy chosen for this CPU; ``sabot portable loop`` forces the SSE2 copy
(``sabot.fintech._simd``), so one run shows what the dispatch gains next to ``np.add``."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot import fintech as fk
from sabot.fintech import _simd

from peers_core import BATCH_ROWS, market


def portable(fn):
    def run():
        previous = _simd._use_path(_simd.PORTABLE)
        try:
            fn()
        finally:
            _simd._use_path(previous)
    return run


def cases(scale: float = 1.0):
    rows = max(int(10_000_000 * scale), BATCH_ROWS)
    table = market(rows)
    batch = table.to_batches()[0]
    b = table["bid"].to_numpy()
    a = table["ask"].to_numpy()
    B = table["bid_size"].to_numpy()
    A = table["ask_size"].to_numpy()
    p = table["price"].to_numpy() * (1 + 5e-5)
    m = 0.5 * (b + a)
    trades = pa.record_batch({"exec_price": p, "midprice": m})
    out = np.empty(rows)
    for name, kernel, data, numpy_expression, add_inputs in [
        ("quoted_spread", fk.quoted_spread, batch, lambda: (a - b) / ((a + b) * 0.5) * 1e4, (b, a)),
        ("l1_imbalance", fk.l1_imbalance, batch, lambda: (B - A) / (B + A), (B, A)),
        ("effective_spread", fk.effective_spread, trades, lambda: 2.0 * np.abs(p - m) / m * 1e4, (p, m)),
        ("microprice", fk.microprice, batch, lambda: (b * A + a * B) / (A + B), (b, a)),
    ]:
        yield f"{name} (dispatched)", rows, {
            "sabot": lambda kernel=kernel, data=data: kernel(data),
            "numpy np.add(a, b, out=)": lambda x=add_inputs: np.add(x[0], x[1], out=out),
            "sabot portable loop": portable(lambda kernel=kernel, data=data: kernel(data)),
            "numpy expression": numpy_expression,
        }
