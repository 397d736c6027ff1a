#!/usr/bin/env bash
# Builds deploy/Dockerfile with podman (no daemon) and reports what is in the image: its size,
# the Python distributions its runtime sees, its Debian packages and a CycloneDX SBOM.
#
# Usage: bash deploy/image/build.sh
#   BASE_IMAGE  a base to build on that is already in podman's store (e.g.
#               python:3.11.14-slim-bookworm, pulled where a registry is reachable). Unset:
#               deploy/image/build-base.sh makes one from the Debian archive first.
#   IMAGE       the name to give the image (default localhost/metriqo-bridge:<version>)
#   OUT         where the reports go (default build/image)
# The image's name is written to $OUT/image-name; tests/deploy/test_image_real.py runs the
# image named by METRIQO_IMAGE_UNDER_TEST (.ci/run sets it from that file).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/image/podman.sh
. deploy/image/podman.sh

started=$(date +%s)
base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
    bash deploy/image/build-base.sh
    base=$LOCAL_BASE_IMAGE
fi
python=.venv/bin/python
[ -x "$python" ] || { echo "build: run 'bash deploy/setup.sh' first" >&2; exit 1; }
# The build context has no .git: the version comes from here (setuptools-scm, as for the wheel).
version=$("$python" -m setuptools_scm)
image=${IMAGE:-localhost/metriqo-bridge:${version//+/-}}  # "+" is not allowed in a tag
out=${OUT:-build/image}
mkdir -p "$out"

# The host's CA bundle for pip in the builder (a build secret: in no layer), so that a package
# index behind a TLS-inspecting proxy the host trusts is trusted in the build as well.
secret=()
ca=${PIP_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ ! -s "$ca" ] || secret=(--secret "id=pip-ca,src=$ca")

# --pull=never: the base is local (or was pulled beforehand); nothing is fetched by name here.
# --format docker: the OCI image format has no HEALTHCHECK, podman would drop it.
podman build --pull=never --format docker -f deploy/Dockerfile "${secret[@]}" \
    --build-arg BASE_IMAGE="$base" --build-arg VERSION="$version" \
    -t "$image" . >"$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log" >&2
    echo "build: podman build failed (all of it in $out/build.log)" >&2
    exit 1
}
built=$(date +%s)
printf '%s\n' "$image" >"$out/image-name"

# The runtime's own view, in one container: the distributions the image's interpreter (the
# venv's) finds, in "pip freeze" form (pip is not in the image: importlib.metadata lists them),
# its Python version, and the base's Debian packages. --no-healthcheck: podman would try to set
# up a timer for the HEALTHCHECK of this short run (through systemd, which may not be there).
podman run --rm --read-only --network none --no-healthcheck --entrypoint python3 "$image" -c '
import importlib.metadata as m, platform, subprocess, sys
dists = sorted({(d.metadata["Name"], d.version) for d in m.distributions()},
               key=lambda nv: nv[0].lower())
print("\n".join(f"{n}=={v}" for n, v in dists))
print("--python", platform.python_version())
print("--debian")
sys.stdout.flush()
subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n"], check=True)
' >"$out/contents.txt"
sed '/^--python /,$d' "$out/contents.txt" >"$out/pip-list.txt"
sed '1,/^--debian$/d' "$out/contents.txt" >"$out/debian-packages.txt"
python_in_image=$(sed -n 's/^--python //p' "$out/contents.txt")
rm "$out/contents.txt"

# SBOM of the image's venv, by cyclonedx-py (a dev extra; never in the image). It reads the
# distributions on an interpreter's sys.path, so the venv is copied out of the image and a
# throwaway venv of this host's Python is pointed at its site-packages.
work=$(mktemp -d)
cid=""
cleanup() {
    [ -z "$cid" ] || podman rm --force --volumes "$cid" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cid=$(podman create "$image")
podman cp "$cid:/opt/metriqo-bridge" "$work/image-venv"
podman rm --volumes "$cid" >/dev/null  # and its anonymous spool volume
cid=""
"$python" -m venv --without-pip "$work/probe"
site=$("$work/probe/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
image_site=$(echo "$work"/image-venv/lib/python3.*/site-packages)
rm -rf "$site"
ln -s "$image_site" "$site"
.venv/bin/cyclonedx-py environment "$work/probe/bin/python" \
    --output-format JSON --output-reproducible --output-file "$out/sbom.cdx.json"

size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
{
    echo "image        $image"
    echo "base         $base ($((base_size / 1000000)) MB)"
    echo "size         $((size / 1000000)) MB ($size bytes; $(((size - base_size) / 1000000)) MB over the base)"
    echo "python       $python_in_image"
    echo "distributions $(wc -l <"$out/pip-list.txt") ($out/pip-list.txt)"
    echo "debian       $(wc -l <"$out/debian-packages.txt") packages ($out/debian-packages.txt)"
    echo "sbom         $out/sbom.cdx.json ($(stat -c %s "$out/sbom.cdx.json") bytes)"
    echo "build        $((built - started)) s, reports $(($(date +%s) - built)) s"
} | tee "$out/report.txt"
