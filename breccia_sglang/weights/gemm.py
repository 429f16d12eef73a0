"""GEMM kernels for breccia linear layers, chosen from a description of the layer.

Each kernel says whether it can implement a ``LinearSpec`` (recipe, layout, shapes,
device): ``why_not(spec)`` is None when it can, else the reason. ``choose_kernel`` takes the
highest-priority kernel that can. The emulated kernel (dequantize with breccia, then a
plain matmul) can implement everything we load, on any device, so a layer always has a
kernel; ``breccia-sglang inspect`` prints the choice per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import breccia
import torch
import torch.nn.functional as F
from breccia.layouts import PerBlockK, PerBlockMN, PerTensor
from breccia.recipes import DelayedScaling, Float8BlockScaling, Float8CurrentScaling

PER_TENSOR_FP8 = (Float8CurrentScaling, DelayedScaling)


def stores_native_fp8(recipe) -> bool:
    """Recipes whose data SGLang holds as float8_e4m3fn weights (per-tensor and block FP8).

    Every other recipe (MXFP8, NVFP4, INT4) keeps breccia's one-code-per-byte uint8 data.
    """
    return isinstance(recipe, PER_TENSOR_FP8 + (Float8BlockScaling,))


def block_width(layout) -> int | None:
    """K elements per scale for row-local layouts (one scale row per weight row), else None."""
    if isinstance(layout, PerBlockK):
        return layout.block_size
    if isinstance(layout, PerBlockMN) and layout.block_m == 1:
        return layout.block_n
    return None


@dataclass(frozen=True)
class LinearSpec:
    """What a kernel needs to know to decide whether it can run one linear layer."""

    prefix: str
    recipe: object
    layout: object
    input_size_per_partition: int
    output_partition_sizes: tuple[int, ...]
    params_dtype: torch.dtype
    device_type: str  # "cuda", "cpu", ...
    capability: int | None  # e.g. 90 for sm_90; None off CUDA
    scale_dtype: torch.dtype = torch.float32  # as stored in the checkpoint
    has_zero_point: bool = False

    @classmethod
    def for_entry(cls, prefix, entry, input_size_per_partition, output_partition_sizes, params_dtype):
        """The spec of a layer served from checkpoint ``entry`` (a BrecciaEntry) on this machine."""
        from ..checkpoint import TORCH_DTYPES

        device_type, capability = current_device_spec()
        return cls(prefix, entry.recipe, entry.layout, input_size_per_partition, tuple(output_partition_sizes),
                   params_dtype, device_type, capability, TORCH_DTYPES[entry.scale.dtype],
                   entry.zero_point is not None)

    @property
    def fp8_format(self) -> str | None:
        return getattr(self.recipe, "fp8_format", None)


def current_device_spec() -> tuple[str, int | None]:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return "cuda", major * 10 + minor
    return "cpu", None


# breccia's ``NAME.scale`` always loads into ``weight_scale``: SGLang's FP8 block path calls
# its parameter ``weight_scale_inv``, but model loaders (e.g. Llama's) rename every
# ``*.weight_scale_inv`` to ``*.weight_scale`` before looking parameters up.
SCALE_PARAM = "weight_scale"


class GemmKernel:
    """One way to run a breccia linear layer. Subclasses set ``name`` and ``priority``."""

    name: ClassVar[str]
    priority: ClassVar[int]

    @classmethod
    def why_not(cls, spec: LinearSpec) -> str | None:
        """None if this kernel can implement ``spec``, else the reason it cannot."""
        raise NotImplementedError

    def create_weights(self, layer, spec: LinearSpec, weight_loader: Callable) -> None:
        raise NotImplementedError

    def process_weights_after_loading(self, layer) -> None:
        pass

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def _fp8_params(layer, spec: LinearSpec, weight_loader: Callable) -> None:
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


def fp8_param_config(layout) -> Fp8ParamConfig:
    # breccia's PerBlockK(B) is one scale per row and K-block: SGLang's [1, B] blocks.
    return Fp8ParamConfig([1, layout.block_size] if isinstance(layout, PerBlockK) else None)


def _code_params(layer, spec: LinearSpec, weight_loader: Callable) -> None:
    # MXFP8 / NVFP4 / INT4 as breccia stores them: one uint8 code per element, one scale (and
    # zero-point) per row and K block. Rows concatenate for merged layers and K narrows per
    # block under row-parallel TP, so SGLang's plain ModelWeightParameter loaders fit all three.
    from sglang.srt.layers.parameter import ModelWeightParameter

    rows, k = sum(spec.output_partition_sizes), spec.input_size_per_partition
    blocks = k // block_width(spec.layout)

    def param(shape, dtype):
        data = torch.zeros(shape, dtype=dtype)
        return ModelWeightParameter(data=data, input_dim=1, output_dim=0, weight_loader=weight_loader)

    layer.register_parameter("weight", param((rows, k), torch.uint8))
    layer.register_parameter(SCALE_PARAM, param((rows, blocks), spec.scale_dtype))
    if spec.has_zero_point:
        layer.register_parameter("weight_zero_point", param((rows, blocks), spec.scale_dtype))
    layer.logical_widths = list(spec.output_partition_sizes)


class EmulatedDequantKernel(GemmKernel):
    """Dequantize the weight with breccia's own semantics, then ``F.linear``.

    Runs anywhere (CPU included) and is the numerical reference for every other kernel.
    Weights stay quantized in memory and are dequantized per call, so memory use is that of
    the quantized model and speed is not the point (breccia dequantizes MXFP8 / NVFP4 /
    INT4 through NumPy).
    """

    name = "emulated"
    priority = 0

    @classmethod
    def why_not(cls, spec):
        if isinstance(spec.layout, PerTensor):
            if not isinstance(spec.recipe, PER_TENSOR_FP8):
                return f"recipe {spec.recipe.name!r} with a per-tensor scale is not served"
        elif block_width(spec.layout) is None:
            return f"layout {spec.layout.name!r} is not served (per-tensor, per-K-block and 1xN blocks are)"
        elif spec.input_size_per_partition % block_width(spec.layout):
            return f"K={spec.input_size_per_partition} splits a {block_width(spec.layout)}-wide scale block"
        if stores_native_fp8(spec.recipe) and spec.fp8_format != "E4M3":
            return "FP8 E5M2 weights have no SGLang weight path; re-quantize with E4M3"
        return None

    def create_weights(self, layer, spec, weight_loader):
        if stores_native_fp8(spec.recipe):
            _fp8_params(layer, spec, weight_loader)
        else:
            _code_params(layer, spec, weight_loader)
        self.recipe, self.layout = spec.recipe, spec.layout

    def dequantized_weight(self, layer) -> torch.Tensor:
        """The full-precision (fp32) weight, ``(out_features, in_features)``."""
        # Plain tensors (.data): breccia picks its torch path from the type's module name,
        # and SGLang's parameter subclasses live in sglang.*, which it would treat as NumPy.
        weight, scale = layer.weight.data, layer.weight_scale.data
        if isinstance(self.layout, PerTensor):
            # A merged layer (qkv, gate_up) keeps one scale per logical shard.
            shards = torch.split(weight, layer.logical_widths, dim=0)
            return torch.cat(
                [
                    breccia.dequantize(breccia.from_buffer(w, s, self.recipe, self.layout))
                    for w, s in zip(shards, scale)
                ]
            )
        zero_point = layer.weight_zero_point.data if hasattr(layer, "weight_zero_point") else None
        return breccia.dequantize(breccia.from_buffer(weight, scale, self.recipe, self.layout, zero_point))

    def apply(self, layer, x, bias):
        return F.linear(x, self.dequantized_weight(layer).to(x.dtype), bias)


class SglangFp8PerTensorKernel(GemmKernel):
    """SGLang's native FP8 linear (``Fp8LinearMethod``: cutlass / torch._scaled_mm).

    Needs FP8 tensor cores (sm_89+). Merged layers are requantized to one max scale by
    SGLang, exactly as for its own FP8 checkpoints.
    """

    name = "sglang-fp8"
    priority = 100

    @classmethod
    def why_not(cls, spec):
        if not isinstance(spec.recipe, PER_TENSOR_FP8) or spec.fp8_format != "E4M3":
            return "needs per-tensor FP8 E4M3"
        if spec.device_type != "cuda" or (spec.capability or 0) < 89:
            return "needs a CUDA GPU with FP8 tensor cores (sm_89+)"
        return None

    def create_weights(self, layer, spec, weight_loader):
        from sglang.srt.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod

        self.native = Fp8LinearMethod(
            Fp8Config(is_checkpoint_fp8_serialized=True, activation_scheme="dynamic")
        )
        _fp8_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        self.native.process_weights_after_loading(layer)

    def apply(self, layer, x, bias):
        return self.native.apply(layer, x, bias)


KERNELS: list[type[GemmKernel]] = [SglangFp8PerTensorKernel, EmulatedDequantKernel]


def kernel_report(spec: LinearSpec) -> list[tuple[str, str | None]]:
    """Every kernel with the reason it cannot run ``spec`` (None: it can), best first."""
    ranked = sorted(KERNELS, key=lambda k: -k.priority)
    return [(k.name, k.why_not(spec)) for k in ranked]


def choose_kernel(spec: LinearSpec) -> type[GemmKernel]:
    for kernel in sorted(KERNELS, key=lambda k: -k.priority):
        if kernel.why_not(spec) is None:
            return kernel
    reasons = "; ".join(f"{name}: {why}" for name, why in kernel_report(spec))
    from ..errors import BrecciaCheckpointError

    raise BrecciaCheckpointError(f"{spec.prefix}: no kernel can serve this layer ({reasons})")
