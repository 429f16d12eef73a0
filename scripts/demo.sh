#!/usr/bin/env bash
# The main job on a fresh machine: install, fetch the demo model, quantize it to breccia FP8,
# serve it with `python -m sglang.launch_server --breccia-format` on CPU, hold a short
# multi-turn chat and print the answers and the prefix-cache hits.
source "$(dirname "$0")/env.sh"
exec "$VENV/bin/breccia-sglang" demo "$@"
