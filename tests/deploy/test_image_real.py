"""The image deploy/Dockerfile builds, run for real with podman.

``deploy/image/build.sh`` builds it (on a base made from the Debian archive where no image
registry is reachable) and names it in ``build/image/image-name``; ``.ci/run`` passes that name
as METRIQO_IMAGE_UNDER_TEST. Without it these tests skip locally and fail under CI=true (a
container check that silently never ran would look like one that passed).

The container runs as Docker would run it from docs/deployment/container.md: ``--read-only``
(and, unlike podman's default, no tmpfs on /tmp, /var/tmp and /run, which Docker does not add
either), a fresh named volume for the spool, ``--network host`` so that it reaches this test's
mosquitto and local API on 127.0.0.1. ``test_image_run.py`` emulates the same contract
without a container runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import REPO, TOKEN
from tests.support.deploy import IMAGE_UID, SPOOL_VOLUME, final_stage, load_dockerfile
from tests.support.harness import delivered_points, publish
from tests.support.http_get import http_get
from tests.support.tools import require_tool

IMAGE_ENV = "METRIQO_IMAGE_UNDER_TEST"
GRACE_S = 30  # --stop-timeout in the docs, compose's stop_grace_period: SIGKILL after this

# Run as the image's user inside the container: which of these directories it can write to.
PROBE = """
import json, os, sys
writable = []
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, ".write-probe"), "w"):
            pass
        os.remove(os.path.join(d, ".write-probe"))
        writable.append(d)
    except OSError:
        pass
print(json.dumps(writable))
"""


@dataclass(frozen=True, slots=True)
class Podman:
    """podman with this repository's settings (deploy/image/containers.conf)."""

    executable: str
    image: str

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        conf = os.environ.get("CONTAINERS_CONF", str(REPO / "deploy/image/containers.conf"))
        result = subprocess.run(
            [self.executable, *args],
            env={**os.environ, "CONTAINERS_CONF": conf, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
        return result

    def inspect(self, what: str, fmt: str) -> str:
        """One field of ``podman inspect`` (a container or the image)."""
        return self("inspect", "--format", fmt, what).stdout.strip()


@pytest.fixture(scope="module")
def podman() -> Podman:
    """podman and the built image, or skip (fail under CI) with the reason."""
    image = os.environ.get(IMAGE_ENV, "")
    message = f"{IMAGE_ENV} names no image: build one with 'bash deploy/image/build.sh'"
    if not image:
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (.ci/run builds it and sets the variable)")
        pytest.skip(message)
    tool = Podman(require_tool("podman", "apt-get install podman runc"), image)
    present = tool("image", "exists", image, check=False)
    assert present.returncode == 0, f"{IMAGE_ENV}={image} is not in podman's image store"
    return tool


@pytest.fixture
def volume(podman: Podman) -> Iterator[str]:
    """A fresh named volume for the spool, removed afterwards."""
    name = f"metriqo-test-{uuid.uuid4().hex[:12]}"
    podman("volume", "create", name)
    try:
        yield name
    finally:
        podman("volume", "rm", "--force", name, check=False)


@contextlib.contextmanager
def _container(podman: Podman, run_args: list[str], env: dict[str, str]) -> Iterator[str]:
    """A detached container of the image; removed (by its id) at the end."""
    cid = podman("run", "--detach", *run_args, podman.image, env=env).stdout.strip()
    try:
        yield cid
    finally:
        podman("rm", "--force", "--volumes", "--time", "0", cid, check=False)


def _logs(podman: Podman, cid: str) -> str:
    result = podman("logs", cid, check=False)
    return result.stdout + result.stderr


async def _wait_ready(podman: Podman, cid: str, port: int) -> None:
    """Until /readyz answers 200; fail at once if the container stops."""

    def ready() -> bool:
        got = http_get(f"http://127.0.0.1:{port}/readyz")
        return got is not None and got[0] == 200

    async with asyncio.timeout(60):
        while not await asyncio.to_thread(ready):
            if podman.inspect(cid, "{{.State.Running}}") != "true":
                pytest.fail(f"the container stopped: {_logs(podman, cid)[-3000:]}")
            await asyncio.sleep(0.2)


def test_image_is_the_dockerfiles_contract(podman: Podman) -> None:
    """The built image carries the final stage's user, entry point, health check, stop signal
    and volume (HEALTHCHECK survives only in the docker image format), reports the version it
    was labelled with, and holds no pip, compiler or test suite."""
    stage = final_stage(load_dockerfile())
    config = json.loads(podman.inspect(podman.image, "{{json .Config}}"))
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] + config["Cmd"] == stage.command
    health = json.loads(podman.inspect(podman.image, "{{json .HealthCheck}}"))
    assert health["Test"] == ["CMD", *stage.healthcheck[1]]
    assert config["StopSignal"] == "SIGTERM"
    assert SPOOL_VOLUME in config["Volumes"]
    label = config["Labels"]["org.opencontainers.image.version"]
    shown = podman("run", "--rm", "--read-only", "--network", "none", podman.image, "--version")
    assert shown.stdout.startswith(f"metriqo-bridge {label} (spool layout ")

    absent = podman(
        "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python3",
        podman.image, "-c",
        "import importlib.util as u, shutil;"
        "print([m for m in ('pip', 'setuptools', 'pytest', 'tests') if u.find_spec(m)]"
        " + [t for t in ('gcc', 'cc', 'make', 'apt-get') if shutil.which(t)])",
    )  # fmt: skip
    assert absent.stdout.strip() == "[]"


async def test_container_runs_delivers_and_stops_on_sigterm(
    podman: Podman, volume: str, broker: LocalBroker, api: LocalApi
) -> None:
    """Ready, HEALTHCHECK healthy, readings delivered to the local API, PID 1 is the image's
    non-root user, only the volume is writable, SIGTERM ends it with 0 before the grace
    period's SIGKILL, the logs are JSON without the token, and nothing was written outside the
    volume."""
    http_port = free_port()  # 9470 may be taken on this machine
    env = {"METRIQO_BRIDGE_TOKEN": TOKEN}  # "-e NAME" below: from the environment, not argv
    run_args = [
        "--read-only", "--read-only-tmpfs=false", "--network", "host",
        "--stop-timeout", str(GRACE_S), "--volume", f"{volume}:{SPOOL_VOLUME}",
        "--env", "METRIQO_BRIDGE_TOKEN",
        "--env", "METRIQO_BRIDGE_MQTT__HOST=127.0.0.1",
        "--env", f"METRIQO_BRIDGE_MQTT__PORT={broker.port}",
        "--env", f"METRIQO_BRIDGE_API__BASE_URL={api.url}",
        "--env", f"METRIQO_BRIDGE_HTTP__PORT={http_port}",
    ]  # fmt: skip
    with _container(podman, run_args, env) as cid:
        await _wait_ready(podman, cid, http_port)
        health = podman("healthcheck", "run", cid, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        assert podman.inspect(cid, "{{.State.Health.Status}}") == "healthy"

        status = podman("exec", cid, "cat", "/proc/1/status").stdout
        ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
        assert ids["Uid"] == [str(IMAGE_UID)] * 4  # real, effective, saved, filesystem
        assert ids["Gid"] == [str(IMAGE_UID)] * 4
        tried = [SPOOL_VOLUME, "/", "/tmp", "/var/tmp", "/run", "/etc/metriqo-bridge",  # noqa: S108
                 "/opt/metriqo-bridge", "/nonexistent"]  # fmt: skip
        writable = podman("exec", cid, "python3", "-c", PROBE, *tried).stdout
        assert json.loads(writable) == [SPOOL_VOLUME]

        start_ms = int(datetime.now(UTC).timestamp() * 1000) - 60_000
        messages = [
            ("plant/container/line9/env", b'{"temp": %d.5, "rh": 40, "ts": %d}' % (i, start_ms + i))
            for i in range(20)
        ]
        await publish(broker.port, messages)
        expected = {
            ("container-line9-env", metric, start_ms + i, value)
            for i in range(20)
            for metric, value in (("temperature_c", i + 0.5), ("humidity_pct", 40.0))
        }
        async with asyncio.timeout(60):
            while not expected <= set(delivered_points(api.store.points())):
                await asyncio.sleep(0.2)

        # SIGTERM, then SIGKILL after the grace period: exit code 0 means it ended by itself.
        podman("stop", "--time", str(GRACE_S), cid)
        logs = _logs(podman, cid)
        assert podman.inspect(cid, "{{.State.ExitCode}}") == "0", logs[-3000:]
        # Nothing in the container's own layer: the volume is a mount, not a change.
        changed = podman("diff", cid).stdout.splitlines()
        assert changed == [], changed

    assert TOKEN not in logs
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines
    for line in lines:  # LOG_FORMAT=json: every line is one JSON object
        assert isinstance(json.loads(line), dict), line
    mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout
    owners = _owners(Path(mountpoint.strip()))
    assert "spool.db" in owners
    assert set(owners.values()) == {IMAGE_UID}


def _owners(directory: Path) -> dict[str, int]:
    """The owner of each SQLite file in ``directory`` (the spool; its -wal/-shm, if any)."""
    return {p.name: p.stat().st_uid for p in directory.iterdir() if p.name.startswith("spool.db")}
