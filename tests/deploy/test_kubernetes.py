"""deploy/kubernetes: schema-valid manifests that run the bridge the way its reliability needs,
and an overlay that points them at a plant's registry, broker and token Secret.

Kubernetes kinds are validated with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas, in
strict mode: an unknown field fails) for the oldest and the newest Kubernetes version we
support. The ServiceMonitor is not in those schemas; it is validated with the
prometheus-operator models of ``cloudcoil-models-prometheus-operator``, which are generated from
the operator's CRD schemas (types, required fields, patterns such as the interval's); their
models ignore unknown fields, so the test also requires the validated object to serialise back
to exactly the manifest. The rest checks what the schemas cannot: probes, ports, mounts, labels
and environment fit together and fit the bridge, and that the example overlay changes exactly
what it says it changes.
"""

from __future__ import annotations

import copy
import importlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.settings import Settings
from tests.support import REPO
from tests.support.deploy import DEPLOY
from tests.support.tools import require_tool

K8S = DEPLOY / "kubernetes" / "base"
OVERLAY = DEPLOY / "kubernetes" / "overlays" / "example"
# The oldest Kubernetes these manifests need (StatefulSet PVC retention is GA in 1.32) and the
# newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.32.0", "1.37.0")
SELECTOR = {
    "app.kubernetes.io/name": "metriqo-bridge",
    "app.kubernetes.io/instance": "metriqo-bridge",
}
POD_NAME = "metriqo-bridge-0"

Doc = dict[str, Any]


def _kustomization() -> Doc:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _resources() -> list[Doc]:
    """Every object in the files kustomization.yaml lists, as written."""
    docs: list[Doc] = []
    for name in _kustomization()["resources"]:
        text = (K8S / name).read_text(encoding="utf-8")
        docs.extend(d for d in yaml.safe_load_all(text) if d is not None)
    return docs


def _one(kind: str, docs: list[Doc] | None = None) -> Doc:
    found = [d for d in (docs if docs is not None else _resources()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod() -> Doc:
    spec = _one("StatefulSet")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _container() -> Doc:
    containers = _pod()["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def _env() -> dict[str, Doc]:
    return {e["name"]: e for e in _container()["env"]}


def _mount(volume: str) -> Doc:
    mounts = [m for m in _container()["volumeMounts"] if m["name"] == volume]
    assert len(mounts) == 1, f"volume {volume} mounted {len(mounts)} times"
    mount = mounts[0]
    assert isinstance(mount, dict)
    return mount


def _volume(name: str) -> Doc:
    volumes = [v for v in _pod()["volumes"] if v["name"] == name]
    assert len(volumes) == 1, f"volume {name} defined {len(volumes)} times"
    volume = volumes[0]
    assert isinstance(volume, dict)
    return volume


def _settings_environ() -> dict[str, str]:
    """The environment the container gets, with the pod name filled in as the kubelet would."""
    out: dict[str, str] = {}
    for name, entry in _env().items():
        if "value" in entry:
            out[name] = entry["value"]
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, name
            out[name] = POD_NAME
    return out


def _selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _render(directory: Path) -> list[Doc]:
    """What ``kubectl apply -k DIRECTORY`` sends, rendered by kubectl's own kustomize."""
    kubectl = require_tool("kubectl", "renders deploy/kubernetes with kustomize")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    """The base, rendered."""
    return _render(K8S)


@pytest.fixture(scope="module")
def overlay_rendered() -> list[Doc]:
    """The example overlay, rendered."""
    return _render(OVERLAY)


# -- kustomization ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    """Each YAML file in deploy/kubernetes is a listed resource or the mapping file of the
    ConfigMap generator, and everything listed exists."""
    k = _kustomization()
    listed = set(k["resources"])
    generated = {f for g in k["configMapGenerator"] for f in g["files"]}
    present = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml")}
    assert present - {"kustomization.yaml"} == listed | generated
    assert {d["kind"] for d in _resources()} == {
        "StatefulSet",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
    }


def test_kustomize_renders_the_configmap_image_and_every_object(rendered: list[Doc]) -> None:
    """kubectl kustomize produces one object of each kind, the mapping ConfigMap under the
    unhashed name the StatefulSet mounts, holding the repository's mapping file byte for byte."""
    assert sorted(d["kind"] for d in rendered) == sorted(
        ["ConfigMap", "PodDisruptionBudget", "Service", "ServiceMonitor", "StatefulSet"]
    )
    cm = _one("ConfigMap", rendered)
    assert cm["metadata"]["name"] == _volume("mappings")["configMap"]["name"]
    assert _selected(SELECTOR, cm["metadata"]["labels"])
    assert cm["data"] == {"topic-mappings.yaml": (REPO / "topic-mappings.yaml").read_text("utf-8")}
    [entry] = _kustomization()["images"]
    assert entry["name"] == _container()["image"]
    sts = _one("StatefulSet", rendered)
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{entry['name']}:{entry['newTag']}"
    )


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_are_valid_kubernetes_objects_in_strict_mode(version: str) -> None:
    """Every listed manifest but the ServiceMonitor validates against the Kubernetes OpenAPI
    schema of that version, with unknown fields refused."""
    for doc in _resources():
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_are_valid_kubernetes_objects(version: str, rendered: list[Doc]) -> None:
    """The kustomize output, including the generated ConfigMap, validates strictly too."""
    for doc in rendered:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validation above can fail: a misspelt container field is refused."""
    sts = copy.deepcopy(_one("StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)


def _service_monitor_model() -> Any:
    # Imported by name: mypy would otherwise type-check the 2 MB generated module on every run.
    module = importlib.import_module("cloudcoil.models.prometheus_operator.v1")
    return module.ServiceMonitor


def _validated_service_monitor(doc: Doc) -> Doc:
    model = _service_monitor_model().model_validate(doc)
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert isinstance(dumped, dict)
    return dumped


def test_servicemonitor_matches_the_prometheus_operator_crd_schema() -> None:
    """The ServiceMonitor validates against the operator's monitoring.coreos.com/v1 schema and
    has no field the schema does not know (it serialises back unchanged)."""
    doc = _one("ServiceMonitor")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert _validated_service_monitor(doc) == doc


def test_servicemonitor_schema_check_can_fail() -> None:
    """A misspelt endpoint key is caught by the round trip, a bad interval by the schema."""
    typo = copy.deepcopy(_one("ServiceMonitor"))
    typo["spec"]["endpoints"][0]["intervall"] = typo["spec"]["endpoints"][0].pop("interval")
    assert _validated_service_monitor(typo) != typo
    bad = copy.deepcopy(_one("ServiceMonitor"))
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError, match="interval"):  # pydantic's ValidationError
        _validated_service_monitor(bad)


# -- how the pieces fit -------------------------------------------------------------------------


def test_labels_and_selectors_agree() -> None:
    """The StatefulSet, its headless Service, the ServiceMonitor and the PDB all select the
    bridge's pods (and the ServiceMonitor the Service) by the same labels."""
    sts = _one("StatefulSet")
    svc = _one("Service")
    mon = _one("ServiceMonitor")
    pdb = _one("PodDisruptionBudget")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert _selected(SELECTOR, pod_labels)
    assert svc["spec"]["selector"] == SELECTOR
    assert pdb["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert mon["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert _selected(SELECTOR, svc["metadata"]["labels"])
    for doc in (sts, svc, mon, pdb):
        assert _selected(SELECTOR, doc["metadata"]["labels"]), doc["kind"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"  # headless: the StatefulSet's governing Service


def test_probes_and_scrapes_use_the_one_named_port() -> None:
    """Startup and liveness probe /healthz, readiness /readyz, all on the container port named
    metrics (9470), which the Service exposes and the ServiceMonitor scrapes every 15 s."""
    c = _container()
    assert c["ports"] == [{"name": "metrics", "containerPort": 9470, "protocol": "TCP"}]
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert _one("Service")["spec"]["ports"] == [
        {"name": "metrics", "port": 9470, "targetPort": "metrics", "protocol": "TCP"}
    ]
    endpoints = _one("ServiceMonitor")["spec"]["endpoints"]
    assert [(e["port"], e["path"], e["interval"]) for e in endpoints] == [
        ("metrics", "/metrics", "15s")
    ]
    assert Settings().http.port == 9470  # the bridge's own default port


def test_security_context_locks_the_pod_down() -> None:
    """Non-root as the image's 10001:10001, read-only root, no privilege escalation, no
    capabilities, the runtime's seccomp profile, no service account token."""
    pod = _pod()
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = _container()["securityContext"]
    assert csc["runAsNonRoot"] is True
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # A writable /tmp for SQLite's temporary files; a path in the container, not on this machine.
    assert _mount("tmp")["mountPath"] == "/tmp"  # noqa: S108
    assert "emptyDir" in _volume("tmp")


def test_client_id_is_the_pod_name() -> None:
    """Each pod connects as its own stable name: the broker keeps one session per pod."""
    assert _env()["METRIQO_BRIDGE_MQTT__CLIENT_ID"] == {
        "name": "METRIQO_BRIDGE_MQTT__CLIENT_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


def test_replicas_split_the_fleet_and_the_budget() -> None:
    """Scaling is safe: every pod is in one share group (each message to one pod), and the
    API budget is split over as many bridges as the StatefulSet runs."""
    env = _env()
    assert env["METRIQO_BRIDGE_MQTT__SHARE_GROUP"]["value"] == "metriqo-bridge"
    replicas = _one("StatefulSet")["spec"]["replicas"]
    assert env["METRIQO_BRIDGE_API__REPLICAS"]["value"] == str(replicas)
    assert env["METRIQO_BRIDGE_API__BUDGET_SPLIT"]["value"] in ("static", "adaptive")


def test_spool_lives_on_the_per_pod_volume_claim() -> None:
    """The spool file is on the volumeClaimTemplate's volume, kept when pods go or scale down."""
    sts = _one("StatefulSet")["spec"]
    [claim] = sts["volumeClaimTemplates"]
    mount = _mount(claim["metadata"]["name"])
    assert mount["mountPath"] == "/var/lib/metriqo-bridge"
    assert mount.get("readOnly") is not True
    spool = Path(_env()["METRIQO_BRIDGE_SPOOL__PATH"]["value"])
    assert spool == Path(mount["mountPath"]) / "spool.db"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert sts["podManagementPolicy"] == "Parallel"


def test_mapping_configmap_is_mounted_as_a_directory() -> None:
    """The ConfigMap is a directory mount (a subPath mount never sees updates), and the
    mapping path points at its key inside it."""
    mount = _mount("mappings")
    assert "subPath" not in mount
    assert "subPathExpr" not in mount
    assert mount["mountPath"] == "/etc/metriqo-bridge/mappings"
    assert mount["readOnly"] is True
    [generator] = _kustomization()["configMapGenerator"]
    assert _volume("mappings")["configMap"] == {"name": generator["name"]}
    assert generator["options"]["disableNameSuffixHash"] is True  # updated in place, reloaded
    [key] = generator["files"]
    path = Path(_env()["METRIQO_BRIDGE_MAPPING__FILE"]["value"])
    assert path == Path(mount["mountPath"]) / key


def test_token_secret_is_mounted_as_a_directory_readable_by_the_bridge_group() -> None:
    """The Secret is a directory mount (so a rotated token arrives) with mode 0440, which with
    fsGroup = runAsGroup gives the bridge's own group, and only it, read access."""
    mount = _mount("token")
    assert "subPath" not in mount
    assert "subPathExpr" not in mount
    assert mount["readOnly"] is True
    secret = _volume("token")["secret"]
    assert secret == {"secretName": "metriqo-bridge-token", "defaultMode": 0o440}
    psc = _pod()["securityContext"]
    assert psc["fsGroup"] == psc["runAsGroup"]
    path = Path(_env()["METRIQO_BRIDGE_TOKEN_FILE"]["value"])
    assert path == Path(mount["mountPath"]) / "token"


def test_shipped_mapping_is_the_repository_mapping_and_passes_check() -> None:
    """deploy/kubernetes/topic-mappings.yaml equals the repository's topic-mappings.yaml and
    ``metriqo-bridge check`` accepts it."""
    shipped = K8S / "topic-mappings.yaml"
    assert shipped.read_bytes() == (REPO / "topic-mappings.yaml").read_bytes()
    cli = require_tool("metriqo-bridge", "the project's own console script")
    out = subprocess.run(
        [cli, "check", str(shipped)], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{shipped}: OK" in out.stdout


def test_images_are_named_once_and_pinned(rendered: list[Doc], overlay_rendered: list[Doc]) -> None:
    """statefulset.yaml names the image without a version; kustomization.yaml's ``images:`` is
    the one place that gives it one. Rendered, base and overlay run a tagged image, never
    ``latest``."""
    pod = _pod()
    images = [c["image"] for c in pod["containers"] + pod.get("initContainers", [])]
    assert all(":" not in image and "@" not in image for image in images), images
    assert {e["name"] for e in _kustomization()["images"]} == set(images)
    for docs in (rendered, overlay_rendered):
        spec = _one("StatefulSet", docs)["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            name, _, tag = container["image"].rpartition(":")
            assert name, f"{container['image']} has no tag"
            assert "/" not in tag, f"{container['image']} has no tag"
            assert tag != "latest", container["image"]


def test_environment_is_valid_bridge_settings(tmp_path: Path) -> None:
    """The bridge's settings loader accepts the StatefulSet's environment and reads the values
    the manifest means."""
    environ = _settings_environ()
    assert environ["LOG_FORMAT"] == "json"
    # The loader also checks that the spool can be created, on this machine, which has no
    # /var/lib/metriqo-bridge volume; test_spool_lives_on_the_per_pod_volume_claim checks the
    # manifest's value.
    environ["METRIQO_BRIDGE_SPOOL__PATH"] = str(tmp_path / "spool.db")
    s = load_settings(environ=environ)
    assert s.mqtt.client_id == POD_NAME
    assert s.log_format == "json"
    assert s.mqtt.host == environ["METRIQO_BRIDGE_MQTT__HOST"]
    assert s.http.host == "0.0.0.0"
    assert s.http.port == 9470
    assert s.mapping.file == Path("/etc/metriqo-bridge/mappings/topic-mappings.yaml")
    assert s.credentials.api_token_file == Path("/etc/metriqo-bridge/secret/token")
    assert s.sender.base_url.startswith("https://")


def test_service_links_are_off_because_they_would_be_read_as_settings() -> None:
    """Kubernetes' per-Service variables (METRIQO_BRIDGE_<X>_SERVICE_HOST for a Service named
    metriqo-bridge-<x>) would stop the bridge at start; the pod turns them off."""
    assert _pod()["enableServiceLinks"] is False
    environ = _settings_environ() | {"METRIQO_BRIDGE_METRICS_SERVICE_HOST": "10.96.0.12"}
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(environ=environ)


def test_shutdown_resources_and_disruption_budget() -> None:
    """The grace period outlasts the bridge's stop timeout; memory is requested and capped;
    a drain takes at most one bridge at a time."""
    pod = _pod()
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["terminationGracePeriodSeconds"] > Settings().stop_timeout_s
    resources = _container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert resources["limits"]["memory"] == "256Mi"
    assert _container()["args"] == ["run"]
    assert _one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# -- the example overlay: "my registry, my broker, my token Secret" -----------------------------


@dataclass(frozen=True)
class OverlayEdits:
    """What an overlay's kustomization.yaml sets, read from the file itself."""

    namespace: str
    image: str
    container: str
    env: dict[str, str]
    volume: str
    token_secret: str


def _overlay_edits(directory: Path = OVERLAY) -> OverlayEdits:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    [image] = k["images"]
    [patch] = k["patches"]
    assert patch["target"] == {
        "kind": "StatefulSet",
        "name": _one("StatefulSet")["metadata"]["name"],
    }
    pod = yaml.safe_load(patch["patch"])["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [volume] = pod["volumes"]
    return OverlayEdits(
        namespace=k["namespace"],
        image=f"{image['newName']}:{image['newTag']}",
        container=container["name"],
        env={e["name"]: e["value"] for e in container["env"]},
        volume=volume["name"],
        token_secret=volume["secret"]["secretName"],
    )


def _by_name(items: list[Doc]) -> list[Doc]:
    return sorted(items, key=lambda item: str(item["name"]))


def _normalised(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """Objects by kind and name, with the lists a strategic merge reorders sorted by name."""
    out: dict[tuple[str, str], Doc] = {}
    for doc in copy.deepcopy(docs):
        if doc["kind"] == "StatefulSet":
            pod = doc["spec"]["template"]["spec"]
            pod["volumes"] = _by_name(pod["volumes"])
            pod["containers"] = _by_name(pod["containers"])
            for container in pod["containers"]:
                container["env"] = _by_name(container.get("env", []))
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _expected_overlay(base: list[Doc], edits: OverlayEdits) -> dict[tuple[str, str], Doc]:
    """The base with exactly the overlay's edits applied by hand."""
    expected = _normalised(base)
    for doc in expected.values():
        doc["metadata"]["namespace"] = edits.namespace
        if doc["kind"] != "StatefulSet":
            continue
        pod = doc["spec"]["template"]["spec"]
        [container] = [c for c in pod["containers"] if c["name"] == edits.container]
        container["image"] = edits.image
        for entry in container["env"]:
            entry["value"] = edits.env.get(entry["name"], entry.get("value"))
            if entry["value"] is None:
                del entry["value"]  # a valueFrom entry
        [volume] = [v for v in pod["volumes"] if v["name"] == edits.volume]
        volume["secret"]["secretName"] = edits.token_secret
    return expected


def _unexpected_changes(base: list[Doc], overlay: list[Doc], edits: OverlayEdits) -> list[str]:
    expected = _expected_overlay(base, edits)
    actual = _normalised(overlay)
    problems = [f"{key}: missing" for key in expected.keys() - actual.keys()]
    problems += [f"{key}: added" for key in actual.keys() - expected.keys()]
    problems += [
        f"{key}: differs" for key in expected.keys() & actual.keys() if expected[key] != actual[key]
    ]
    return sorted(problems)


def test_overlay_is_one_file_on_the_base() -> None:
    """The example overlay is a single kustomization.yaml over ../../base, and what it patches
    exists in the base: the image name, the container, each env var and the token volume."""
    assert sorted(p.name for p in OVERLAY.iterdir()) == ["kustomization.yaml"]
    k = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text(encoding="utf-8"))
    assert k["resources"] == ["../../base"]
    assert (OVERLAY / k["resources"][0]).resolve() == K8S.resolve()
    assert [e["name"] for e in k["images"]] == [_container()["image"]]
    edits = _overlay_edits()
    assert edits.container == _container()["name"]
    assert set(edits.env) <= set(_env())
    assert "secret" in _volume(edits.volume)
    assert edits.token_secret != _volume(edits.volume)["secret"]["secretName"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_renders_valid_kubernetes_objects(
    version: str, overlay_rendered: list[Doc]
) -> None:
    """The overlay's output validates strictly, like the base's."""
    for doc in overlay_rendered:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, version, strict=True)


def test_overlay_edits_land_everywhere(overlay_rendered: list[Doc], tmp_path: Path) -> None:
    """Rendered, every object is in the overlay's namespace, the StatefulSet runs the overlay's
    image, connects to its broker and mounts its token Secret (still 0440), and the pod's
    environment is valid bridge settings with that broker."""
    edits = _overlay_edits()
    assert {d["metadata"].get("namespace") for d in overlay_rendered} == {edits.namespace}
    pod = _one("StatefulSet", overlay_rendered)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == edits.image
    env = {e["name"]: e for e in container["env"]}
    for name, value in edits.env.items():
        assert env[name] == {"name": name, "value": value}
    [token] = [v for v in pod["volumes"] if v["name"] == edits.volume]
    assert token["secret"] == {"secretName": edits.token_secret, "defaultMode": 0o440}
    environ = {name: e.get("value", POD_NAME) for name, e in env.items()}
    environ["METRIQO_BRIDGE_SPOOL__PATH"] = str(tmp_path / "spool.db")
    settings = load_settings(environ=environ)
    assert settings.mqtt.host == edits.env["METRIQO_BRIDGE_MQTT__HOST"]


def test_overlay_changes_nothing_else(rendered: list[Doc], overlay_rendered: list[Doc]) -> None:
    """The overlay's output is the base's with exactly those edits: no object, env var, volume
    or field more or less."""
    assert _unexpected_changes(rendered, overlay_rendered, _overlay_edits()) == []


@pytest.mark.parametrize(
    ("original", "misspelt"),
    [("- name: bridge\n", "- name: bridg\n"), ("- name: token\n", "- name: tokn\n")],
    ids=["misspelt-container", "misspelt-volume"],
)
def test_a_patch_that_misses_its_target_is_caught(
    original: str, misspelt: str, rendered: list[Doc], tmp_path: Path
) -> None:
    """The comparison above can fail: in a copy of the overlay whose patch names a container or
    volume the base does not have, kustomize adds one instead of changing the base's."""
    copy_root = tmp_path / "kubernetes"
    shutil.copytree(K8S.parent, copy_root)
    kustomization = copy_root / OVERLAY.relative_to(K8S.parent) / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    assert text.count(original) == 1
    kustomization.write_text(text.replace(original, misspelt), encoding="utf-8")
    broken = _render(kustomization.parent)
    assert _unexpected_changes(rendered, broken, _overlay_edits()) != []
