"""``--version`` shows the installed version and the spool layout; CHANGELOG.md follows Keep a
Changelog and agrees with the version git gives this checkout (tests/support/changelog.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version

import pytest

from bridge import __version__
from bridge.cli.main import main
from bridge.spool.schema import SCHEMA_VERSION
from tests.support import REPO
from tests.support.changelog import changelog_problems, releases

CHANGELOG = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")


def test_version_flag_shows_the_installed_version_and_the_spool_layout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    installed = version("metriqo-bridge")
    assert __version__ == installed
    assert (
        capsys.readouterr().out == f"metriqo-bridge {installed} (spool layout {SCHEMA_VERSION})\n"
    )


def _git_version() -> str:
    """The version a build of this checkout would get (setuptools-scm, as pyproject.toml
    configures it)."""
    return subprocess.run(
        [sys.executable, "-m", "setuptools_scm"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()


def test_changelog_agrees_with_the_version_from_git() -> None:
    """[Unreleased] comes first; the newest release heading is this version when this is a
    release (a tag) and older than it otherwise; link references and subsections are there."""
    assert changelog_problems(CHANGELOG, _git_version()) == []


RELEASED = """# Changelog

## [Unreleased]

### Added

- Something new.

## [0.2.0] - 2027-01-10

### Fixed

- A fix.

## [0.1.0] - 2026-12-03

### Added

- The first release.

[Unreleased]: https://example.invalid/compare/v0.2.0...HEAD
[0.2.0]: https://example.invalid/compare/v0.1.0...v0.2.0
[0.1.0]: https://example.invalid/releases/tag/v0.1.0
"""


@pytest.mark.parametrize(
    "current", ["0.2.0", "0.2.1.dev3+g1234abc", "0.3.0.dev0+g1234abc.d20270111"]
)
def test_changelog_check_accepts_a_release_and_what_follows_it(current: str) -> None:
    assert [str(r.version) for r in releases(RELEASED)] == ["0.2.0", "0.1.0"]
    assert changelog_problems(RELEASED, current) == []


@pytest.mark.parametrize(
    ("current", "complaint"),
    [
        ("0.3.0", "the newest release in the changelog is 0.2.0"),  # tag without its section
        ("0.1.0", "the newest release in the changelog is 0.2.0"),
        ("0.2.0.dev5+g1234abc", "a development version before it"),  # section without its tag
        ("0.1.dev9+g1234abc", "a development version before it"),
    ],
)
def test_changelog_check_refuses_a_version_it_does_not_describe(
    current: str, complaint: str
) -> None:
    problems = changelog_problems(RELEASED, current)
    assert len(problems) == 1
    assert complaint in problems[0]


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda t: t.replace("## [Unreleased]\n", ""), "first section must be '## [Unreleased]'"),
        (lambda t: t.replace("## [0.1.0] - 2026-12-03", "## 0.1.0"), "not a release heading"),
        (lambda t: t.replace("### Fixed", "### Bugs"), "unknown subsection"),
        (
            lambda t: t.replace("## [Unreleased]\n", "## [Unreleased]\n\n- Merged here.\n"),
            "entry outside a ### subsection",
        ),
        (lambda t: t.replace("[0.1.0]: https", "[0.1]: https"), "no link reference '[0.1.0]"),
        (
            lambda t: t.replace("## [0.1.0] - 2026-12-03", "## [0.3.0] - 2026-12-03"),
            "not newest first",
        ),
    ],
)
def test_changelog_check_refuses_what_is_not_keep_a_changelog(
    edit: Callable[[str], str], complaint: str
) -> None:
    problems = changelog_problems(edit(RELEASED), "0.2.0")
    assert any(complaint in p for p in problems), problems
