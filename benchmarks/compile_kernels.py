"""Compile the Triton kernels for named NVIDIA GPUs, on a machine without one.

    python benchmarks/compile_kernels.py                      # sm_80, sm_89, sm_90; fp16/bf16/fp32; D 64/128
    python benchmarks/compile_kernels.py --arch 90 --dtype bfloat16 --head-dim 128
    python benchmarks/compile_kernels.py --arch 86 100 120                # A10, B200, RTX 50xx

Triton compiles ahead of time for a target named by its compute capability (ptxas ships in
Triton's wheel), so this checks what the interpreter cannot: that each kernel, with the
arguments its launcher passes on a GPU, lowers to a cubin for that GPU, and what it costs
there. Each launcher runs for real on CPU tensors shaped like one serving step, with the GPU's
tile sizes, while a recorder stands in for its kernel; the recorded arguments then go through
Triton's own binder and specialization for the target, as a launch on that GPU would (alignment
and divisibility included). SGLang's Triton decode kernel (the baseline of
``bench_decode.py``) is compiled the same way on BF16 and FP8 KV, side by side. So are SGLang's
Triton W8A8 block GEMMs with each tile config breccia launches them with (1x32 / 1x64 / 1x128
blocks, one config per range of M), for the GPUs with FP8 tensor cores they run on (sm_89+):
the default table everywhere, and each table tuned on a GPU model (``integration/gemm/tuned/``)
for that model's compute capability, with the Hopper variant and its split-K reduction where a
config asks for them.
breccia's weight-only GEMMs are compiled with each of their tile configs on fp16 / bf16
activations (fp32 has one config of its own), for every GPU from sm_80 on, and with each config
of every table tuned on a GPU model (``kernels/gemm/tuned/``) for that model's capability: W4A16 for every 4-bit
code kind (INT4, UINT4 with zero points, E2M1 with E4M3 scale bytes), W8A16 for FP8 codes with
groups of 128 and 32 and one scale per row, and the kernel that sums their K splits; and the
passes that dequantize those FP8 and 4-bit weights into each dtype (the prefill routes). And SGLang's fused MoE kernels with each MoE tile
config breccia's MoE kernels launch them with: W8A8 FP8 experts with 1x128 scales (sm_89+) and
W4A16 INT4 experts with groups of 128 (sm_80+), at Qwen3-30B-A3B's expert shapes.

Per kernel and target the report gives registers per thread, spilled bytes (local memory),
shared memory against the GPU's per-block limit, warps and pipeline stages, read from the cubin
with Triton's bundled cuobjdump; a kernel that does not compile is reported with its error.
Needs TRITON_INTERPRET unset: interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_kernels.py compiles for GPUs: unset TRITON_INTERPRET")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from _common import OUT_DIR, error_summary, report_header  # noqa: E402
from breccia_sglang.kernels import launch  # noqa: E402
from breccia_sglang.kernels.attention import decode, decode_tiles, extend, write_kv  # noqa: E402
from breccia_sglang.kernels.gemm import dequantize, dequantize_packed, tiling, w4a16, w8a16  # noqa: E402
from breccia_sglang.kvcache import PagedKV, PagedScaledTensor  # noqa: E402

# Largest shared memory one block may use (opt-in), bytes: CUDA programming guide, table 21.
SHARED_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
GPU_NAMES = {80: "A100", 86: "A10 / RTX 30xx", 87: "Jetson Orin", 89: "L4 / L40S / RTX 40xx", 90: "H100 / H200",
             100: "B200", 120: "RTX 50xx"}
REGISTERS_PER_SM = 65536


class Launch(NamedTuple):
    name: str  # what the report calls it, e.g. "breccia decode split"
    kernel: object  # the JITFunction
    args: tuple
    kwargs: dict
    archs: tuple[int, ...] | None = None  # the GPUs it is launched on (None: every one asked for)
    weight_bytes_per_step: int | None = None  # a weight-only GEMM's weight bytes per K step of a program


@contextlib.contextmanager
def recording(module, attribute: str, name: str, sink: list, archs: tuple[int, ...] | None = None):
    """Replace ``module.attribute`` (a Triton kernel) by a recorder of its launches."""
    kernel = getattr(module, attribute)

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: sink.append(Launch(name, kernel, args, kwargs, archs))

    setattr(module, attribute, Recorder())
    try:
        yield
    finally:
        setattr(module, attribute, kernel)


@contextlib.contextmanager
def gpu_tiles():
    """Launchers choose the GPU's tile sizes for the CPU tensors the launches are recorded from."""
    launch.FORCE_GPU_TILES, before = True, launch.FORCE_GPU_TILES
    try:
        yield
    finally:
        launch.FORCE_GPU_TILES = before


def step_tensors(dtype: torch.dtype, head_dim: int, group: int, kv_heads: int = 8, batch: int = 4,
                 context: int = 300, new_tokens: int = 37) -> dict:
    """A decode and an extend step's inputs as SGLang's Triton backend passes them (int32
    indptrs, int64 slot indices and out_cache_loc); the values only need to be in range."""
    slots = batch * (context + new_tokens) + 64
    gen = torch.Generator().manual_seed(0)
    indices = torch.randperm(slots - 1, generator=gen)[:batch * context].to(torch.int64) + 1
    return {
        "q_decode": torch.randn(batch, kv_heads * group, head_dim).to(dtype),
        "q_extend": torch.randn(batch * new_tokens, kv_heads * group, head_dim).to(dtype),
        "k_new": torch.randn(batch * new_tokens, kv_heads, head_dim).to(dtype),
        "data": torch.zeros(slots, kv_heads, head_dim, dtype=torch.uint8),
        "scale": torch.ones(slots, kv_heads),
        "kv_indptr": torch.arange(batch + 1, dtype=torch.int32) * context,
        "qo_indptr": torch.arange(batch + 1, dtype=torch.int32) * new_tokens,
        "kv_indices": indices,
        "out_cache_loc": torch.arange(batch * new_tokens, dtype=torch.int64) + 1,
        "new_tokens": new_tokens,
    }


def breccia_launches(dtype: torch.dtype, head_dim: int, group: int) -> list[Launch]:
    """The write, decode (split + merge) and extend launches, from the real launchers."""
    t = step_tensors(dtype, head_dim, group)
    sink: list[Launch] = []
    pool = (t["data"], t["scale"], t["data"], t["scale"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(recording(write_kv, "_write_kv_fp8_kernel", "breccia write", sink))
        stack.enter_context(recording(decode, "_decode_split_kernel", "breccia decode split", sink))
        stack.enter_context(recording(decode, "_decode_merge_kernel", "breccia decode merge", sink))
        stack.enter_context(recording(extend, "_extend_kernel", "breccia extend", sink))
        stack.enter_context(gpu_tiles())
        write_kv.write_kv_fp8(t["k_new"], PagedScaledTensor(t["data"], t["scale"], t["out_cache_loc"]))
        context = PagedKV.of(*pool, t["kv_indices"], indptr=t["kv_indptr"])
        new = PagedKV.of(*pool, t["out_cache_loc"], indptr=t["qo_indptr"])
        decode.paged_decode_attention(t["q_decode"], context)
        extend.paged_extend_attention(t["q_extend"], context, new, max_new_tokens=t["new_tokens"])
    if dtype == torch.bfloat16:  # what bench_decode --tune may pick (fp16 compiles to the same dots)
        sink += decode_candidates(next(r for r in sink if r.name == "breccia decode split"))
    return sink


def decode_candidates(recorded: Launch) -> list[Launch]:
    """The decode launch with each tile config ``bench_decode.py --tune`` measures, but the default."""
    return [recorded._replace(name=f"breccia decode split {tiles.name} (tune candidate)",
                              kwargs={**recorded.kwargs, "BLOCK_N": tiles.block_n, **tiles.launch_options})
            for tiles in decode_tiles.CANDIDATES if tiles != decode_tiles.DEFAULT]


GEMM_SHAPE = (6144, 4096)  # (N, K): Llama-3-8B's qkv projection; K is a multiple of every block
GEMM_MIN_ARCH = 89  # Triton's FP8 dot needs fp8e4nv


def gemm_tables() -> list[tuple[str, tuple[int, ...] | None, dict]]:
    """(name suffix, the archs it is for or None for all, block -> [(largest M, config)]): the
    default table, and each table tuned on a GPU model (for that model's compute capability)."""
    from breccia_sglang.integration.gemm import block_fp8_tiles as tiles

    found = [("", None, {})]
    for path in sorted(tiles.TUNED_DIR.glob("block_fp8_*.json")):
        about = json.loads(path.read_text())
        found.append((f" [{about['device']}]", (about["capability"],), tiles.load_tables(path)))
    return found


def gemm_launches(dtype: torch.dtype) -> list[Launch]:
    """SGLang's block FP8 GEMMs as breccia's launcher calls them: each block width with each tile
    config of the default table and of every tuned one (the Hopper kernel and its split-K
    reduction where a config asks for them)."""
    from sglang.kernels.ops.gemm import fp8_kernel

    from breccia_sglang.integration.gemm import block_fp8_tiles as tiles
    from breccia_sglang.integration.gemm import triton_block_fp8 as tbf

    n, k = GEMM_SHAPE
    sink: list[Launch] = []
    for suffix, archs, tables in gemm_tables():
        for block in tbf.BLOCKS:
            weight = torch.zeros(n, k, dtype=torch.float8_e4m3fn)
            weight_scale = torch.ones(n, k // block)
            for top, config in tables.get(block, tiles.TILE_CONFIGS):
                m = min(top, 2048)
                name = f"sglang block fp8 gemm 1x{block} {config.name}{suffix}"
                with contextlib.ExitStack() as stack:
                    for kernel, label in (("_w8a8_block_fp8_matmul", name), ("_w8a8_block_fp8_matmul_hopper", name),
                                          ("_reduce_block_fp8_split_k", f"{name} reduce")):
                        stack.enter_context(recording(fp8_kernel, kernel, label, sink, archs))
                    stack.enter_context(patched(tbf, "choose_config", lambda *_, config=config: config))
                    tbf.block_fp8_matmul(torch.zeros(m, k, dtype=torch.float8_e4m3fn), torch.ones(m, k // block),
                                         weight, weight_scale, block, dtype, interpreted=False)
    return sink


@contextlib.contextmanager
def patched(module, attribute: str, value):
    before = getattr(module, attribute)
    setattr(module, attribute, value)
    try:
        yield
    finally:
        setattr(module, attribute, before)


W4A16_GROUPS = {"int4": 128, "uint4": 128, "e2m1": 16}  # INT4's common group; NVFP4's 16
W8A16_GROUPS = {"g128": 128, "g32": 32, "per-row": None}  # 1x128 blocks; MXFP8 and 1x32; per-tensor FP8
SPLIT_SUM = "breccia gemm split-k sum"


def weight_only_tables() -> list[tuple[str, tuple[int, ...], dict]]:
    """(name suffix, the archs it is for, table -> [(largest M, config)]) of every weight-only
    table tuned on a GPU model and shipped (``kernels/gemm/tuned/``)."""
    from breccia_sglang.kernels.gemm import tuned_configs

    found = []
    for path in sorted(tuned_configs.TUNED_DIR.glob("weight_only_*.json")):
        about = json.loads(path.read_text())
        found.append((f" [{about['device']}]", (about["capability"],), tuned_configs.load_tables(path)))
    return found


def four_bit_weight(codes: str, group: int) -> tuple:
    """(packed codes, scales, zero points or None) of GEMM_SHAPE's weight in 4-bit ``codes``:
    E4M3 scale bytes for E2M1, zero points for UINT4."""
    n, k = GEMM_SHAPE
    scales = torch.zeros(n, k // group, dtype=torch.uint8) if codes == "e2m1" else torch.ones(n, k // group)
    return torch.zeros(n, k // 2, dtype=torch.uint8), scales, torch.zeros(n, k // group) if codes == "uint4" else None


def weight_only_calls() -> list[tuple]:
    """(module, kernel, label, tuned table, codes or None, call(x)) for each kind the launchers serve."""
    n, k = GEMM_SHAPE
    calls = []
    for codes, group in W4A16_GROUPS.items():
        packed, scales, zero_points = four_bit_weight(codes, group)
        table = "w4a16-nvfp4" if codes == "e2m1" else "w4a16-int4"
        calls.append((w4a16, "_w4a16_kernel", f"w4a16 gemm {codes}", table, codes,
                      lambda x, p=packed, s=scales, z=zero_points, g=group, c=codes: w4a16.w4a16_matmul(
                          x, p, s, z, group=g, codes=c)))
    for kind, group in W8A16_GROUPS.items():
        codes, scales = torch.zeros(n, k, dtype=torch.uint8), torch.ones(n, 1 if group is None else k // group)
        calls.append((w8a16, "_w8a16_kernel", f"w8a16 gemm {kind}", "w8a16", None,
                      lambda x, w=codes, s=scales, g=group: w8a16.w8a16_matmul(x, w, s, group=g)))
    return calls


def weight_only_launches(dtype: torch.dtype) -> list[Launch]:
    """breccia's W4A16 and W8A16 GEMMs as their launchers call them on a GPU: each code kind (UINT4
    with zero points, E2M1 with E4M3 scale bytes) or scale group, an M from each range of their
    built-in tile configs and every config of each shipped tuned table (for its GPU's
    capability), and the K-split sum (once: it is the same kernel for both)."""
    k = GEMM_SHAPE[1]
    sink: list[Launch] = []
    ms = (1, 64, 256, 2048) if dtype != torch.float32 else (64,)  # fp32: one config for all M
    for module, kernel, label, table, codes, call in weight_only_calls():
        launches = []  # (M, the config forced or None for the launcher's own choice, name suffix, archs)
        for m in ms:
            x = torch.zeros(m, k, dtype=dtype)
            with gpu_tiles():
                launches.append((m, None, module.choose_config(m, x, *([codes] if codes else [])), "", None))
        if dtype != torch.float32:  # tuned tables are for tensor-core dtypes; fp32 keeps its own config
            for suffix, archs, tables in weight_only_tables():
                launches += [(top, config, config, suffix, archs) for top, config in tables.get(table, [])]
        bytes_per_code = 1 if module is w8a16 else 0.5
        for m, forced, config, suffix, archs in launches:
            x = torch.zeros(m, k, dtype=dtype)
            # Split K as on an H100 / H200 (132 SMs), so the decode launches record their split sum.
            per_sm = config.programs_per_sm or tiling.PROGRAMS_PER_SM
            with contextlib.ExitStack() as stack:
                stack.enter_context(gpu_tiles())
                stack.enter_context(patched(tiling, "INTERPRETER_PROGRAMS", per_sm * 132))
                stack.enter_context(recording(tiling, "_sum_splits_kernel", SPLIT_SUM, sink))
                stack.enter_context(recording(module, kernel, f"breccia {label} {config.name}{suffix}", sink, archs))
                if forced is not None:
                    stack.enter_context(patched(module, "choose_config", lambda *_, c=forced: c))
                call(x)
            gemm = max(i for i, launch_ in enumerate(sink) if launch_.name != SPLIT_SUM)  # before its split sum
            sink[gemm] = sink[gemm]._replace(weight_bytes_per_step=int(config.block_n * config.block_k * bytes_per_code))
    for kind, group in W8A16_GROUPS.items():  # the prefill route's pass, writing this dtype
        codes, scales = torch.zeros(*GEMM_SHAPE, dtype=torch.uint8), torch.ones(GEMM_SHAPE[0], 1 if group is None
                                                                               else k // group)
        with gpu_tiles(), recording(dequantize, "_dequantize_fp8_kernel", f"breccia dequantize fp8 {kind}", sink):
            dequantize.dequantize_fp8(codes, scales, group=group, dtype=dtype)
    for codes, group in W4A16_GROUPS.items():  # the same pass over 4-bit weights
        packed, scales, zero_points = four_bit_weight(codes, group)
        with gpu_tiles(), recording(dequantize_packed, "_dequantize_4bit_kernel", f"breccia dequantize 4bit {codes}",
                                    sink):
            dequantize_packed.dequantize_4bit(packed, scales, zero_points, group=group, codes=codes, dtype=dtype)
    first_sum = next(i for i, launch_ in enumerate(sink) if launch_.name == SPLIT_SUM)
    return [launch_ for i, launch_ in enumerate(sink) if launch_.name != SPLIT_SUM or i == first_sum] + \
        moe_weight_only_launches(dtype)


def moe_weight_only_launches(dtype: torch.dtype) -> list[Launch]:
    """Our MoE kernels as ``triton-moe-w4a16`` / ``triton-moe-w8a16`` launch them: gate/up at
    MOE_SHAPE, INT4 g128 and NVFP4 on W4A16, FP8 per row, 1x128 and MXFP8 on W8A16, at a
    decode batch (one row an expert on average) and a prefill one (32)."""
    from breccia_sglang.integration.moe.align import align_routed_pairs
    from breccia_sglang.kernels.gemm import (RoutedBlocks, choose_moe_config, choose_moe_w8a16_config, moe_w4a16,
                                             moe_w8a16)

    e, top_k, hidden, inter = MOE_SHAPE
    rows = 2 * inter

    def four_bit(codes: str, group: int):
        packed = torch.zeros(e, rows, hidden // 2, dtype=torch.uint8)
        scales = torch.zeros(e, rows, hidden // group, dtype=torch.uint8 if codes == "e2m1" else torch.float32)
        return (moe_w4a16, "_moe_w4a16_kernel", f"w4a16 {codes}", choose_moe_config, 0.5,
                lambda x, blocks, config: moe_w4a16.moe_w4a16_matmul(x, packed, scales, None, blocks, config,
                                                                     group=group, codes=codes, pairs_per_x_row=top_k))

    def fp8(kind: str, group: int | None):
        codes = torch.zeros(e, rows, hidden, dtype=torch.uint8)
        scales = torch.ones(e, rows, 1 if group is None else hidden // group)
        return (moe_w8a16, "_moe_w8a16_kernel", f"w8a16 {kind}", choose_moe_w8a16_config, 1,
                lambda x, blocks, config: moe_w8a16.moe_w8a16_matmul(x, codes, scales, blocks, config, group=group,
                                                                     pairs_per_x_row=top_k))

    sink: list[Launch] = []
    for module, kernel, label, choose, bytes_per_code, call in (
            four_bit("int4", 128), four_bit("e2m1", 16), fp8("per-row", None), fp8("g128", 128), fp8("g32", 32)):
        for tokens in ((16,) if dtype == torch.float32 else (16, 512)):
            topk_ids = (torch.arange(tokens * top_k, dtype=torch.int32) % e).view(tokens, top_k)
            x = torch.zeros(tokens, hidden, dtype=dtype)
            with gpu_tiles():
                config = choose(topk_ids.numel(), e, x)
                blocks = RoutedBlocks(*align_routed_pairs(topk_ids, config.block_m, e), num_pairs=topk_ids.numel(),
                                      block_m=config.block_m)
                with recording(module, kernel, f"breccia moe {label} {config.name}", sink):
                    call(x, blocks, config)
            sink[-1] = sink[-1]._replace(weight_bytes_per_step=int(config.block_n * config.block_k * bytes_per_code))
    return sink


MOE_SHAPE = (128, 8, 2048, 768)  # experts, top_k, hidden, expert intermediate: Qwen3-30B-A3B
MOE_BLOCK = 128  # 1x128 FP8 scale blocks; INT4 groups of 128


def moe_launches(dtype: torch.dtype) -> list[Launch]:
    """SGLang's fused MoE kernels as breccia's MoE kernels launch them: the W8A8 FP8 kernel
    (1x128 blocks) and the W4A16 INT4 kernel, gate/up GEMM, with a routed-pair count from each
    range of the MoE tile configs."""
    from sglang.kernels.ops.moe import fused_moe_triton_kernels as moe
    import triton.language as tl

    from breccia_sglang.integration.moe.align import align_routed_pairs
    from breccia_sglang.integration.moe.triton_fused import MAX_TILE_K, MOE_TILE_CONFIGS, moe_tile_config

    e, top_k, hidden, inter = MOE_SHAPE
    compute = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]
    sink: list[Launch] = []
    for tokens in (4, 64, 512):  # 32, 512, 4096 routed pairs: one per range of MOE_TILE_CONFIGS
        topk_ids = (torch.arange(tokens * top_k, dtype=torch.int32) % e).view(tokens, top_k)
        out = torch.empty(tokens, top_k, 2 * inter, dtype=dtype)
        for kind, kernel in (("w8a8", "fused_moe_kernel"), ("w4a16", "fused_moe_kernel_gptq_awq")):
            config = moe_tile_config(topk_ids.numel(), MOE_BLOCK, interpreted=False, max_tile_k=MAX_TILE_K[kind])
            sorted_ids, expert_ids, padded = align_routed_pairs(topk_ids, config["BLOCK_SIZE_M"], e)
            tile = f"{config['BLOCK_SIZE_M']}x{config['BLOCK_SIZE_N']}x{config['BLOCK_SIZE_K']}"
            routing = (torch.ones(tokens, top_k), topk_ids, sorted_ids, expert_ids, padded, False, top_k, config,
                       compute)
            flags = {"use_int8_w8a8": False, "use_int8_w8a16": False, "per_channel_quant": False}
            if kind == "w8a8":
                with recording(moe, kernel, f"sglang fused moe fp8 1x{MOE_BLOCK} {tile}", sink):
                    moe.invoke_fused_moe_kernel(
                        torch.zeros(tokens, hidden, dtype=torch.float8_e4m3fn),
                        torch.zeros(e, 2 * inter, hidden, dtype=torch.float8_e4m3fn), None, out,
                        torch.ones(tokens, hidden // MOE_BLOCK), torch.ones(e, 2 * inter, hidden // MOE_BLOCK), None,
                        *routing, use_fp8_w8a8=True, use_int4_w4a16=False, block_shape=[1, MOE_BLOCK], **flags)
            else:
                with recording(moe, kernel, f"sglang fused moe int4 g{MOE_BLOCK} {tile}", sink):
                    moe.invoke_fused_moe_kernel(
                        torch.zeros(tokens, hidden, dtype=dtype), torch.zeros(e, 2 * inter, hidden // 2, dtype=torch.uint8),
                        None, out, None, torch.ones(e, 2 * inter, hidden // MOE_BLOCK), None, *routing,
                        use_fp8_w8a8=False, use_int4_w4a16=True, block_shape=[0, MOE_BLOCK], **flags)
    assert len(sink) == 2 * len(MOE_TILE_CONFIGS), [launch_.name for launch_ in sink]
    return sink


def sglang_launches(dtype: torch.dtype, head_dim: int, group: int) -> list[Launch]:
    """SGLang's ``decode_attention_fwd`` stage 1 and 2 on a BF16 (the query dtype) and an FP8 cache."""
    from sglang.kernels.ops.attention import decode_attention as sglang_decode

    t = step_tensors(dtype, head_dim, group)
    q = t["q_decode"]
    batch, q_heads, _ = q.shape
    max_splits = 16
    sink: list[Launch] = []
    wide_name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    for kv_name, kv_dtype in ((wide_name, dtype), ("fp8", torch.float8_e4m3fn)):
        kv = torch.zeros(t["data"].shape, dtype=kv_dtype)
        with recording(sglang_decode, "_fwd_grouped_kernel_stage1", f"sglang decode split ({kv_name} KV)", sink), \
                recording(sglang_decode, "_fwd_kernel_stage2", f"sglang decode merge ({kv_name} KV)", sink):
            sglang_decode.decode_attention_fwd(
                q, kv, kv, torch.empty_like(q), t["kv_indptr"], t["kv_indices"],
                torch.empty(batch, q_heads, max_splits, head_dim), torch.empty(batch, q_heads, max_splits),
                torch.full((batch,), 4, dtype=torch.int32), max_splits, head_dim ** -0.5, 1.0, 1.0)
    return sink


def compile_for(launch_: Launch, arch: int) -> dict:
    """Compile one recorded launch for sm_<arch>; resources or the error."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(launch_.kwargs)
    if "NATIVE_FP8" in kwargs:  # the launcher chose for the CPU; choose as it would on this GPU
        kwargs["NATIVE_FP8"] = launch.has_native_fp8(divmod(arch, 10))
    if "PTX" in kwargs:  # the launcher ran on CPU tensors: on an NVIDIA GPU it takes the inline PTX
        kwargs["PTX"] = True
    kernel = launch_.kernel
    row = {"kernel": launch_.name, "arch": arch, "native_fp8": kwargs.get("NATIVE_FP8")}
    try:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, specialization, options = binder(*launch_.args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    except Exception as exc:  # reported, not raised: e.g. fp8e4nv before sm_89
        row["error"] = error_summary(exc)
        return row
    usage = cubin_resources(compiled.asm["cubin"])
    shared = compiled.metadata.shared + usage["static_shared"]
    threads = 32 * compiled.metadata.num_warps
    row.update(registers=usage["registers"], spill_bytes=usage["local"] + usage["stack"], shared_bytes=shared,
               shared_limit=SHARED_PER_BLOCK.get(arch), num_warps=compiled.metadata.num_warps,
               num_stages=options.num_stages,
               blocks_per_sm_by_registers=REGISTERS_PER_SM // max(1, usage["registers"] * threads),
               loop_instructions=loop_instructions(compiled.asm["cubin"]))
    if launch_.weight_bytes_per_step and row["loop_instructions"]:
        # What issuing the loop costs per weight byte streamed: an SM issues 128 thread-instructions a
        # cycle, and HBM gives an H200 SM ~18 bytes a cycle (4.8 TB/s over 132 SMs at 1.98 GHz), so a
        # decode-sized GEMM past ~7 of these cannot stream its weight at memory speed.
        row["instructions_per_weight_byte"] = row["loop_instructions"] * threads / launch_.weight_bytes_per_step
    return row


def loop_instructions(cubin: bytes) -> int:
    """SASS instructions (per warp) in the kernel's longest loop: the backward branch that spans
    the most code, from its target to itself (the main K or KV loop, in these kernels)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(TRITON_BIN / "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    addresses = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", text)]
    loops = [(int(target, 16), at) for at, op in addresses if "BRA" in op
             for target in re.findall(r"0x([0-9a-f]+)", op) if int(target, 16) < at]
    if not loops:
        return 0
    first, last = max(loops, key=lambda loop: loop[1] - loop[0])
    return sum(first <= at <= last for at, _ in addresses)


TRITON_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"  # Triton's bundled CUDA tools


def cubin_resources(cubin: bytes) -> dict:
    cuobjdump = TRITON_BIN / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not found:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{text}")
    registers, stack, shared, local = map(int, found.groups())
    return {"registers": registers, "stack": stack, "static_shared": shared, "local": local}


def _compile_case(case: tuple) -> list[dict]:
    """One (dtype, head_dim) for every arch, or (dtype, "gemm" / "weight-only" / "moe"): recording is cheap,
    compiling is the work."""
    dtype_name, head_dim, group, archs, with_sglang = case
    dtype = getattr(torch, dtype_name)
    if head_dim == "gemm":
        launches, archs, head_dim = gemm_launches(dtype), [a for a in archs if a >= GEMM_MIN_ARCH], 0
    elif head_dim == "weight-only":
        launches, head_dim = weight_only_launches(dtype), 0
    elif head_dim == "moe":  # the FP8 kernel needs sm_89+ (its FP8 dot); the INT4 one sm_80+
        launches, head_dim = moe_launches(dtype), 0
        rows = [compile_for(launch_, arch) | {"dtype": dtype_name, "head_dim": 0, "group": group}
                for arch in archs for launch_ in launches if "int4" in launch_.name or arch >= GEMM_MIN_ARCH]
        for row in rows:
            print(format_row(row), flush=True)
        return rows
    else:
        launches = breccia_launches(dtype, head_dim, group)
        if with_sglang:
            launches += sglang_launches(dtype, head_dim, group)
    rows = []
    for arch in archs:
        for launch_ in (launch_ for launch_ in launches if launch_.archs is None or arch in launch_.archs):
            row = compile_for(launch_, arch)
            row.update(dtype=dtype_name, head_dim=head_dim, group=group)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    where = f"sm_{r['arch']} {r['dtype']:8} D={r['head_dim']:<3}"
    if "error" in r:
        return f"{where} {r['kernel']:28} FAILS: {r['error']}"
    limit = f"/{r['shared_limit'] // 1024}" if r["shared_limit"] else ""
    fp8 = {True: "native", False: "integer", None: "-"}[r["native_fp8"]]
    return (f"{where} {r['kernel']:28} regs {r['registers']:3d}  spill {r['spill_bytes']:5d} B  "
            f"shared {r['shared_bytes'] // 1024:3d}{limit} KiB  warps {r['num_warps']} stages {r['num_stages']}  "
            f"blocks/SM (regs) {r['blocks_per_sm_by_registers']}  fp8 decode {fp8}"
            + (f"  {r['instructions_per_weight_byte']:.1f} instr/weight byte" if "instructions_per_weight_byte" in r
               else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 89, 90],
                        help="compute capabilities: " + ", ".join(f"{a} ({n})" for a, n in GPU_NAMES.items()))
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float16", "float32"],
                        choices=["bfloat16", "float16", "float32"], help="query / model dtype")
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--group", type=int, default=4, help="query heads per kv head")
    parser.add_argument("--no-sglang", action="store_true", help="skip SGLang's kernels (its decode and block GEMM)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=OUT_DIR / "compile_kernels.json")
    args = parser.parse_args()
    unknown = [a for a in args.arch if a not in SHARED_PER_BLOCK]
    if unknown:
        parser.error(f"--arch {unknown}: known compute capabilities are {sorted(SHARED_PER_BLOCK)}")

    cases = [(d, h, args.group, args.arch, not args.no_sglang) for d in args.dtype for h in args.head_dim]
    gemm_dtype = next((d for d in ("bfloat16", "float16") if d in args.dtype), None)
    if not args.no_sglang and gemm_dtype:  # the GEMM's inputs are FP8 whatever the model dtype: one suffices
        cases.append((gemm_dtype, "gemm", args.group, args.arch, True))
        cases.append((gemm_dtype, "moe", args.group, args.arch, True))
    # The weight-only GEMMs multiply in the activation dtype: every one (fp32 takes a single tile config).
    cases += [(d, "weight-only", args.group, args.arch, False) for d in args.dtype]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = [row for case_rows in pool.map(_compile_case, cases) for row in case_rows]
    # Ours, and SGLang's GEMM with our configs, must compile (SGLang's decode on FP8 need not).
    failed = [r for r in rows if "error" in r and r["kernel"].startswith(("breccia ", "sglang block fp8 gemm",
                                                                          "sglang fused moe"))]
    over = [r for r in rows if r.get("shared_limit") and r["shared_bytes"] > r["shared_limit"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {**report_header("compile_kernels", args), "triton": triton.__version__, "gpus": GPU_NAMES,
              "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{len(rows)} compiles: {len(failed)} breccia kernels or GEMM configs failed, "
          f"{len(over)} over the shared-memory limit; wrote {args.out}")
    sys.exit(1 if failed or over else 0)


if __name__ == "__main__":
    main()
