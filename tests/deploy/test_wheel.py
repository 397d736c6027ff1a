"""The wheel as a new user installs it: built from the sdist, installed into a venv outside the
checkout, and ``metriqo-bridge demo`` run from an empty directory.

To stay fast and offline, the test venv borrows the checkout venv's third-party packages through
a ``.pth`` path entry (the bridge itself is not importable from there: its editable finder only
runs when that directory is processed as a site directory, which a path entry is not), and the
wheel is installed without dependencies. ``.ci/run`` does the full clean install from the
package index as well.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from bridge.spool.schema import SCHEMA_VERSION
from tests.support import REPO
from tests.support.tools import require_tool

# Files a user of the wheel needs that are not Python modules.
PACKAGE_DATA = (
    "bridge/py.typed",
    "bridge/lab/examples/topic-mappings.yaml",
    "bridge/lab/examples/mosquitto.conf",
    "bridge/recipes/tasmota.yaml",
    "bridge/recipes/zigbee2mqtt.yaml",
    "bridge/sparkplug/sparkplug_b.proto",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built the way a release is: the wheel from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the checkout venv has the build backend (dev extras), so no download.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel installed; yields its bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "borrowed-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    wheel = next(dist.glob("*.whl"))
    subprocess.run(
        # pip --python installs into the venv as its own pip would (scripts run its python).
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", wheel],
        check=True,
        timeout=300,
    )
    return venv / "bin"


def test_sdist_and_wheel_carry_license_data_and_type_marker(dist: Path) -> None:
    """The wheel ships the example mapping, the demo's broker settings, py.typed and LICENSE;
    the sdist carries LICENSE and the top-level example files."""
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as whl:
        names = set(whl.namelist())
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(metadata_name).decode()
    for name in PACKAGE_DATA:
        assert name in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: Changelog" in metadata
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"LICENSE", "topic-mappings.yaml", *PACKAGE_DATA} <= members


def test_sdist_wheel_and_installed_command_carry_the_version_from_git(
    dist: Path, installed: Path
) -> None:
    """setuptools-scm gave the sdist the version of this commit (the tag, or a dev version
    naming the commit), the wheel built from the sdist (no .git there) the same through
    PKG-INFO, and the installed command reports it with the spool layout."""
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        pkg_info = next(
            m for m in sdist.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
        )
        extracted = sdist.extractfile(pkg_info)
        assert extracted is not None
        sdist_version = _metadata_version(extracted.read().decode())
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as whl:
        metadata = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        wheel_version = _metadata_version(whl.read(metadata).decode())
    assert wheel_version == sdist_version
    version = Version(wheel_version)
    assert version != Version("0.0"), "the fallback: setuptools-scm did not read git"
    if version.local:  # not built at a tag: the local part names the commit
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert any(p[0] == "g" and head.startswith(p[1:]) for p in version.local.split("."))
    result = subprocess.run(
        [str(installed / "metriqo-bridge"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout == f"metriqo-bridge {wheel_version} (spool layout {SCHEMA_VERSION})\n"


def _metadata_version(metadata: str) -> str:
    return next(line for line in metadata.splitlines() if line.startswith("Version: ")).split()[1]


def test_installed_demo_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    """From a directory with no mapping and no broker settings, the installed demo uses the
    packaged example, ends in RESULT OK, and leaves the directory empty."""
    require_tool("mosquitto", "the demo starts a private mosquitto")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "METRIQO_"))}
    # mosquitto may live in /usr/sbin, which a non-root PATH lacks: keep it findable.
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    env["PATH"] = f"{installed}:{Path(mosquitto).parent}:{env.get('PATH', '')}"
    where = subprocess.run(
        [str(installed / "python"), "-c", "import bridge; print(bridge.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where).resolve().is_relative_to(installed.parent.resolve()), where
    result = subprocess.run(
        [
            *(str(installed / "metriqo-bridge"), "demo", "--seconds", "3", "--rate", "100"),
            *("--devices", "36", "--timeout", "90"),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "RESULT: OK" in result.stdout, output
    assert "example mapping shipped with metriqo-bridge" in result.stdout, output
    # The recipes are package data too: the demo runs them from the installed wheel.
    for name in ("tasmota", "zigbee2mqtt"):
        found = re.search(rf"from recipe {name} +(\d+)  points read back", result.stdout)
        assert found is not None, output
        assert int(found[1]) > 0, output
    # The packaged example's alerts: applied, and the valve alert fired on the local receiver.
    assert re.search(r"alert webhook calls +[1-9]\d*  for [12] of 2", result.stdout), output
    assert re.search(r"verify +\d+  accepted minute\(s\) checked .* 0 gaps, 0 mismatch", output)
    assert list(elsewhere.iterdir()) == []


def test_installed_simulate_sensors_finds_the_example(installed: Path, tmp_path: Path) -> None:
    """simulate-sensors from an empty directory loads the packaged example instead of exiting
    78 (it then fails only for want of a broker on the chosen port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "METRIQO_"))}
    port = _closed_port()
    result = subprocess.run(
        [
            str(installed / "metriqo-bridge"),
            "simulate-sensors",
            "--port",
            str(port),
            "--seconds",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "example mapping shipped with metriqo-bridge" in result.stdout, output
    assert "cannot connect" in result.stderr, output
    assert list(tmp_path.iterdir()) == []


def _closed_port() -> int:
    from bridge.lab.broker import free_port

    return free_port()
