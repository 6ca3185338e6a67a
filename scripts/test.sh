#!/usr/bin/env bash
# The whole test suite, from a fresh machine: setup, lint, every test (rig tests included).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not rig" -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
