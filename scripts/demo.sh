#!/usr/bin/env bash
# The agent on the demo clip with the demo model, an embedded Mosquitto and the live subscriber.
#   bash scripts/demo.sh [--duration 30] [--out demo-out]   (0 = until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh agent
exec .venv/bin/python -m edge_agent.demo "$@"
