"""The API token and the broker password: read from files that only the bridge may read,
never printed.

A token file is re-read when it changes (:class:`TokenSource`), so a rotated token is used
without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path

from bridge.config.files import file_key
from bridge.errors import ConfigError
from bridge.settings import Credentials

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path, what: str) -> str:
    """Read a token or password file, refusing one that others can read."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{what} file cannot be read: {exc.strerror}", file=str(path)) from None
    problem = _exposure(st, _in_credentials_directory(path))
    if problem:
        raise ConfigError(f"{what} file is {problem}; run: chmod 600 {path}", file=str(path))
    if not text:
        raise ConfigError(f"{what} file is empty", file=str(path))
    return text


def _in_credentials_directory(path: Path) -> bool:
    """True for a systemd credential (``LoadCredential=``): systemd keeps those in a read-only
    directory private to the service, and newer versions grant the service user read access
    through an ACL on a root-owned 0440 file, which the group check below would refuse."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return creds is not None and creds != "" and path.resolve().parent == Path(creds).resolve()


def _exposure(st: os.stat_result, credential: bool = False) -> str | None:
    """Why a secret file's permissions let others at it (None if they do not).

    Nothing for others, and nothing writable or executable by the group. Group *read* is
    accepted only when the file's group is one the bridge itself runs in: that is how
    Kubernetes mounts a Secret with ``fsGroup`` (0440, group = the pod's fsGroup) and how
    ``root:metriqo 0640`` files are shared with a service's own group; any other group is
    refused like others."""
    mode = st.st_mode
    if mode & stat.S_IRWXO:
        return "readable by group or others"
    if credential:
        return None
    if mode & (stat.S_IWGRP | stat.S_IXGRP):
        return "writable by its group"
    if mode & stat.S_IRGRP and st.st_gid not in {os.getgid(), os.getegid(), *os.getgroups()}:
        return "readable by group or others"
    return None


def resolve_token(c: Credentials) -> str:
    """The API token from ``api.token_file`` (preferred) or ``api.token``."""
    if c.api_token_file is not None:
        return read_secret_file(c.api_token_file, "token")
    if c.api_token is not None and c.api_token.reveal():
        return c.api_token.reveal()
    raise ConfigError(
        "no API token: set METRIQO_BRIDGE_TOKEN_FILE (a 0600 file) or METRIQO_BRIDGE_TOKEN",
        key="api.token_file",
    )


def resolve_mqtt_password(c: Credentials) -> str | None:
    """The broker password from ``mqtt.password_file`` or ``mqtt.password``."""
    if c.mqtt_password_file is not None:
        return read_secret_file(c.mqtt_password_file, "MQTT password")
    return c.mqtt_password.reveal() if c.mqtt_password else None


class TokenSource:
    """Supplies the API token, re-reading ``api.token_file`` when it changes so a rotated
    token is used without a restart. A file that becomes unreadable keeps the last token."""

    def __init__(self, credentials: Credentials) -> None:
        self._file = credentials.api_token_file
        self._token = resolve_token(credentials)
        self._loaded = None if self._file is None else file_key(self._file)
        self._reported = self._loaded

    def __call__(self) -> str:
        if self._file is None:
            return self._token
        key = file_key(self._file)
        if key is not None and key != self._loaded:
            try:
                self._token = read_secret_file(self._file, "token")
                self._loaded = self._reported = key
            except ConfigError as exc:
                # Not marked as loaded: once the user fixes it (say, with chmod 600) the next
                # request picks it up. Logged once per change of the file.
                if key != self._reported:
                    self._reported = key
                    log.error("token file changed but is unusable: %s", exc)
        return self._token

    def __repr__(self) -> str:
        return "TokenSource(<redacted>)"
