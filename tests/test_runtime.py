"""The run loop (sabot.api._runtime.drive): a sink that fails mid-run closes the sources and
releases the checkpoint directory at once, not when the exception is garbage collected."""
from __future__ import annotations

import pyarrow as pa
import pytest

from sabot.api import Stream
from sabot.kafka import fast_consumer_config

from stream_data import produce, ticker_table


def test_a_failing_sink_releases_the_checkpoint_directory_at_once(kafka_broker, unique_topic,
                                                                  tmp_path):
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=1)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 600, seed=4))
    seen = [0]

    def shape_shift(b: pa.RecordBatch) -> pa.RecordBatch:
        seen[0] += 1
        return b.select(["symbol", "bid"]) if seen[0] == 1 else b.select(["ask"])

    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=100,
                          from_beginning=True, stop_at_end=True, checkpoint_dir=tmp_path / "ck",
                          **fast_consumer_config()).map(shape_shift)
    with pytest.raises(ValueError, match="does not match the file schema") as info:
        s.to_parquet(tmp_path / "out.parquet")
    assert info.value.__traceback__ is not None  # the failed run's frames are still alive
    assert not s.last_checkpointer.store.locked
    again = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=100,
                              from_beginning=True, stop_at_end=True,
                              checkpoint_dir=tmp_path / "ck", **fast_consumer_config())
    assert again.collect().num_rows == 600  # nothing was committed by the failed run
