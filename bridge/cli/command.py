"""The shapes every command module shares: ``add_parser(sub)`` registers the command and sets
``handler``, which ``main`` calls with the parsed arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol, TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace], int]


class Command(Protocol):
    """A command module."""

    def add_parser(self, sub: Subparsers) -> None:
        """Register the command's parser, with ``handler`` set to its entry point."""
