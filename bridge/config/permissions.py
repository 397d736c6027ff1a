"""Who besides the bridge could read a secret file, or replace it: the checks behind the token
and password files, each answer saying exactly what is wrong and the command that fixes it.

**The file** may be read and written by its owner only: nothing for others, nothing writable or
executable by its group. Group *read* is accepted when the file's group is one the bridge itself
runs in: that is how Kubernetes mounts a Secret with ``fsGroup`` (0440, group = the pod's
fsGroup) and how ``root:metriqo 0640`` files are shared with a service's own group.

**Every directory above it** — of the path as given and of the file it leads to through
symlinks, up to ``/`` — must not be writable by its group or by others: whoever can write to a
directory can rename the secret file away and put their own in its place (a token of theirs
would send the plant's readings to their organization). Two exceptions, because there nobody
but the owner can replace the file: a directory with the **sticky bit** (``/tmp``, 1777; and
Kubernetes' Secret volumes), where only a file's owner may rename or delete it, and a directory
on a **read-only mount** (a Secret volume, systemd's credentials), where nobody may.

A file in systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) is accepted as systemd
hands it over: systemd keeps those in a read-only directory private to the service, and newer
versions grant the service user read access through an ACL on a root-owned 0440 file, which the
group rule would refuse.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

_VERBS = ((4, "read"), (2, "write"), (1, "execute"))


def in_credentials_directory(path: Path) -> bool:
    """True for a systemd credential (see the module docstring)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return creds is not None and creds != "" and path.resolve().parent == Path(creds).resolve()


def file_exposure(st: os.stat_result, *, credential: bool = False) -> str | None:
    """What is wrong with a secret file's mode, e.g. ``mode 0602: others can write it`` (None
    if nothing is)."""
    mode = stat.S_IMODE(st.st_mode)
    others = mode & 0o7
    group = (mode >> 3) & 0o7
    if credential:
        group = 0
    elif group & 4 and st.st_gid in _own_groups():
        group &= ~4  # read by the bridge's own group: accepted
    wrong = []
    if group == 4:
        wrong.append(
            f"its group ({_group_name(st.st_gid)}) can read it, and the bridge does not run in "
            "that group"
        )
    elif group:
        wrong.append(f"its group can {_verbs(group)} it")
    if others:
        wrong.append(f"others can {_verbs(others)} it")
    return f"mode {mode:04o}: " + "; ".join(wrong) if wrong else None


@dataclass(frozen=True, slots=True)
class OpenDirectory:
    """A directory above a secret file that its group or others can write to."""

    directory: Path
    mode: int
    who: str  # "its group", "others" or "its group and others"
    chmod: str  # "g", "o" or "go": whose write bit to take away

    def __str__(self) -> str:
        return f"directory {self.directory} has mode {self.mode:04o}: {self.who} can write to it"

    @property
    def fix(self) -> str:
        """The command that closes it."""
        d = self.directory
        return f"chmod {self.chmod}-w {d} (or chmod +t {d}, the sticky bit)"


def directory_exposure(path: Path) -> OpenDirectory | None:
    """The first directory above ``path`` (the nearest first) that its group or others can
    write to (None if there is none; see the module docstring)."""
    for directory in _directories_above(path):
        try:
            st = directory.stat()
        except OSError:
            continue  # what the bridge cannot stat, it did not read the file through either
        mode = stat.S_IMODE(st.st_mode)
        writable = mode & (stat.S_IWGRP | stat.S_IWOTH)
        if not writable or mode & stat.S_ISVTX or _read_only(directory):
            continue
        if writable == stat.S_IWGRP:
            return OpenDirectory(directory, mode, "its group", "g")
        if writable == stat.S_IWOTH:
            return OpenDirectory(directory, mode, "others", "o")
        return OpenDirectory(directory, mode, "its group and others", "go")
    return None


def _directories_above(path: Path) -> list[Path]:
    given = Path(os.path.abspath(path)).parents
    try:
        real = path.resolve(strict=True).parents
    except (OSError, RuntimeError):
        real = given
    out: list[Path] = []
    for directory in (*given, *real):
        if directory not in out:
            out.append(directory)
    return out


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _own_groups() -> set[int]:
    return {os.getgid(), os.getegid(), *os.getgroups()}


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name}, gid {gid}"
    except KeyError:
        return f"gid {gid}"


def _verbs(bits: int) -> str:
    words = [word for bit, word in _VERBS if bits & bit]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
