#!/usr/bin/env bash
# The GPU checks of the kernels issue, as one call of the tool library's `device` tool:
#
#   bash scripts/fetch_gpu_wheels.sh             # here, once: .whl/ (~42 MB, git-ignored)
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=540)
#
# 1. tests/kernels on the GPU, compiled (BRECCIA_KERNEL_DEVICE=cuda): the write, decode and
#    extend kernels and the W4A16 GEMM (INT4 / NVFP4 codes packed two per byte, bf16 too) against
#    their fp32 references on the same awkward shapes as under the interpreter, plus CUDA-graph
#    capture and replay of a write + decode step (views included) and of a W4A16 GEMM.
# 2. benchmarks/bench_decode.py: decode time and achieved bandwidth of breccia's FP8 kernel
#    against SGLang's Triton decode on BF16 and per-tensor FP8 KV, side by side.
# 3. benchmarks/bench_gemm.py: the FP8 recipes' GEMMs (block 1x128 / 1x64 and MXFP8 on SGLang's
#    Triton block kernel with our configs, per-tensor FP8; on sm_90 also 1x128 on torch's blockwise
#    scaled_mm, the blockscale-sm90 kernel) against BF16, the emulated kernel and SGLang's 128x128
#    block kernel on Llama-3-8B's shapes, with the FP8 GEMM issue's targets and the fastest 1x128;
#    and the 4-bit recipes (int4-g128 with and without zero points, nvfp4) on our Triton W4A16
#    kernel against BF16 and the emulated kernel, with the 4-bit issue's targets. (SGLang's Marlin
#    rows need its CUDA kernels, which a bare machine lacks: they say so.)
# 4. benchmarks/bench_moe.py: FP8 1x128 and INT4 g128 experts on SGLang's fused MoE Triton
#    kernels against BF16 experts on the same kernels, Qwen3-30B-A3B's MoE shapes, batch 1-256,
#    with the MoE issue's targets.
# Logs and JSON go to $OUT (the tool brings them back, 8 files at most: env.txt, kernels.log and a
# log and a JSON per benchmark); the last lines printed are the table.
#
# To try the script itself without a GPU (the interpreter, tiny sizes), with a Python that
# has torch and triton: the wheels must match that Python (fetch_gpu_wheels.sh takes its version,
# e.g. `bash scripts/fetch_gpu_wheels.sh 3.11`), then BRECCIA_KERNEL_DEVICE=cpu PYTHON=... bash scripts/gpu_checks.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${BRECCIA_KERNEL_DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
SITE=$(mktemp -d)
export PYTHONUNBUFFERED=1 BRECCIA_KERNEL_DEVICE=$DEVICE

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "installing .whl/ failed: run scripts/fetch_gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH="$SITE:$PWD"
{
    date -u; nvidia-smi -L 2>&1
    "$PYTHON" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
} | tee "$OUT/env.txt"

status=0
# The kernel tests need only torch, triton, breccia and this package (no SGLang, no model).
"$PYTHON" -m pytest -q -p no:cacheprovider tests/kernels 2>&1 \
    | tee "$OUT/kernels.log" || status=1

smoke=()
[ "$DEVICE" = cuda ] || smoke=(--smoke)
"$PYTHON" benchmarks/bench_decode.py "${smoke[@]}" --out "$OUT/decode.json" 2>&1 | tee "$OUT/bench.log" || status=1
"$PYTHON" benchmarks/bench_gemm.py "${smoke[@]}" --out "$OUT/gemm.json" 2>&1 | tee "$OUT/gemm.log" || status=1
"$PYTHON" benchmarks/bench_moe.py "${smoke[@]}" --out "$OUT/moe.json" 2>&1 | tee "$OUT/moe.log" || status=1

echo "--- kernels: $(tail -1 "$OUT/kernels.log")"
echo "--- gpu_checks.sh: $([ $status -eq 0 ] && echo PASS || echo FAIL), files in $OUT"
exit $status
