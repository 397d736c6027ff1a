"""deploy/Dockerfile's command run the way the container runs it, without a container runtime.

``test_image_real.py`` runs the built image with podman; this emulation needs neither podman nor a
built image, so it also checks the contract where there is none (and in every change before the
image is rebuilt). The image is emulated as far as this machine allows: the final stage's ENV,
USER, WORKDIR, ENTRYPOINT + CMD and HEALTHCHECK are read from the Dockerfile and run as they are,
as the image's UID/GID, with the root filesystem read-only except the spool volume (a private mount
namespace: ``unshare`` + ``setpriv``). What differs from the image: the interpreter and the bridge
are this checkout's venv (an editable install, not the wheel the builder stage makes), the image's
directories are remapped to temporary ones (the volume, /etc/metriqo-bridge, /opt/metriqo-bridge →
the venv), and the addresses compose gives (broker, API, token, metrics port) point at a local
mosquitto, the local API and a free port. The base image's own files (Debian,
/usr/local/bin/python) are not reproduced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import REPO, TOKEN
from tests.support.deploy import (
    DEPLOY,
    IMAGE_UID,
    SPOOL_VOLUME,
    Stage,
    final_stage,
    load_dockerfile,
)
from tests.support.harness import delivered_points, publish
from tests.support.http_get import http_get
from tests.support.tools import require_tool

GRACE_S = 30.0  # compose stop_grace_period and Kubernetes' default: SIGKILL after this


PROBE = """
import json, os, sys
writable = []
for d in sys.argv[1:]:
    probe = os.path.join(d, ".write-probe")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
        writable.append(d)
    except OSError:
        pass
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "bytecode": not sys.flags.dont_write_bytecode, "writable": writable}))
"""


@dataclass(slots=True)
class EmulatedImage:
    """The final stage laid out on this machine: its environment with the image's
    directories remapped, and a sandbox to run its commands in."""

    stage: Stage
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    remap: dict[str, Path] = field(default_factory=dict)

    @property
    def volume(self) -> Path:
        """Where the spool volume is."""
        return self.remap[SPOOL_VOLUME]

    def local(self, image_path: str) -> str:
        """An image path as it is on this machine."""
        for image_dir, here in self.remap.items():
            if image_path == image_dir or image_path.startswith(image_dir + "/"):
                return str(here) + image_path[len(image_dir) :]
        return image_path

    def argv(self, command: list[str]) -> list[str]:
        """``command`` in a private mount namespace where everything but the volume is
        read-only, started as the image's USER with no capabilities, in its WORKDIR."""
        q = shlex.quote
        lines = ["set -e"]
        read_only: list[Path] = []
        # The interpreter (and, on some machines, the checkout) may sit under a directory the
        # image's user cannot enter, such as /root (0700): cover that directory with an empty
        # tmpfs and bind back only what is needed, as an image holds only what it copied in.
        hidden: dict[Path, list[Path]] = {}
        for needed in (Path(sys.base_prefix), REPO):
            closed = _closed_ancestor(needed)
            if closed is not None:
                hidden.setdefault(closed, []).append(needed)
        for n, (closed, paths) in enumerate(hidden.items()):
            stashes = [self.root / "stash" / f"{n}-{i}" for i in range(len(paths))]
            for path, stash in zip(paths, stashes, strict=True):
                stash.mkdir(parents=True, exist_ok=True)
                lines.append(f"mount --bind {q(str(path))} {q(str(stash))}")
            lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {q(str(closed))}")
            for path, stash in zip(paths, stashes, strict=True):
                lines.append(f"mkdir -p {q(str(path))}")
                lines.append(f"mount --bind {q(str(stash))} {q(str(path))}")
            read_only += [closed, *paths, *stashes]
        # The volume becomes a mount of its own, so it stays writable below.
        lines.append(f"mount --bind {q(str(self.volume))} {q(str(self.volume))}")
        for target in [*_writable_mounts(), *read_only]:
            lines.append(f"mount -o remount,bind,ro {q(str(target))}")
        lines.append(f"cd {q(self.local(self.stage.last('WORKDIR')))}")
        uid, gid = self.stage.user
        lines.append(
            f"exec {q(_tool('setpriv'))} --reuid={uid} --regid={gid} --clear-groups "
            '--inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"'
        )
        # unshare without --fork execs in place: the PID returned is the image's process.
        unshare = _tool("unshare")
        sandbox = ["/bin/sh", "-c", "\n".join(lines), "image"]
        return [unshare, "--mount", "--propagation", "private", "--", *sandbox, *command]


def _tool(name: str) -> str:
    found = shutil.which(name)
    assert found, name
    return found


def _closed_ancestor(path: Path) -> Path | None:
    """The highest directory above or at ``path`` that other users cannot enter."""
    for candidate in [*reversed(path.parents), path]:
        if candidate != Path("/") and not candidate.stat().st_mode & 0o001:
            return candidate
    return None


def _writable_mounts() -> list[str]:
    """Writable mount points, except /proc, /sys and /dev (a container has its own)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if "rw" not in fields[5].split(","):
            continue
        if target in ("/proc", "/sys", "/dev") or target.startswith(("/proc/", "/sys/", "/dev/")):
            continue
        out.append(target)
    return out


@pytest.fixture
def image() -> Iterator[EmulatedImage]:
    """The final stage of deploy/Dockerfile laid out in a temporary directory."""
    for tool in ("unshare", "setpriv", "mount"):
        require_tool(tool, "the image is emulated in a private mount namespace (util-linux)")
    if os.geteuid() != 0:
        message = "emulating the image's user and read-only root needs root (mount namespaces)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    stage = final_stage(load_dockerfile())
    # Not pytest's tmp_path: its parents are 0700, closed to the image's user.
    root = Path(tempfile.mkdtemp(prefix="metriqo-image-"))
    try:
        root.chmod(0o755)
        volume = root / "volume"
        volume.mkdir()
        uid, gid = stage.user
        os.chown(volume, uid, gid)  # as "install -d -o 10001 -g 10001 -m 0750" does
        volume.chmod(0o750)
        etc = root / "etc-metriqo-bridge"
        etc.mkdir()
        emulated = EmulatedImage(
            stage,
            root,
            remap={
                SPOOL_VOLUME: volume,
                "/etc/metriqo-bridge": etc,
                "/opt/metriqo-bridge": Path(sys.prefix),
            },
        )
        for source_stage, sources, destination in stage.copies:
            if source_stage is None:  # COPY from the build context: root-owned, 0644
                shutil.copyfile(REPO / sources[0], emulated.local(destination))
        env = {k: ":".join(map(emulated.local, v.split(":"))) for k, v in stage.env.items()}
        home = re.search(r"--home-dir\s+(\S+)", " ".join(stage.args("RUN")))
        assert home, "the image's user has a home directory in the Dockerfile"
        env["HOME"] = home.group(1)  # Docker sets HOME from the user's passwd entry
        emulated.env = env
        yield emulated
    finally:
        shutil.rmtree(root)


def test_sandbox_lets_the_image_user_write_only_the_volume(image: EmulatedImage) -> None:
    """The emulation holds: the image's UID/GID, no groups, no bytecode writes, and of every
    place tried only the spool volume is writable."""
    tried = [
        str(image.volume),
        "/tmp",  # noqa: S108  # probed for writes, never used
        "/var/tmp",  # noqa: S108
        ".",
        str(REPO),
        sys.prefix,
        str(image.root),
        image.env["HOME"],
        "/etc",
    ]
    result = subprocess.run(
        image.argv(["python", "-c", PROBE, *tried]),
        env=image.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["uid"], report["gid"], report["groups"]) == (IMAGE_UID, IMAGE_UID, [])
    assert report["bytecode"] is False
    assert report["writable"] == [str(image.volume)]


async def _run_in_image(image: EmulatedImage, command: list[str], log: Path) -> int:
    """Run one command of the image (a health check) to completion; its exit status."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *image.argv(command), env=image.env, stdout=out, stderr=subprocess.STDOUT
        )
    async with asyncio.timeout(60):
        return await proc.wait()


@contextlib.asynccontextmanager
async def _started(
    image: EmulatedImage, command: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running command of the image; SIGKILLed if still running at the end."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *image.argv(command), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wait_ready(proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
    """Wait until the bridge's /readyz answers 200 (fail at once if it exits)."""

    def ready() -> bool:
        got = http_get(f"http://127.0.0.1:{port}/readyz")
        return got is not None and got[0] == 200

    async with asyncio.timeout(30):
        while not await asyncio.to_thread(ready):
            if proc.returncode is not None:
                pytest.fail(f"the bridge exited with {proc.returncode}: {_tail(log)}")
            await asyncio.sleep(0.1)


def _tail(log: Path) -> str:
    """The end of a log file, for a failure message."""
    return log.read_text(errors="replace")[-3000:]


def _compose_command(service: str) -> list[str]:
    """A service's command from deploy/docker-compose.yml."""
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    return [str(a) for a in data["services"][service]["command"]]


async def test_image_command_runs_delivers_and_stops_on_sigterm(
    image: EmulatedImage, broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """ENTRYPOINT + CMD with the image's environment, user and read-only root: it becomes
    ready, its HEALTHCHECK passes, readings from a publisher and from the compose stack's
    sensors command are delivered, SIGTERM ends it with 0 within the grace period, the check
    then fails, and only the spool volume was written."""
    http_port = (
        free_port()
    )  # 9470 may be taken on this machine; the image's own port is tested above
    env = {
        **image.env,
        "METRIQO_BRIDGE_MQTT__HOST": "127.0.0.1",
        "METRIQO_BRIDGE_MQTT__PORT": str(broker.port),
        "METRIQO_BRIDGE_API__BASE_URL": api.url,
        "METRIQO_BRIDGE_HTTP__PORT": str(http_port),
        "METRIQO_BRIDGE_TOKEN": TOKEN,  # as compose passes it: environment, not arguments
    }
    image.env = env  # the health check runs with the same environment, as in the container
    _, health = image.stage.healthcheck
    bridge_log, health_log = tmp_path / "bridge.log", tmp_path / "health.log"

    async with _started(image, image.stage.command, env, bridge_log) as bridge:
        await _wait_ready(bridge, http_port, bridge_log)
        assert await _run_in_image(image, health, health_log) == 0, health_log.read_text()

        start_ms = int(datetime.now(UTC).timestamp() * 1000) - 60_000
        messages = [
            (
                "plant/emulation/line9/env",
                b'{"temp": %d.5, "rh": 40, "power": {"kw": 3.25}, "ts": %d}' % (i, start_ms + i),
            )
            for i in range(20)
        ]
        await publish(broker.port, messages)
        expected = {
            ("emulation-line9-env", metric, start_ms + i, value)
            for i in range(20)
            for metric, value in (
                ("temperature_c", i + 0.5),
                ("humidity_pct", 40.0),
                ("power_kw", 3.25),
            )
        }

        sensors = image.stage.entrypoint + _compose_command("sensors")
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(broker.port))):
            sensors[sensors.index(flag) + 1] = value
        at = sensors.index("--mapping-file") + 1
        sensors[at] = image.local(sensors[at])
        sensors_log = tmp_path / "sensors.log"
        async with _started(image, sensors, env, sensors_log) as fleet, asyncio.timeout(60):
            while {p[0] for p in delivered_points(api.store.points())} <= {"emulation-line9-env"}:
                assert fleet.returncode is None, sensors_log.read_text(errors="replace")
                await asyncio.sleep(0.1)
            fleet.send_signal(signal.SIGTERM)
            assert await fleet.wait() == 0, sensors_log.read_text(errors="replace")

        async with asyncio.timeout(30):
            while not expected <= set(delivered_points(api.store.points())):
                await asyncio.sleep(0.1)

        bridge.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(GRACE_S):
                code = await bridge.wait()
        except TimeoutError:
            pytest.fail("the bridge was still running when the grace period ended (SIGKILL)")
        assert code == 0, bridge_log.read_text(errors="replace")

    assert await _run_in_image(image, health, health_log) != 0  # nothing answers any more

    output = bridge_log.read_text(errors="replace")
    assert TOKEN not in output
    assert TOKEN not in health_log.read_text(errors="replace")
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    for line in lines:  # LOG_FORMAT=json: every line is one JSON object
        assert isinstance(json.loads(line), dict), line
    written = list(image.volume.rglob("*"))
    assert image.volume / "spool.db" in written
    for path in written:
        assert path.stat().st_uid == IMAGE_UID, path


async def test_compose_api_service_serves_from_the_image(
    image: EmulatedImage, tmp_path: Path
) -> None:
    """The compose stack's ``api`` service (the image's ENTRYPOINT with its command, its
    environment, read-only, as the image's user) answers its own healthcheck and the token."""
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    service = data["services"]["api"]
    port = str(free_port())
    command = [a.replace("8080", port) for a in image.stage.entrypoint + service["command"]]
    check = [a.replace("8080", port) for a in service["healthcheck"]["test"]]
    assert check[0] == "CMD"
    env = {**image.env, "METRIQO_BRIDGE_TOKEN": TOKEN}
    image.env = env
    log = tmp_path / "api.log"

    def devices(token: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v2/devices", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as r:  # noqa: S310  # fixed http URL
                return int(r.status)
        except urllib.error.HTTPError as exc:
            with exc:  # its body is an open response (Python 3.14+ warns when it is collected)
                return exc.code

    async with _started(image, command, env, log) as api:
        async with asyncio.timeout(30):
            while await _run_in_image(image, check[1:], tmp_path / "check.log") != 0:
                if api.returncode is not None:
                    pytest.fail(f"the API exited with {api.returncode}: {_tail(log)}")
                await asyncio.sleep(0.2)
        assert await asyncio.to_thread(devices, TOKEN) == 200
        assert await asyncio.to_thread(devices, "not-the-token") == 401
        api.send_signal(signal.SIGTERM)
        async with asyncio.timeout(GRACE_S):
            await api.wait()
