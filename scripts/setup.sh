#!/usr/bin/env bash
# Prepare this checkout: system packages (as root, via apt) and a venv in .venv.
#   scripts/setup.sh agent   light runtime only (demo, devices)
#   scripts/setup.sh all     + build (torch, smp, nncf, EfficientNet-Lite0 weights), deploy
#                            (ansible) and dev tools
# Idempotent: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-all}"

# The agent and the demo need no system packages (the demo uses Mosquitto when it is
# installed, else its embedded broker). Tests: a real Mosquitto and its clients (the rig);
# camera stand-ins (ffmpeg; GStreamer's RTSP server for tests/helpers/rtsp_server.py),
# device roots and their boot (mmdebstrap, systemd-nspawn), network namespaces (iproute2),
# Ansible transport (ssh), a headless browser for the dashboard's page test (chromium), a real
# Prometheus scraping the agent (tests/agent/e2e/test_metrics.py), Debian's python3 with venv for
# the model-server test venv (scripts/setup_model_server.sh).
APT_AGENT=()
APT_ALL=(mosquitto mosquitto-clients ffmpeg mmdebstrap debootstrap systemd-container iproute2
         openssh-client openssh-server openssl procps python3-gi gir1.2-gst-rtsp-server-1.0
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad chromium
         prometheus python3-venv)

case "$profile" in
  agent) apt_pkgs=("${APT_AGENT[@]}"); extras="agent" ;;
  all) apt_pkgs=("${APT_ALL[@]}"); extras="agent,build,deploy,dashboard,dev,metrics" ;;
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
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv || { echo "setup: '$PY -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi
stamp=".venv/.segedge-$extras-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # not quiet: a first install downloads ~100 MB (openvino, opencv), progress shows it
  echo "setup: pip install -e .[$extras] into .venv (constraints.txt)"
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar on \
    -c constraints.txt -e ".[$extras]"
  touch "$stamp"
fi
