"""Every string other programs and people rely on: flags, names SGLang looks up, environment
variables. Each is spelled here once; the rest of the package, the benchmarks and the
scripts' Python read it from here (``tests/test_layers.py`` checks that no other module
spells one again).
"""

# --- how a user asks for breccia -------------------------------------------------------------

FLAG = "--breccia-format"  # launch_server / `sglang serve`
ENGINE_KEYWORD = "breccia_format"  # sgl.Engine(breccia_format=True); also the argparse dest
QUANT_METHOD = "breccia"  # SGLang's --quantization name and config.json's quant_method

# --- names SGLang looks up -------------------------------------------------------------------

# SGLang gives its shard-aware v2 weight loaders only to quant methods whose class NAME is in
# WEIGHT_LOADER_V2_SUPPORTED, so the class name is a contract too.
LINEAR_METHOD_CLASS = "BrecciaLinearMethod"
TRITON_BACKEND = "breccia_triton"  # --attention-backend: the Triton kernels
TORCH_BACKEND = "breccia_torch"  # --attention-backend: the plain-torch reference path
ATTENTION_BACKENDS = (TRITON_BACKEND, TORCH_BACKEND)
PLATFORM_CLASS = "breccia_sglang.integration.platform.BrecciaCpuPlatform"  # resolved by SGLang

# --- GEMM kernels a breccia linear layer can get (inspect prints them; BRECCIA_SGLANG_GEMM picks one)

GEMM_EMULATED = "emulated"  # breccia's dequantize in torch, then a matmul: any device
GEMM_W8A8_REFERENCE = "w8a8-reference"  # FP8 activations too, in fp32 torch: only when asked for
GEMM_SGLANG_FP8 = "sglang-fp8-linear"  # SGLang's per-tensor FP8 linear (Fp8LinearMethod), sm_89+
GEMM_SGLANG_FP8_CHANNEL = "sglang-fp8-channel"  # SGLang's per-channel W8A8 FP8 linear (W8A8Fp8LinearMethod), sm_89+
GEMM_TRITON_BLOCK_FP8 = "triton-block-fp8"  # SGLang's Triton W8A8 block kernel with our 1xB configs
GEMM_MARLIN_FP8 = "marlin-fp8"  # SGLang's FP8 Marlin (W8A16), for GPUs without FP8 tensor cores
GEMM_BLOCKSCALE_SM90 = "blockscale-sm90"  # 1x128 x 1x128 blockwise FP8 GEMM on Hopper
GEMM_TRITON_W8A16 = "triton-w8a16"  # our Triton W8A16 GEMM over FP8 E4M3 codes (any FP8 recipe), sm_80+
GEMM_TRITON_W4A16 = "triton-w4a16"  # our Triton W4A16 GEMM over packed INT4 / NVFP4 codes, sm_80+
GEMM_MARLIN_INT4 = "marlin-int4"  # SGLang's AWQ / GPTQ Marlin W4A16 for INT4, sm_80+
GEMM_MARLIN_NVFP4 = "marlin-nvfp4"  # SGLang's FP4 Marlin W4A16 for NVFP4, sm_80-90
GEMM_TRITON_FUSED_MOE = "triton-fused-moe"  # SGLang's fused MoE Triton kernel, W8A8 FP8 experts, sm_89+
GEMM_TRITON_MOE_WNA16 = "triton-moe-wna16"  # SGLang's fused MoE Triton kernel, W4A16 INT4 experts, sm_80+
GEMM_TRITON_MOE_W4A16 = "triton-moe-w4a16"  # our Triton MoE W4A16 over packed INT4 / NVFP4 experts, sm_80+
GEMM_TRITON_MOE_W8A16 = "triton-moe-w8a16"  # our Triton MoE W8A16 over FP8 E4M3 experts, sm_80+

# --- environment variables -------------------------------------------------------------------

# "0" keeps the CPU platform inert (it activates by itself when no CUDA device is visible).
ENV_CPU_PLATFORM = "BRECCIA_SGLANG_CPU_PLATFORM"
# "0" keeps SGLang's own KV cache, in the model's dtype, for breccia models.
ENV_FP8_KV = "BRECCIA_SGLANG_FP8_KV"
# "1" runs the Triton attention kernels on CPU too (with TRITON_INTERPRET=1).
ENV_TRITON_ON_CPU = "BRECCIA_SGLANG_TRITON_ATTENTION"
# Where the demo model and its quantized copies are cached (default ~/.cache/breccia-sglang).
ENV_CACHE = "BRECCIA_SGLANG_CACHE"
# Where the kernel tests and the GPU checks run their kernels: "cpu" (the interpreter) or "cuda".
ENV_KERNEL_DEVICE = "BRECCIA_KERNEL_DEVICE"
# A GEMM kernel name (above): every layer it can serve gets it, e.g. "emulated" to compare.
ENV_GEMM = "BRECCIA_SGLANG_GEMM"
# A tuned tile-config file for the block FP8 GEMM, instead of the one shipped for this GPU model.
ENV_BLOCK_FP8_CONFIGS = "BRECCIA_SGLANG_BLOCK_FP8_CONFIGS"
# Up to how many rows (tokens) the W8A8 FP8 layers run on the W8A16 kernel instead of W8A8
# (0: never), instead of what the tuned file of this GPU model says.
ENV_W8A16_UP_TO_M = "BRECCIA_SGLANG_W8A16_UP_TO_M"
# From how many rows (tokens) the FP8 layers, and the 4-bit layers on triton-w4a16, run on their
# weight dequantized in one pass and the platform's dense GEMM (0: never), instead of what the
# tuned file of this GPU model says.
ENV_DEQUANTIZE_FROM_M = "BRECCIA_SGLANG_DEQUANTIZE_FROM_M"
# A tuned tile-config file for the weight-only GEMMs (W8A16, W4A16) at decode sizes, instead of
# the one shipped for this GPU model.
ENV_WEIGHT_ONLY_CONFIGS = "BRECCIA_SGLANG_WEIGHT_ONLY_CONFIGS"
# A tuned tile-config file for the FP8 KV decode attention kernel (bench_decode.py --tune writes
# one), instead of the one shipped for this GPU model.
ENV_DECODE_TILES = "BRECCIA_SGLANG_DECODE_TILES"
# "0" makes our kernels decode codes with Triton's elementwise operations on NVIDIA GPUs too,
# instead of inline PTX (W4A16's 4-bit weights; on sm_80-86 the E4M3 codes of the W8A16 GEMMs
# and the FP8 KV attention kernels): to compare, or as a way out where the PTX misbehaves.
ENV_PTX = "BRECCIA_SGLANG_PTX"
ENV_W4A16_PTX = "BRECCIA_SGLANG_W4A16_PTX"  # its earlier name (W4A16's PTX only then), still read
