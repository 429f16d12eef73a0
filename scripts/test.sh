#!/usr/bin/env bash
# Install (once) and run the whole test suite. Extra arguments go to pytest.
#
# One pytest process, on purpose: most of the suite's time is real engine subprocesses, and each
# already keeps ~1.35 of the 2 cores busy (scheduler, detokenizer, torch threads). Two
# pytest-xdist workers (-n 2 --dist loadfile) made the suite slower on 2 cores: still running at
# 41 min with 98% done, against 37.5 min in one process (2026-12-06).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests "$@"
