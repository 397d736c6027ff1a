"""Command output piped into a reader that stops early (``| head``) ends quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridge.models import DeadLetter
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool
from tests.support import REPO


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """``metriqo-bridge dead-letters export | head -1`` on more output than a pipe buffers:
    no traceback, exit 0."""
    path = tmp_path / "spool.db"
    spool = Spool(SpoolSettings(path, reserve_bytes=0))
    spool.open()
    try:
        letter = DeadLetter("invalid_json", "cut off", "plant/a/env", b"{" * 500, "env", 1)
        spool.writer.commit([], [letter] * 2000)  # about 1.4 MB of JSON Lines
    finally:
        spool.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "dead-letters", "export", "--spool-path", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline().startswith(b'{"id":1,')
    proc.stdout.close()  # the reader is done, as head is after one line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 0, err
    assert "Traceback" not in err
    assert "Exception ignored" not in err
