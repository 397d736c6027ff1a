"""What ``devices`` and ``verify`` share: the settings that find the bridge's spool and reach
the API, the spool opened beside a running bridge, an API client paced within each endpoint's
budget, and durations such as ``1h``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from bridge.api.client import ApiClient, Budgets
from bridge.cli.dead_letter_rows import parse_age
from bridge.cli.flags import add_settings_flags
from bridge.cli.locate import locate
from bridge.config.secrets import TokenSource
from bridge.errors import EX_UNAVAILABLE, ApiError
from bridge.settings import Settings
from bridge.spool.store import Spool

_T = TypeVar("_T")

# The settings flags of these commands: where the spool is, and the API.
SCOPE = ("state_dir", "mqtt.client_id", "spool.path", "api.base_url", "api.token_file")


def add_location(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "which bridge (its spool from the runtime file in the state directory; else "
        "spool.path) and the API"
    )
    add_settings_flags(group, SCOPE, print_config=False)


def duration_s(text: str) -> float:
    """``30s``, ``90m``, ``1h``, ``7d`` → seconds (an argparse type)."""
    try:
        return -parse_age(text, 0) / 1_000_000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_and_notes(args: argparse.Namespace) -> Settings:
    located = locate(args)
    for note in located.notes:
        print(f"metriqo-bridge: {note}", file=sys.stderr)
    return located.settings


def read_spool(settings: Settings, read: Callable[[Spool], _T]) -> _T:
    """``read`` on the spool opened shared (beside a running bridge), closed after.

    Raises:
        SpoolError: no spool at spool.path, or it cannot be read.
    """
    spool = Spool(settings.spool)
    spool.open_shared()
    try:
        return read(spool)
    finally:
        spool.close()


def api_client(settings: Settings) -> ApiClient:
    """A client within the contract's budgets, split across ``api.replicas`` bridges."""
    token = TokenSource(settings.credentials)
    return ApiClient(settings.sender, token, budgets=Budgets(replicas=settings.delivery.replicas))


def api_failed(exc: ApiError) -> int:
    print(f"metriqo-bridge: API: {exc}", file=sys.stderr)
    return EX_UNAVAILABLE
