"""Token and password files and values (reliability matrix rows 20 and 23): the characters a
secret cannot hold, who else could read or replace its file, and a path that could be a
secret never shown in an error. Real files on disk, the real settings loader."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bridge.config.loader import load_settings
from bridge.config.pathnames import looks_like_token, shown_path
from bridge.config.secrets import (
    TokenSource,
    read_secret_file,
    resolve_mqtt_password,
    resolve_token,
)
from bridge.errors import ConfigError

SECRET = "mqk_live_7f3d2a9b1c4e8f60aa55"
FOREIGN_GID = 54321
ROOT = os.geteuid() == 0


def write(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A directory only its owner can write to, whatever the umask."""
    tmp_path.chmod(0o700)
    return tmp_path


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (0o602, "mode 0602: others can write it"),
        (0o604, "mode 0604: others can read it"),
        (0o607, "mode 0607: others can read, write and execute it"),
        (0o660, "mode 0660: its group can write it"),
        (0o610, "mode 0610: its group can execute it"),
        (0o666, "mode 0666: its group can write it; others can read and write it"),
    ],
)
def test_a_file_mode_error_says_exactly_what_is_wrong(home: Path, mode: int, message: str) -> None:
    """Each refused mode names who can do what (a 0602 file is writable by others, not
    readable) and the chmod that fixes it; never the secret."""
    path = write(home / "token", SECRET, mode)
    with pytest.raises(ConfigError) as info:
        read_secret_file(path, "token")
    text = str(info.value)
    assert f"token file has {message}; run: chmod 600 {path}" in text
    assert SECRET not in text


@pytest.mark.skipif(not ROOT, reason="giving a file to another group needs root")
def test_group_read_by_a_group_the_bridge_is_not_in_is_named(home: Path) -> None:
    """0640 is refused when the file's group is not the bridge's, and the message says so."""
    path = write(home / "token", SECRET, 0o640)
    os.chown(path, -1, FOREIGN_GID)
    with pytest.raises(ConfigError, match=r"mode 0640: its group \(gid 54321\) can read it, and"):
        read_secret_file(path, "token")


@pytest.mark.parametrize(
    ("mode", "who", "fix"),
    [
        (0o777, "its group and others", "go-w"),
        (0o757, "others", "o-w"),
        (0o775, "its group", "g-w"),
    ],
)
def test_a_directory_others_can_write_to_is_refused(
    home: Path, mode: int, who: str, fix: str
) -> None:
    """A 0600 file in a directory its group or others can write to could be replaced: refused,
    naming the directory, its mode and the chmod."""
    secrets = home / "secrets"
    secrets.mkdir()
    path = write(secrets / "token", SECRET)
    secrets.chmod(mode)
    with pytest.raises(ConfigError) as info:
        read_secret_file(path, "token")
    assert (
        f"directory {secrets} has mode {mode:04o}: {who} can write to it, so they could replace "
        f"the file; run: chmod {fix} {secrets} (or chmod +t {secrets}, the sticky bit)"
    ) in str(info.value)


def test_every_directory_above_the_file_is_checked(home: Path) -> None:
    """An open directory two levels up can rename the whole subtree away: refused, naming it."""
    inner = home / "open" / "inner"
    inner.mkdir(parents=True)
    path = write(inner / "token", SECRET)
    inner.chmod(0o700)
    (home / "open").chmod(0o777)
    with pytest.raises(ConfigError, match=f"directory {home / 'open'} has mode 0777"):
        read_secret_file(path, "token")


def test_a_symlink_in_an_open_directory_is_refused_and_so_is_its_target(home: Path) -> None:
    """Symlinks are followed both ways: the link's directory (the link can be replaced) and the
    directory of the file it leads to (the file can)."""
    safe, open_ = home / "safe", home / "open"
    safe.mkdir(mode=0o700)
    open_.mkdir()
    open_.chmod(0o777)
    target = write(safe / "token", SECRET)
    link = open_ / "token"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=f"directory {open_} has mode 0777"):
        read_secret_file(link, "token")
    hidden = write(open_ / "real", SECRET)
    (safe / "link").symlink_to(hidden)
    with pytest.raises(ConfigError, match=f"directory {open_} has mode 0777"):
        read_secret_file(safe / "link", "token")


@pytest.mark.parametrize("mode", [0o1777, 0o755, 0o750, 0o700])
def test_a_sticky_or_owner_only_directory_is_accepted(home: Path, mode: int) -> None:
    """With the sticky bit (/tmp, Kubernetes Secret volumes) only a file's owner may rename or
    delete it; 0755 lets nobody else write. Both are accepted."""
    secrets = home / "secrets"
    secrets.mkdir()
    path = write(secrets / "token", SECRET + "\n")
    secrets.chmod(mode)
    assert read_secret_file(path, "token") == SECRET


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{SECRET}\n{SECRET}\n", "a line break (U+000A) inside it (the file holds more than one"),
        (f"{SECRET}\r\nmore", "a carriage return (U+000D) inside it"),
        ("mqk_live_7f3d 2a9b\n", "a space (U+0020) inside it"),
        ("mqk_live_7f3d\t2a9b\n", "a tab (U+0009) inside it"),
        ("mqk_live_7f3d\x002a9b\n", "a NUL character (U+0000) inside it"),
        ("mqk_live_7f3d\x7f2a9b\n", "a control character (U+007F) inside it"),
        ("\x1bmqk_live_7f3d2a9b\n", "a control character (U+001B) at its start"),
        ("mqk_live_7f3d\u00a02a9b\n", "a space character (U+00A0) inside it"),
        ("mqk_live_7f3d\u200b2a9b\n", "an invisible formatting character (U+200B) inside it"),
        ("mqk_live_7f3d\u20282a9b\n", "a line separator (U+2028) inside it"),
        ("mqk_live_7f3dé2a9b\n", "a character that is not ASCII (U+00E9) inside it"),
    ],
)
def test_a_token_file_with_a_character_a_token_cannot_hold_is_refused(
    home: Path, content: str, problem: str
) -> None:
    """Whitespace, control, invisible and (for a token) non-ASCII characters inside the token
    are a ConfigError naming the character and where, never the token."""
    path = write(home / "token", content)
    with pytest.raises(ConfigError) as info:
        read_secret_file(path, "token", header=True)
    text = str(info.value)
    assert f"the token holds {problem}" in text
    assert "mqk_live_7f3d" not in text


def test_surrounding_whitespace_and_a_bom_are_removed_from_a_file(home: Path) -> None:
    """As before: ``echo token > file`` and an editor's CRLF and BOM are not part of it."""
    path = write(home / "token", b"\xef\xbb\xbf  " + SECRET.encode() + b"\r\n\n")
    assert read_secret_file(path, "token", header=True) == SECRET


def test_a_password_may_hold_letters_beyond_ascii_but_no_whitespace(home: Path) -> None:
    """MQTT passwords are UTF-8: ``Pässwört`` is fine; a space inside is not."""
    assert read_secret_file(write(home / "pw", "Pässwört-1\n"), "MQTT password") == "Pässwört-1"
    with pytest.raises(ConfigError, match="the MQTT password holds a space"):
        read_secret_file(write(home / "pw2", "two words\n"), "MQTT password")


def test_a_file_that_is_not_utf8_is_a_config_error_not_a_crash(home: Path) -> None:
    """Latin-1 or UTF-16 bytes (Windows editors) used to escape as UnicodeDecodeError."""
    path = write(home / "token", "mqk_live_ä\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_secret_file(path, "token")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "METRIQO_BRIDGE_TOKEN",
            SECRET + "\n",
            "environment variable METRIQO_BRIDGE_TOKEN: api.token: the token holds a line "
            "break (U+000A) at its end",
        ),
        (
            "METRIQO_BRIDGE_TOKEN",
            "Bearer " + SECRET,
            "api.token: the token holds a space (U+0020) inside it",
        ),
        (
            "METRIQO_BRIDGE_MQTT__PASSWORD",
            "pass\x1bword",
            "environment variable METRIQO_BRIDGE_MQTT__PASSWORD: mqtt.password: the password "
            "holds a control character (U+001B) inside it",
        ),
    ],
)
def test_a_secret_value_with_a_bad_character_is_refused_by_the_loader(
    variable: str, value: str, message: str
) -> None:
    """A token or password set directly is taken as it is: any whitespace or control character
    in it (a trailing newline from a Secret) is a ConfigError naming the variable, not the
    value."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: value})
    assert message in str(info.value)
    assert value.strip() not in str(info.value)


def test_a_path_with_a_control_character_is_refused_without_echo() -> None:
    """A path from a ConfigMap with a trailing newline is named as such, not shown."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"METRIQO_BRIDGE_TOKEN_FILE": "/etc/metriqo/token\n"})
    text = str(info.value)
    assert "api.token_file: the path holds a line break (U+000A) at its end" in text
    assert "/etc/metriqo" not in text


@pytest.mark.parametrize(
    "value",
    [SECRET, "mqk_test_5ecr3t-t0ken-value", f"Bearer {SECRET}", f" {SECRET}\n"],
)
def test_a_token_pasted_into_a_path_setting_is_refused_as_one(value: str) -> None:
    """Every path setting refuses a value shaped like an API token, without echoing it."""
    for variable in ("METRIQO_BRIDGE_TOKEN_FILE", "METRIQO_BRIDGE_SPOOL__PATH"):
        with pytest.raises(ConfigError) as info:
            load_settings(environ={variable: value})
        assert "this looks like an API token, not a path" in str(info.value)
        assert value.strip() not in str(info.value)


def test_which_paths_an_error_may_show(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shown: the defaults, and what names a place on this machine (the file, or its named
    directory). Not shown: anything else, and anything shaped like a token."""
    monkeypatch.chdir(home)
    (home / "conf").mkdir()
    write(home / "exists", "x")
    place = "environment variable X"
    assert shown_path("topic-mappings.yaml", "defaults") == "topic-mappings.yaml"
    assert shown_path(home / "exists", place) == str(home / "exists")
    assert shown_path("exists", place) == "exists"
    assert shown_path(home / "conf" / "typo.yaml", place) == str(home / "conf" / "typo.yaml")
    assert shown_path("conf/typo.yaml", place) == "conf/typo.yaml"
    for secret in ("hunter2", "/hunter2", "./hunter2", "no/such/dir", "a\nb", SECRET):
        assert shown_path(secret, place) is None, secret
    write(home / SECRET, "x")
    assert shown_path(SECRET, place) is None
    assert looks_like_token(f"Bearer {SECRET}")
    assert not looks_like_token("/etc/metriqo/token")
    assert not looks_like_token("mqk_spool1")
    assert not looks_like_token("mqk_live_token.db")


def test_token_and_password_errors_name_the_setting_and_where_it_was_set(home: Path) -> None:
    """``read_secret_file`` through the settings: the variable and key lead the message."""
    path = write(home / "token", SECRET, 0o602)
    creds = load_settings(environ={"METRIQO_BRIDGE_TOKEN_FILE": str(path)}).credentials
    with pytest.raises(ConfigError) as info:
        resolve_token(creds)
    assert str(info.value).startswith(
        "environment variable METRIQO_BRIDGE_TOKEN_FILE: api.token_file: token file "
        f"{path} has mode 0602: others can write it; run: chmod 600 {path}"
    )
    settings_file = write(home / "s.yaml", "mqtt:\n  password_file: hunter2-Pa55\n")
    creds = load_settings(file=settings_file, environ={}).credentials
    with pytest.raises(ConfigError) as info:
        resolve_mqtt_password(creds)
    assert str(info.value).startswith(
        f"{settings_file}:2: mqtt.password_file: MQTT password file not found (the value is "
        "not shown"
    )
    assert "hunter2" not in str(info.value)


def test_a_reloaded_token_file_that_is_unusable_keeps_the_token_and_is_counted(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated file of two lines (or in a directory others can write to) is refused: the
    token in use stays, each refused read is counted, the first is logged, neither token is
    shown; once fixed, the new token is used."""
    path = write(home / "token", SECRET + "\n")
    refused: list[int] = []
    source = TokenSource(
        load_settings(environ={"METRIQO_BRIDGE_TOKEN_FILE": str(path)}).credentials,
        on_refused=lambda: refused.append(1),
    )
    assert source() == SECRET
    rotated = "mqk_live_rotated_0042"
    write(home / "token.new", f"{rotated}\nmqk_live_second_line\n").rename(path)
    assert source() == SECRET
    assert source() == SECRET
    assert len(refused) == 2
    logged = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(logged) == 1
    assert "line break (U+000A) inside it" in logged[0]
    write(home / "token.new", f"{rotated}\n").rename(path)
    assert source() == rotated
    home.chmod(0o777)
    write(home / "token.new", "mqk_live_third_0043\n").rename(path)
    assert source() == rotated  # the directory lets others replace it: refused
    home.chmod(0o700)  # fixed as the message says: the waiting file is taken at once
    assert source() == "mqk_live_third_0043"
    for secret in (SECRET, rotated, "mqk_live_second_line", "mqk_live_third"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("text", "header", "problem"),
    [
        ("abc", True, None),
        ("Pässwört", False, None),
        ("Pässwört", True, "a character that is not ASCII (U+00E4) inside it"),
        ("abc\n", False, "a line break (U+000A) at its end"),
        ("\ufeffabc", True, "a byte order mark (U+FEFF) at its start"),
        ("ab\udc80c", False, "a byte that is not UTF-8 (U+DC80) inside it"),
    ],
)
def test_secret_text_problem_names_the_character_and_where(
    text: str, header: bool, problem: str | None
) -> None:
    """The rule the loader, the secret files and the sender share."""
    from bridge.config.secrets import secret_text_problem  # imported here: new with row 23

    assert secret_text_problem(text, header=header) == problem


def test_the_token_source_logs_at_error(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The refusal is an ERROR: the operator's rotation did not take."""
    caplog.set_level(logging.DEBUG)
    path = write(home / "token", SECRET)
    source = TokenSource(
        load_settings(environ={"METRIQO_BRIDGE_TOKEN_FILE": str(path)}).credentials
    )
    write(home / "t2", "").rename(path)
    assert source() == SECRET
    (record,) = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "still using the previous token" in record.getMessage()
