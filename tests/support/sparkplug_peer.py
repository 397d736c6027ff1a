"""The independent Sparkplug B implementation the tests compare with: Eclipse Tahu's JavaScript
payload codec (npm ``sparkplug-payload``), run with Node.js from ``tests/peers/sparkplug``
(its packages pinned by the lockfile; ``.ci/run`` installs them with ``npm ci``).

Locally, without node or the packages, a test that needs the peer is skipped with the command
that installs them; in CI (``CI=true``) it fails instead, as with :mod:`tests.support.tools`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from tests.support import REPO

PEER = REPO / "tests" / "peers" / "sparkplug"
INSTALL = "npm ci --prefix tests/peers/sparkplug --ignore-scripts"


def node_for(package: str = "sparkplug-payload") -> str:
    """The node binary, once ``package`` is installed in the peer; else skip (locally) or fail
    (in CI)."""
    node = shutil.which("node") or shutil.which("nodejs")
    problem = ""
    if node is None:
        problem = "node is not installed"
    elif not (PEER / "node_modules" / package).is_dir():
        problem = f"the Tahu Sparkplug packages are not installed (run: {INSTALL})"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem + "; .ci/run must install them")
        pytest.skip(problem)
    assert node is not None
    return node


def _run(request: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [node_for(), str(PEER / "codec.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def tahu_encode(payloads: list[dict[str, Any]]) -> list[bytes]:
    """Each payload (sparkplug-payload's object form, with ``long_`` / ``blob`` for 64-bit
    integers and bytes) encoded by Tahu."""
    encoded: list[str] = _run({"encode": payloads})["encoded"]
    return [base64.b64decode(b) for b in encoded]


def tahu_decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Each payload as Tahu decodes it (64-bit integers as ``{"$long": str, "unsigned": bool}``,
    bytes as ``{"$bytes": base64}``)."""
    decoded: list[dict[str, Any]] = _run(
        {"decode": [base64.b64encode(p).decode("ascii") for p in payloads]}
    )["decoded"]
    return decoded


def long_(value: int, *, unsigned: bool = True) -> dict[str, Any]:
    """A 64-bit integer for the peer (JSON numbers stop at 2**53)."""
    return {"$long": str(value), "unsigned": unsigned}


def blob(data: bytes) -> dict[str, Any]:
    """Bytes for the peer."""
    return {"$bytes": base64.b64encode(data).decode("ascii")}


def as_int(value: Any) -> int:
    """An integer Tahu decoded: a plain JSON number or a Long."""
    if isinstance(value, dict):
        return int(value["$long"])
    assert isinstance(value, int), value
    return value
