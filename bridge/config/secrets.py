"""The API token and the broker password: read from files that only the bridge may read or
replace (:mod:`bridge.config.permissions`), checked for characters they cannot hold, never
printed.

A token travels in an HTTP header and a password in the MQTT CONNECT packet, so whitespace,
control characters and invisible (format) characters inside either are a configuration error,
found at start (exit 78) rather than by the first request: a newline in a token used to be
accepted and then crash every first POST. A file's surrounding whitespace (the final newline of
``echo token > file``) is removed first; a value set directly (``METRIQO_BRIDGE_TOKEN``) is taken
as it is. A token must also be ASCII, as every Metriqo token is.

A token file is re-read when it changes (:class:`TokenSource`), so a rotated token is used
without a restart; an unusable new version is refused, counted and logged, and the token in use
stays.

Errors name the setting and where it was set, never the secret, and the file's path only as
:mod:`bridge.config.pathnames` allows.
"""

from __future__ import annotations

import ipaddress
import logging
import unicodedata
from collections.abc import Callable
from pathlib import Path

from bridge.config.files import file_key
from bridge.config.pathnames import DEFAULTS, about_path, shown_path
from bridge.config.permissions import directory_exposure, file_exposure, in_credentials_directory
from bridge.errors import ConfigError
from bridge.settings import Credentials

log = logging.getLogger(__name__)

_MAX_BYTES = 64 * 1024  # a token or password file is one short line

_NAMES = {
    "\n": "a line break",
    "\r": "a carriage return",
    "\t": "a tab",
    " ": "a space",
    "\x00": "a NUL character",
    "\ufeff": "a byte order mark",
}
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Cs": "a byte that is not UTF-8",
    "Zs": "a space character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_text_problem(text: str, *, header: bool = False, spaces: bool = True) -> str | None:
    """What keeps ``text`` from being used as a password, or as a token (``header``: it must
    fit an HTTP header, in ASCII): e.g. ``a line break (U+000A) inside it``; None if nothing.
    Names the character, never the text. ``spaces=False`` lets spaces through (for paths)."""
    for i, ch in enumerate(text):
        name = _NAMES.get(ch) or _REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if name is None and ch.isspace():
            name = "a space character"
        if name is not None and not spaces and unicodedata.category(ch) == "Zs":
            continue
        if name is None and header and not ch.isascii():
            name = "a character that is not ASCII"
        if name is not None:
            where = (
                "at its start" if i == 0 else "at its end" if i == len(text) - 1 else "inside it"
            )
            return f"{name} (U+{ord(ch):04X}) {where}"
    return None


def read_secret_file(
    path: Path,
    what: str,
    *,
    key: str = "",
    origin: str | None = None,
    header: bool = False,
) -> str:
    """Read a token or password file, refusing one that others can read or replace, and a
    secret with characters it cannot hold.

    Args:
        path: the file.
        what: ``"token"`` or ``"MQTT password"``, for the messages.
        key: the setting that named the file (``api.token_file``), for the messages.
        origin: where that setting was set (``bridge.yaml:4``, a variable); None when the path
            was given directly, and then the messages start with the path.
        header: the secret goes into an HTTP header (the API token): ASCII only.

    Raises:
        ConfigError: naming the setting, where it was set and what is wrong.
    """
    shown = str(path) if origin is None else shown_path(path, origin) or "(not shown)"
    subject = f"{what} file" if origin is None else f"{what} file {shown}"

    def fail(problem: str) -> ConfigError:
        return ConfigError(problem, file=str(path) if origin is None else origin, key=key)

    def unopened(problem: str) -> ConfigError:
        text = f"{what} file {problem}"
        return fail(text if origin is None else about_path(text, path, origin))

    try:
        st = path.stat()
        with path.open("rb") as fh:
            raw = fh.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        raise unopened("not found") from None
    except IsADirectoryError:
        raise unopened("is a directory") from None
    except PermissionError:
        raise unopened("is not readable (permission denied)") from None
    except OSError as exc:
        raise unopened(f"cannot be read ({exc.strerror})") from None
    credential = in_credentials_directory(path)
    problem = file_exposure(st, credential=credential)
    if problem:
        raise fail(f"{subject} has {problem}; run: chmod 600 {shown}")
    opened = None if credential else directory_exposure(path)
    if opened is not None:
        raise fail(f"{subject}: {opened}, so they could replace the file; run: {opened.fix}")
    if len(raw) > _MAX_BYTES:
        raise fail(f"{subject} is larger than {_MAX_BYTES} bytes: not a {what} file")
    try:
        text = raw.decode("utf-8-sig").strip()  # -sig: the BOM some editors write
    except UnicodeDecodeError as exc:
        raise fail(f"{subject} is not UTF-8 text (byte {exc.start})") from None
    if not text:
        raise fail(f"{subject} is empty")
    bad = secret_text_problem(text, header=header)
    if bad is not None:
        lines = " (the file holds more than one line)" if "\n" in text else ""
        raise fail(
            f"{subject}: the {what} holds {bad}{lines}; "
            f"a {what} has no whitespace, control or invisible characters"
        )
    return text


def resolve_token(c: Credentials) -> str:
    """The API token from ``api.token_file`` (preferred) or ``api.token``."""
    if c.api_token_file is not None:
        return _read_token_file(c)
    if c.api_token is not None and c.api_token.reveal():
        return c.api_token.reveal()
    raise ConfigError(
        "no API token: set METRIQO_BRIDGE_TOKEN_FILE (a 0600 file) or METRIQO_BRIDGE_TOKEN",
        key="api.token_file",
    )


def resolve_mqtt_password(c: Credentials) -> str | None:
    """The broker password from ``mqtt.password_file`` or ``mqtt.password``."""
    if c.mqtt_password_file is not None:
        return read_secret_file(
            c.mqtt_password_file,
            "MQTT password",
            key="mqtt.password_file",
            origin=c.origins.get("mqtt.password_file", DEFAULTS),
        )
    return c.mqtt_password.reveal() if c.mqtt_password else None


def _read_token_file(c: Credentials) -> str:
    assert c.api_token_file is not None
    return read_secret_file(
        c.api_token_file,
        "token",
        key="api.token_file",
        origin=c.origins.get("api.token_file", DEFAULTS),
        header=True,
    )


class TokenSource:
    """Supplies the API token, re-reading ``api.token_file`` when it changes so a rotated
    token is used without a restart.

    A changed file that is unusable (the wrong mode, two lines, a directory others can write)
    keeps the token in use: each such read calls ``on_refused`` (the bridge counts it in
    ``token_unusable_total{reason="reload"}``) and the first one after each change of the file
    is logged. A file that disappears keeps the last token too (a Kubernetes Secret swaps it).
    """

    def __init__(
        self, credentials: Credentials, *, on_refused: Callable[[], None] | None = None
    ) -> None:
        self._credentials = credentials
        self._file = credentials.api_token_file
        self._token = resolve_token(credentials)
        self._loaded = None if self._file is None else file_key(self._file)
        self._reported = self._loaded
        self._on_refused = on_refused

    def __call__(self) -> str:
        if self._file is None:
            return self._token
        key = file_key(self._file)
        if key is not None and key != self._loaded:
            try:
                self._token = _read_token_file(self._credentials)
                self._loaded = self._reported = key
            except ConfigError as exc:
                # Not marked as loaded: once the user fixes it (say, with chmod 600) the next
                # request picks it up. Logged once per change of the file.
                if self._on_refused is not None:
                    self._on_refused()
                if key != self._reported:
                    self._reported = key
                    log.error(
                        "token file changed but is unusable; still using the previous token: %s",
                        exc,
                    )
        return self._token

    def __repr__(self) -> str:
        return "TokenSource(<redacted>)"
