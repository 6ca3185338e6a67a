#!/usr/bin/env bash
# Prepare this checkout: system packages (as root, via apt) and a venv in .venv.
#   scripts/setup.sh agent   light runtime only (demo, devices)
#   scripts/setup.sh all     + build (torch, smp, nncf), deploy (ansible) and dev tools
# Idempotent: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-all}"

APT_AGENT=(mosquitto mosquitto-clients)
# Test rig: camera stand-ins (ffmpeg; GStreamer's RTSP server for tests/helpers/rtsp_server.py),
# device roots and their boot (mmdebstrap, systemd-nspawn), network namespaces (iproute2),
# Ansible transport (ssh).
APT_ALL=("${APT_AGENT[@]}" ffmpeg mmdebstrap debootstrap systemd-container iproute2 openssh-client
         openssh-server openssl procps python3-gi gir1.2-gst-rtsp-server-1.0
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)

case "$profile" in
  agent) apt_pkgs=("${APT_AGENT[@]}"); extras="agent" ;;
  all) apt_pkgs=("${APT_ALL[@]}"); extras="agent,build,deploy,dev" ;;
  *) echo "usage: $0 [agent|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.segedge-$extras-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: pip install -e .[$extras] (constraints.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]"
  touch "$stamp"
fi
