"""Soak: three collectors and a checkpointed pipeline under injected faults, with exact accounting.

Phase 1 — collectors.  Three local exchange servers send bad values, garbage frames and drop the
connection every few hundred frames; Kraken sends its whole share as one burst.  Three collectors
write to Kafka and Parquet while the broker is stopped and started again in the middle of the run.
Every data frame a server sent must be a record written or a counted rejection, exactly; nothing
may be left undelivered, and each collector exits 0.

Phase 2 — pipeline.  What the collectors stored (Parquet) is produced to a fresh topic; the
checkpointed pipeline of ``tests/faults_pipeline.py`` is killed with SIGKILL several times and
restarted; its output after de-duplication equals an undisturbed run of the same plan.

Bounded for ``make test`` (about a minute); ``SABOT_SOAK_SECONDS=600 pytest tests/test_soak.py``
runs a longer one.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE / "collectors"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from collector_helpers import FAST_ENV, REPO, collector_cmd, final_stats  # noqa: E402
from faults_pipeline import OUTPUT_COLUMNS, features  # noqa: E402
from stream_data import produce  # noqa: E402
from test_faults_checkpoint import PIPELINE, read_all, run_and_kill  # noqa: E402

from sabot.api import Stream  # noqa: E402
from sabot.broker import EmbeddedBroker, free_port  # noqa: E402
from sabot.sim import SIMULATORS  # noqa: E402

SOAK_S = float(os.environ.get("SABOT_SOAK_SECONDS", "12"))
EXCHANGES = ("coinbase", "kraken", "binance")


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _accounted(port: int) -> int:
    """Records written plus records rejected so far, from a collector's metrics endpoint."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1
    total = 0
    for line in body.splitlines():
        if line.startswith(("sabot_collector_records_total", "sabot_collector_rejected_total")):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _written(stderr: str, sink: str) -> int:
    """Records written to ``sink`` ('Kafka' or 'Parquet') from the collector's summary line."""
    line = [ln for ln in stderr.splitlines() if " summary: " in ln][-1]
    m = re.search(rf"(\d+) to {sink}\b", line)
    assert m, line
    return int(m.group(1))


def test_soak_collectors_and_pipeline_account_for_everything(tmp_path):
    port = free_port()
    topics = [f"soak-{ex}" for ex in EXCHANGES]
    broker = EmbeddedBroker(port=port, topics=topics, partitions=3).start()
    sims, procs, logs, ports = {}, {}, {}, {}
    try:
        # -- phase 1: collectors under faults, broker restarted mid-run -----------------------
        rate = 150.0
        paced = int(rate * SOAK_S)
        for ex in EXCHANGES:
            burst = ex == "kraken"
            sims[ex] = SIMULATORS[ex](rate=0 if burst else rate, count=paced, corrupt_every=13,
                                      garbage_every=61, drop_every=None if burst else 500,
                                      keep_sent=False, seed=7).start()
        for ex in EXCHANGES:
            cmd = collector_cmd(ex, sims[ex].url, "-k", "-F", "-o", str(tmp_path / f"{ex}.parquet"),
                                "--bootstrap", broker.bootstrap, "--topic", f"soak-{ex}",
                                "--dead-letter", str(tmp_path / f"{ex}.dead.jsonl"),
                                "--metrics-port", str(ports.setdefault(ex, free_port())))
            logs[ex] = open(tmp_path / f"{ex}.log", "w+")
            procs[ex] = subprocess.Popen(cmd, env=FAST_ENV, stdout=subprocess.DEVNULL,
                                         stderr=logs[ex], cwd=REPO)
        # restart the broker once a third of the paced frames are out
        wait_for(lambda: sims["coinbase"].sent_count >= paced // 3, SOAK_S + 60,
                 "the first third of the frames")
        broker.stop()
        outage_started = time.monotonic()
        time.sleep(1.0)  # the outage itself: the collectors must hold what they produce meanwhile
        broker = EmbeddedBroker(port=port, topics=topics, partitions=3).start()
        outage_s = time.monotonic() - outage_started
        # stop each collector once its server has sent everything and it has accounted for it
        for ex in EXCHANGES:
            wait_for(lambda: sims[ex].sent_count >= paced, SOAK_S + 120, f"{ex}: all frames sent")
            wait_for(lambda: _accounted(ports[ex]) == sims[ex].sent_count, 120,
                     f"{ex}: every frame accounted for")
            procs[ex].send_signal(signal.SIGTERM)
        for ex in EXCHANGES:
            assert procs[ex].wait(120) == 0, (tmp_path / f"{ex}.log").read_text()[-4000:]

        accounting = {}
        stored = []
        for ex in EXCHANGES:
            stderr = (tmp_path / f"{ex}.log").read_text()
            stats = final_stats(stderr)
            sent = sims[ex].report()
            # every data frame sent is a record written or a counted rejection, exactly
            assert stats["records"] + stats["rejected"] == sent["data_frames"], (ex, stats, sent)
            assert stats["rejected"] == sum(sent["corrupt"].values()) > 0
            assert stats["skipped"] >= sent["garbage"] > 0
            table = pq.read_table(tmp_path / f"{ex}.parquet")
            assert table.num_rows == stats["records"] == _written(stderr, "Parquet")
            assert _written(stderr, "Kafka") == stats["records"]  # all delivered, none lost
            assert "undelivered 0" in stderr
            # the broker keeps topics in memory: what it holds now is what arrived after the
            # restart, and every one of those rows is one the collector stored
            in_kafka = read_all(broker.bootstrap, f"soak-{ex}")
            if ex != "kraken":  # Kraken's burst was over before the restart
                assert in_kafka, f"{ex}: nothing reached the restarted broker"
            stored_keys = set(zip(table["raw_symbol"].to_pylist(), table["timestamp"].cast(pa.int64()).to_pylist(),
                                  table["bid"].to_pylist(), table["ask"].to_pylist()))
            for r in in_kafka:
                assert (r["raw_symbol"], r["timestamp"], r["bid"], r["ask"]) in stored_keys
            accounting[ex] = (sent["data_frames"], stats["records"], stats["rejected"],
                              sent["garbage"], sent["drops"], len(in_kafka))
            stored.append(table)

        # -- phase 2: checkpointed pipeline killed with SIGKILL -------------------------------
        table = pa.concat_tables(stored, promote_options="default")
        symbol = pc.binary_join_element_wise(table["exchange"].cast(pa.string()),
                                             table["symbol"].cast(pa.string()), ":")
        sequence = pd.Series(symbol.to_numpy(zero_copy_only=False)).groupby(
            symbol.to_numpy(zero_copy_only=False)).cumcount().to_numpy(np.int64)
        table = (table.set_column(table.schema.get_field_index("symbol"), "symbol", symbol)
                 .set_column(table.schema.get_field_index("sequence"), "sequence", pa.array(sequence)))
        in_topic, out_topic = "soak-features-in", "soak-features-out"
        broker.create_topic(in_topic, partitions=3)
        broker.create_topic(out_topic, partitions=3)
        produce(broker.bootstrap, in_topic, table)
        args = [sys.executable, str(PIPELINE), broker.bootstrap, in_topic, "soak-group", out_topic,
                str(tmp_path / "ckpt"), "0.05"]
        rng = np.random.default_rng(3)
        kills = max(3, int(SOAK_S // 4))
        with open(tmp_path / "pipeline.log", "wb") as log:
            for _ in range(kills):
                run_and_kill(args, log, tmp_path / "pipeline.log", int(rng.integers(2, 6)))
            final = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=log, timeout=300)
        logtext = (tmp_path / "pipeline.log").read_text()
        assert final.returncode == 0, logtext[-3000:]
        assert logtext.count("restored checkpoint") >= kills - 1

        got = pd.DataFrame(read_all(broker.bootstrap, out_topic))[OUTPUT_COLUMNS]
        assert got.groupby(["symbol", "sequence"]).nunique(dropna=False).max(axis=None) <= 1
        dedup = (got.drop_duplicates(["symbol", "sequence"]).sort_values(["symbol", "sequence"])
                 .reset_index(drop=True))
        undisturbed = (Stream.from_table(table, batch_size=97).map(features).collect().to_pandas()
                       .sort_values(["symbol", "sequence"]).reset_index(drop=True))
        assert len(dedup) == table.num_rows, f"lost {table.num_rows - len(dedup)} records"
        pd.testing.assert_frame_equal(dedup, undisturbed, check_exact=True, check_dtype=False)
        print(f"\nsoak {SOAK_S:g}s, broker outage {outage_s:.1f}s: per venue (sent, written, rejected, "
              f"garbage, drops, in Kafka after restart) {accounting}; pipeline: {kills} kills, "
              f"{len(got)} output rows, {len(got) - len(dedup)} duplicates, 0 lost")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
        for s in sims.values():
            s.stop()
        broker.stop()
