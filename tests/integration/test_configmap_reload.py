"""ConfigMap and Secret updates reach a running bridge through the kubelet's volume layout.

The kubelet never rewrites a mounted ConfigMap or Secret file: it writes a new timestamped
directory, points the ``..data`` symlink at it with one rename, and the visible file is a
symlink through ``..data``. `KubeletVolume` reproduces that layout and update sequence
(``pkg/volume/util/atomic_writer.go``), and a real bridge built the way ``metriqo-bridge run``
builds it (mapping and token read from those paths) runs against a real mosquitto and the
local API, as it does with deploy/kubernetes's mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from bridge.app import Bridge
from bridge.config.secrets import TokenSource
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.loader import load_mappings
from bridge.settings import Settings
from tests.support import TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    Publisher,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_bridge,
)

ENV_ONLY = TEST_MAPPINGS[: TEST_MAPPINGS.index("  - name: plain")]
BROKEN = TEST_MAPPINGS.replace("metrics:", "metircs:")
OLD_TOKEN = "mqk_old_k8s-s3cret-t0ken"
NEW_TOKEN = "mqk_new_k8s-r0tat3d-t0ken"
RELOADS = "metriqo_bridge_config_reloads_total"


class KubeletVolume:
    """A ConfigMap or Secret volume directory, written the way the kubelet writes it.

    Layout after a write::

        root/..2026_11_26_08_32_00.1234567/topic-mappings.yaml   the payload
        root/..data -> ..2026_11_26_08_32_00.1234567            swapped on each update
        root/topic-mappings.yaml -> ..data/topic-mappings.yaml   what the pod opens
    """

    def __init__(self, root: Path, mode: int) -> None:
        self.root = root
        self.mode = mode  # the volume's defaultMode
        root.mkdir(mode=0o755)

    def path(self, key: str) -> Path:
        """The path a container is given for ``key``."""
        return self.root / key

    def write(self, payload: dict[str, str]) -> None:
        """Publish a new version of every key at once, as a ConfigMap or Secret update does."""
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        new = Path(tempfile.mkdtemp(prefix=stamp, dir=self.root))
        new.chmod(0o755)
        for key, text in payload.items():
            (new / key).write_text(text, encoding="utf-8")
            # The group is the pod's fsGroup; here the process's own group, as in the pod.
            os.chown(new / key, -1, os.getgid())
            (new / key).chmod(self.mode)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        tmp.rename(data)  # the one atomic step: readers see the old set or the new one
        for key in payload:
            visible = self.root / key
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / key)
        if old is not None:
            shutil.rmtree(self.root / old)


@contextlib.asynccontextmanager
async def _deployed_bridge(settings: Settings) -> AsyncIterator[Bridge]:
    """A bridge as ``metriqo-bridge run`` builds it: rules from ``mapping.file`` (watched for
    changes), the token from ``api.token_file`` (re-read when it changes)."""
    bridge = Bridge(
        settings,
        load_mappings(settings.mapping.file),
        TokenSource(settings.credentials),
        mappings_path=settings.mapping.file,
    )
    async with run_bridge(bridge) as running:
        yield running


async def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def _publish_retained(port: int, topic: str, payload: bytes) -> None:
    pub = Publisher(port, client_id="retained-publisher")
    try:
        info = pub.client.publish(topic, payload, qos=1, retain=True)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        pub.close()


def _readings(api: LocalApi) -> list[tuple[str, str, float]]:
    return sorted((p.device_id, p.metric, p.value) for p in api.store.points())


async def test_configmap_update_is_applied_and_a_broken_one_keeps_the_running_rules(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ConfigMap swap adds a rule to the running bridge (its topic is subscribed and mapped);
    a swap to a broken mapping is refused and counted while the rules in force keep mapping;
    the next valid swap is applied again."""
    caplog.set_level(logging.INFO)
    volume = KubeletVolume(tmp_path / "mappings", mode=0o644)
    volume.write({"topic-mappings.yaml": ENV_ONLY})
    mapping = volume.path("topic-mappings.yaml")
    settings = make_settings(
        broker.port,
        api.url,
        tmp_path / "spool.db",
        **{"mapping.file": str(mapping), "mapping.reload_interval_s": "0.2"},
    )
    async with _deployed_bridge(settings) as bridge:
        assert bridge.source is not None
        assert "tele/+/+" not in bridge.mapper.subscriptions
        # A reading only the new mapping maps, retained at the broker: the broker hands it to
        # the bridge the moment the reload subscribes its topic, so no publish can race the
        # new subscription.
        await asyncio.to_thread(_publish_retained, broker.port, "tele/m7/volts", b"230.5")

        volume.write({"topic-mappings.yaml": TEST_MAPPINGS})
        # The layout the bridge sees: one timestamped directory (the previous one is gone).
        names = {p.name for p in volume.root.iterdir()}
        [stamped] = [name for name in names if name.startswith("..20")]
        assert names == {stamped, "..data", "topic-mappings.yaml"}
        assert os.readlink(volume.root / "..data") == stamped
        assert os.readlink(mapping) == "..data/topic-mappings.yaml"

        await api.store.wait_for_points(1, 20)
        assert _readings(api) == [("m7", "volts", 230.5)]
        assert metric(bridge, RELOADS, result="success") == 1
        assert metric(bridge, RELOADS, result="failure") == 0
        assert "tele/+/+" in bridge.mapper.subscriptions

        volume.write({"topic-mappings.yaml": BROKEN})
        await _wait_for(
            lambda: metric(bridge, RELOADS, result="failure") == 1, "the refused reload"
        )
        assert metric(bridge, "metriqo_bridge_config_last_reload_successful") == 0
        assert metric(bridge, RELOADS, result="success") == 1
        start_ms = int(time.time() * 1000) - 10
        await publish(broker.port, [("tele/m7/volts", b"231.5"), *env_messages(2, start_ms)])
        await api.store.wait_for_points(1 + 1 + 2 * 4, 20)  # both rules still map
        assert ("m7", "volts", 231.5) in _readings(api)
        assert expected_env_points(2, start_ms) <= set(delivered_points(api.store.points()))

        volume.write({"topic-mappings.yaml": ENV_ONLY})
        await _wait_for(lambda: metric(bridge, RELOADS, result="success") == 2, "the next reload")
        assert metric(bridge, "metriqo_bridge_config_last_reload_successful") == 1
        assert "tele/+/+" not in bridge.mapper.subscriptions
    assert f"reload of {mapping} failed; still running the previous mapping" in caplog.text
    assert "rules[0].metircs: unknown key" in caplog.text


async def test_secret_update_rotates_the_token_without_a_restart(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the token Secret mounted as in deploy/kubernetes (mode 0440, the pod's own group),
    a refused token pauses delivery; the Secret update with the new token resumes it, every
    point arrives, and neither token shows in the logs."""
    caplog.set_level(logging.DEBUG)
    mappings = KubeletVolume(tmp_path / "mappings", mode=0o644)
    mappings.write({"topic-mappings.yaml": TEST_MAPPINGS})
    secret = KubeletVolume(tmp_path / "secret", mode=0o440)
    secret.write({"token": OLD_TOKEN + "\n"})
    n = 20
    start_ms = int(time.time() * 1000) - n
    faults = Faults(unauthorized_until_token=NEW_TOKEN)
    async with LocalApi(TOKEN, rate_limit_per_minute=None, faults=faults) as api:
        settings = make_settings(
            broker.port,
            api.url,
            tmp_path / "spool.db",
            **{
                "mapping.file": str(mappings.path("topic-mappings.yaml")),
                "api.token_file": str(secret.path("token")),
            },
        )
        async with _deployed_bridge(settings) as bridge:
            await publish(broker.port, env_messages(n, start_ms))
            await _wait_for(
                lambda: metric(bridge, "metriqo_bridge_delivery_paused") == 1,
                "delivery paused by the refused token",
            )
            assert api.store.point_count() == 0

            secret.write({"token": NEW_TOKEN + "\n"})
            await api.store.wait_for_points(4 * n, 20)
            assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)
            await _wait_for(
                lambda: metric(bridge, "metriqo_bridge_delivery_paused") == 0, "delivery resumed"
            )
            assert bridge.spool.dead_letters.count() == 0
        requests = api.store.requests
    used = {r.authorization for r in requests}
    assert used == {f"Bearer {OLD_TOKEN}", f"Bearer {NEW_TOKEN}"}
    assert "401" in caplog.text  # the pause was logged, so the logs were captured
    for token in (OLD_TOKEN, NEW_TOKEN):
        assert token not in caplog.text
