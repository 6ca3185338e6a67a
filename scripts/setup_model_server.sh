#!/usr/bin/env bash
# Make the venv that runs the KServe v2 test server (Triton inside PyPI's
# nvidia-pytriton, its Python model running the bundle's IR with OpenVINO).
# Idempotent: a venv that already imports pytriton and openvino is kept.
# Usage: scripts/setup_model_server.sh [VENV]   (default .cache/model-server-venv)
# Prints the venv's python on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${SEGEDGE_MODEL_SERVER_VENV:-$here/.cache/model-server-venv}}"
# Debian's python3: pytriton's model stub fails under other 3.11 builds
# ('_thread.RLock' object has no attribute '_recursion_count').
py="${SEGEDGE_MODEL_SERVER_PYTHON:-/usr/bin/python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import pytriton, openvino, numpy' 2>/dev/null; then
  echo "$venv/bin/python"; exit 0
fi
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >&2 || true
ov="$(grep -E '^openvino==' "$here/constraints.txt" 2>/dev/null | head -1 || true)"
"$venv/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "${ov:-openvino}" numpy >&2
"$venv/bin/python" -c 'import pytriton, openvino, numpy'
echo "$venv/bin/python"
