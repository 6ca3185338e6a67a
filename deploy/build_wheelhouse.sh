#!/usr/bin/env bash
# Build a wheelhouse for devices on the controller (devices need no package index).
#   deploy/build_wheelhouse.sh --python 3.11 --out .rig/wheelhouse/cp311
#   deploy/build_wheelhouse.sh --python 3.9 --openvino '==2022.3.*' --out .rig/wheelhouse/cp39-ov2022.3
# Writes the segedge wheel, its runtime dependencies for manylinux x86_64 and the given
# Python, and requirements.txt pinning every one of them (the role installs from it).
set -euo pipefail
cd "$(dirname "$0")/.."
py=3.11 out="" openvino="" glibc=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --openvino) openvino="$2"; shift 2 ;;
    --glibc) glibc="$2"; shift 2 ;;
    *) echo "usage: $0 --python X.Y --out DIR [--openvino SPEC] [--glibc 2.NN]" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "$0: --out DIR is required" >&2; exit 2; }
# glibc of the device: bookworm 2.36, bullseye 2.31; every manylinux tag up to it is accepted.
[ -n "$glibc" ] || { [ "$py" = 3.9 ] && glibc=2.31 || glibc=2.36; }
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 "${glibc#2.}"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
PIP="${PIP:-.venv/bin/python -m pip}"
abi="cp${py/./}"
mkdir -p "$out"
rm -f "$out"/*.whl "$out/requirements.txt"
$PIP wheel -q --no-deps --no-build-isolation -w "$out" .
pins=(prometheus-client)  # [metrics] (optional, imported only when configured): small, pure Python
# pip evaluates environment markers against this Python, not --python-version: add the
# marker-only dependencies of the device's Python by hand.
case "$py" in 3.9|3.10) pins+=("tomli>=1.1") ;; esac
if [ -n "$openvino" ]; then
  # Older runtimes (2022.3 for MYRIAD) were built against numpy 1.x and OpenCV 4.
  pins+=("openvino$openvino" "numpy<2" "opencv-python-headless>=4.5,<5")
elif [ "$py" = "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ]; then
  pins+=(-c constraints.txt)  # the project's known-good set
fi
$PIP download -q --only-binary=:all: "${platforms[@]}" --python-version "$py" \
  --implementation cp --abi "$abi" -d "$out" "$out"/segedge-*.whl "${pins[@]}"
# Exact pins for every wheel in the wheelhouse (it holds exactly what pip resolved).
.venv/bin/python - "$out" <<'PY'
import pathlib, re, sys
out = pathlib.Path(sys.argv[1])
lines = sorted(re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() + "==" + w.name.split("-")[1]
             for w in out.glob("*.whl"))
(out / "requirements.txt").write_text("\n".join(lines) + "\n")
print(f"{out}: " + ", ".join(lines))
PY
