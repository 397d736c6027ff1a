"""CHANGELOG.md read as Keep a Changelog 1.1.0, and checked against the version git gives.

A release is a tag ``vX.Y.Z`` and a ``## [X.Y.Z] - YYYY-MM-DD`` section, made together
(docs/development.md#versions-and-releases). So the version setuptools-scm derives agrees with
the changelog when:

* it is a release (built at the tag, no ``.dev``): the newest release section is that version;
* it is a development version (``X.Y.Z.devN+g<sha>``, after the newest tag or before any): every
  release section is older than its release part ``X.Y.Z`` -- a section for a version git has
  no tag for yet fails, as does a tag without its section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

UNRELEASED = "## [Unreleased]"
_RELEASE = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2})$")
_LINK = re.compile(r"^\[(?P<label>[^\]]+)\]: \S+$")
SUBSECTIONS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


@dataclass(frozen=True)
class Release:
    """One ``## [X.Y.Z] - date`` heading."""

    version: Version
    date: str


def releases(text: str) -> list[Release]:
    """The release headings, in file order (newest first when the file is right)."""
    found = []
    for line in text.splitlines():
        match = _RELEASE.match(line)
        if match:
            found.append(Release(Version(match["version"]), match["date"]))
    return found


def changelog_problems(text: str, version: str) -> list[str]:
    """What in ``text`` does not follow the format or disagrees with ``version``."""
    problems: list[str] = []
    lines = text.splitlines()
    level2 = [line for line in lines if line.startswith("## ")]
    if not level2 or level2[0] != UNRELEASED:
        problems.append(f"the first section must be '{UNRELEASED}'")
    for line in level2[1:]:
        if not _RELEASE.match(line):
            problems.append(f"not a release heading ('## [X.Y.Z] - YYYY-MM-DD'): {line!r}")
    subsection = None
    for line in lines:
        if line.startswith("## "):
            subsection = None
        elif line.startswith("### "):
            subsection = line.removeprefix("### ")
            if subsection not in SUBSECTIONS:
                problems.append(f"unknown subsection {line!r} (Keep a Changelog: {SUBSECTIONS})")
        elif line.startswith("- ") and subsection is None:
            # Typically a merge that kept an entry right under "## [Unreleased]".
            problems.append(f"entry outside a ### subsection (Added, Fixed, ...): {line[:60]!r}")
    try:
        listed = releases(text)
    except InvalidVersion as exc:
        return [*problems, f"a release heading has no valid version: {exc}"]
    versions = [r.version for r in listed]
    if versions != sorted(versions, reverse=True) or len(set(versions)) != len(versions):
        problems.append(f"releases are not newest first, once each: {[str(v) for v in versions]}")
    labels = {m["label"] for m in map(_LINK.match, lines) if m}
    for label in ["Unreleased", *(str(v) for v in versions)]:
        if label not in labels:
            problems.append(f"no link reference '[{label}]: URL' at the bottom")
    current = Version(version)
    release_part = Version(current.base_version)
    newest = versions[0] if versions else None
    if current.is_devrelease:
        if newest is not None and newest >= release_part:
            problems.append(
                f"the changelog has a release {newest}, but this is {current}: a development "
                f"version before it (tag v{newest} not made, or not fetched)"
            )
    elif newest != release_part:
        problems.append(
            f"this is release {current} (its tag), but the newest release in the changelog is "
            f"{newest}: add '## [{release_part}] - YYYY-MM-DD' with that release's entries"
        )
    return problems
