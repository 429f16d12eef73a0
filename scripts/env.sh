# Sourced by scripts/demo.sh and scripts/test.sh: ensures a virtualenv with breccia-sglang,
# SGLang 0.5.23 (upstream's own pins) and the test/bench extras, and exports $VENV.
#
# The venv lives outside the clone, keyed by a hash of pyproject.toml's dependency lists, so a
# fresh clone reuses it (the dependency install takes ~5 minutes), a dependency change rebuilds
# it, and any other edit (entry points, pytest settings) only re-runs the editable install below.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
KEY=$(sed -n '/^requires-python/p; /^dependencies = \[/,/^\]/p; /^\[project.optional-dependencies\]/,/^$/p' \
    "$ROOT/pyproject.toml" | sha256sum | cut -c1-12)
VENV=${BRECCIA_SGLANG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/breccia-sglang/venv-$KEY}
if [ ! -f "$VENV/.complete" ]; then
    echo "breccia-sglang: creating $VENV (first run: installs SGLang 0.5.23 and torch, ~5 min)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test,bench]"
    touch "$VENV/.complete"
else
    # Point the editable install at this clone (cheap; dependencies are already there).
    # setuptools is chatty about editable installs: keep its output unless it fails.
    if ! "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT" > "$VENV/last-install.log" 2>&1; then
        cat "$VENV/last-install.log" >&2
        exit 1
    fi
fi
export VENV
