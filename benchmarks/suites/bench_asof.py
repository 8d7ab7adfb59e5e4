"""asv suite: ASOF join (batch, per-key index reuse, streaming). Sizes kept modest for asv."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from peers_asof import TOLERANCE_MS, make_data  # noqa: E402

from sabot.fintech import AsofJoinKernel, StreamingAsofJoinKernel, asof_join  # noqa: E402


class AsofJoin:
    params = (["backward", "forward", "nearest"],)
    param_names = ["direction"]

    def setup(self, direction):
        self.left, self.right = make_data(1_000_000, 500_000)
        self.left_str = self.left.set_column(1, "symbol", self.left.column("symbol").cast("string"))
        self.right_str = self.right.set_column(1, "symbol", self.right.column("symbol").cast("string"))

    def time_dictionary_keys(self, direction):
        asof_join(self.left, self.right, on="timestamp", by="symbol", tolerance_ms=TOLERANCE_MS,
                  direction=direction)

    def time_string_keys(self, direction):
        asof_join(self.left_str, self.right_str, on="timestamp", by="symbol",
                  tolerance_ms=TOLERANCE_MS, direction=direction)


class AsofKernelReuse:
    def setup(self):
        left, right = make_data(200_000, 500_000)
        self.kernel = AsofJoinKernel(right, on="timestamp", by="symbol", tolerance_ms=TOLERANCE_MS)
        self.batches = left.to_batches(max_chunksize=4096)

    def time_many_small_left_batches(self):
        for b in self.batches:
            self.kernel(b)


class AsofStreaming:
    def setup(self):
        left, right = make_data(200_000, 100_000)
        self.lb = left.to_batches(max_chunksize=8192)
        self.rb = right.to_batches(max_chunksize=8192)

    def time_streaming(self):
        k = StreamingAsofJoinKernel(on="timestamp", by="symbol", tolerance_ms=TOLERANCE_MS)
        for lb, rb in zip(self.lb, self.rb):
            k.process_right(rb)
            k.process_left(lb)
        for lb in self.lb[len(self.rb):]:
            k.process_left(lb)
        k.flush()
