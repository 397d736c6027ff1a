"""The manual and the README: the strict docs build passes, the README stays a short landing
page whose links resolve, and every alert's runbook link lands on a heading of the alerts page."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
ALERTS_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_PAGE = REPO / "docs" / "operations" / "alerts.md"
RUNBOOK_PREFIX = "docs/operations/alerts.md#"
FIRST_COMMANDS = (
    "./deploy/setup.sh && .venv/bin/metriqo-bridge demo",
    ".venv/bin/python -m pytest",
)
MAX_README_LINES = 250

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slugify(text: str) -> str:
    """Markdown's toc slug, as mkdocs makes it: ASCII, punctuation dropped, spaces to '-'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    out: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    """The heading ids of a Markdown file, numbered like the toc extension numbers repeats."""
    seen: set[str] = set()
    for line in prose_lines(path):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug = slugify(match.group(2))
        n = 0
        while slug in seen:
            n += 1
            slug = f"{base}_{n}"
        seen.add(slug)
    return seen


def alert_runbooks() -> dict[str, str]:
    """Each alert of the shipped rule file and its runbook_url annotation."""
    rules = yaml.safe_load(ALERTS_RULES.read_text(encoding="utf-8"))
    return {
        rule["alert"]: rule.get("annotations", {}).get("runbook_url", "")
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_mkdocs_strict_build_succeeds(tmp_path: Path) -> None:
    """`mkdocs build --strict` passes and gives each alert's heading its lowercase name as id."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed: pip install mkdocs-material")
        pytest.skip("mkdocs is not installed (pip install mkdocs-material)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    html = (site / "operations" / "alerts" / "index.html").read_text(encoding="utf-8")
    for name in alert_runbooks():
        assert f'id="{name.lower()}"' in html, name


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    """README.md has at most 250 lines and its first code block is the two commands."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, len(lines)
    fence = next(i for i, line in enumerate(lines) if _FENCE.match(line))
    assert fence < 10, "the two commands must come first"
    for offset, command in enumerate(FIRST_COMMANDS, start=1):
        assert lines[fence + offset].startswith(command), lines[fence + offset]


def test_readme_links_resolve_to_files_and_headings() -> None:
    """Every relative README link names an existing file, and each #anchor a heading there."""
    links = [m.group(1) for line in prose_lines(README) for m in _LINK.finditer(line)]
    assert links, "the README links into docs/"
    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):
            continue  # https:, mailto: ...
        target, _, anchor = link.partition("#")
        path = README if not target else (REPO / target)
        assert "README" not in target, f"{link}: link the docs, not the README"
        assert path.exists(), f"{link}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{link}: no heading with that anchor"


def test_every_alert_links_to_its_runbook_heading() -> None:
    """Each alert's runbook_url is docs/operations/alerts.md#<name> and that heading exists."""
    runbooks = alert_runbooks()
    assert runbooks, "no alerts found"
    headings, ids = prose_lines(ALERTS_PAGE), anchors(ALERTS_PAGE)
    for name, url in runbooks.items():
        assert url == RUNBOOK_PREFIX + name.lower(), (name, url)
        assert f"## {name}" in headings, f"no '## {name}' heading"
        assert name.lower() in ids, name


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("MetriqoBridgeDown", "metriqobridgedown"),
        ("`delivery paused: …`", "delivery-paused"),
        ("A secure mosquitto: `mosquitto/acl`", "a-secure-mosquitto-mosquittoacl"),
        ("My points don't show up", "my-points-dont-show-up"),
    ],
)
def test_slugify_matches_the_ids_mkdocs_generates(heading: str, slug: str) -> None:
    """The test's slugify gives the ids the built site has for these headings."""
    assert slugify(heading) == slug
