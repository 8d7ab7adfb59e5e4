"""A checkpointed pipeline run as a subprocess by the fault tests (killed with SIGKILL).

Kafka ``in_topic`` → midprice → EWMA and RSI of the midprice by symbol → Kafka ``out_topic``.
Prints ``batch <rows>`` to stdout after each batch (the test kills at those points)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from sabot.api import Stream  # noqa: E402
from sabot.fintech import ewma, midprice, rsi  # noqa: E402
from sabot.kafka import fast_consumer_config  # noqa: E402

OUTPUT_COLUMNS = ["symbol", "sequence", "midprice", "ewma", "rsi"]


def features(batch: pa.RecordBatch) -> pa.Table:
    t = midprice(pa.Table.from_batches([batch]))
    t = ewma(t, "midprice", alpha=0.1, by="symbol")
    t = rsi(t, "midprice", period=14, by="symbol")
    return t.select(OUTPUT_COLUMNS)


def progress(batch: pa.RecordBatch) -> pa.RecordBatch:
    sys.stdout.write(f"batch {batch.num_rows}\n")
    sys.stdout.flush()
    return batch


def pipeline(bootstrap: str, in_topic: str, group: str, checkpoint_dir: str,
             interval_s: float) -> Stream:
    return (Stream.from_kafka(bootstrap, in_topic, group, batch_size=50, from_beginning=True,
                              stop_at_end=True, checkpoint_dir=checkpoint_dir,
                              checkpoint_interval_s=interval_s, **fast_consumer_config())
            .map(features).map(progress))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    bootstrap, in_topic, group, out_topic, ckpt, interval = sys.argv[1:7]
    pipeline(bootstrap, in_topic, group, ckpt, float(interval)).to_kafka(bootstrap, out_topic)
