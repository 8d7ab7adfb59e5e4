"""What every sabot command shares: exit codes, the one-line argument parser, argparse types.

The exit codes, the same for ``sabot``, ``python -m sabot.broker`` and ``python -m sabot.demo``
(the ``sabot`` command's module docstring says what each means).  Kept apart from
:mod:`sabot.cli` so that the applications and the broker use them without importing the
command that imports them.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in how a command was called (or in its environment) that the user can fix.

    The message is one line that names the offending argument or resource and its value; the
    command prints it and exits with :data:`EXIT_USAGE`, without a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that never guesses and never buries the error.

    Abbreviated options are refused (``--por`` is not ``--port``: a later option with the same
    prefix would silently change its meaning), and a bad argument is reported in one line
    (``prog: error: ...``) with exit code 2, without the usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: let the OS pick a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 = a free one), got {port}")
    return port


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def report_usage_error(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: <message>`` on stderr; :data:`EXIT_USAGE`."""
    print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
    return EXIT_USAGE
