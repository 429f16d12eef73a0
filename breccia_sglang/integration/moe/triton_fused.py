"""Breccia experts on SGLang's fused MoE Triton kernels, through SGLang's own Triton MoE runner.

Two kernels, both run by ``MoeRunner(TRITON)`` with a ``TritonMoeQuantInfo``, with tile configs of
ours set through SGLang's ``override_config`` (its defaults for ``[1, B]`` blocks set
``BLOCK_SIZE_N`` to 1, one program per output column):

- ``triton-fused-moe`` (``fused_moe_kernel``, W8A8, sm_89+): block FP8 with 1x32 / 1x64 / 1x128
  scales and MXFP8 as ``block_shape=[1, B]``, breccia's (E, N, K / B) scales as they are;
  per-tensor FP8 as per-channel scales (``params.serve_fp8_experts``). The K tile must divide
  B (the kernel reads one scale per K tile): ``TileConfig.why_not`` refuses any other.
- ``triton-moe-wna16`` (``fused_moe_kernel_gptq_awq``, W4A16, sm_80+): INT4 codes packed two per
  byte as they load, even k in the low nibble, which is the moe_wna16 layout already; the kernel
  computes (u - z) * s on unsigned codes, so signed symmetric codes become u = code ^ 8 with its
  built-in z = 8, and zero points (unsigned symmetric: all 0) are packed two per byte along N.

On CPU neither runs end to end (SGLang's ``moe_align_block_size`` is CUDA only); the kernels
themselves are checked under the interpreter with these layouts and configs
(``tests/integration/test_moe_triton.py``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from breccia.layouts import PerTensor
from breccia.recipes import Float8BlockScaling, MXFP8BlockScaling

from ... import names
from ...format.recipes import PER_TENSOR_FP8
from ...weights.packing import pack_low_first
from ...weights.sglang_layouts import four_bit_zero_points
from ..gemm.base import needs_gpu
from ..gemm.block_fp8_tiles import TileConfig
from ..gemm.triton_block_fp8 import BLOCKS
from ..sglang_params import replace_param
from .params import WEIGHTS, expert_params, serve_fp8_experts
from .spec import MoESpec

# (largest tokens x top_k routed, config), smallest first. Few tokens per expert (decode) want
# narrow M tiles; block_k None: the scale block's B (W8A8) or the group (W4A16), at most 128.
MOE_TILE_CONFIGS: list[tuple[int, TileConfig]] = [
    (64, TileConfig(16, 64, None, 1, 4, 3)),
    (1024, TileConfig(32, 64, None, 8, 4, 3)),
    (1 << 62, TileConfig(64, 128, None, 8, 8, 3)),
]
INTERPRETER_CONFIG = TileConfig(16, 32, None, 1, 1, 1)  # every program runs in Python there


# The W4A16 kernel stages dequantized weight tiles in shared memory: a 128-deep K tile with the
# 64 x 128 output tile needs 192 KiB, over sm_80's 163 and sm_89's 99 (benchmarks/compile_kernels.py).
MAX_TILE_K = {"w8a8": 128, "w4a16": 64}


def moe_tile_config(routed: int, block: int, interpreted: bool, max_tile_k: int = MAX_TILE_K["w8a8"]) -> dict:
    """SGLang's Triton MoE config for ``routed`` (tokens x top_k) rows and 1 x ``block`` scales
    (or groups): the K tile is the block, capped at ``max_tile_k`` and never one that straddles two."""
    candidates = [INTERPRETER_CONFIG] if interpreted else [c for top, c in MOE_TILE_CONFIGS if routed <= top]
    config = replace(candidates[0], block_k=min(block, 32 if interpreted else max_tile_k))
    if config.why_not(block):
        raise ValueError(f"no MoE tile config for 1x{block} blocks: {config.why_not(block)}")
    launch = config.for_block(block)
    return {key: launch[key] for key in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M")} | \
        {"num_warps": launch["num_warps"], "num_stages": launch["num_stages"]}


def _shape_refusal(spec: MoESpec, unit: str | None) -> str | None:
    """Why the fused kernels cannot take this layer's shapes or dtype, or None: each stacked
    weight's K must hold whole scale blocks / groups (``unit``; None: per-tensor scales), and
    they multiply in fp16 or bf16."""
    for w, (_, k) in spec.projections().items():
        if unit and k % spec.block:
            return f"{w}: K={k} splits a {spec.block}-wide scale {unit}"
    if spec.params_dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16 activations, not {spec.params_dtype}"
    return None


class _TritonMoEKernel:
    """Shared by both: SGLang's Triton MoE runner, our configs, our weights prepared once."""

    def create_weights(self, layer, spec: MoESpec, weight_loader) -> None:
        self.spec = spec
        expert_params(layer, spec, weight_loader)

    def create_moe_runner(self, layer, moe_runner_config) -> None:
        from sglang.srt.layers.moe import MoeRunner, MoeRunnerBackend

        self.moe_runner_config = moe_runner_config
        self.runner = MoeRunner(MoeRunnerBackend.TRITON, moe_runner_config)
        self.runner_backend = self.runner.runner_backend

    def apply(self, layer, dispatch_output):
        from sglang.srt.layers.moe.moe_runner.triton_utils import override_config

        routed = dispatch_output.topk_output.topk_ids.numel()
        with override_config(moe_tile_config(routed, self.block, self.spec.interpreted, MAX_TILE_K[self.kind])):
            return self.runner.run(dispatch_output, self.quant_info(layer))


class TritonFusedMoEKernel(_TritonMoEKernel):
    """FP8 experts (per-tensor, block 1xB, MXFP8) on SGLang's ``fused_moe_kernel``, W8A8."""

    name = names.GEMM_TRITON_FUSED_MOE
    priority = 80
    kind = "w8a8"

    @classmethod
    def why_not(cls, spec: MoESpec) -> str | None:
        per_tensor = isinstance(spec.recipe, PER_TENSOR_FP8) and isinstance(spec.layout, PerTensor)
        block = isinstance(spec.recipe, (Float8BlockScaling, MXFP8BlockScaling))
        if spec.fp8_format != "E4M3" or not (per_tensor or block):
            return "needs FP8 E4M3 experts: per-tensor, block (1xB) or MXFP8"
        if block and spec.block not in BLOCKS:
            return f"needs 1x{'/'.join(map(str, BLOCKS))} blocks, not 1x{spec.block}"
        return _shape_refusal(spec, "block" if block else None) or needs_gpu(spec, cls.name, 89)

    @property
    def block(self) -> int:
        return self.spec.block or 128  # per-tensor: per-channel scales, any K tile

    def process_weights_after_loading(self, layer) -> None:
        serve_fp8_experts(layer, self.spec)

    def quant_info(self, layer):
        from sglang.srt.layers.moe.moe_runner.triton import TritonMoeQuantInfo

        per_tensor = isinstance(self.spec.layout, PerTensor)
        return TritonMoeQuantInfo(w13_weight=layer.w13_weight, w2_weight=layer.w2_weight, use_fp8_w8a8=True,
                                  per_channel_quant=per_tensor, w13_scale=layer.w13_weight_scale,
                                  w2_scale=layer.w2_weight_scale, block_shape=None if per_tensor else [1, self.block])


class TritonMoEWna16Kernel(_TritonMoEKernel):
    """INT4 experts (all three recipes) on SGLang's ``fused_moe_kernel_gptq_awq``, W4A16."""

    name = names.GEMM_TRITON_MOE_WNA16
    priority = 80
    kind = "w4a16"

    @classmethod
    def why_not(cls, spec: MoESpec) -> str | None:
        if spec.recipe.name != "int4":
            return "needs INT4 experts"
        if spec.block not in (16, 32, 64, 128):
            return f"needs groups of 16/32/64/128 along K, not {spec.block}"
        return _shape_refusal(spec, "group") or needs_gpu(spec, cls.name, 80)

    @property
    def block(self) -> int:
        return self.spec.block

    def process_weights_after_loading(self, layer) -> None:
        recipe = self.spec.recipe
        for w in WEIGHTS:
            packed = getattr(layer, f"{w}_weight").data
            self.has_zero_points = not (recipe.symmetric and recipe.signed)
            if not self.has_zero_points:  # two's complement c -> u = c ^ 8, the kernel's z = 8
                replace_param(layer, f"{w}_weight", packed ^ 0x88)
                continue
            zero = getattr(layer, f"{w}_weight_zero_point", None)
            scale = getattr(layer, f"{w}_weight_scale").data
            if zero is None:  # symmetric unsigned: z = 0
                z = torch.zeros_like(scale, dtype=torch.uint8)
            else:
                z = four_bit_zero_points(zero.data, f"{self.spec.prefix}.{w}_weight_zero_point")
            # (E, N, K / G) -> (E, N / 2, K / G): rows 2j and 2j + 1 share a byte, 2j low
            replace_param(layer, f"{w}_weight_zero_point", pack_low_first(z.transpose(1, 2)).transpose(1, 2).contiguous())

    def quant_info(self, layer):
        from sglang.srt.layers.moe.moe_runner.triton import TritonMoeQuantInfo

        zp = (lambda w: getattr(layer, f"{w}_weight_zero_point")) if self.has_zero_points else (lambda w: None)
        return TritonMoeQuantInfo(w13_weight=layer.w13_weight, w2_weight=layer.w2_weight, use_int4_w4a16=True,
                                  w13_scale=layer.w13_weight_scale, w2_scale=layer.w2_weight_scale,
                                  w13_zp=zp("w13"), w2_zp=zp("w2"), block_shape=[0, self.block])

