#!/usr/bin/env bash
# The agent on the demo clip with the demo model, a broker and the live subscriber; no root needed.
#   bash scripts/demo.sh [--duration 30] [--out demo-out] [--broker HOST:PORT] [--embedded-broker]
# Broker: --broker HOST:PORT if given, else Mosquitto on a free loopback port when installed,
# else the embedded one (tools/mqtt_broker.py). The first run creates .venv (agent runtime only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh agent
exec .venv/bin/python -m tools.demo "$@"
