#!/usr/bin/env bash
# Our Triton kernels under another Triton than the venv's, on this machine (no GPU needed).
#
#   bash scripts/triton_compat.sh            # Triton 3.6.0: what the lent GPU machine has
#   bash scripts/triton_compat.sh 3.7.0
#
# SGLang 0.5.23 pins torch 2.14.1, which brings Triton 3.8: what users run and CI tests. The
# lent GPU machine has torch 2.11 and Triton 3.6, and cannot take another (a Triton wheel is
# ~190-250 MB; the device tool carries 64 MiB), so every GPU number is a Triton 3.6 number.
# This puts that Triton in front of the venv's (pip --target, PYTHONPATH) and runs
# 1. tests/kernels under the interpreter: the kernels' Triton API works there, and
# 2. benchmarks/compile_kernels.py for sm_80 / 89 / 90: every kernel compiles, with its
#    registers, spills and loop instructions, to set beside the venv Triton's
#    (benchmarks/out/compile_kernels.json) when a GPU result is read.
# About 190 MB to fetch once, then ~3 min of tests and ~4 min of compiles on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VERSION=${1:-3.6.0}
source scripts/env.sh
TARGET="${XDG_CACHE_HOME:-$HOME/.cache}/breccia-sglang/triton-$VERSION"
if [ ! -f "$TARGET/triton/__init__.py" ]; then
    rm -rf "$TARGET"
    "$VENV/bin/python" -m pip install --quiet --no-deps --target "$TARGET" "triton==$VERSION"
fi
export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR="$TARGET.cache"
"$VENV/bin/python" -c "import triton; assert triton.__version__ == '$VERSION', triton.__file__; print('triton', triton.__version__)"
TRITON_INTERPRET=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/kernels
mkdir -p benchmarks/out
"$VENV/bin/python" benchmarks/compile_kernels.py --arch 80 89 90 --out "benchmarks/out/compile_kernels_triton-$VERSION.json" | tail -3
