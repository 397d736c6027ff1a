"""External tools some tests need (hadolint, promtool, systemd-analyze, openssl, ...).

Locally a missing tool skips its test with a reason; in CI (``CI=true``) it fails instead,
because ``.ci/run`` installs every one of them and a silent skip there would hide a check
that never ran.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def require_tool(name: str, why: str) -> str:
    """Path of the executable ``name`` (also looked up beside the running Python, i.e. in the
    venv); skip, or fail under CI, when it is missing."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} is not installed ({why})"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; .ci/run must install it")
    pytest.skip(message)
