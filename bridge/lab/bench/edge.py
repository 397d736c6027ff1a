"""``bench edge``: the bridge as an edge gateway runs it, pinned to one core and capped in memory.

The bridge runs under ``taskset -c 0`` and in a memory cgroup of its own (``--memory-mb``, 256
by default), found in this order:

- cgroup v2 with the memory controller: a child of this process's cgroup, ``memory.max``;
- cgroup v1: a child of this process's memory cgroup, ``memory.limit_in_bytes``;
- neither writable: ``prlimit --as`` (address space, which counts reserved thread stacks and
  malloc arenas, so ``MALLOC_ARENA_MAX=2`` goes with it); the report says which was used.

The bridge process writes itself into the cgroup and then ``exec``s the bridge, so its pid and
every thread it starts are inside from the first instruction. The cgroup is a child of the
bench's own, so it stays within whatever limits the machine already sets, and it is removed at
the end. The cgroup's own peak (``memory.max_usage_in_bytes`` / ``memory.peak``) is reported
beside the bridge's peak RSS: it also counts the page cache of the spool file.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_V2 = Path("/sys/fs/cgroup")
_V1 = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True, slots=True)
class Confinement:
    """How the bridge is confined: the command prefix, extra environment, and a description."""

    prefix: list[str]
    env: dict[str, str]
    how: str
    peak_file: Path | None  # the cgroup's peak memory, when there is one

    def peak_mb(self) -> float:
        """The cgroup's peak memory in MB (NaN without a cgroup)."""
        if self.peak_file is None or not self.peak_file.exists():
            return float("nan")
        return round(int(self.peak_file.read_text().split()[0]) / 2**20, 1)


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path for ``controller`` (v1), or the v2 path for ``""``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controllers.split(",") == [controller] or (controller and controller in controllers):
            return path
    return None


def _make(base: Path, limit_file: str, limit: int) -> Path | None:
    path = base / f"metriqo-edge-{os.getpid()}"
    try:
        path.mkdir()
    except OSError:
        return None
    try:
        (path / limit_file).write_text(str(limit))
    except OSError:
        path.rmdir()
        return None
    return path


def _cgroup(limit: int) -> tuple[Path, str, str] | None:
    """A new memory cgroup with ``limit`` bytes: (its directory, its peak file, how)."""
    v2 = _own_cgroup("")
    controllers = _V2 / "cgroup.controllers"
    if v2 is not None and controllers.exists() and "memory" in controllers.read_text().split():
        path = _make(_V2 / v2.lstrip("/"), "memory.max", limit)
        if path is not None:
            return path, "memory.peak", f"cgroup v2 memory.max={limit >> 20}M"
    v1 = _own_cgroup("memory")
    if v1 is not None and _V1.is_dir():
        path = _make(_V1 / v1.lstrip("/"), "memory.limit_in_bytes", limit)
        if path is not None:
            return (
                path,
                "memory.max_usage_in_bytes",
                f"cgroup v1 memory.limit_in_bytes={limit >> 20}M",
            )
    return None


@contextlib.contextmanager
def confined(cpu: str, memory_mb: int) -> Iterator[Confinement]:
    """The bridge's confinement for the length of the ``with``; the cgroup is removed after.

    Raises:
        RuntimeError: ``taskset`` is not installed.
    """
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("bench edge needs taskset (util-linux)")
    limit = memory_mb << 20
    made = _cgroup(limit)
    if made is None:
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise RuntimeError("no writable memory cgroup and no prlimit: cannot cap memory")
        yield Confinement(
            [prlimit, f"--as={limit}", taskset, "-c", cpu],
            {"MALLOC_ARENA_MAX": "2"},
            f"taskset -c {cpu}, prlimit --as={memory_mb}M (no writable memory cgroup)",
            None,
        )
        return
    path, peak, how = made
    procs = shlex.quote(str(path / "cgroup.procs"))
    # The shell puts itself into the cgroup, then becomes the bridge (same pid).
    prefix = ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", taskset, "-c", cpu]
    try:
        yield Confinement(prefix, {}, f"taskset -c {cpu}, {how}", path / peak)
    finally:
        with contextlib.suppress(OSError):
            path.rmdir()  # empty once the bridge has exited
