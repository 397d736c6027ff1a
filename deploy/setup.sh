#!/usr/bin/env bash
# Sets up a development/demo checkout: mosquitto (from the OS packages, if missing) and a
# Python virtual environment in .venv with the bridge and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }

if ! have_mosquitto; then
    echo "setup: installing mosquitto (the demo and the tests start their own local broker)"
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mosquitto mosquitto-clients
    elif command -v brew >/dev/null 2>&1; then
        brew install mosquitto
    else
        echo "setup: please install mosquitto with your package manager, then run this again" >&2
        exit 1
    fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python 3.11 or newer is needed ($python is $("$python" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ] && ! "$python" -m venv .venv; then
    # Debian/Ubuntu ship venv separately (python3-venv).
    if command -v apt-get >/dev/null 2>&1; then
        rm -rf .venv
        $([ "$(id -u)" -eq 0 ] || echo sudo) apt-get install -y -qq python3-venv
        "$python" -m venv .venv
    else
        exit 1
    fi
fi
.venv/bin/python -m pip install -q --upgrade pip
# Exactly the locked versions, each checked against its recorded sha256 (requirements-dev.lock:
# the runtime dependencies and the dev extras; refresh it with 'bash deploy/lock.sh'). Then the
# bridge itself, editable, with no dependency resolution of its own, built by the locked
# setuptools and setuptools-scm in the venv (no build environment downloaded).
.venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "setup: done — .venv/bin/metriqo-bridge is ready"
