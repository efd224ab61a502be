"""The ``lowbit`` command line tool (``lowbit --help``)."""

from __future__ import annotations

from lowbit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
