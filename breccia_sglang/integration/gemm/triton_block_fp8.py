"""Block FP8 (1 x B scales) and MXFP8 on SGLang's Triton W8A8 block kernel, with tile configs of ours.

SGLang's ``_w8a8_block_fp8_matmul`` (and its Hopper variant) index weight scales as
``offs_bn // group_n``: with ``group_n = 1`` they read breccia's one scale per row and K block,
``(N, K / B)`` fp32, as they are. SGLang's own wrapper cannot be used for 1 x B blocks: its
default config sets ``BLOCK_SIZE_N = group_n = 1`` (one program per output column), and no
tuned config ships for them. So this module launches the jit functions itself, with the tile
configs of ``block_fp8_tiles`` (tuned per GPU model where measured, each checked before use).

MXFP8 takes the same path losslessly: its codes are E4M3 bytes and each E8M0 scale is exactly
a power of two in fp32 (``weights.codes.decode_e8m0``), converted once after loading; B = 32.

Activations are quantized per token and K block as SGLang's FP8 linears do (``activation_quant``).
"""

from __future__ import annotations

import torch
import triton
from breccia.layouts import PerBlockK
from breccia.recipes import Float8BlockScaling, MXFP8BlockScaling

from ... import names
from ...errors import BrecciaCheckpointError
from ...kernels.launch import gpu_model
from ...weights.codes import decode_e8m0
from ..sglang_params import code_params, fp8_params
from .activation_quant import quantize_input
from .base import GemmKernel, layer_output, needs_gpu, token_rows
from .batch_routes import BatchRoutes
from .block_fp8_tiles import choose_config

BLOCKS = (32, 64, 128)  # the K widths of the 1 x B scale blocks this path takes


def block_fp8_matmul(x_codes: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     block: int, out_dtype: torch.dtype, interpreted: bool) -> torch.Tensor:
    """(M, K) fp8 x (N, K) fp8 -> (M, N) ``out_dtype``: x_scale (M, K / B), weight_scale (N, K / B) fp32."""
    from sglang.kernels.ops.gemm import fp8_kernel

    m, k = x_codes.shape
    n = weight.shape[0]
    if k % block or weight.shape[1] != k or weight_scale.shape != (n, k // block) or x_scale.shape != (m, k // block):
        raise ValueError(f"block FP8 GEMM: x {tuple(x_codes.shape)}, scales {tuple(x_scale.shape)}, weight "
                         f"{tuple(weight.shape)}, scales {tuple(weight_scale.shape)} do not fit 1x{block} blocks")
    tile = choose_config(m, block, interpreted, gpu_model(x_codes))
    config = tile.for_block(block)
    out = x_codes.new_empty((m, n), dtype=out_dtype)
    # SPLIT_K > 1: each K split writes fp32 partials, which SGLang's reduce kernel sums into out.
    partials = out if tile.split_k == 1 else x_codes.new_empty((tile.split_k, m, n), dtype=torch.float32)
    kernel = fp8_kernel._w8a8_block_fp8_matmul_hopper if tile.hopper else fp8_kernel._w8a8_block_fp8_matmul
    tiles = triton.cdiv(m, config["BLOCK_SIZE_M"]) * triton.cdiv(n, config["BLOCK_SIZE_N"])
    kernel[(tiles, tile.split_k) if tile.hopper else (tiles,)](
        x_codes, weight, partials, x_scale, weight_scale, m, n, k,
        1, block,  # group_n = 1: one weight scale per row; group_k = B
        x_codes.stride(0), x_codes.stride(1), weight.stride(1), weight.stride(0), out.stride(0), out.stride(1),
        x_scale.stride(0), x_scale.stride(1), weight_scale.stride(1), weight_scale.stride(0),
        **config, needs_masking=k % config["BLOCK_SIZE_K"] != 0,
    )
    if tile.split_k > 1:
        fp8_kernel._reduce_block_fp8_split_k[(triton.cdiv(m * n, 256),)](partials, out, m * n, tile.split_k, 256)
    return out


class TritonBlockFp8Kernel(BatchRoutes, GemmKernel):
    """W8A8 block FP8 on SGLang's Triton kernel: ``Float8BlockScaling`` (B = 32, 64, 128) and MXFP8;
    decode- and prefill-sized batches on other routes where this GPU model's tuned file says so
    (``batch_routes``)."""

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
        self.route_batches(layer, self.block)

    def apply(self, layer, x, bias):
        rows = token_rows(x)
        out = self.routed(layer, rows)
        if out is None:
            codes, scales = quantize_input(rows, self.block)
            out = block_fp8_matmul(codes, scales, layer.weight, layer.weight_scale, self.block, x.dtype,
                                   self.interpreted)
        return layer_output(out, x, bias)
