"""Deployment files: the systemd units are sandboxed and end a crash loop in a failed unit; the
Docker Compose broker is reachable from this machine only."""
from __future__ import annotations

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
