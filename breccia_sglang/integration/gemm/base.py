"""What a GEMM kernel for a breccia linear layer is: ``LinearSpec``, the description of a layer
a kernel decides on, and ``GemmKernel``, the interface every kernel implements.

Each kernel says whether it can implement a spec (recipe, layout, shapes, device):
``why_not(spec)`` is None when it can, else the reason (``registry.py`` picks the best).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from breccia.layouts import PerBlockK
from breccia.recipes import Float8BlockScaling

from ... import names
from ...format.reader import TORCH_DTYPES
from ...format.recipes import block_width, per_row_on_shard


@dataclass(frozen=True)
class Target:
    """The machine a layer is served on: this one, or one described (``inspect --capability``)."""

    device_type: str  # "cuda", "cpu", ...
    capability: int | None = None  # e.g. 90 for sm_90; None off CUDA
    simulated: bool = False  # described, not present: kernels cannot probe its libraries

    @classmethod
    def here(cls) -> "Target":
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return cls("cuda", major * 10 + minor)
        return cls("cpu")

    @classmethod
    def gpu(cls, capability: int) -> "Target":
        return cls("cuda", capability, simulated=True)

    def __str__(self) -> str:
        described = " (described)" if self.simulated else ""
        return self.device_type + (f" sm_{self.capability}" if self.capability else "") + described


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
    forced: str | None = None  # the kernel BRECCIA_SGLANG_GEMM asks for, if any
    interpreted: bool = False  # Triton's interpreter is on (TRITON_INTERPRET=1): Triton runs on CPU
    simulated: bool = False  # a described GPU (inspect --capability), not this machine's

    @classmethod
    def for_entry(cls, prefix, entry, input_size_per_partition, output_partition_sizes, params_dtype,
                  target: Target | None = None, row_parallel: bool = False):
        """The spec of a layer served from checkpoint ``entry`` (a BrecciaEntry) on ``target``
        (default: this machine, with this process's environment). ``row_parallel``: a dense
        layer whose K is split over ranks, so one scale per row becomes the shard's
        (``per_row_on_shard``; ``sglang_params.per_row_scales_whole`` loads it)."""
        target = target or Target.here()
        recipe, layout = entry.recipe, entry.layout
        if row_parallel:
            recipe, layout = per_row_on_shard(recipe, layout, entry.data.shape[1], input_size_per_partition)
        return cls(prefix, recipe, layout, input_size_per_partition, tuple(output_partition_sizes),
                   params_dtype, target.device_type, target.capability, TORCH_DTYPES[entry.scale.dtype],
                   entry.zero_point is not None, forced=os.environ.get(names.ENV_GEMM) or None,
                   interpreted=os.environ.get("TRITON_INTERPRET") == "1" and not target.simulated,
                   simulated=target.simulated)

    @property
    def fp8_format(self) -> str | None:
        return getattr(self.recipe, "fp8_format", None)

    @property
    def block(self) -> int | None:
        """K elements per scale (1 x B blocks), None for a per-tensor scale."""
        return block_width(self.layout)

    @property
    def out_features(self) -> int:
        return sum(self.output_partition_sizes)


def needs_1x128_block_fp8(spec: LinearSpec) -> str | None:
    """Why a layer is not block FP8 E4M3 with 1 x 128 scales (what Hopper's blockwise GEMMs and
    FP8 Marlin take), or None."""
    if not (isinstance(spec.recipe, Float8BlockScaling) and isinstance(spec.layout, PerBlockK)) \
            or spec.fp8_format != "E4M3":
        return "needs block FP8 E4M3 with 1x128 scales"
    return None if spec.block == 128 else f"needs 1x128 blocks, not 1x{spec.block}"


def needs_gpu(spec: LinearSpec, kernel: str, min_capability: int, max_capability: int | None = None,
              triton: bool = False) -> str | None:
    """Why a GPU kernel cannot run on ``spec``'s device, or None. A Triton kernel also runs on
    CPU under Triton's interpreter when it is asked for by name (slow; how CI checks it)."""
    if spec.device_type == "cuda":
        capability = spec.capability or 0
        if capability < min_capability or (max_capability is not None and capability > max_capability):
            upto = "" if max_capability == min_capability else f"-{max_capability}" if max_capability else "+"
            wanted = f"sm_{min_capability}{upto}"
            return f"needs a CUDA GPU of {wanted}, this is sm_{capability}"
        return None
    if triton and spec.interpreted and spec.forced == kernel:
        return None
    where = f"; on CPU only under TRITON_INTERPRET=1 with {names.ENV_GEMM}={kernel}" if triton else ""
    return f"needs a CUDA GPU (sm_{min_capability}+){where}"


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) as the contiguous (M, K) rows the GEMMs take."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def layer_output(out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A GEMM's (M, N) ``out`` for the rows of ``x`` (..., K): plus ``bias`` in place, shaped (..., N)."""
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], out.shape[-1])


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
