"""The state directory, and the runtime file through which admin commands find a running bridge.

One directory holds what a bridge keeps between runs and what others need to find it: the spool
(``spool.db``, unless ``spool.path`` says otherwise), its ``.lock`` beside it, and one runtime
file per running bridge, ``run/<client id>.json``. The runtime file says where the bridge
actually listens and which spool it actually opened, so ``health``, ``backup`` and
``dead-letters`` reach it even when it was started with flags they were not given.

The default directory is absolute, so starting from another directory never opens a new, empty
spool: ``/var/lib/metriqo-bridge`` for root (and in the container image, which sets
``state_dir``), otherwise ``$XDG_STATE_HOME/metriqo-bridge`` (``~/.local/state/metriqo-bridge``).

Pure functions and small blocking file operations; the caller decides when to run them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

SYSTEM_STATE_DIR = Path("/var/lib/metriqo-bridge")
SPOOL_NAME = "spool.db"
# The default spool path before the state directory existed: relative to the working directory.
LEGACY_SPOOL = Path("spool/metriqo-bridge.db")
RUN_DIR = "run"


def default_state_dir(environ: Mapping[str, str], euid: int, home: Path) -> Path:
    """The state directory when ``state_dir`` is not set.

    Root gets the system directory; anyone else the XDG state directory. An explicitly set
    ``XDG_STATE_HOME`` wins even for root: it is how a user (or a test) asks for a private one.
    """
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is invalid, ignore it
        return Path(xdg) / "metriqo-bridge"
    if euid == 0:
        return SYSTEM_STATE_DIR
    return home / ".local" / "state" / "metriqo-bridge"


def legacy_spool(spool_path: Path, spool_set: bool, cwd: Path) -> Path | None:
    """The old default spool in ``cwd`` when it must be kept in use, else None.

    Only when ``spool.path`` was not set, the old ``./spool/metriqo-bridge.db`` exists and the
    new default does not: a bridge upgraded in place would otherwise start with an empty spool
    while the readings it had not delivered yet stay behind in the old one.
    """
    if spool_set or spool_path.exists():
        return None
    old = cwd / LEGACY_SPOOL
    return old if old.is_file() else None


def legacy_warning(old: Path, new: Path) -> str:
    """What the bridge says when it keeps using the old default spool."""
    return (
        f"using the spool at the old default location {old} (relative to the working "
        f"directory): the new default {new} does not exist yet. To keep using the old one from "
        f"anywhere, set spool.path: {old} (--spool-path {old}); to move to the new default, "
        f"stop the bridge and move {old} to {new}"
    )


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What a running bridge writes into its runtime file."""

    pid: int
    client_id: str
    spool_path: str
    mapping_file: str  # absolute: what `dead-letters requeue` maps with
    http_enabled: bool
    http_host: str
    http_port: int
    started_at: str  # ISO 8601, UTC
    version: str

    def to_json(self) -> bytes:
        """The file's content."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> RuntimeInfo | None:
        """Parsed, or None for a file that is not one (truncated, foreign, older)."""
        try:
            raw: Any = orjson.loads(data)
            return cls(
                pid=int(raw["pid"]),
                client_id=str(raw["client_id"]),
                spool_path=str(raw["spool_path"]),
                mapping_file=str(raw["mapping_file"]),
                http_enabled=bool(raw["http_enabled"]),
                http_host=str(raw["http_host"]),
                http_port=int(raw["http_port"]),
                started_at=str(raw["started_at"]),
                version=str(raw["version"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def runtime_path(state_dir: Path, client_id: str) -> Path:
    """The runtime file of the bridge with ``client_id``: one per bridge, so bridges that share
    a state directory (scale-out) do not overwrite each other's."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", client_id).lstrip(".") or "_"
    return state_dir / RUN_DIR / f"{safe}.json"


def write_runtime(path: Path, info: RuntimeInfo) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(info.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_runtime(path: Path, pid: int) -> None:
    """Remove the runtime file if it is still this process's (a successor may have replaced
    it with its own)."""
    with contextlib.suppress(OSError):
        info = RuntimeInfo.from_json(path.read_bytes())
        if info is None or info.pid == pid:
            path.unlink()


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just another user's
    return True


@dataclass(frozen=True, slots=True)
class Found:
    """The runtime files in a state directory: of running bridges, and stale ones (their
    process is gone: it was killed or crashed before it could remove its file)."""

    running: tuple[RuntimeInfo, ...]
    stale: tuple[Path, ...]


def read_runtimes(state_dir: Path, alive: Any = pid_alive) -> Found:
    """Every runtime file under ``state_dir``; ``alive(pid)`` tells running from stale."""
    running: list[RuntimeInfo] = []
    stale: list[Path] = []
    for path in sorted((state_dir / RUN_DIR).glob("*.json")):
        try:
            info = RuntimeInfo.from_json(path.read_bytes())
        except OSError:
            continue
        # Our own pid in a file is another namespace's bridge (a container's pid 1), not us.
        if info is None or info.pid == os.getpid() or not alive(info.pid):
            stale.append(path)
        else:
            running.append(info)
    return Found(tuple(running), tuple(stale))


def pick(found: Found, client_id: str | None) -> RuntimeInfo | str | None:
    """The running bridge to talk to: the one with ``client_id`` if given, else the only one.

    Returns None when there is none to pick (the caller uses the settings alone), or a message
    when several run and no client id says which.
    """
    if client_id is not None:
        chosen = [r for r in found.running if r.client_id == client_id]
        return chosen[0] if chosen else None
    if len(found.running) == 1:
        return found.running[0]
    if not found.running:
        return None
    ids = ", ".join(sorted(r.client_id for r in found.running))
    return (
        f"{len(found.running)} bridges run with this state directory ({ids}); say which one "
        "with --mqtt-client-id"
    )
