"""Shared fixtures: a real mosquitto per test on a free loopback port, and a real local API."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support import REPO, TOKEN

# No property test has a deadline: an example's time says how busy the shared machine is, not
# whether the property holds (a test that fails when the machine is busy is a bug). Loaded here,
# before the test modules, so every settings(...) they make inherits it.
settings.register_profile("bridge", deadline=None)
settings.load_profile("bridge")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:  # noqa: BLE001  # any failure means: no usable Docker daemon here
        return False
    return True


class ContainerBroker:
    """A testcontainers mosquitto, used only when no local binary exists but Docker answers.

    It cannot be stopped and restarted on the same port, so scenarios needing that skip.
    """

    restartable = False

    def __init__(self) -> None:
        from testcontainers.community.mqtt import MosquittoContainer

        self._container = MosquittoContainer(image="eclipse-mosquitto:2.0")
        self._container.start(configfile=str(REPO / "mosquitto" / "mosquitto.conf"))
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(1883))

    def close(self) -> None:
        self._container.stop()


@pytest.fixture(autouse=True)
def private_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test's bridges and commands get a state directory of their own (through
    XDG_STATE_HOME, which the bridge honours even for root): runtime files of one test, or of
    a bridge on this machine, never point another test's commands at the wrong bridge."""
    home = tmp_path_factory.mktemp("state-home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home / "metriqo-bridge"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A fresh mosquitto for one test (local binary; a container only if the binary is absent)."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        if not _docker_answers():
            pytest.fail(
                "mosquitto is not installed and no Docker daemon answers: "
                "apt-get install -y mosquitto mosquitto-clients"
            )
        container = ContainerBroker()
        try:
            yield container  # type: ignore[misc]
        finally:
            container.close()
        return
    with LocalBroker(workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture
async def api() -> AsyncIterator[LocalApi]:
    """A local Metriqo-compatible API without a rate limit."""
    async with LocalApi(token=TOKEN, rate_limit_per_minute=None) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail any test whose captured output (stdout, stderr, log records) contains the API
    token: the token must never be printed, logged or put in an error message."""
    report = yield
    # A teardown report repeats the setup and call sections; look only at its own.
    sections = [
        (name, content)
        for name, content in report.sections
        if report.when != "teardown" or "teardown" in name
    ]
    leaked = [name for name, content in sections if TOKEN in content]
    if leaked and report.passed:
        report.outcome = "failed"
        report.longrepr = f"the API token appeared in captured output: {', '.join(leaked)}"
    return report
