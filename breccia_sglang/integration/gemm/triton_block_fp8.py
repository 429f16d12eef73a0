"""Block FP8 (1 x B scales) and MXFP8 on SGLang's Triton W8A8 block kernel, with tile configs of ours.

SGLang's ``_w8a8_block_fp8_matmul`` indexes weight scales as ``offs_bn // group_n``: with
``group_n = 1`` it reads breccia's one scale per row and K block, ``(N, K / B)`` fp32, as they
are. Its own wrapper cannot be used for 1 x B blocks: the default config sets
``BLOCK_SIZE_N = group_n = 1`` (one program per output column), and no tuned config ships. So
this module launches the jit function with ``TILE_CONFIGS``, and checks each config before use:
the kernel steps its scales once per ``B // BLOCK_SIZE_K`` tiles, so a tile K that does not
divide B gives silently wrong results (an error of 20.9 where 1e-6 is right, B=64, tile K 128).

MXFP8 takes the same path losslessly: its codes are E4M3 bytes and each E8M0 scale is exactly
a power of two in fp32 (``weights.codes.decode_e8m0``), converted once after loading; B = 32.

Activations are quantized per token and K block as SGLang's FP8 linears do (``activation_quant``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
from breccia.layouts import PerBlockK
from breccia.recipes import Float8BlockScaling, MXFP8BlockScaling

from ... import names
from ...errors import BrecciaCheckpointError
from ...weights.codes import decode_e8m0
from ..sglang_params import code_params, fp8_params
from .activation_quant import quantize_input
from .base import GemmKernel, needs_gpu

BLOCKS = (32, 64, 128)  # the K widths of the 1 x B scale blocks this path takes


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of the block kernel (``block_k=None``: the scale block's B)."""

    block_m: int
    block_n: int
    block_k: int | None
    group_m: int
    num_warps: int
    num_stages: int

    def why_not(self, block: int) -> str | None:
        """None if this config computes 1 x ``block`` blocks correctly, else why not."""
        k = self.block_k or block
        if block % k:
            return f"tile K {k} does not divide the {block}-wide scale blocks (the kernel would mix blocks' scales)"
        if min(self.block_m, self.block_n, k) < 16:
            return f"tiles of {self.block_m}x{self.block_n}x{k}: tl.dot needs at least 16 in every dimension"
        return None

    def for_block(self, block: int) -> dict:
        return {"BLOCK_SIZE_M": self.block_m, "BLOCK_SIZE_N": self.block_n, "BLOCK_SIZE_K": self.block_k or block,
                "GROUP_SIZE_M": self.group_m, "num_warps": self.num_warps, "num_stages": self.num_stages}


# (largest M, config), smallest M first; the first correct config for a launch's M is taken.
# Decode (M <= 16) wants many programs over N to stream the weight; large M wants big tiles
# that reuse it. Not tuned on a GPU yet: benchmarks/bench_gemm.py is what should tune them.
TILE_CONFIGS: list[tuple[int, TileConfig]] = [
    (16, TileConfig(16, 64, None, 1, 4, 4)),
    (64, TileConfig(32, 64, None, 8, 4, 3)),
    (256, TileConfig(64, 128, None, 8, 4, 3)),
    (1 << 62, TileConfig(128, 128, None, 8, 8, 3)),
]
# Under the interpreter every program runs in Python: the smallest tiles tl.dot takes.
INTERPRETER_CONFIG = TileConfig(16, 32, None, 1, 1, 1)


def choose_config(m: int, block: int, interpreted: bool) -> TileConfig:
    """The launch config for M rows of 1 x ``block`` blocks; never one that would be wrong."""
    candidates = [INTERPRETER_CONFIG] if interpreted else [c for top, c in TILE_CONFIGS if m <= top]
    for config in candidates:
        if config.why_not(block) is None:
            return config
    # Every listed config is wrong for this block: B itself as tile K is always right.
    return replace(candidates[-1], block_k=None)


def block_fp8_matmul(x_codes: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     block: int, out_dtype: torch.dtype, interpreted: bool) -> torch.Tensor:
    """(M, K) fp8 x (N, K) fp8 -> (M, N) ``out_dtype``: x_scale (M, K / B), weight_scale (N, K / B) fp32."""
    from sglang.kernels.ops.gemm.fp8_kernel import _w8a8_block_fp8_matmul

    m, k = x_codes.shape
    n = weight.shape[0]
    if k % block or weight.shape[1] != k or weight_scale.shape != (n, k // block) or x_scale.shape != (m, k // block):
        raise ValueError(f"block FP8 GEMM: x {tuple(x_codes.shape)}, scales {tuple(x_scale.shape)}, weight "
                         f"{tuple(weight.shape)}, scales {tuple(weight_scale.shape)} do not fit 1x{block} blocks")
    config = choose_config(m, block, interpreted).for_block(block)
    out = x_codes.new_empty((m, n), dtype=out_dtype)
    grid = (triton.cdiv(m, config["BLOCK_SIZE_M"]) * triton.cdiv(n, config["BLOCK_SIZE_N"]),)
    _w8a8_block_fp8_matmul[grid](
        x_codes, weight, out, x_scale, weight_scale, m, n, k,
        1, block,  # group_n = 1: one weight scale per row; group_k = B
        x_codes.stride(0), x_codes.stride(1), weight.stride(1), weight.stride(0), out.stride(0), out.stride(1),
        x_scale.stride(0), x_scale.stride(1), weight_scale.stride(1), weight_scale.stride(0),
        **config, needs_masking=k % config["BLOCK_SIZE_K"] != 0,
    )
    return out


class TritonBlockFp8Kernel(GemmKernel):
    """W8A8 block FP8 on SGLang's Triton kernel: ``Float8BlockScaling`` (B = 32, 64, 128) and MXFP8."""

    name = names.GEMM_TRITON_BLOCK_FP8
    priority = 80

    @classmethod
    def why_not(cls, spec):
        is_block = isinstance(spec.recipe, Float8BlockScaling) and isinstance(spec.layout, PerBlockK)
        if spec.fp8_format != "E4M3" or not (is_block or isinstance(spec.recipe, MXFP8BlockScaling)):
            return "needs block FP8 E4M3 (1xB scales) or MXFP8"
        if spec.block not in BLOCKS:
            return f"needs 1x{'/'.join(map(str, BLOCKS))} blocks, not 1x{spec.block}"
        if spec.input_size_per_partition % spec.block:
            return f"K={spec.input_size_per_partition} splits a {spec.block}-wide scale block"
        return needs_gpu(spec, cls.name, 89, triton=True)

    def configure(self, spec) -> "TritonBlockFp8Kernel":
        """What apply() needs to know of the layer's spec."""
        self.mxfp8, self.block, self.interpreted = spec.recipe.name == "mxfp8", spec.block, spec.interpreted
        return self

    def create_weights(self, layer, spec, weight_loader):
        self.configure(spec)
        (code_params if self.mxfp8 else fp8_params)(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        if self.mxfp8:  # once: E4M3 bytes as float8, E8M0 exponents as their exact fp32 powers of two
            codes, exponents = layer.weight.data, layer.weight_scale.data
            layer.weight = torch.nn.Parameter(codes.view(torch.float8_e4m3fn), requires_grad=False)
            layer.weight_scale = torch.nn.Parameter(decode_e8m0(exponents).contiguous(), requires_grad=False)
        if not layer.weight.is_contiguous():
            raise BrecciaCheckpointError(f"{self.name}: the loaded weight is not contiguous")

    def apply(self, layer, x, bias):
        codes, scales = quantize_input(x.reshape(-1, x.shape[-1]).contiguous(), self.block)
        out = block_fp8_matmul(codes, scales, layer.weight, layer.weight_scale, self.block, x.dtype, self.interpreted)
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], out.shape[-1])
