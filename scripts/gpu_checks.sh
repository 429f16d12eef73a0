#!/usr/bin/env bash
# The GPU checks of the kernel issues, as one call of the tool library's `device` tool:
#
#   bash scripts/fetch_gpu_wheels.sh             # here, once: .whl/ (~51 MB, git-ignored)
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=590)
#   run(command="bash scripts/gpu_checks.sh tune gemm kernels", ...)   # some steps only
#
# Each step has its own time limit (the sum fits the tool's 10 minutes), so one slow step cannot
# take the others' results with it; every step writes its JSON as it goes.
# 1. benchmarks/tune_block_fp8.py: tunes the block FP8 GEMM's tile configs (SGLang's Triton W8A8
#    block kernels, plain and Hopper variants) for 1x128 / 1x64 / 1x32 on Llama-3-8B's shapes at
#    M = 1 .. 2048, each config checked against the W8A8 reference, beside BF16 and SGLang's own
#    128x128 kernel; writes block_fp8_<GPU>.json, the table to ship in integration/gemm/tuned/.
# 2. benchmarks/tune_weight_only.py: the decode-sized (M = 1, 16) launches of our W8A16 (1x128
#    FP8) and W4A16 (INT4 g128, NVFP4) GEMMs over tile configs and K-split programs per SM, each
#    checked against its fp32 reference, beside BF16; writes weight_only_<GPU>.json, the table to
#    ship in kernels/gemm/tuned/, which the gemm step then takes.
# 3. benchmarks/bench_gemm.py, with those tables: the FP8 recipes' linears (activation quantization
#    included: block 1x128 / 1x64 and MXFP8 on SGLang's Triton block kernel, per-tensor FP8; on
#    sm_90 also 1x128 on torch's blockwise scaled_mm) against BF16, the emulated kernel and
#    SGLang's 128x128 block kernel, with the FP8 GEMM issue's targets and the fastest 1x128; every
#    FP8 recipe also on our W8A16 kernel (no activation quantization, K split at decode sizes),
#    with each recipe's fastest kernel per M and the w8a16_up_to_m it suggests (up to which M
#    the W8A8 kernels should route decode to W8A16: the block_fp8 table's key); every FP8
#    recipe from M = 128 on its weight dequantized in one pass then torch.matmul, with the
#    dequantize_from_m per scale group it suggests (the prefill route, the same table's key); and
#    the 4-bit recipes (int4-g128 with and without zero points, nvfp4) on our Triton W4A16 kernel,
#    with the 4-bit issue's targets, beside the same kernel with its PTX decode off at M <= 32
#    (int4-g128-elementwise, nvfp4-elementwise: what the PTX gives), and int4-g128 / nvfp4 from M = 128 on their weight
#    dequantized in one pass (the "int4" / "nvfp4" keys of that suggestion). (SGLang's Marlin
#    rows need its CUDA kernels, which a bare machine lacks: they say so.)
# 4. tests/kernels on the GPU, compiled (BRECCIA_KERNEL_DEVICE=cuda): the write, decode and
#    extend kernels and the W4A16 / W8A16 / MoE W4A16 / MoE W8A16 GEMMs against their fp32 references on the interpreter
#    tests' awkward shapes (W4A16's inline-PTX decode of INT4 and NVFP4 included: the interpreter
#    runs no assembly, so this is its first run on real operands), plus CUDA-graph capture and replay of a write + decode step (views
#    included) and of each GEMM (K split included); and on sm_90 the blockscale-sm90 kernel's torch backend against the W8A8
#    reference at row counts 1-33 (tests/integration/test_gemm_blockscale.py).
# 5. benchmarks/bench_moe.py: FP8 1x128 and INT4 g128 experts on SGLang's fused MoE Triton
#    kernels, INT4 g128 and NVFP4 experts on our MoE W4A16 kernel and the FP8 experts on our MoE
#    W8A16 kernel (first runs on a GPU), against BF16 experts, Qwen3-30B-A3B's MoE shapes, batch
#    1-256, with the MoE targets.
# 6. benchmarks/bench_decode.py --tune: breccia's FP8 decode kernel against SGLang's Triton decode
#    on BF16 and per-tensor FP8 KV, side by side, and ours with every candidate tile config (keys a
#    step, warps, pipeline stages: kernels/attention/decode_tiles.py); decode.json's "tiles" is the
#    winner, and the file itself is the tuned table to ship as kernels/attention/tuned/decode_<GPU>.json.
# The machine's own Triton compiles every kernel (3.6 on the H200 lent so far, not the 3.8 users
# get with SGLang 0.5.23): read decode and extend times with benchmarks/RESULTS.md's "Triton 3.6
# against Triton 3.8" (scripts/triton_compat.sh reproduces it here). run.log's first lines say which.
# Files in $OUT: run.log (everything printed, env first), a JSON per step and the two tuned
# tables (block_fp8_<GPU>.json, weight_only_<GPU>.json): 8, the most the tool brings back, so a
# new step must write into one of these. The last lines printed are the targets.
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
LOG="$OUT/run.log"
export PYTHONUNBUFFERED=1 BRECCIA_KERNEL_DEVICE=$DEVICE

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "installing .whl/ failed: run scripts/fetch_gpu_wheels.sh here and carry .whl"; exit 1; }
export PYTHONPATH="$SITE:$PWD"
{
    date -u; nvidia-smi -L 2>&1
    "$PYTHON" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$LOG"

status=0
step() {  # step SECONDS NAME COMMAND...: run it under a time limit, logged; a failure fails the script
    local limit=$1 name=$2
    shift 2
    echo "=== $name (at most ${limit} s) $(date -u +%T)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { status=1; echo "=== $name: exit $rc$([ "$rc" -eq 124 ] && echo ' (time limit)')" | tee -a "$LOG"; }
}

smoke=()
parallel=()
# The kernel tests get 70 s on a GPU (compiled, 8 workers: their share of the lease); under
# the interpreter (CPU mode, 2 cores) they take ~3-4 min, and there is no lease to fit.
kernels_s=70
if [ "$DEVICE" = cuda ]; then parallel=(-n 8); else smoke=(--smoke); kernels_s=400; fi
steps=" ${*:-tune tune-wo gemm kernels moe decode} "  # arguments: run only these steps (e.g. `moe decode`)
wants() { [[ "$steps" == *" $1 "* ]]; }
# TUNE_ARGS: e.g. "--m 1 8" to tune some M only (the table then covers those, so gemm keeps the
# shipped one); by default every M, and gemm runs with the table just tuned.
read -ra tune_args <<< "${TUNE_ARGS:-}"
wants tune && step 100 tune "$PYTHON" benchmarks/tune_block_fp8.py "${smoke[@]}" --jobs 14 --out-dir "$OUT" "${tune_args[@]}"
tuned=$(ls "$OUT"/block_fp8_*.json 2>/dev/null | head -1)
if [ -n "$tuned" ] && [ -z "${TUNE_ARGS:-}" ]; then
    export BRECCIA_SGLANG_BLOCK_FP8_CONFIGS="$tuned"  # else the table shipped for this GPU, if any
fi
wants tune-wo && step 85 tune-wo "$PYTHON" benchmarks/tune_weight_only.py "${smoke[@]}" --jobs 14 \
    --out "$OUT/tune_weight_only.json"
tuned_wo=$(ls "$OUT"/weight_only_*.json 2>/dev/null | head -1)
[ -n "$tuned_wo" ] && export BRECCIA_SGLANG_WEIGHT_ONLY_CONFIGS="$tuned_wo"  # gemm's W8A16 / W4A16 rows take it
# gemm starts no new case after 135 s, so the targets still print on what ran (the step stops at 155)
wants gemm && step 155 gemm "$PYTHON" benchmarks/bench_gemm.py "${smoke[@]}" --budget-s 135 --out "$OUT/gemm.json"
wants kernels && step "$kernels_s" kernels "$PYTHON" -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/kernels \
    tests/integration/test_gemm_blockscale.py
wants moe && step 65 moe "$PYTHON" benchmarks/bench_moe.py "${smoke[@]}" --out "$OUT/moe.json"
# decode rewrites its JSON after every (batch, context): a run cut short keeps its cases and tiles.
# On a GPU, 3 contexts (as the H200's first table) leave time for the 9 tile candidates.
decode_cases=(); [ "$DEVICE" = cuda ] && decode_cases=(--context 4096 16384 32768)
wants decode && step 70 decode "$PYTHON" benchmarks/bench_decode.py "${smoke[@]}" "${decode_cases[@]}" --tune --out "$OUT/decode.json"
# `extra`: a one-off script ($EXTRA, e.g. a probe carried in a git-ignored folder) in this environment.
wants extra && step "${EXTRA_SECONDS:-80}" extra "$PYTHON" "${EXTRA:?EXTRA names the script the extra step runs}"

echo "--- targets:"; grep -h "^PASS\|^FAIL\|^INFO" "$LOG"
echo "--- kernels: $(grep -E '[0-9]+ (passed|failed).* in [0-9.]+s' "$LOG" | tail -1)"
echo "--- gpu_checks.sh: $([ $status -eq 0 ] && echo PASS || echo FAIL), files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
