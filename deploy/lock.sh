#!/usr/bin/env bash
# Refreshes the lock files from pyproject.toml. Run it after changing a dependency there (CI's
# tests/deploy/test_locks.py fails until the locks agree), then commit pyproject.toml and both
# locks together:
#   requirements-dev.lock  the runtime dependencies + the dev extras: what deploy/setup.sh (so
#                          .ci/run) installs, with --require-hashes
#   requirements.lock      the runtime dependencies alone, at the same versions: what the
#                          container image installs (deploy/Dockerfile)
# Each pins every package, direct or not, to one version and lists the sha256 of every file
# PyPI has for that version (the wheels for Linux x86_64 and arm64, macOS, Windows, and the
# sdist), so pip refuses anything else.
#
# Usage: bash deploy/lock.sh            keep every pin that still fits; resolve only what changed
#        bash deploy/lock.sh --upgrade  move every pin to the newest version that fits
#
# uv resolves (a dev extra; PyPI; a few seconds): unlike pip-compile, its universal resolution
# gives one lock that holds for every platform and Python >= 3.11 (requires-python), with
# environment markers where they differ, instead of a lock for the machine it ran on.
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=()
case "${1:-}" in
    "") ;;
    --upgrade) upgrade=(--upgrade) ;;
    *) echo "usage: bash deploy/lock.sh [--upgrade]" >&2; exit 2 ;;
esac

uv=.venv/bin/uv
[ -x "$uv" ] || uv=$(command -v uv) || {
    echo "lock: uv not found: run 'bash deploy/setup.sh' first (uv is a dev extra)" >&2
    exit 1
}
python=.venv/bin/python
[ -x "$python" ] || python=python3

common=(
    --universal --python-version 3.11 --generate-hashes --quiet
    --custom-compile-command "bash deploy/lock.sh"
    "${upgrade[@]}"
)
# Dev first: it is the superset. The runtime lock is then constrained to the dev lock's
# versions, so the tests run exactly what the image ships.
"$uv" pip compile pyproject.toml --extra dev "${common[@]}" -o requirements-dev.lock
"$uv" pip compile pyproject.toml -c requirements-dev.lock "${common[@]}" -o requirements.lock
# Record in each lock the digest of the dependency lists it was made from, then check both
# the way CI does (tests/support/locks.py).
"$python" -m tests.support.locks stamp requirements-dev.lock requirements.lock
"$python" -m tests.support.locks check
echo "lock: requirements-dev.lock and requirements.lock are up to date with pyproject.toml"
