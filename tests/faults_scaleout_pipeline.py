"""The kill-test pipeline (tests/faults_pipeline.py) with its state in a Kafka changelog topic,
run as one member of a consumer group by tests/test_faults_scaleout.py.

argv: bootstrap in_topic group out_topic changelog_topic interval_s delay_s stop_at_end(0/1)

Prints ``batch <rows>`` to stdout after each batch (``delay_s`` later, to slow the member down
so that rebalances land mid-stream).  SIGTERM stops it cleanly (final checkpoint).  Logs at
INFO to stderr, including ``task <topic>/<p> restored from changelog ... at offset <o>``."""
from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402

from faults_pipeline import features  # noqa: E402
from sabot.api import Stream  # noqa: E402
from sabot.kafka import fast_consumer_config  # noqa: E402


def pipeline(bootstrap: str, in_topic: str, group: str, changelog: str, interval_s: float,
             delay_s: float, stop_at_end: bool) -> Stream:
    def progress(batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(delay_s)
        sys.stdout.write(f"batch {batch.num_rows}\n")
        sys.stdout.flush()
        return batch

    return (Stream.from_kafka(bootstrap, in_topic, group, batch_size=50, from_beginning=True,
                              stop_at_end=stop_at_end, changelog_topic=changelog,
                              checkpoint_interval_s=interval_s,
                              # small fetches: every partition advances at a similar pace, so a
                              # rebalance finds each one mid-stream
                              **fast_consumer_config(**{"max.partition.fetch.bytes": 4096}))
            .map(features).map(progress))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    bootstrap, in_topic, group, out_topic, changelog, interval, delay, stop = sys.argv[1:9]
    stream = pipeline(bootstrap, in_topic, group, changelog, float(interval), float(delay),
                      stop == "1")
    signal.signal(signal.SIGTERM, lambda *_: stream.stop())
    stream.to_kafka(bootstrap, out_topic)
    ckpt = stream.last_checkpointer
    logging.getLogger("faults_scaleout").info(
        "clean stop: %d changelog records written, %d restored", ckpt.store.records_written,
        ckpt.store.records_restored)
