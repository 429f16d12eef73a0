#!/usr/bin/env bash
# Fetch into .whl/ what scripts/gpu_checks.sh needs on a lent GPU machine that lacks it.
#
# That machine (the tool library's `device`, kind nvidia-h200) has Python 3.12, torch and
# triton, and no network. It gets breccia, and SGLang's Python package for its Triton decode
# kernel (the benchmark's baselines) with the light packages its kernel modules' imports reach
# and the GPU image lacks: SGLang's block FP8 GEMM and fused MoE modules import srt modules that
# import IPython (sglang/utils.py), dill and tvm_ffi (checked 2026-12-04 with a Python holding only
# the image's packages: without them bench_gemm's FP8 rows and bench_moe could not run). Not SGLang's serving stack: sglang-kernel (a 373 MB wheel) and flashinfer (65 MB) do
# not fit the tool's 64 MiB carry limit, so the engine itself cannot run there.
#
# Usage: bash scripts/fetch_gpu_wheels.sh [PYTHON_VERSION]   (default 3.12; 3.11 to try it here)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${1:-3.12}
DEST="$ROOT/.whl"
rm -rf "$DEST" && mkdir -p "$DEST"
# The versions our own venv resolved (sglang==0.5.23's pins; the light ones as of 2026-12-06), so
# the kernel is the one we test.
WHEELS=(
    breccia==0.1.3 sglang==0.5.23
    pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0
    starlette==1.10.0 python-multipart==0.0.34 msgspec==0.23.0 orjson==3.13.0 pybase64==1.5.1 pyzmq==27.3.0
    dill==0.4.1 apache-tvm-ffi==0.1.11
    ipython==9.19.1 traitlets==5.16.1 jedi==0.20.1 parso==0.8.7 prompt_toolkit==3.0.53 wcwidth==0.9.5
    pexpect==4.9.0 ptyprocess==0.7.0 matplotlib-inline==0.2.2 stack_data==0.6.3 asttokens==3.0.2
    executing==2.3.0 pure_eval==0.2.4 ipython_pygments_lexers==1.1.1
)
PLATFORMS=()
for n in 39 38 37 36 35 34 31 28 27 24 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
du -sh "$DEST"
