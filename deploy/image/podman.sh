# Sourced by the scripts in deploy/image: podman with the settings this repository's hosts need
# (deploy/image/containers.conf), unless CONTAINERS_CONF already names a file of your own.
# shellcheck shell=bash
LOCAL_BASE_IMAGE=localhost/metriqo-bridge-base:bookworm
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}"

