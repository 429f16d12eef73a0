"""``BrecciaLinearMethod``: SGLang's LinearMethodBase for one breccia linear layer.

It declares the layer's parameters through the chosen GEMM kernel and counts every
checkpoint tensor SGLang's weight loaders write into them, so a tensor the model silently
ignored (SGLang models skip names they do not know) is an error, not a layer running on
uninitialised memory. The log names the kernel each kind of layer (qkv_proj, down_proj, ...)
gets, once per kind.
"""

from __future__ import annotations

import logging

from sglang.srt.layers.quantization.base_config import LinearMethodBase

from ..errors import BrecciaCheckpointError
from .gemm import LinearSpec, choose_kernel
from .sglang_params import counting_loads, fp8_param_config, per_row_scales_whole

logger = logging.getLogger(__name__)


class BrecciaLinearMethod(LinearMethodBase):
    """Serve one (possibly merged, e.g. qkv_proj) linear layer from breccia tensors.

    ``entries`` are the checkpoint's breccia tensors for the layer's logical shards, in
    SGLang's shard order (e.g. q, k, v).
    """

    def __init__(self, prefix: str, entries: list, announced: set | None = None):
        self.prefix = prefix
        self.announced = announced if announced is not None else set()  # (layer kind, kernel) logged
        self.entries = entries
        self.recipe = entries[0].recipe
        self.layout = entries[0].layout
        self.kernel = None
        # SGLang's weight loaders look up layer.quant_method.quant_config.weight_block_size.
        self.quant_config = fp8_param_config(self.layout)

    def create_weights(
        self,
        layer,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype,
        **extra_weight_attrs,
    ):
        row_parallel = input_size_per_partition < input_size
        spec = LinearSpec.for_entry(self.prefix, self.entries[0], input_size_per_partition,
                                    output_partition_sizes, params_dtype, row_parallel=row_parallel)
        self.kernel = choose_kernel(spec)()
        self.expected_loads = len(output_partition_sizes)
        loader = counting_loads(extra_weight_attrs["weight_loader"])
        if spec.layout != self.entries[0].layout:  # one scale per row, kept whole on this K shard
            loader = per_row_scales_whole(loader, layer, ranks=input_size // input_size_per_partition)
        self.kernel.create_weights(layer, spec, loader)
        layer.breccia_kernel = self.kernel.name
        layer.breccia_prefix = self.prefix  # kernels name the layer in their errors
        layer.breccia_elements = sum(output_partition_sizes) * input_size_per_partition  # N * K of this rank
        kind = self.prefix.rpartition(".")[2]
        if (kind, self.kernel.name) not in self.announced:
            self.announced.add((kind, self.kernel.name))
            logger.info("breccia-sglang: %s layers (%s) run GEMM kernel %s", kind, self.entries[0].label,
                        self.kernel.name)

    def process_weights_after_loading(self, layer) -> None:
        self._check_everything_loaded(layer)
        self.kernel.process_weights_after_loading(layer)

    def apply(self, layer, x, bias=None):
        return self.kernel.apply(layer, x, bias)

    def _check_everything_loaded(self, layer) -> None:
        for name, param in layer.named_parameters(recurse=False):
            loads = getattr(param, "breccia_loads", 0)
            if loads != self.expected_loads:
                sources = ", ".join(e.name for e in self.entries)
                raise BrecciaCheckpointError(
                    f"{self.prefix}.{name}: {loads} of {self.expected_loads} shard(s) were loaded "
                    f"from the checkpoint (breccia tensors: {sources}); the model did not "
                    "consume the rest, so this layer would run on uninitialised memory"
                )
