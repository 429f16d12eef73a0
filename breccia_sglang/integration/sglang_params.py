"""The parameters a breccia linear layer declares, made by SGLang's own parameter factories.

Weight and scale parameters come from SGLang's FP8 factory (per-tensor and block FP8) or its
plain ``ModelWeightParameter`` (the uint8 codes of MXFP8; NVFP4 and INT4 two per byte), so merged layers
and TP shards load through SGLang's own shard-aware weight loaders, exactly as its native
checkpoints do. Every call into those factories, and every setting they read, is here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from breccia.layouts import PerBlockK

from .. import names
from ..format.recipes import block_width, packs_two_per_byte

if TYPE_CHECKING:
    from .gemm.base import LinearSpec

# breccia's ``NAME.scale`` always loads into ``weight_scale``: SGLang's FP8 block path calls
# its parameter ``weight_scale_inv``, but model loaders (e.g. Llama's) rename every
# ``*.weight_scale_inv`` to ``*.weight_scale`` before looking parameters up.
SCALE_PARAM = "weight_scale"


def fp8_params(layer, spec: LinearSpec, weight_loader: Callable) -> None:
    # SGLang's own FP8 parameter factory: the same weight/scale parameters, shard-aware
    # weight loaders and TP narrowing as its native FP8 checkpoints. Block scales are
    # registered as ``weight_scale_inv`` there; see SCALE_PARAM for why we re-home them.
    from sglang.srt.layers.quantization.fp8 import Fp8LinearMethod

    block = isinstance(spec.layout, PerBlockK)
    Fp8LinearMethod.create_fp8_weight_(
        layer,
        block_quant=block,
        quant_config=fp8_param_config(spec.layout),
        use_mxfp8=False,
        output_size_per_partition=sum(spec.output_partition_sizes),
        input_size_per_partition=spec.input_size_per_partition,
        output_partition_sizes=list(spec.output_partition_sizes),
        input_size=spec.input_size_per_partition,
        output_size=sum(spec.output_partition_sizes),
        params_dtype=spec.params_dtype,
        weight_loader=weight_loader,
        is_checkpoint_fp8_serialized=True,
    )
    if block:
        layer.register_parameter(SCALE_PARAM, layer.weight_scale_inv)
        del layer.weight_scale_inv


@dataclass
class Fp8ParamConfig:
    """The settings SGLang's FP8 parameter factory and weight loaders read from a config.

    ``create_fp8_weight_`` reads both; the merged-layer weight loaders read
    ``layer.quant_method.quant_config.weight_block_size``.
    """

    weight_block_size: list | None
    activation_scheme: str = "dynamic"

    def get_name(self) -> str:
        # Model code asks a layer's quant config its name (DeepSeek's MLA and shared experts
        # check for packed AWQ layouts): ours is breccia's.
        return names.QUANT_METHOD


def fp8_param_config(layout) -> Fp8ParamConfig:
    # breccia's PerBlockK(B) is one scale per row and K-block: SGLang's [1, B] blocks.
    return Fp8ParamConfig([1, layout.block_size] if isinstance(layout, PerBlockK) else None)


def code_params(layer, spec: LinearSpec, weight_loader: Callable) -> None:
    # MXFP8: one uint8 code per element; NVFP4 / INT4: two per byte, packed as each tensor
    # loads (``weight_loading.py``). One scale (and zero point) per row and K block. Rows
    # concatenate for merged layers and K narrows per block under row-parallel TP (a packed
    # row narrows by K / 2 bytes: every K block is even), so SGLang's plain
    # ModelWeightParameter loaders fit all three.
    from sglang.srt.layers.parameter import ModelWeightParameter

    rows, k = sum(spec.output_partition_sizes), spec.input_size_per_partition
    blocks = k // block_width(spec.layout)
    stored_k = k // 2 if packs_two_per_byte(spec.recipe) else k

    def param(shape, dtype):
        data = torch.zeros(shape, dtype=dtype)
        return ModelWeightParameter(data=data, input_dim=1, output_dim=0, weight_loader=weight_loader)

    layer.register_parameter("weight", param((rows, stored_k), torch.uint8))
    layer.register_parameter(SCALE_PARAM, param((rows, blocks), spec.scale_dtype))
    if spec.has_zero_point:
        layer.register_parameter("weight_zero_point", param((rows, blocks), spec.scale_dtype))
    layer.logical_widths = list(spec.output_partition_sizes)


@dataclass(frozen=True)
class StoredWeight:
    """A breccia linear layer's weight as its parameters hold it (plain tensors, not SGLang's
    parameter subclasses): what kernels read at run time."""

    data: torch.Tensor  # (N, K) float8_e4m3fn or uint8 codes; (N, K / 2) packed NVFP4 / INT4
    scale: torch.Tensor  # (shards,) per-tensor, or (N, K / B)
    zero_point: torch.Tensor | None
    shard_widths: tuple[int, ...]  # rows of each merged shard (q, k, v), in order


def stored_weight(layer) -> StoredWeight:
    zero_point = layer.weight_zero_point.data if hasattr(layer, "weight_zero_point") else None
    return StoredWeight(layer.weight.data, layer.weight_scale.data, zero_point, tuple(layer.logical_widths))


def counting_loads(weight_loader: Callable) -> Callable:
    """``weight_loader``, counting on each parameter how many checkpoint tensors it wrote there
    (``param.breccia_loads``): the layer methods check the count after loading, because SGLang
    models skip names they do not know."""
    @functools.wraps(weight_loader)
    def load(param, loaded_weight, *args, **kwargs):
        param.breccia_loads = getattr(param, "breccia_loads", 0) + 1
        return weight_loader(param, loaded_weight, *args, **kwargs)

    return load


def per_row_scales_whole(weight_loader: Callable, layer, ranks: int) -> Callable:
    """``weight_loader`` for a row-parallel layer with one scale (and zero point) per row
    (``recipes.per_row_on_shard``): SGLang's loader narrows every parameter along K to this
    rank's share, which would leave a (N, 1) scale empty on all ranks but the first, so that
    scale reaches it repeated once per rank: each rank's share is the whole, exactly. (A
    parameter with no K dimension, SGLang's per-channel scale, is not narrowed: it takes the
    scale as it is.)"""
    @functools.wraps(weight_loader)
    def load(param, loaded_weight, *args, **kwargs):
        per_row = param is getattr(layer, SCALE_PARAM, None) or param is getattr(layer, "weight_zero_point", None)
        if per_row and getattr(param, "input_dim", None) is not None:
            loaded_weight = loaded_weight.expand(loaded_weight.shape[0], ranks)
        return weight_loader(param, loaded_weight, *args, **kwargs)

    return load


def per_row_scales_as_blocks(weight_loader: Callable, layer, block: int, full_k: dict[str, int]) -> Callable:
    """FusedMoE's ``weight_loader`` for experts with one scale (and zero point) per row, served
    as 1 x ``block`` blocks (``format.experts.row_block``): each (N, 1) checkpoint scale of a
    stacked weight whose whole K is ``full_k[w]`` (w13, w2) arrives repeated to (N, K / block),
    every block of a row taking the row's scale, exactly. SGLang's loader then narrows the w2
    scales along K for tensor parallelism, as it narrows any block scale."""
    def repeats(param) -> int | None:  # the params exist once the kernel has declared them
        for w, k in full_k.items():
            if any(param is getattr(layer, f"{w}_{part}", None) for part in ("weight_scale", "weight_zero_point")):
                return k // block
        return None

    @functools.wraps(weight_loader)
    def load(param, loaded_weight, *args, **kwargs):
        if loaded_weight.shape[-1] == 1 and (times := repeats(param)):
            loaded_weight = loaded_weight.expand(*loaded_weight.shape[:-1], times)
        return weight_loader(param, loaded_weight, *args, **kwargs)

    return load


def replace_param(layer, name: str, tensor: torch.Tensor | None) -> None:
    """Swap parameter ``name`` for ``tensor`` (None: drop it), freeing the loaded one: a kernel
    that converts its weights once after loading keeps one copy, not two."""
    if hasattr(layer, name):
        delattr(layer, name)
    if tensor is not None:
        layer.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
