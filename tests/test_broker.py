"""The embedded broker: start, topics, produce/consume round trip, clean stop, CLI; user
mistakes (port in use, bad or abbreviated options, no broker binary) are one line and exit 2;
an unreachable broker is a clear error in bounded time."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from sabot.broker import (TICKER_TOPICS, BrokerUnreachableError, EmbeddedBroker,
                          HeldRecordsWatch, PortInUseError, check_reachable, free_port)
from sabot.kafka import assign_all, consumer_config, fast_consumer_config, producer_config

ROOT = Path(__file__).resolve().parents[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check /proc
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_ticker_topics_exist_with_three_partitions(kafka_broker):
    md = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=5)
    for topic in TICKER_TOPICS:
        assert topic in md.topics, f"{topic} missing; have {sorted(md.topics)}"
        assert len(md.topics[topic].partitions) == 3
    assert kafka_broker.bootstrap.startswith("127.0.0.1:")
    assert kafka_broker.pid is not None and kafka_broker.running


def test_create_topic_is_idempotent(kafka_broker, unique_topic):
    name = unique_topic()
    kafka_broker.create_topic(name, partitions=2)
    kafka_broker.create_topic(name, partitions=2)
    md = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=5)
    assert len(md.topics[name].partitions) == 2


def test_produce_consume_round_trip_with_consumer_group(kafka_broker, unique_topic):
    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=3)
    producer = Producer(producer_config(kafka_broker.bootstrap))
    sent = {(f"k{i % 7}", f"value-{i}") for i in range(500)}
    for key, value in sent:
        producer.produce(topic, key=key.encode(), value=value.encode())
    assert producer.flush(10) == 0

    consumer = Consumer(consumer_config(kafka_broker.bootstrap, unique_topic("group"),
                                        from_beginning=True, **fast_consumer_config()))
    consumer.subscribe([topic])
    got = set()
    last = {}
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        for m in consumer.consume(1000, 0.2):
            assert m.error() is None, m.error()
            got.add((m.key().decode(), m.value().decode()))
            last[m.partition()] = m.offset()
    consumer.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()],
                    asynchronous=False)
    committed = consumer.committed(consumer.assignment(), timeout=5)
    consumer.close()
    assert got == sent
    # the committed offsets cover every message
    assert sum(tp.offset for tp in committed if tp.offset >= 0) == len(sent)


def test_assign_all_reads_without_group_join(kafka_broker, unique_topic):
    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=3)
    producer = Producer(producer_config(kafka_broker.bootstrap))
    for i in range(30):
        producer.produce(topic, key=str(i % 3).encode(), value=str(i).encode())
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})
    parts = assign_all(consumer, topic)
    assert [p.partition for p in parts] == [0, 1, 2]
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 30 and time.monotonic() < deadline:
        got += [int(m.value()) for m in consumer.consume(100, 0.2) if m.error() is None]
    consumer.close()
    assert sorted(got) == list(range(30))


def test_context_manager_stops_the_child():
    with EmbeddedBroker(port=0, topics=["only-one"], partitions=1) as broker:
        pid = broker.pid
        assert _pid_alive(pid)
        md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
        assert "only-one" in md.topics
    assert not _pid_alive(pid)
    assert not broker.running
    broker.stop()  # idempotent


def test_cli_starts_and_stops_on_sigterm_without_orphans():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sabot", "broker", "--port", str(port),
                             "--partitions", "2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = False
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Kafka bootstrap" in line:
                ready = True
                break
        assert ready, "".join(lines)
        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=5)
        for topic in TICKER_TOPICS:
            assert len(md.topics[topic].partitions) == 2
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not _pid_alive(int(children[0]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_m_sabot_broker_help():
    out = subprocess.run([sys.executable, "-m", "sabot.broker", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--port" in out.stdout and "--partitions" in out.stdout


def test_broker_dies_with_a_killed_parent():
    """SIGKILL of the process owning the broker leaves no orphan broker behind."""
    code = ("from sabot.broker import EmbeddedBroker; import sys, time; "
            "b = EmbeddedBroker(port=0, topics=[]).start(); print(b.pid, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert _pid_alive(child)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # generous: the kernel's kill lands when it is scheduled
        while _pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------
# User mistakes: one line, exit code 2, no traceback, no Rust panic
# ----------------------------------------------------------------------------------------------
def _run(args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "panicked" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 with a listener on it (held for the test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("command", [["-m", "sabot.broker"], ["-m", "sabot", "broker"]],
                         ids=["python-m-sabot.broker", "sabot-broker"])
def test_port_in_use_is_one_line_naming_the_port_and_exit_2(command, taken_port):
    proc = _run([*command, "--port", str(taken_port)])
    line = _one_line_error(proc)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {taken_port} on 127.0.0.1 is already in use" in line
    assert "--port 0" in line  # how to get out of it


def test_embedded_broker_on_a_taken_port_raises_port_in_use(taken_port):
    broker = EmbeddedBroker(port=taken_port, topics=[])
    with pytest.raises(PortInUseError, match=f"port {taken_port} "):
        broker.start()
    assert not broker.running


@pytest.mark.parametrize("args, expected", [
    (["--por", "0"], "unrecognized arguments: --por"),             # no silent abbreviation
    (["--port", "70000"], "argument --port: port must be 0..65535"),
    (["--port", "x"], "argument --port: not a port number: 'x'"),
    (["--partitions", "0"], "argument --partitions: must be >= 1, got 0"),
    (["--warn-held", "-1"], "argument --warn-held: must be >= 0 records, got -1"),
    (["--check-every", "0"], "argument --check-every: must be a finite number > 0"),
])
@pytest.mark.parametrize("command", [["-m", "sabot.broker"], ["-m", "sabot", "broker"]],
                         ids=["python-m-sabot.broker", "sabot-broker"])
def test_bad_arguments_are_one_line_and_exit_2(command, args, expected):
    proc = _run([*command, *args])
    line = _one_line_error(proc)
    assert proc.returncode == 2
    assert expected in line, line


def test_sabot_without_a_command_is_one_line():
    proc = _run(["-m", "sabot"])
    assert proc.returncode == 2
    assert "required: command" in _one_line_error(proc)


def test_missing_broker_binary_is_one_line_and_exit_2(tmp_path):
    proc = _run(["-m", "sabot.broker", "--port", "0"],
                env={"CALF_TANSU_BIN": str(tmp_path / "no-such-tansu")})
    line = _one_line_error(proc)
    assert proc.returncode == 2
    assert "no Tansu broker binary" in line and "no-such-tansu" in line


def test_check_reachable_gives_up_with_a_clear_error_in_time(kafka_broker):
    check_reachable(kafka_broker.bootstrap, timeout_s=10)  # a live broker: returns
    bootstrap = f"127.0.0.1:{free_port()}"                  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachableError, match=f"no Kafka broker answered at {bootstrap} "
                                                      f"within 2 s"):
        check_reachable(bootstrap, timeout_s=2)
    assert time.monotonic() - t0 < 10


def test_soak_benchmark_runs_and_every_record_arrives(tmp_path):
    """``benchmarks/broker_soak.py`` (the embedded broker's cost over time) still runs: a few
    seconds at a low rate, one row a second, and every record produced is read back."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import broker_soak
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "soak.json"
    assert broker_soak.main(["--rate", "100", "--duration", "2", "--sample-every", "1",
                             "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2
    assert result["produced"] > 0 and result["failed"] == 0
    assert result["consumed"] == result["produced"]
    assert all(row["cpu_s"] >= 0 and row["held"] > 0 for row in result["rows"])


def _produce(bootstrap: str, topic: str, n: int) -> None:
    """``n`` records, each its own batch (the broker reports a partition's latest offset as
    its last batch's start + 1)."""
    producer = Producer(producer_config(bootstrap))
    for i in range(n):
        producer.produce(topic, value=f"r{i}".encode())
        assert producer.flush(10) == 0


def test_held_records_watch_warns_past_the_threshold_then_at_each_doubling(kafka_broker,
                                                                           unique_topic):
    """The embedded broker slows as its topics grow (it keeps every record): the watch says so
    once a topic is past the threshold, not again until the topic has doubled."""
    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=2)
    watch = HeldRecordsWatch(kafka_broker.bootstrap, threshold=5)
    try:
        def mine() -> list:
            return [w for w in watch.check() if f"topic {topic} " in w]

        _produce(kafka_broker.bootstrap, topic, 5)
        assert kafka_broker.records_held()[topic] == 5
        assert mine() == []                                    # at the threshold: quiet
        _produce(kafka_broker.bootstrap, topic, 1)
        [warning] = mine()
        assert f"topic {topic} holds 6 records" in warning and "--bootstrap" in warning
        assert mine() == []                                    # said once
        _produce(kafka_broker.bootstrap, topic, 5)             # 11 > 2 x 5
        [warning] = mine()
        assert "holds 11 records" in warning and "past 20" in warning
        assert mine() == []
    finally:
        watch.close()
    assert HeldRecordsWatch(kafka_broker.bootstrap, threshold=0).check() == []   # off


def test_sabot_broker_warns_when_a_topic_holds_many_records():
    """``sabot broker`` looks at the records held every --check-every seconds and logs the
    warning (the demo's broker log carries it)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sabot.broker", "--port", str(port),
                             "--topics", "held", "--partitions", "1", "--warn-held", "3",
                             "--check-every", "0.2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list = []
    seen = threading.Condition()

    def read() -> None:
        for line in proc.stdout:
            with seen:
                lines.append(line)
                seen.notify_all()
        proc.wait()
        with seen:                                             # the broker stopped: wake up
            seen.notify_all()

    def wait_for(text: str) -> bool:
        with seen:
            return seen.wait_for(lambda: any(text in ln for ln in lines) or proc.poll() is not None,
                                 timeout=60) and any(text in ln for ln in lines)

    threading.Thread(target=read, daemon=True).start()
    try:
        assert wait_for("Kafka bootstrap"), "".join(lines)
        _produce(f"127.0.0.1:{port}", "held", 4)
        assert wait_for("topic held holds 4 records"), "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
