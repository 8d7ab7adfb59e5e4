"""Deployment files: the systemd units are sandboxed and end a crash loop in a failed unit; the
Docker Compose broker is reachable from this machine only."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))


def parse_unit(path: Path) -> Dict[str, Dict[str, List[str]]]:
    """``{section: {key: [values...]}}`` of a systemd unit file (keys may repeat; comments and
    blank lines skipped; an empty value such as ``CapabilityBoundingSet=`` is kept as "")."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def last(section: Dict[str, List[str]], key: str) -> str:
    assert key in section, f"{key} missing"
    return section[key][-1]


def test_one_template_unit_serves_every_venue():
    """One ``sabot-collector@.service`` template; the instance name is the venue, so a venue
    added to the registry needs no deployment file of its own."""
    assert [u.name for u in UNITS] == ["sabot-collector@.service"]
    svc = parse_unit(UNITS[0])["Service"]
    assert " collect %i " in last(svc, "ExecStart")


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.stem)
def test_unit_is_sandboxed(unit):
    svc = parse_unit(unit)["Service"]
    expected = {
        "ProtectHome": "true", "PrivateDevices": "true", "PrivateTmp": "true",
        "NoNewPrivileges": "true", "ProtectSystem": "strict", "UMask": "0027",
        "CapabilityBoundingSet": "", "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in expected.items():
        assert last(svc, key) == value, (unit.name, key)
    assert re.fullmatch(r"\d+[KMGT]?", last(svc, "MemoryMax")), last(svc, "MemoryMax")
    # ProtectSystem=strict makes everything read-only: the working directory (where the
    # Parquet files land) must be listed as writable
    writable = " ".join(svc["ReadWritePaths"]).split()
    assert last(svc, "WorkingDirectory") in writable
    assert svc.get("User") and last(svc, "User") != "root"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.stem)
def test_crash_loop_ends_in_a_failed_unit(unit):
    sections = parse_unit(unit)
    svc, u = sections["Service"], sections["Unit"]
    assert last(svc, "Restart") == "on-failure"
    assert float(last(svc, "RestartSec")) >= 1
    # the start limit lives in [Unit] (in [Service] systemd ignores it)
    assert "StartLimitIntervalSec" not in svc and "StartLimitBurst" not in svc
    interval, burst = int(last(u, "StartLimitIntervalSec")), int(last(u, "StartLimitBurst"))
    assert burst >= 1
    # restarts come RestartSec apart: the limit must be reachable within the interval
    assert burst * float(last(svc, "RestartSec")) < interval


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.stem)
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    """``systemd-analyze verify``: no unknown keys, no bad values.  The interpreter path of the
    install (/opt/sabot/.venv) does not exist here, so it is pointed at this Python."""
    from sabot.venues import venue_names

    text = unit.read_text().replace("/opt/sabot/.venv/bin/python", sys.executable)
    for venue in venue_names():
        copy = tmp_path / unit.name.replace("@.", f"@{venue}.")
        copy.write_text(text)
        proc = subprocess.run(["systemd-analyze", "verify", copy.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        complaints = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                      if copy.name in ln or "Unknown" in ln or "Invalid" in ln or "Failed" in ln]
        assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def compose_ports(text: str) -> List[str]:
    """Every entry of every ``ports:`` list in a Compose file (short syntax, one per line)."""
    ports, in_ports, indent = [], False, 0
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        depth = len(stripped) - len(stripped.lstrip())
        if re.fullmatch(r"\s*ports:\s*", stripped):
            in_ports, indent = True, depth
            continue
        if in_ports and depth > indent and stripped.lstrip().startswith("- "):
            ports.append(stripped.lstrip()[2:].strip().strip("'\""))
            continue
        in_ports = False
    return ports


def test_compose_publishes_the_kafka_port_on_localhost_only():
    ports = compose_ports((ROOT / "docker-compose.yml").read_text())
    assert ports, "no ports published"
    for p in ports:
        assert p.startswith("127.0.0.1:"), f"{p!r} is published on every interface"
    assert "127.0.0.1:19092:19092" in ports
    assert not any("9644" in p for p in ports), "the admin API must not be published"


def test_compose_ports_parser_sees_an_all_interfaces_binding():
    text = "services:\n  x:\n    ports:\n      - \"19092:19092\"   # c\n      - 127.0.0.1:1:1\n" \
           "    volumes:\n      - a:/b\n"
    assert compose_ports(text) == ["19092:19092", "127.0.0.1:1:1"]


# ----------------------------------------------------------------------------------------------
# Prometheus and Grafana
# ----------------------------------------------------------------------------------------------
DASHBOARD = ROOT / "deploy" / "grafana" / "sabot.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                "and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr: str) -> set:
    """The metric names a PromQL expression reads: identifiers that are not functions (followed
    by "("), aggregation clauses, label names (inside {} or by/without (...)), durations or
    numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)                  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                           # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                           # range selectors
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def test_promql_metric_names_parser():
    expr = ('histogram_quantile(0.99, sum by (le, stream) (rate(a_b_bucket{x="y"}[5m]))) '
            "/ ignoring(z) max without (q) (c_total offset 5m) + 2e3")
    assert promql_metric_names(expr) == {"a_b_bucket", "c_total"}


def dashboard_queries() -> list:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query", "") for v in dash.get("templating", {}).get("list", [])
              if isinstance(v.get("query", ""), str)]
    return [e for e in exprs if e]


def exported_metric_names() -> set:
    """Every sample name the project's metric sources expose, from a real prometheus_client
    registry: a stream's families (with a stream that has every kind of counter: operator,
    source, sink, consumer lag, a checkpointer with a changelog store, latencies) and a
    collector's."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    import pyarrow as pa

    from sabot.metrics import StreamMetrics, collector_source

    class Store:  # the counters a changelog store keeps
        records_written, records_restored, records_discarded = 3, 1, 0

    class Checkpointer:
        age_s, store = 1.5, Store()

    class Source:
        lag = {("coinbase-ticker", 0): 4}

    class PipelineState:  # what StreamMetrics reads from a running Stream
        metrics = {"map(f)": {"rows_in": 5, "rows_out": 5},
                   "from_kafka(t)": {"messages": 5, "decode_errors": 1, "commits_withheld": 0},
                   "to_parquet(p)": {"rows_in": 5, "rows_out": 5, "write_errors": 0},
                   "to_kafka(t)": {"rows_in": 5, "rows_out": 5, "undelivered": 0}}
        last_checkpointer = Checkpointer()

        def kafka_sources(self):
            return [Source()]

    class Stats:
        messages, records, reconnects, skipped, errors = 10, 9, 1, 1, 0

    sm = StreamMetrics(PipelineState(), "features")
    sm.latency.observe_batch(pa.record_batch({"recv_timestamp": pa.array([1, 2], pa.int64())}))
    registry = CollectorRegistry(auto_describe=False)

    class Sources:
        def collect(self):
            yield from sm()
            yield from collector_source(Stats(), "coinbase")()

    registry.register(Sources())
    text = generate_latest(registry).decode()
    return {re.match(r"[A-Za-z_:][\w:]*", ln).group(0) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def test_every_metric_the_dashboard_queries_is_exported():
    exported = exported_metric_names()
    queried = set().union(*(promql_metric_names(e) for e in dashboard_queries()))
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"not exported by sabot.metrics: {sorted(queried - exported)}"
    # and it shows what an operator watches
    for name in ("sabot_collector_messages_total", "sabot_collector_records_total",
                 "sabot_collector_reconnects_total", "sabot_consumer_lag",
                 "sabot_sink_write_errors_total", "sabot_sink_undelivered_total",
                 "sabot_tick_to_signal_seconds_bucket", "sabot_checkpoint_age_seconds",
                 "sabot_changelog_records_written_total"):
        assert name in queried, name


def test_the_dashboard_checks_itself_against_a_name_not_exported(tmp_path):
    """The comparison can fail: a misspelt metric is not among the exported names."""
    assert "sabot_collector_message_total" not in exported_metric_names()
    assert promql_metric_names("rate(sabot_collector_message_total[1m])") == \
        {"sabot_collector_message_total"}


def compose_services(text: str) -> Dict[str, str]:
    """``{service: its block of lines}`` of a Compose file's ``services:`` (two-space indent)."""
    services, current, inside = {}, None, False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            inside, current = line.startswith("services:"), None
            continue
        m = re.fullmatch(r"  ([\w.-]+):\s*", line)
        if inside and m:
            current = m.group(1)
            services[current] = ""
        elif inside and current:
            services[current] += line + "\n"
    return services


def test_compose_runs_prometheus_and_grafana_on_loopback_only():
    text = (ROOT / "docker-compose.yml").read_text()
    services = compose_services(text)
    assert {"redpanda", "prometheus", "grafana"} <= set(services)
    for name, block in services.items():
        if re.search(r"^\s+network_mode:\s*host\b", block, re.M):
            # on the host network nothing is published: the service itself must listen on
            # loopback
            assert not compose_ports(f"x:\n{block}"), name
            listen = {"prometheus": r"--web\.listen-address=127\.0\.0\.1:\d+",
                      "grafana": r"GF_SERVER_HTTP_ADDR:\s*127\.0\.0\.1\b"}
            assert name in listen and re.search(listen[name], block), (name, block)
        else:
            assert all(p.startswith("127.0.0.1:") for p in compose_ports(f"x:\n{block}")), name
    prom = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    targets = re.findall(r'"([\d.]+):(\d+)"', prom)
    assert targets and all(host == "127.0.0.1" for host, _ in targets)
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in services["prometheus"]
    assert "./deploy/grafana/sabot.json:/var/lib/grafana/dashboards/sabot.json" in services["grafana"]
    provider = (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "sabot.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider
    datasource = (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" /
                  "prometheus.yml").read_text()
    uid = re.search(r"uid:\s*(\S+)", datasource).group(1)
    dash = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}
    assert "url: http://127.0.0.1:9090" in datasource
