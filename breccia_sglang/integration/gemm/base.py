"""What a GEMM kernel for a breccia linear layer is: ``LinearSpec``, the description of a layer
a kernel decides on, and ``GemmKernel``, the interface every kernel implements.

Each kernel says whether it can implement a spec (recipe, layout, shapes, device):
``why_not(spec)`` is None when it can, else the reason (``registry.py`` picks the best).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ...format.reader import TORCH_DTYPES


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
