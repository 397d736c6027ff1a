#!/usr/bin/env bash
# Runs `metriqo-bridge demo` once on arm64 under emulation, on an amd64 Debian/Ubuntu machine:
# a Debian bookworm arm64 root filesystem (mmdebstrap) with Debian's python3 and mosquitto, a
# venv in it installed from requirements.lock (hash-checked, so pip must find an aarch64 wheel
# of every dependency whose hash is in the lock) plus the bridge's wheel built here, then the
# demo inside it, each arm64 binary run by qemu-user-static through binfmt_misc.
# Needs root, mmdebstrap, qemu-user-static and network access to the Debian mirror and PyPI.
# Not run by CI (minutes of emulated CPU); docs/deployment/arm64.md shows a run.
#
#   sudo bash deploy/arm64-demo.sh [demo options, default: --seconds 5 --timeout 300]
#
# The root filesystem is kept in $METRIQO_ARM64_ROOT (default /var/tmp/metriqo-bridge-arm64)
# and reused by the next run; delete that directory to start from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

root=${METRIQO_ARM64_ROOT:-/var/tmp/metriqo-bridge-arm64}
# Emulated, everything runs several times slower: the fleet publishes as usual, and the check
# that every point arrived, unchanged, gets more time for the bridge to deliver them.
[ "$#" -gt 0 ] || set -- --seconds 5 --timeout 300

if [ "$(id -u)" -ne 0 ]; then
    echo "arm64-demo: run as root (mmdebstrap, binfmt_misc and chroot need it)" >&2
    exit 1
fi
for tool in mmdebstrap qemu-aarch64-static chroot unshare; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "arm64-demo: $tool is missing (apt-get install mmdebstrap qemu-user-static)" >&2
        exit 1
    }
done

# The kernel runs an arm64 ELF file through qemu only when binfmt_misc has an entry for it.
# qemu-user-static ships the entry (for systemd-binfmt, which a container does not run); the
# F flag makes the kernel open the interpreter now, so it also works inside the chroot.
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/register" ]; then
    mount -t binfmt_misc binfmt_misc "$binfmt"
fi
if [ ! -e "$binfmt/qemu-aarch64" ]; then
    if command -v update-binfmts >/dev/null 2>&1; then
        update-binfmts --enable qemu-aarch64
    else
        grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf > "$binfmt/register"
    fi
fi
echo "arm64-demo: binfmt_misc qemu-aarch64 is $(head -n 1 "$binfmt/qemu-aarch64")"

started=$(date +%s)
# mmdebstrap fills the directory as it goes: only the marker, written once it has finished,
# says the root filesystem is complete and may be reused.
complete="$root/.metriqo-arm64-root-complete"
if [ ! -e "$complete" ]; then
    echo "arm64-demo: building the arm64 root filesystem in $root"
    rm -rf "$root"
    mmdebstrap --arch=arm64 --variant=apt \
        --include=python3,python3-venv,mosquitto,ca-certificates,tzdata \
        bookworm "$root" http://deb.debian.org/debian
    touch "$complete"
fi
rootfs_done=$(date +%s)

# The bridge's wheel is pure Python: built here, natively, by the checkout's own venv.
work=$(mktemp -d -t metriqo-arm64-XXXXXX)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m build --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { cat "$work/build.log" >&2; exit 1; }
rm -rf "$root/opt/metriqo" "$root/tmp/metriqo-install"
mkdir -p "$root/tmp/metriqo-install"
cp requirements.lock "$work"/dist/*.whl "$root/tmp/metriqo-install/"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A machine that reaches PyPI through a TLS-inspecting proxy trusts the proxy's CA through pip's
# "cert" setting; the arm64 root's own CA bundle does not have it, so pip there gets the same.
pip_env=()
host_cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$host_cert" ] && [ -f "$host_cert" ]; then
    cp "$host_cert" "$root/tmp/metriqo-install/ca.crt"
    pip_env=(PIP_CERT=/tmp/metriqo-install/ca.crt)
fi

# Inside a private mount namespace, so the /proc, /dev and /tmp mounts go away with it.
run_arm64() {
    unshare --mount --propagation private -- sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            LANG=C.UTF-8 "$@"' sh "$root" "$@"
}
run_arm64 uname -m
run_arm64 python3 -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])'
run_arm64 python3 -m venv /opt/metriqo
# --only-binary: an aarch64 wheel for every dependency, never a build from source.
run_arm64 env "${pip_env[@]}" /opt/metriqo/bin/pip install -q --only-binary=:all: \
    --require-hashes -r /tmp/metriqo-install/requirements.lock
run_arm64 sh -c '/opt/metriqo/bin/pip install -q --no-deps /tmp/metriqo-install/*.whl'
installed=$(date +%s)
run_arm64 /opt/metriqo/bin/pip list --format=freeze
run_arm64 /opt/metriqo/bin/metriqo-bridge --version

mkdir -p "$root/tmp/metriqo-demo"
demo_started=$(date +%s)
set +e
run_arm64 sh -c 'cd /tmp/metriqo-demo && exec /opt/metriqo/bin/metriqo-bridge demo "$@"' sh "$@" \
    2>&1 | tee "$work/demo.log"
rc=${PIPESTATUS[0]}
set -e
demo_done=$(date +%s)
echo "arm64-demo: root filesystem $((rootfs_done - started)) s," \
    "venv and install $((installed - rootfs_done)) s, demo $((demo_done - demo_started)) s"
if [ "$rc" -ne 0 ] || ! tail -n 1 "$work/demo.log" | grep -q '^RESULT: OK'; then
    echo "arm64-demo: the demo exited $rc and did not end in RESULT: OK" >&2
    exit 1
fi
