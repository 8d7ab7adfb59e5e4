"""Changelog-topic checkpoints (``changelog_topic=``) for 1,000 symbols x 10 stateful kernels
over a 6-partition source topic, against the embedded broker.

Run: ``python benchmarks/changelog_figures.py`` from the repo root; prints one line per figure.
A pipeline (the kernels of benchmarks/suites/bench_checkpoint.py, by symbol) consumes 20 ticks
per symbol keyed by symbol and writes one record per partition at its end; then the records
are re-written and restored (read to the partition end, decoded, loaded into fresh operator
clones) five times each.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks.suites.bench_checkpoint import build_stream, features, ticks  # noqa: E402
from sabot.api import Stream  # noqa: E402
from sabot.broker import EmbeddedBroker  # noqa: E402
from sabot.kafka import fast_consumer_config  # noqa: E402
from sabot.state import KafkaChangelogStore  # noqa: E402
from sabot.state.codec import encode_state  # noqa: E402

PARTITIONS = 6
SCHEMA = pa.schema([("symbol", pa.string()), ("price", pa.float64()), ("volume", pa.float64())])


def main() -> None:
    from confluent_kafka import Producer

    logging.basicConfig(level=logging.WARNING)
    table = ticks(1000, 20)
    broker = EmbeddedBroker(port=0).start()
    try:
        broker.create_topic("ticks", partitions=PARTITIONS)
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for row in table.to_pylist():
            p.produce("ticks", key=row["symbol"].encode(), value=orjson.dumps(row))
            p.poll(0)
        assert p.flush(30) == 0

        def stream() -> Stream:
            return Stream.from_kafka(broker.bootstrap, "ticks", "bench", schema=SCHEMA,
                                     batch_size=5000, from_beginning=True, stop_at_end=True,
                                     changelog_topic="ticks-state", checkpoint_interval_s=3600,
                                     **fast_consumer_config()).map(features)

        s = stream()
        t0 = time.perf_counter()
        rows = sum(b.num_rows for b in s)
        print(f"pipeline: {rows} rows over {PARTITIONS} partitions in "
              f"{time.perf_counter() - t0:.2f} s (incl. group join)")
        store = KafkaChangelogStore(broker.bootstrap, "ticks-state")
        tps = [("ticks", i) for i in range(PARTITIONS)]
        records = store.read(tps)
        sizes = [len(encode_state(r["state"])) for r in records.values() if r is not None]
        print(f"records: {len(sizes)}, total {sum(sizes) / 1e6:.2f} MB "
              f"(per partition {min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} kB)")

        template = stream()
        op = template.operators()[0]
        writes, reads_all, reads_one, loads = [], [], [], []
        for _ in range(5):
            t0 = time.perf_counter()
            for tp, r in records.items():
                store.write(tp, r["offset"], r["state"])
            store.flush()
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.read(tps)
            reads_all.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            one = store.read([tps[0]])[tps[0]]
            reads_one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            op.clone().load_state_dict(one["state"][0])
            loads.append(time.perf_counter() - t0)
        store.close()
        local = build_stream(table)
        for _ in local:
            pass
        snaps = []
        for _ in range(5):
            t0 = time.perf_counter()
            local.state_dict()
            snaps.append(time.perf_counter() - t0)
        print(f"state_dict of the 10 kernels x 1000 symbols (all partitions together): "
              f"median {np.median(snaps) * 1e3:.1f} ms")
        print(f"checkpoint of all {PARTITIONS} partitions (encode, produce, flush; state_dict excluded): "
              f"median {np.median(writes) * 1e3:.0f} ms")
        print(f"restore read of all {PARTITIONS} partitions (to end, decode): "
              f"median {np.median(reads_all) * 1e3:.0f} ms")
        print(f"restore of one partition: read median {np.median(reads_one) * 1e3:.0f} ms "
              f"+ load into a fresh clone (kernels take their state at first call) median {np.median(loads) * 1e3:.1f} ms")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
