"""The collector command line, kept under this name for existing imports and scripts.

The application lives in :mod:`sabot.apps.collect` (``sabot collect VENUE``)."""
from __future__ import annotations

from sabot.apps.collect import add_arguments, build_parser, command, main

__all__ = ["add_arguments", "build_parser", "command", "main"]
