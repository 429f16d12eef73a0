"""Linear-layer GEMMs: each breccia recipe's kernel (FP8 and 4-bit) against BF16, the emulated kernel
and SGLang's own 128x128 block FP8 kernel, side by side on Llama-3-8B's shapes.

GPU (the numbers the FP8 GEMM and 4-bit issues ask for):
    python benchmarks/bench_gemm.py                        # 4 shapes x M = 1 .. 2048
    python benchmarks/bench_gemm.py --m 1 8 --shapes qkv down

CPU smoke run (TRITON_INTERPRET=1 is set for you; correctness only, no timings):
    python benchmarks/bench_gemm.py --smoke

Shapes (N x K): qkv 6144 x 4096, o 4096 x 4096, gate_up 28672 x 4096, down 4096 x 14336; M, the
tokens in flight, from 1 (decode) to 2048 (prefill). Variants, per (shape, M):
  bf16              torch.matmul on the BF16 weight (the baseline)
  emulated          the emulated kernel: the weight dequantized to BF16 each call, then the matmul
  block-1x128       breccia 1x128 block FP8 on SGLang's Triton W8A8 block kernel, our tile configs
  block-1x64        the same with 1x64 blocks
  mxfp8             MXFP8 on the same path (E8M0 scales as exact fp32, 1x32 blocks)
  sglang-128x128    SGLang's own w8a8_block_fp8_matmul_triton on 128x128 blocks (its default path)
  sm90-torch        sm_90 only: breccia 1x128 on torch's blockwise F.scaled_mm (cuBLASLt), as the
                    blockscale-sm90 kernel runs it without FlashInfer
  sm90-flashinfer   sm_90 only, where FlashInfer is installed: its fp8_blockscale_gemm_sm90 (DeepGEMM)
  per-tensor-fp8    torch._scaled_mm with a per-tensor weight scale and per-token activation scales
                    (what SGLang's per-tensor FP8 linear runs when cutlass is not there)
  int4-g128         symmetric INT4, groups of 128, on our Triton W4A16 kernel (codes read in place)
  int4-g128-asym    the same with zero points
  nvfp4             NVFP4 (E2M1 codes, E4M3 scales per 16) on the same kernel
  int4-g128-elementwise, nvfp4-elementwise
                    the same two at M <= 32 with BRECCIA_SGLANG_PTX=0: Triton's elementwise
                    decode instead of the kernel's inline PTX, to measure what the PTX gives
  int4-emulated     the emulated kernel on the INT4 weight: unpacked and dequantized each call
  int4-g128-marlin  the marlin-int4 kernel as the server runs it (SGLang's AWQ-Marlin), where SGLang's
                    CUDA kernels are installed; a row that says why not elsewhere
  block-1x128-marlin  1x128 on the marlin-fp8 kernel (SGLang's FP8 Marlin, W8A16), likewise
  w8a16-per-tensor, w8a16-1x128, w8a16-1x64, w8a16-mxfp8
                    the same FP8 weights on our triton-w8a16 kernel: codes decoded in the GEMM,
                    activations unquantized (no quantization pass), K split at decode sizes
  dequant-per-tensor, dequant-1x128, dequant-1x64, dequant-mxfp8
                    the same FP8 weights dequantized to BF16 in one pass (kernels/gemm/dequantize.py),
                    then torch.matmul: the prefill route of the FP8 kernels (from M = 128 on a GPU;
                    below it one pass over the weight is what BF16 itself costs)
  dequant-int4-g128, dequant-nvfp4
                    the 4-bit weights likewise (kernels/gemm/dequantize_packed.py): the prefill route
                    of the triton-w4a16 kernel
The W8A8 variants include their activation quantization (torch on a bare GPU machine, where
SGLang's CUDA quantization kernel is not installed: that time is in the numbers, so they are an
upper bound). Every variant is checked against the fp32 reference first (W8A8 for the FP8
kernels, the dequantized weight for emulated). Timing: each variant's calls replayed in a CUDA
graph, as SGLang runs its decode steps, over copies of the weight that together are 4x the L2
(``_gpu_timing``); the median of 20 replays (a variant that cannot be captured is timed eagerly
and its row says so). TFLOP/s = 2 M N K / time; TB/s counts the weight's bytes plus the
activations' and the output's.

Targets (H100 / H200): per-tensor and 1x128 FP8 >= 1.6x BF16 at M <= 16 and >= 1.4x at
M >= 1024; no recipe slower than BF16 at any M; 1x128 within 10% of sglang-128x128; 4-bit
(int4-g128 with and without zero points, nvfp4) >= 2.5x BF16 at M <= 16 and >= 1.0x up to M = 128.
The run also says which 1x128 kernel was fastest, and, per FP8 recipe and M, which of its
kernels (W8A8, W8A16 or the dequantized weight) was fastest: what a choice of kernel by M would
take, and the bounds of the batch routes it suggests (w8a16_up_to_m; dequantize_from_m per FP8
scale group and for the 4-bit layers on triton-w4a16: keys of the block FP8 tuned file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton compiles anything

import breccia
import torch
import torch.nn.functional as F

from _common import OUT_DIR, error_summary, report_header, sglang_kernel_module
from _gpu_timing import copies_for, time_us
from breccia_sglang import names
from breccia_sglang.format import make_recipe
from breccia_sglang.format.recipes import layout_of
from breccia_sglang.kernels.gemm import dequantized_4bit_linear, dequantized_linear, w4a16_matmul, w8a16_matmul
from breccia_sglang.kernels.gemm.reference import w4a16_weight, w8a16_weight
from breccia_sglang.weights import dequantize_as, quantize_activations_fp8
from breccia_sglang.weights.codes import decode_e8m0
from breccia_sglang.weights.dequant import has_nan_codes, scales_fit_bit_moves
from breccia_sglang.weights.w8a8 import w8a8_reference_linear

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
SMOKE_SHAPES = {"qkv": (96, 128), "down": (64, 256)}
BASELINE = "bf16"
ONE_BY_128 = ("block-1x128", "sm90-torch", "sm90-flashinfer", "block-1x128-marlin", "w8a16-1x128")  # serving 1x128
PER_TENSOR = ("per-tensor-fp8", "w8a16-per-tensor")  # the variants serving per-tensor FP8
# FP8 recipe -> the variants (kernels) that serve it
RECIPE_VARIANTS = {"per-tensor": (*PER_TENSOR, "dequant-per-tensor"), "1x128": (*ONE_BY_128, "dequant-1x128"),
                   "1x64": ("block-1x64", "w8a16-1x64", "dequant-1x64"),
                   "mxfp8": ("mxfp8", "w8a16-mxfp8", "dequant-mxfp8")}
# FP8 recipe -> its W8A8 variants whose kernels route decode-sized batches to W8A16
# (integration/gemm/batch_routes.py), and the W8A16 variant they would route to
ROUTED_W8A8 = {"per-tensor": ("per-tensor-fp8",), "1x128": ("block-1x128", "sm90-torch", "sm90-flashinfer"),
               "1x64": ("block-1x64",), "mxfp8": ("mxfp8",)}
# FP8 recipe -> its scale groups' key in a tuned file's "dequantize_from_m" (block_fp8_tiles.file_key)
GROUP_KEYS = {"per-tensor": "per-tensor", "1x128": "128", "1x64": "64", "mxfp8": "32"}
DEQUANTIZE_MIN_M = 128  # on a GPU the dequantize rows start here (smaller M: see the variants above)
FOUR_BIT = ("int4-g128", "int4-g128-asym", "nvfp4", "int4-g128-marlin")  # the 4-bit issue's targets
DEQUANTIZED_4BIT = {"int4-g128": "dequant-int4-g128", "nvfp4": "dequant-nvfp4"}  # the 4-bit prefill route's rows
# The W4A16 kernel with its PTX decode switched off, at decode sizes only (the call's time budget)
ELEMENTWISE_4BIT = {"int4-g128": "int4-g128-elementwise", "nvfp4": "nvfp4-elementwise"}
ELEMENTWISE_MAX_M = 32
# "dequantize_from_m" key -> (the route's variant, the variants of the kernels whose layers it
# would take, and those to compare with where none of them ran: W8A16 on GPUs without FP8 dots)
DEQUANTIZE_ROUTES = {
    **{key: (f"dequant-{recipe}", ROUTED_W8A8[recipe], (f"w8a16-{recipe}",)) for recipe, key in GROUP_KEYS.items()},
    "int4": (DEQUANTIZED_4BIT["int4-g128"], ("int4-g128",), ()),  # triton-w4a16 layers only: Marlin keeps its own
    "nvfp4": (DEQUANTIZED_4BIT["nvfp4"], ("nvfp4",), ()),
}
EMULATED = names.GEMM_EMULATED  # the kernel CPUs and unsupported recipes get


def gemm_tools():
    """SGLang's block GEMM (our launcher of it) and its own 128x128 wrapper, or the import error."""
    try:
        sglang_gemm = sglang_kernel_module("sglang.kernels.ops.gemm.fp8_kernel")
        from breccia_sglang.integration.gemm.triton_block_fp8 import block_fp8_matmul
    except Exception as exc:  # noqa: BLE001 - reported in the rows, the other variants still run
        return None, None, error_summary(exc)
    return block_fp8_matmul, sglang_gemm.w8a8_block_fp8_matmul_triton, None


def activation_quantizer(device: torch.device):
    """(quantize(x, group or None) -> (fp8 codes, fp32 scales), what it is). On a GPU, SGLang's
    Triton per-token-group kernel: the server runs SGLang's CUDA one, which is JIT-compiled from
    sources a bare GPU machine lacks; both are one pass over x. Elsewhere breccia's torch formula."""
    if device.type == "cuda":
        try:
            quant = sglang_kernel_module("sglang.kernels.ops.quantization.fp8_kernel")._per_token_group_quant_8bit_raw
            return (lambda x, group: quant(x, group or x.shape[-1])), "SGLang's Triton per_token_group_quant_8bit"
        except Exception as exc:  # noqa: BLE001 - said in the report; torch's formula still runs
            print(f"SGLang's Triton activation quantization is not importable ({error_summary(exc)}): torch's")
    return quantize_activations_fp8, "breccia_sglang.weights.quantize_activations_fp8 (torch)"


def variants(x: torch.Tensor, w: torch.Tensor, tools, interpreted: bool) -> dict:
    """name -> (run(), fp32 reference of what it computes)."""
    block_fp8_matmul, sglang_128x128, _, quantize = tools
    found = {}
    w_wide = w.to(x.dtype)  # BF16 on a GPU; fp16 in --smoke, where the interpreter's bf16 is broken
    found[BASELINE] = (lambda: x @ w_wide.T, x.float() @ w_wide.float().T)

    fp8 = breccia.cast(w, make_recipe("fp8-block", block_k=128))
    # Found once, as the kernel does after loading: the forward pass then reads nothing on the host.
    flags = {"nan_free": not has_nan_codes(fp8.data), "small_scales": scales_fit_bit_moves(fp8.scale, fp8.recipe)}
    found[EMULATED] = (lambda: F.linear(x, dequantize_as(fp8.data, fp8.scale, fp8.recipe, fp8.layout,
                                                          dtype=x.dtype, **flags)),
                         x.float() @ breccia.dequantize(fp8).T)
    for name, recipe, block in (("block-1x128", make_recipe("fp8-block", block_k=128), 128),
                                ("block-1x64", make_recipe("fp8-block", block_k=64), 64),
                                ("mxfp8", make_recipe("mxfp8"), 32)):
        st = random_mxfp8(w.shape, w.device) if recipe.name == "mxfp8" else breccia.cast(w, recipe)
        ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=block)
        data = st.data.view(torch.float8_e4m3fn)
        scale = decode_e8m0(st.scale).contiguous() if recipe.name == "mxfp8" else st.scale
        found["w8a16-" + name.removeprefix("block-")] = w8a16_variant(x, data, scale, block)
        found.update(dequant_variant(x, "dequant-" + name.removeprefix("block-"), data, scale, block))
        if block_fp8_matmul is None:
            found[name] = (None, ref)
            continue

        def run(data=data, scale=scale, block=block):
            codes, x_scale = quantize(x, block)
            return block_fp8_matmul(codes, x_scale, data, scale, block, x.dtype, interpreted)
        found[name] = (run, ref)

    one_by_128 = breccia.cast(w, make_recipe("fp8-block", block_k=128))
    # W8A16: the reference is the dequantized weight times the unquantized activations.
    found["block-1x128-marlin"] = (marlin_fp8(x, one_by_128), x.float() @ breccia.dequantize(one_by_128).T)

    if sglang_128x128 is not None and not interpreted:  # its wrapper asks the GPU's name: no CPU run
        w_tiles, w_tile_scale = per_tile_fp8(w, 128)
        tile_ref = x.float().view(x.shape[0], -1, 128)  # reference: the same W8A8 maths per 128 tile
        codes_ref, scale_ref = quantize(x, 128)
        x_hat = (codes_ref.float().view_as(tile_ref) * scale_ref[..., None]).view_as(x)
        w_hat = (w_tiles.float().view(w.shape[0] // 128, 128, -1, 128) * w_tile_scale[:, None, :, None]).view_as(w)

        def run_sglang():
            codes, x_scale = quantize(x, 128)
            return sglang_128x128(codes, w_tiles, x_scale, w_tile_scale, [128, 128], x.dtype)
        found["sglang-128x128"] = (run_sglang, x_hat @ w_hat.T)

    if x.is_cuda and torch.cuda.get_device_capability(x.device) == (9, 0):
        found.update(hopper_variants(x, w, quantize))

    per_tensor = breccia.cast(w, make_recipe("fp8"))
    row_scales = per_tensor.scale.float().reshape(1).expand(w.shape[0]).contiguous()
    found["w8a16-per-tensor"] = w8a16_variant(x, per_tensor.data, row_scales, None)
    found.update(dequant_variant(x, "dequant-per-tensor", per_tensor.data, row_scales, None))
    if x.is_cuda:
        ref = w8a8_reference_linear(x, per_tensor.data, per_tensor.scale.reshape(1), per_tensor.recipe,
                                    per_tensor.layout, group=None)
        # Rowwise scaled_mm takes per-token x scales with per-channel weight scales: the one
        # per-tensor scale, repeated per output channel (exact), as SGLang expands it.
        row_scale = per_tensor.scale.float().reshape(1, 1).expand(1, w.shape[0]).contiguous()

        def run_scaled_mm():
            codes, x_scale = quantize(x, None)
            return torch._scaled_mm(codes, per_tensor.data.T, scale_a=x_scale, scale_b=row_scale, out_dtype=x.dtype)
        found["per-tensor-fp8"] = (run_scaled_mm, ref)
    found.update(four_bit_variants(x, w.shape))
    return found


def w8a16_variant(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, group: int | None):
    """(run, reference) of the triton-w8a16 kernel on an FP8 weight (fp32 scales per row and
    group, or per row): W8A16, so the reference is the dequantized weight times x itself."""
    return (lambda: w8a16_matmul(x, data, scale, group=group)), x.float() @ w8a16_weight(data, scale, group=group).T


def dequant_variant(x: torch.Tensor, name: str, data: torch.Tensor, scale: torch.Tensor, group: int | None) -> dict:
    """{name: (run, reference)} of the FP8 kernels' prefill route on this weight (none at a
    GPU's decode sizes): the reference is W8A16's, the dequantized weight times x itself."""
    if not dequantize_rows(x):
        return {}
    return {name: ((lambda: dequantized_linear(x, data, scale, group=group)),
                   x.float() @ w8a16_weight(data, scale, group=group).T)}


def dequantize_rows(x: torch.Tensor) -> bool:
    """Whether the prefill routes' rows run at this M (on a GPU from DEQUANTIZE_MIN_M; every M on CPU)."""
    return not x.is_cuda or x.shape[0] >= DEQUANTIZE_MIN_M


# (variant, recipe, codes the W4A16 kernel reads, group, zero points)
FOUR_BIT_RECIPES = (("int4-g128", make_recipe("int4", group_size=128), "int4", 128, False),
                    ("int4-g128-asym", make_recipe("int4", group_size=128, symmetric=False), "uint4", 128, True),
                    ("nvfp4", make_recipe("nvfp4"), "e2m1", 16, False))


def four_bit_variants(x: torch.Tensor, shape) -> dict:
    """INT4 / NVFP4 on the Triton W4A16 kernel, the emulated kernel, and SGLang's AWQ-Marlin
    through the marlin-int4 kernel where SGLang's CUDA kernels are here."""
    found = {}
    for name, recipe, codes, group, zeros in FOUR_BIT_RECIPES:
        packed, scales, zero_points = random_4bit(shape, group, codes, zeros, x.device)
        ref = x.float() @ w4a16_weight(packed, scales, zero_points, group=group, codes=codes).T
        found[name] = (lambda p=packed, s=scales, z=zero_points, g=group, c=codes:
                       w4a16_matmul(x, p, s, z, group=g, codes=c), ref)
        if name in ELEMENTWISE_4BIT and x.shape[0] <= ELEMENTWISE_MAX_M:
            found[ELEMENTWISE_4BIT[name]] = (lambda p=packed, s=scales, z=zero_points, g=group, c=codes:
                                             elementwise_w4a16(x, p, s, z, g, c), ref)
        if name in DEQUANTIZED_4BIT and dequantize_rows(x):
            found[DEQUANTIZED_4BIT[name]] = (lambda p=packed, s=scales, z=zero_points, g=group, c=codes:
                                             dequantized_4bit_linear(x, p, s, z, group=g, codes=c), ref)
        if name == "int4-g128":
            weight = dequantize_as(packed, scales, recipe, layout_of(recipe), dtype=x.dtype)
            found["int4-emulated"] = (lambda p=packed, s=scales, r=recipe: F.linear(
                x, dequantize_as(p, s, r, layout_of(r), dtype=x.dtype)), x.float() @ weight.float().T)
            found["int4-g128-marlin"] = (marlin_int4(x, packed, scales, recipe), ref)
    return found


def elementwise_w4a16(x, packed, scales, zero_points, group: int, codes: str) -> torch.Tensor:
    """w4a16_matmul with its PTX decode switched off, as BRECCIA_SGLANG_PTX=0 does in a
    server (a CUDA graph keeps the launch it captured)."""
    with contextlib.ExitStack() as restore:
        before = os.environ.get(names.ENV_PTX)
        restore.callback(lambda: os.environ.__setitem__(names.ENV_PTX, before) if before is not None
                         else os.environ.pop(names.ENV_PTX, None))
        os.environ[names.ENV_PTX] = "0"
        return w4a16_matmul(x, packed, scales, zero_points, group=group, codes=codes)


def random_4bit(shape, group: int, codes: str, zeros: bool, device):
    """Random packed codes, scales (E4M3 bytes for NVFP4) and integer zero points: breccia's cast
    goes through NumPy, far too slow for 28672 x 4096, and the kernels' speed does not depend on
    the values. Scales keep outputs near 1 for x ~ N(0, 1)."""
    n, k = shape
    gen = torch.Generator(device=device).manual_seed(2)
    packed = torch.randint(0, 256, (n, k // 2), generator=gen, device=device, dtype=torch.int32).to(torch.uint8)
    if codes == "e2m1":  # E4M3 codes 0x08..0x1F: 2^-6 .. ~2^-4
        scales = torch.randint(0x08, 0x20, (n, k // group), generator=gen, device=device, dtype=torch.int32)
        scales = scales.to(torch.uint8)
    else:
        scales = torch.rand(n, k // group, generator=gen, device=device) * 0.01 + 0.005
    zero_points = torch.randint(0, 16, (n, k // group), generator=gen, device=device).float() if zeros else None
    return packed, scales, zero_points


def marlin_fp8(x: torch.Tensor, st: breccia.ScaledTensor):
    """The marlin-fp8 kernel (SGLang's FP8 Marlin, W8A16) on a 1x128 weight, prepared as the
    server prepares it; or why it cannot run here (Marlin is JIT CUDA)."""
    if not x.is_cuda:
        return "needs a CUDA GPU and SGLang's CUDA kernels"
    try:
        from breccia_sglang.integration.gemm import LinearSpec, Target
        from breccia_sglang.integration.gemm.marlin_fp8 import MarlinFp8Kernel

        target = Target.here()
        n, k = st.data.shape
        spec = LinearSpec("bench.fp8", st.recipe, st.layout, k, (n,), x.dtype, target.device_type, target.capability)
        if (why := MarlinFp8Kernel.why_not(spec)) is not None:
            return why
        layer, kernel = torch.nn.Module(), MarlinFp8Kernel()
        layer.tp_group = None  # what SGLang's FP8 parameter factory reads of a LinearBase (tp = 1)
        kernel.create_weights(layer, spec, weight_loader=None)
        layer.to(x.device)
        layer.weight.data.copy_(st.data.view(torch.float8_e4m3fn))
        layer.weight_scale.data.copy_(st.scale)
        kernel.process_weights_after_loading(layer)
    except Exception as exc:  # noqa: BLE001 - reported in its row, the other variants still run
        return error_summary(exc)
    return lambda: kernel.apply(layer, x, None)


def marlin_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, recipe):
    """The marlin-int4 kernel on this weight, prepared as the server prepares it; or why it cannot
    run here (SGLang's Marlin is JIT CUDA: no SGLang or no GPU, no row)."""
    if not x.is_cuda:
        return "needs a CUDA GPU and SGLang's CUDA kernels"
    try:
        from breccia_sglang.integration.gemm import LinearSpec, Target
        from breccia_sglang.integration.gemm.marlin_w4a16 import MarlinInt4Kernel

        target = Target.here()
        spec = LinearSpec("bench.int4", recipe, layout_of(recipe), packed.shape[1] * 2, (packed.shape[0],), x.dtype,
                          target.device_type, target.capability)
        if (why := MarlinInt4Kernel.why_not(spec)) is not None:
            return why
        layer, kernel = torch.nn.Module(), MarlinInt4Kernel()
        kernel.create_weights(layer, spec, weight_loader=None)
        layer.to(x.device)
        layer.weight.data, layer.weight_scale.data = packed, scales
        layer.breccia_prefix = spec.prefix
        kernel.process_weights_after_loading(layer)
    except Exception as exc:  # noqa: BLE001 - reported in its row, the other variants still run
        return error_summary(exc)
    return lambda: kernel.apply(layer, x, None)


def hopper_variants(x: torch.Tensor, w: torch.Tensor, quantize) -> dict:
    """1x128 on Hopper's blockwise GEMMs (the blockscale-sm90 kernel's two backends); a backend
    this machine lacks is a row that says so."""
    from breccia_sglang.integration.gemm import blockscale_sm90 as hopper

    st = breccia.cast(w, make_recipe("fp8-block", block_k=128))
    ref = w8a8_reference_linear(x, st.data, st.scale, st.recipe, st.layout, group=128)
    data, scale_mn = st.data.view(torch.float8_e4m3fn), hopper.mn_major(st.scale)

    def run_torch():  # the kernel's own path (rows padded), with this benchmark's quantizer
        return hopper.torch_blockwise_linear(x, data, scale_mn, x.dtype, quantize)

    flashinfer = hopper.flashinfer_gemm()
    return {
        "sm90-torch": (run_torch if hopper.torch_has_blockwise() else
                       f"torch {torch.__version__} (CUDA {torch.version.cuda}) has no blockwise scaled_mm", ref),
        "sm90-flashinfer": ((lambda: flashinfer(x, data, None, st.scale, out_dtype=x.dtype)) if flashinfer else
                            "FlashInfer is not installed here", ref),
    }


def random_mxfp8(shape, device) -> breccia.ScaledTensor:
    """An MXFP8 weight of random finite codes and scales: breccia 0.1.3 casts MXFP8 through NumPy
    by searching all 256 codes per element, far too slow for a 28672 x 4096 weight, and the
    kernel's speed does not depend on the values."""
    n, k = shape
    gen = torch.Generator(device=device).manual_seed(1)
    codes = torch.randint(0, 0x7F, (n, k), generator=gen, device=device, dtype=torch.int32)  # 0x7F is NaN
    codes |= torch.randint(0, 2, (n, k), generator=gen, device=device, dtype=torch.int32) << 7
    exponents = torch.randint(112, 120, (n, k // 32), generator=gen, device=device, dtype=torch.int32)
    return breccia.from_buffer(codes.to(torch.uint8), exponents.to(torch.uint8), make_recipe("mxfp8"),
                               breccia.PerBlockMN(1, 32))


def per_tile_fp8(w: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-style 128x128 block FP8: (N, K) e4m3 and (N / tile, K / tile) fp32 scales."""
    n, k = w.shape
    tiles = w.float().view(n // tile, tile, k // tile, tile)
    scale = tiles.abs().amax((1, 3)).clamp(min=1e-12) / 448.0
    return (tiles / scale[:, None, :, None]).view(n, k).to(torch.float8_e4m3fn), scale


def moved_bytes(name: str, m: int, n: int, k: int) -> int:
    weight = n * k * (0.5 if name in (*FOUR_BIT, *DEQUANTIZED_4BIT.values(), *ELEMENTWISE_4BIT.values(),
                                      "int4-emulated") else
                      2 if name == BASELINE else 1)
    return int(weight) + m * k * 2 + m * n * 2  # + activations in, output out (16-bit)


def run_case(shape: str, n: int, k: int, m: int, device, gen, tools, interpreted: bool) -> list[dict]:
    x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16 if device.type == "cuda" else torch.float16)
    # On a GPU each variant is timed over copies of its weight (the smallest, INT4's, sets how
    # many), so that no call finds its weight in L2 (_gpu_timing).
    copies = copies_for(n * k // 2) if device.type == "cuda" else 1
    sets = [variants(x, torch.randn(n, k, generator=gen, device=device) * 0.02, tools, interpreted)
            for _ in range(copies)]
    rows = []
    for name, (run, ref) in sets[0].items():
        row = {"variant": name, "shape": shape, "n": n, "k": k, "m": m}
        if run is None or isinstance(run, str):  # not runnable here: the reason
            row["error"] = run or tools[2]
            rows.append(row)
            continue
        try:
            out = run().float()
            if not torch.isfinite(out).all():
                raise RuntimeError("non-finite output")
            row["rel_err"] = float((out - ref).norm() / ref.norm())
        except Exception as exc:  # noqa: BLE001 - a variant this machine cannot run is reported
            row["error"] = error_summary(exc)
            rows.append(row)
            continue
        if device.type == "cuda":
            us, row["timing"] = time_us([variant[name][0] for variant in sets])
            row.update(time_us=us, tflops=2 * m * n * k / (us * 1e-6) / 1e12,
                       tbps=moved_bytes(name, m, n, k) / (us * 1e-6) / 1e12)
        rows.append(row)
    base = next((r for r in rows if r["variant"] == BASELINE and "time_us" in r), None)
    for r in rows:
        if base and "time_us" in r:
            r["speedup_vs_bf16"] = base["time_us"] / r["time_us"]
    return rows


def target_checks(rows: list[dict]) -> list[str]:
    """The issue's targets, each with the measured value: PASS / FAIL lines."""
    timed = [r for r in rows if "speedup_vs_bf16" in r]
    lines = []
    for name in (*PER_TENSOR, *ONE_BY_128):
        small = [r["speedup_vs_bf16"] for r in timed if r["variant"] == name and r["m"] <= 16]
        large = [r["speedup_vs_bf16"] for r in timed if r["variant"] == name and r["m"] >= 1024]
        if small:
            lines.append(f"{'PASS' if min(small) >= 1.6 else 'FAIL'} {name} >= 1.6x BF16 at M <= 16: min {min(small):.2f}x")
        if large:
            lines.append(f"{'PASS' if min(large) >= 1.4 else 'FAIL'} {name} >= 1.4x BF16 at M >= 1024: min {min(large):.2f}x")
    for name in FOUR_BIT:
        small = [r["speedup_vs_bf16"] for r in timed if r["variant"] == name and r["m"] <= 16]
        upto = [r["speedup_vs_bf16"] for r in timed if r["variant"] == name and r["m"] <= 128]
        if small:
            lines.append(f"{'PASS' if min(small) >= 2.5 else 'FAIL'} {name} >= 2.5x BF16 at M <= 16: min {min(small):.2f}x")
        if upto:
            lines.append(f"{'PASS' if min(upto) >= 1.0 else 'FAIL'} {name} >= 1.0x BF16 up to M = 128: min {min(upto):.2f}x")
    for name, elementwise in ELEMENTWISE_4BIT.items():  # what the PTX decode gives, where both ran
        ptx = {(r["shape"], r["m"]): r["time_us"] for r in timed if r["variant"] == name}
        plain = {(r["shape"], r["m"]): r["time_us"] for r in timed if r["variant"] == elementwise}
        both = ptx.keys() & plain.keys()
        gains = {m: sum(plain[key] for key in both if key[1] == m) / sum(ptx[key] for key in both if key[1] == m)
                 for m in sorted({m for _, m in both})}
        if gains:
            lines.append(f"INFO {name}: the PTX decode against Triton's elementwise one, summed over shapes: "
                         + ", ".join(f"M={m} {gain:.2f}x faster" for m, gain in gains.items()))
    # The kernels a server takes for FP8 recipes by default: not the baselines (BF16, SGLang's
    # 128x128), the emulated kernels, nor W8A16, which ranks below W8A8 where FP8 tensor cores are.
    slower = [r for r in timed if r["variant"] not in (BASELINE, "sglang-128x128", EMULATED, "int4-emulated", *FOUR_BIT,
                                                       *ELEMENTWISE_4BIT.values())
              and not r["variant"].startswith(("w8a16-", "dequant-")) and r["speedup_vs_bf16"] < 1.0]
    lines.append(f"{'PASS' if not slower else 'FAIL'} no FP8 recipe slower than BF16 on its default kernel: "
                 + (", ".join(f"{r['variant']} {r['shape']} M={r['m']} {r['speedup_vs_bf16']:.2f}x" for r in slower)
                    or "none"))
    # Each recipe at its best kernel for the shape and M: what a choice by M would serve.
    best = fastest_per_recipe(timed)
    slow = [f"{recipe} {shape} M={m} {speedup:.2f}x ({variant})" for (recipe, shape, m), (variant, speedup)
            in best.items() if speedup < 1.0]
    lines.append(f"{'PASS' if not slow else 'FAIL'} no FP8 recipe slower than BF16 at its fastest kernel per M: "
                 + (", ".join(slow) or "none"))
    for recipe in RECIPE_VARIANTS:
        picks = sorted({(m, variant) for (r, _, m), (variant, _) in best.items() if r == recipe})
        if picks:
            lines.append(f"INFO {recipe}: fastest kernel by M (over shapes): "
                         + ", ".join(f"M={m} {variant}" for m, variant in picks))
    bound, per_recipe = suggested_w8a16_bound(timed)
    if per_recipe:
        lines.append(f"INFO w8a16_up_to_m suggested: {bound} (per recipe: "
                     + ", ".join(f"{recipe} {m}" for recipe, m in per_recipe.items())
                     + f"): the W8A8 layers route batches up to it to W8A16 once this GPU's block FP8 table "
                     f"says \"w8a16_up_to_m\": {bound}")
    from_m = suggested_dequantize_bounds(timed)
    if from_m:
        lines.append(f"INFO dequantize_from_m suggested: {json.dumps(from_m)}: the FP8 layers of each scale group, "
                     f"and the 4-bit layers on triton-w4a16, run batches from that M on the dequantized weight once "
                     f"this GPU's block FP8 table says so (0: never)")
    theirs = {(r["shape"], r["m"]): r["time_us"] for r in timed if r["variant"] == "sglang-128x128"}
    totals = {}
    for name in ONE_BY_128:
        ours = {(r["shape"], r["m"]): r["time_us"] for r in timed if r["variant"] == name}
        ratios = [ours[key] / theirs[key] for key in ours.keys() & theirs.keys()]
        if ratios:
            lines.append(f"{'PASS' if max(ratios) <= 1.10 else 'FAIL'} {name} within 10% of SGLang's 128x128: "
                         f"worst {max(ratios):.2f}x its time")
        if ours:
            totals[name] = (len(ours), sum(ours.values()))
    complete = {name: total for name, (count, total) in totals.items() if count == max(c for c, _ in totals.values())}
    if len(complete) > 1:  # the blockscale-sm90 kernel ranks first only once it wins this
        fastest = min(complete, key=complete.get)
        others = "; ".join(f"{n} {t:.1f} us" for n, t in sorted(complete.items(), key=lambda kv: kv[1])[1:])
        lines.append(f"INFO fastest 1x128 kernel, summed over every shape and M: {fastest} "
                     f"{complete[fastest]:.1f} us ({others})")
    return lines


def suggested_w8a16_bound(timed: list[dict]) -> tuple[int, dict[str, int]]:
    """(the bound, per recipe): up to which M the W8A8 FP8 layers should run on W8A16. Per recipe,
    the largest M measured such that at it and at every smaller M measured, W8A16's time summed
    over the shapes is below that of the recipe's W8A8 kernel of least summed time (the one that
    would rank first); the bound is the least of them, as one bound routes every W8A8 layer."""
    per_recipe = {}
    for recipe, w8a8 in ROUTED_W8A8.items():
        ours_name = next(v for v in RECIPE_VARIANTS[recipe] if v.startswith("w8a16-"))
        bound, measured = 0, False
        for m in sorted({r["m"] for r in timed}):
            ours = {r["shape"]: r["time_us"] for r in timed if (r["variant"], r["m"]) == (ours_name, m)}
            theirs = least_summed_time(timed, w8a8, m, ours.keys()) if ours else None
            if theirs is None:
                break
            measured = True
            if sum(ours.values()) >= theirs:
                break
            bound = m
        if measured:
            per_recipe[recipe] = bound
    return (min(per_recipe.values()) if per_recipe else 0), per_recipe


def suggested_dequantize_bounds(timed: list[dict]) -> dict[str, int]:
    """Route key -> from which M its layers should run on the dequantized weight (0: never): the
    smallest M measured such that at it and at every larger M measured, the dequantize route's
    time summed over the shapes is below that of the kernel the layer has otherwise (for FP8,
    the recipe's W8A8 kernel of least summed time, its W8A16 kernel where no W8A8 one ran: GPUs
    without FP8 tensor cores; for 4-bit, triton-w4a16)."""
    bounds = {}
    for key, (ours_name, others, fallback) in DEQUANTIZE_ROUTES.items():
        if not any(r["variant"] in others for r in timed):
            others = fallback
        wins = []
        for m in sorted({r["m"] for r in timed if r["variant"] == ours_name}):
            ours = {r["shape"]: r["time_us"] for r in timed if (r["variant"], r["m"]) == (ours_name, m)}
            theirs = least_summed_time(timed, others, m, ours.keys())
            if theirs is not None:
                wins.append((m, sum(ours.values()) < theirs))
        if wins:
            losing = [m for m, won in wins if not won]
            bounds[key] = next((m for m, _ in wins if not losing or m > max(losing)), 0)
    return bounds


def least_summed_time(timed: list[dict], variants, m: int, shapes) -> float | None:
    """The least time at M, summed over ``shapes``, of those ``variants`` measured on every one of
    them (None: none was)."""
    sums = []
    for name in variants:
        theirs = {r["shape"]: r["time_us"] for r in timed if (r["variant"], r["m"]) == (name, m)}
        if theirs.keys() >= shapes:
            sums.append(sum(theirs[shape] for shape in shapes))
    return min(sums) if sums else None


def fastest_per_recipe(timed: list[dict]) -> dict:
    """(recipe, shape, M) -> (its fastest variant, that variant's speedup over BF16)."""
    best = {}
    for recipe, served_by in RECIPE_VARIANTS.items():
        for r in timed:
            key = (recipe, r["shape"], r["m"])
            if r["variant"] in served_by and r["speedup_vs_bf16"] > best.get(key, ("", 0.0))[1]:
                best[key] = (r["variant"], r["speedup_vs_bf16"])
    return best


def print_table(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'shape':8} {'M':>5} {'variant':16} {'rel err':>8} {'time us':>9} {'TFLOP/s':>8} {'TB/s':>6} "
              f"{'vs bf16':>7}")
    for r in rows:
        head = f"{r['shape']:8} {r['m']:5d} {r['variant']:16}"
        if "error" in r:
            print(f"{head} failed: {r['error']}")
        elif "time_us" in r:
            eager = "  (eager: not capturable)" if r.get("timing", "").startswith("eager") else ""
            print(f"{head} {r['rel_err']:8.1e} {r['time_us']:9.1f} {r['tflops']:8.1f} {r['tbps']:6.2f} "
                  f"{r['speedup_vs_bf16']:7.2f}{eager}")
        else:
            print(f"{head} {r['rel_err']:8.1e}   n/a (CPU: correctness only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 32, 128, 512, 2048])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, correctness only (TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "gemm.json")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new (shape, M) case after this many seconds, and still print the targets "
                             "on what ran (a GPU call under a time limit)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        sys.exit("no GPU here: timings need CUDA (use --smoke for a CPU correctness run)")
    shapes = SMOKE_SHAPES if args.smoke else {s: SHAPES[s] for s in args.shapes}
    ms = [1, 7, 33] if args.smoke else args.m
    quantize, quantizer = activation_quantizer(device)
    tools = (*gemm_tools(), quantize)
    tables = tile_tables()
    weight_only = os.environ.get(names.ENV_WEIGHT_ONLY_CONFIGS) or "the shipped table of this GPU, if any"
    print(f"activations: {quantizer}; block FP8 tile configs: {tables}; weight-only tile configs: {weight_only}")
    gen = torch.Generator(device=device).manual_seed(0)
    started, rows = time.time(), []
    report = {**report_header("gemm", args),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU, TRITON_INTERPRET=1",
              "activation_quantization": quantizer, "block_fp8_tile_configs": tables,
              "weight_only_tile_configs": weight_only}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    skipped = []
    for shape, m in case_order(shapes, ms):
        if args.budget_s is not None and time.time() - started > args.budget_s:
            skipped.append(f"{shape} M={m}")
            continue
        n, k = shapes[shape]
        case = run_case(shape, n, k, m, device, gen, tools, interpreted=args.smoke)
        print_table(case, header=not rows)
        rows += case
        write_report(args.out, report | {"seconds": time.time() - started, "rows": rows})  # partial
    checks = target_checks(rows) if device.type == "cuda" else []
    if skipped:  # the targets above read only the cases that ran
        checks.append(f"INFO time budget of {args.budget_s:g} s spent: not run: {', '.join(skipped)}")
    for line in checks:
        print(line)
    write_report(args.out, report | {"targets": checks, "skipped": skipped, "seconds": time.time() - started,
                                     "rows": rows})
    print(f"wrote {args.out}")


def case_order(shapes: dict, ms: list[int]) -> list[tuple[str, int]]:
    """(shape, M) in the order they run: every shape at one M before any at the next, so that a
    run its time budget cuts short has the smaller M (decode sizes) of every shape."""
    return [(shape, m) for m in ms for shape in shapes]


def tile_tables() -> str:
    """Which tile configs the block FP8 rows launch with: a tuned file, or the default table."""
    from breccia_sglang.integration.gemm import block_fp8_tiles as tiles

    chosen = os.environ.get(names.ENV_BLOCK_FP8_CONFIGS)
    shipped = tiles.tuned_file(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    if chosen:
        return f"{chosen} ({names.ENV_BLOCK_FP8_CONFIGS})"
    return str(shipped) if shipped and shipped.exists() else "the default table (TILE_CONFIGS)"


def write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                               else str(v)))

if __name__ == "__main__":
    main()
