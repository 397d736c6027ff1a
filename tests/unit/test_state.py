"""The state directory, the runtime file, and how admin commands use it to find the bridge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli.main import build_parser, main
from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.state import (
    SYSTEM_STATE_DIR,
    Found,
    RuntimeInfo,
    default_state_dir,
    legacy_spool,
    pick,
    read_runtimes,
    remove_runtime,
    runtime_path,
    write_runtime,
)


def _info(client_id: str = "b1", pid: int | None = None, port: int = 19470) -> RuntimeInfo:
    return RuntimeInfo(
        pid=os.getppid() if pid is None else pid,  # alive, and not this process
        client_id=client_id,
        spool_path="/x/bridge.db",
        mapping_file="/etc/metriqo-bridge/topic-mappings.yaml",
        http_enabled=True,
        http_host="127.0.0.1",
        http_port=port,
        started_at="2026-12-03T10:00:00+00:00",
        version="1.0",
    )


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_the_default_state_dir_is_absolute_for_root_and_for_users() -> None:
    """Root: /var/lib/metriqo-bridge; a user: the XDG state directory; XDG_STATE_HOME wins
    (also for root), a relative one is ignored as the XDG spec says."""
    home = Path("/home/op")
    assert default_state_dir({}, 0, home) == SYSTEM_STATE_DIR
    assert default_state_dir({}, 1000, home) == home / ".local/state/metriqo-bridge"
    xdg = {"XDG_STATE_HOME": "/srv/state"}
    assert default_state_dir(xdg, 1000, home) == Path("/srv/state/metriqo-bridge")
    assert default_state_dir(xdg, 0, home) == Path("/srv/state/metriqo-bridge")
    assert default_state_dir({"XDG_STATE_HOME": "rel"}, 1000, home).is_absolute()


def test_the_spool_defaults_inside_the_state_dir_and_relative_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spool.path defaults to spool.db in state_dir; a relative spool.path or state_dir is
    taken from the working directory and made absolute, so logs and the runtime file say
    exactly which file is used."""
    s = load_settings(environ={"METRIQO_BRIDGE_STATE_DIR": str(tmp_path / "st")})
    assert s.state_dir == tmp_path / "st"
    assert s.spool.path == tmp_path / "st" / "spool.db"
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={}, overrides={"spool.path": "data/b.db", "state_dir": "st2"})
    assert s.spool.path == tmp_path / "data" / "b.db"
    assert s.state_dir == tmp_path / "st2"
    assert s.effective["spool"]["path"] == str(tmp_path / "data" / "b.db")


def test_a_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    """state_dir naming a file is refused at start, naming the key."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="state_dir: not a directory"):
        load_settings(environ={}, overrides={"state_dir": str(tmp_path / "f")})


def test_the_runtime_file_round_trips_and_a_dead_pid_makes_it_stale(tmp_path: Path) -> None:
    """Written atomically (no temporary file left), read back equal; one whose process is gone
    is reported as stale, not as a running bridge; so are garbage, and a file with the reader's
    own pid (another PID namespace's bridge, e.g. a container's pid 1)."""
    live = runtime_path(tmp_path, "b1")
    write_runtime(live, _info("b1"))
    write_runtime(runtime_path(tmp_path, "b2"), _info("b2", pid=_dead_pid()))
    write_runtime(runtime_path(tmp_path, "b3"), _info("b3", pid=os.getpid()))
    (tmp_path / "run" / "junk.json").write_text("{not json")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "b1.json",
        "b2.json",
        "b3.json",
        "junk.json",
    ]
    found = read_runtimes(tmp_path)
    assert found.running == (_info("b1"),)
    assert {p.name for p in found.stale} == {"b2.json", "b3.json", "junk.json"}


def test_a_runtime_file_is_removed_only_by_its_own_process(tmp_path: Path) -> None:
    """A bridge that stops removes its file, but not one a successor has already replaced."""
    path = runtime_path(tmp_path, "b1")
    write_runtime(path, _info(pid=os.getppid()))
    remove_runtime(path, os.getpid())
    assert path.exists()
    write_runtime(path, _info(pid=os.getpid()))
    remove_runtime(path, os.getpid())
    assert not path.exists()


def test_client_ids_become_safe_file_names(tmp_path: Path) -> None:
    """A client id with slashes or a leading dot cannot leave the run directory."""
    assert runtime_path(tmp_path, "../a/b").parent == tmp_path / "run"
    assert runtime_path(tmp_path, "../a/b").name == "_a_b.json"


def test_pick_takes_the_only_bridge_or_the_named_one_and_refuses_to_guess() -> None:
    """One running: that one; several: the client id picks, or a message lists them."""
    one, two = _info("b1"), _info("b2", port=1)
    assert pick(Found((), ()), None) is None
    assert pick(Found((one,), ()), None) == one
    assert pick(Found((one, two), ()), "b2") == two
    assert pick(Found((one, two), ()), "b3") is None
    message = pick(Found((one, two), ()), None)
    assert isinstance(message, str)
    assert "b1, b2" in message
    assert "--mqtt-client-id" in message


def test_the_old_relative_spool_is_kept_only_when_the_new_default_is_absent(
    tmp_path: Path,
) -> None:
    """./spool/metriqo-bridge.db is used when spool.path is unset and the new default does
    not exist yet; never when spool.path was set or the new default exists."""
    new = tmp_path / "state" / "spool.db"
    assert legacy_spool(new, False, tmp_path) is None
    old = tmp_path / "spool" / "metriqo-bridge.db"
    old.parent.mkdir()
    old.write_bytes(b"")
    assert legacy_spool(new, False, tmp_path) == old
    assert legacy_spool(new, True, tmp_path) is None
    new.parent.mkdir()
    new.write_bytes(b"")
    assert legacy_spool(new, False, tmp_path) is None


def _help(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def test_each_command_shows_only_its_own_settings_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """health: what locates the bridge; backup and dead-letters: what locates the spool; run:
    all, named after their settings, with the broker user name and password file."""
    run = _help("run", capsys=capsys)
    for flag in ("--mapping-file", "--mqtt-username", "--mqtt-password-file", "--api-base-url",
                 "--spool-path", "--mqtt-client-id", "--state-dir", "--http-host"):  # fmt: skip
        assert flag in run, flag
    for old in ("--mappings", "--api-url", "--client-id", "--spool "):
        assert old not in run, old
    health = _help("health", capsys=capsys)
    assert {"--state-dir", "--http-port", "--http-host", "--config", "--set"} <= set(health.split())
    for flag in ("--mqtt-host", "--spool-path", "--api-base-url", "--print-config", "--log"):
        assert flag not in health, flag
    for command in (("backup",), ("dead-letters", "list")):
        text = _help(*command, capsys=capsys)
        assert "--spool-path" in text
        assert "--state-dir" in text
        for flag in ("--mqtt-host", "--http-port", "--api-base-url", "--print-config"):
            assert flag not in text, (command, flag)
    for name in ("check", "test", "explain"):
        assert "--mapping-file" in _help(name, capsys=capsys)


def test_old_flag_spellings_still_work_with_a_deprecation_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--spool, --api-url, --client-id and --mappings set the same settings as the new names,
    and each says once on stderr that it is deprecated."""
    argv = ["run", "--print-config", "--spool", str(tmp_path / "a.db"), "--api-url",
            "https://api.example/v2", "--client-id", "gw7", "--mappings", "m.yaml",
            "--mqtt-username", "plant"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f'"path": "{tmp_path / "a.db"}"' in out
    assert '"base_url": "https://api.example/v2"' in out
    assert '"client_id": "gw7"' in out
    assert '"file": "m.yaml"' in out
    assert '"username": "plant"' in out
    renamed = {"--spool": "--spool-path", "--api-url": "--api-base-url",
               "--client-id": "--mqtt-client-id", "--mappings": "--mapping-file"}  # fmt: skip
    for old, new in renamed.items():
        assert f"{old} is deprecated; use {new}" in err
    assert len(err.splitlines()) == 4


def test_check_and_test_take_the_file_as_flag_or_positional(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check FILE`` stays a shorthand of ``check --mapping-file FILE``; both at once is a
    usage error."""
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: t\n    topic: tele/{d}/v\n    device_id: '{d}'\n"
        "    payload: number\n    metric: v\n"
    )
    assert main(["check", str(path)]) == 0
    assert main(["check", "--mapping-file", str(path)]) == 0
    assert capsys.readouterr().out.count(": OK, 1 rule(s)") == 2
    with pytest.raises(SystemExit) as exc:
        main(["check", str(path), "--mapping-file", str(path)])
    assert exc.value.code == 2
    assert main(["test", "--mapping-file", str(path)]) == 1  # no tests: section
    assert "no tests" in capsys.readouterr().out


def test_admin_commands_follow_the_runtime_file_unless_told_otherwise_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """backup reads the spool the runtime file names; --spool-path on its own command line
    wins; two bridges and no client id: exit 78 naming both."""
    state = tmp_path / "state"
    write_runtime(runtime_path(state, "b1"), _info("b1"))  # spool /x/bridge.db, not there
    code = main(["backup", str(tmp_path / "copy.db"), "--state-dir", str(state)])
    assert code == 66
    assert "no spool at /x/bridge.db" in capsys.readouterr().err
    mine = tmp_path / "mine.db"
    code = main(["backup", str(tmp_path / "copy.db"), "--state-dir", str(state),
                 "--spool-path", str(mine)])  # fmt: skip
    assert code == 66
    assert f"no spool at {mine}" in capsys.readouterr().err
    write_runtime(runtime_path(state, "b2"), _info("b2"))
    assert main(["health", "--state-dir", str(state)]) == 78
    assert "b1, b2" in capsys.readouterr().err


def test_commands_with_their_own_mapping_option_keep_its_default_and_old_spelling(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """simulate-sensors and demo: --mapping-file, unset when not given (they then look for
    ./topic-mappings.yaml, else use the packaged example), and --mappings still accepted with a
    notice."""
    monkeypatch.delenv("METRIQO_BRIDGE_MAPPING__FILE", raising=False)
    parser = build_parser()
    for command in ("simulate-sensors", "demo"):
        assert parser.parse_args([command]).mappings is None
        assert parser.parse_args([command, "--mappings", "m.yaml"]).mappings == Path("m.yaml")
        assert "--mappings is deprecated; use --mapping-file" in capsys.readouterr().err


def test_every_settings_flag_is_named_after_a_real_setting() -> None:
    """The one flag table: each flag sets an existing setting and is spelled after it, so a
    renamed setting cannot leave a flag behind."""
    from bridge.cli.flags import FLAGS
    from bridge.config.loader import path_settings

    effective = load_settings(environ={}).effective
    for flag in FLAGS:
        node = effective
        for part in flag.key.split("."):
            assert part in node, flag.key
            node = node[part]
        assert flag.name == "--" + flag.key.replace(".", "-").replace("_", "-")
    assert ("state_dir",) in path_settings()
