"""asv suites for the Stream hot paths: JSON decode (from_kafka), JSON encode (to_kafka),
tumbling bars and the time-ordered merge, on 100k normalised ticker records."""
import numpy as np
import orjson
import pyarrow as pa

from sabot.api import Stream
from sabot.api._decode import JsonBatchDecoder
from sabot.api._kafka import encode_json
from sabot.schema import TICKER_SCHEMA

ROWS = 100_000
CHUNK = 10_000


def _ticker(rows, offset_ns=0):
    rng = np.random.default_rng(0)
    symbols = np.array([f"S{i}/USD" for i in range(8)])
    mid = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-4, rows)))
    ts = 1_700_000_000_000_000_000 + offset_ns + np.arange(rows, dtype=np.int64) * 1_000_000
    sym = symbols[rng.integers(0, 8, rows)]
    return pa.Table.from_pydict({
        "exchange": ["coinbase"] * rows, "symbol": sym, "raw_symbol": sym,
        "timestamp": pa.array(ts).cast(pa.timestamp("ns", tz="UTC")),
        "recv_timestamp": pa.array(ts + 2500).cast(pa.timestamp("ns", tz="UTC")),
        "bid": mid * (1 - 1e-4), "ask": mid * (1 + 1e-4),
        "bid_size": rng.exponential(2.0, rows), "ask_size": rng.exponential(2.0, rows),
        "price": mid, "volume_24h": rng.uniform(1e3, 1e4, rows),
        "sequence": np.arange(rows, dtype=np.int64), "time_source": ["exchange"] * rows}, schema=TICKER_SCHEMA)


class JsonCodec:
    def setup(self):
        table = _ticker(ROWS)
        self.batches = table.to_batches(max_chunksize=CHUNK)
        values = [v for b in self.batches for v in encode_json(b)]
        self.chunks = [values[i:i + CHUNK] for i in range(0, ROWS, CHUNK)]
        self.native = JsonBatchDecoder(TICKER_SCHEMA)
        self.arrow = JsonBatchDecoder(TICKER_SCHEMA, use_native=False)

    def time_decode_native(self):
        for c in self.chunks:
            self.native.decode(c)

    def time_decode_arrow_reader(self):
        for c in self.chunks:
            self.arrow.decode(c)

    def time_encode(self):
        for b in self.batches:
            encode_json(b)


class Operators:
    def setup(self):
        self.table = _ticker(ROWS)
        self.other = _ticker(ROWS, offset_ns=500_000)

    def time_tumbling_1s_by_symbol(self):
        Stream.from_table(self.table, batch_size=CHUNK).tumbling(
            "1s", by="symbol", volume_column=None).collect()

    def time_merge_two_streams(self):
        Stream.merge(Stream.from_table(self.table, batch_size=CHUNK),
                     Stream.from_table(self.other, batch_size=CHUNK)).collect()

    def time_asof_join_streaming(self):
        Stream.from_table(self.table, batch_size=CHUNK).asof_join(
            Stream.from_table(self.other, batch_size=CHUNK).select("timestamp", "symbol", "bid"),
            by="symbol", tolerance_ms=5, right_prefix="r_").collect()
