"""Sources and sinks of the Stream lose nothing: against the real embedded broker, real Parquet
files and real OS errors.  Each test here failed before the fix it covers."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from sabot.api import Stream
from sabot.kafka import assign_all, fast_consumer_config

from stream_data import produce, ticker_table

ROOT = Path(__file__).resolve().parents[1]
FAST = fast_consumer_config()


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict:
    """{partition: committed offset} of ``group`` (negative: nothing committed)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    c.close()
    return {tp.partition: tp.offset for tp in got}


def wait_until(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- 1. to_parquet with checkpoints keeps every flush ------------------------------------------
def test_checkpointed_single_file_keeps_every_flush_in_its_own_file(kafka_broker, unique_topic,
                                                                    tmp_path):
    topic, group = unique_topic(), unique_topic("g")
    kafka_broker.create_topic(topic, partitions=3)
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 3000, seed=21))
    out = tmp_path / "out.parquet"
    s = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=500,
                          from_beginning=True, stop_at_end=True, checkpoint_dir=tmp_path / "ck",
                          checkpoint_interval_s=0, **FAST)
    files = s.to_parquet(out)
    assert len(files) > 1, "every checkpoint flush goes to its own file"
    assert all(Path(f).name.startswith("out-") for f in files)
    rows = pq.read_table(files)
    assert rows.num_rows == 3000
    assert sorted(rows.column("sequence").to_pylist()) == list(range(3000))
    # a second run of the same pipeline (a restart) never replaces the first run's files
    produce(kafka_broker.bootstrap, topic, ticker_table("kraken", 600, seed=22))
    more = Stream.from_kafka(kafka_broker.bootstrap, topic, group, batch_size=500,
                             from_beginning=True, stop_at_end=True,
                             checkpoint_dir=tmp_path / "ck", checkpoint_interval_s=0,
                             **FAST).to_parquet(out)
    assert not set(more) & set(files)
    assert pq.read_table(files + more).num_rows == 3600


def test_single_file_is_never_replaced(kafka_broker, unique_topic, tmp_path):
    out = tmp_path / "out.parquet"
    pq.write_table(ticker_table("kraken", 10), out)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="out.parquet"):
        Stream.from_table(ticker_table("kraken", 50)).to_parquet(out)
    assert out.read_bytes() == before
