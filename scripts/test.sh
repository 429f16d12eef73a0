#!/usr/bin/env bash
# Install (once) and run the whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests "$@"
