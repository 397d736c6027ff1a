"""The deployment files the tests read: where they are, and deploy/Dockerfile parsed into its
stages (what ``test_dockerfile.py`` checks statically and ``test_image_run.py`` runs)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_UID = 10001
SPOOL_VOLUME = "/var/lib/metriqo-bridge"


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
    defaults = global_args(path)
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            if base:
                stages.append(Stage(base, name, tuple(current)))
            words = arguments.split()
            # FROM ${BASE_IMAGE}: the base a plain build uses, the ARG's default.
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        else:
            current.append((keyword, arguments))
    stages.append(Stage(base, name, tuple(current)))
    return stages


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ``ARG NAME=default`` lines before the first ``FROM`` (what FROM may refer to)."""
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            break
        if line.upper().startswith("ARG "):
            key, _, value = line[4:].strip().partition("=")
            out[key] = value
    return out


def final_stage(stages: list[Stage]) -> Stage:
    """The stage the image is made of."""
    return stages[-1]
