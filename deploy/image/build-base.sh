#!/usr/bin/env bash
# Makes the image's base from the Debian archive, for hosts that cannot pull
# python:3.11.14-slim-bookworm (no image registry reachable): a Debian 12 root filesystem made
# by mmdebstrap with Debian's Python 3.11, imported into podman as a local image. deploy/Dockerfile
# then builds on it with --build-arg BASE_IMAGE=<that name> (deploy/image/build.sh does).
#
# Usage: bash deploy/image/build-base.sh [--force]
#   BASE_IMAGE   the local name to import under (default localhost/metriqo-bridge-base:bookworm)
#   MIRROR       the Debian archive (default http://deb.debian.org/debian; security updates
#                come from SECURITY_MIRROR, default http://deb.debian.org/debian-security)
# An image of that name made from this same recipe is kept (the recipe's digest is its label);
# --force makes it again, e.g. to take in new Debian security updates.
#
# What is in it, and why (the official slim image has the same, from python.org's build):
#   python3          the interpreter (/usr/bin/python3, 3.11.2 plus Debian's fixes)
#   python3-venv     the builder stage makes the venv with it (ensurepip)
#   passwd           groupadd/useradd: the final stage makes the image's user
#   ca-certificates  the bridge talks to the Metriqo API over https
#   netbase, tzdata  /etc/services and /etc/protocols; time zones
# Only Essential:yes packages besides (mmdebstrap's "essential" variant): no apt, no compilers.
# Documentation and manual pages are left out, the copyright files are kept. /etc/mtab is the
# usual link to /proc/self/mounts (Debian's images have it; without it podman adds it to every
# container's own layer, and "podman diff" would show /etc changed).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/image/podman.sh
. deploy/image/podman.sh

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    *) echo "usage: bash deploy/image/build-base.sh [--force]" >&2; exit 2 ;;
esac

base=${BASE_IMAGE:-$LOCAL_BASE_IMAGE}
mirror=${MIRROR:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
packages=python3,python3-venv,passwd,ca-certificates,netbase,tzdata
recipe=$(printf '%s\n' "$packages" "$mirror" "$security" | cat - "$0" | sha256sum | cut -c1-16)

if [ "$force" -eq 0 ] &&
    [ "$(podman image inspect --format '{{index .Labels "org.metriqo.base.recipe"}}' "$base" 2>/dev/null)" = "$recipe" ]; then
    echo "build-base: $base is up to date (recipe $recipe); --force makes it again"
    exit 0
fi

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-base: $tool is missing: apt-get install mmdebstrap podman runc" >&2
        exit 1
    }
done

started=$(date +%s)
rootfs_tar=$(mktemp --suffix=.tar)
trap 'rm -f "$rootfs_tar"' EXIT
# merged-usr hook: /bin -> usr/bin etc. made directly, not by the usrmerge package (which
# would bring perl, 50 MB). No Recommends. force-unsafe-io: no fsync per file, the tree is
# thrown away on failure anyway.
mmdebstrap --quiet --variant=essential --include="$packages" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt=force-unsafe-io \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    --customize-hook='ln -sf ../proc/self/mounts "$1"/etc/mtab' \
    bookworm "$rootfs_tar" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"

# awk reads to the end: exiting at the match would leave tar writing into a closed pipe, and
# its SIGPIPE (141) fails the script under pipefail whenever the status file outgrows the pipe.
python_version=$(tar -xOf "$rootfs_tar" ./var/lib/dpkg/status |
    awk '/^Package: python3$/{p=1} p && !v && /^Version:/{v=$2} END{print v}')
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.metriqo.base.recipe=$recipe" \
    --change "LABEL org.opencontainers.image.base.name=debian:bookworm (mmdebstrap)" \
    --change "LABEL org.metriqo.base.python3=$python_version" \
    --change 'CMD ["python3"]' \
    --message "Debian bookworm + python3 $python_version, made by deploy/image/build-base.sh" \
    "$rootfs_tar" "$base" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$base")
echo "build-base: $base (python3 $python_version, $((size / 1000000)) MB) in $(($(date +%s) - started)) s"
