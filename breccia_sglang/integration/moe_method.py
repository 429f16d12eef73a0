"""``BrecciaMoEMethod``: SGLang's FusedMoEMethodBase for one breccia mixture-of-experts layer.

It declares the layer's stacked expert parameters through the chosen MoE kernel
(``moe/registry.py``), and counts every checkpoint tensor FusedMoE's weight loader writes into
them: each expert's gate and up projections into ``w13_*`` and its down projection into
``w2_*``, so a tensor the model skipped is an error that names the layer, not an expert running
on zeros. The log names the kernel, once per (recipe, kernel).

Expert parallelism (``--ep-size``): each rank holds E / ep_size experts, its local ids 0..L-1,
and SGLang's dispatcher hands the kernel those ids, with -1 for a pair whose expert lives on
another rank; the kernels give such pairs no output, and FusedMoE's all-reduce sums the ranks.
The models still call the loader with every checkpoint expert (FusedMoE drops the other ranks'),
so the load count is checked against the checkpoint's E on every rank.

Experts with one scale per row (``format.experts``) are served as blocks that divide both of
their K's: each row's scale reaches FusedMoE's loader repeated along K
(``sglang_params.per_row_scales_as_blocks``), which then narrows it for tensor parallelism as
it narrows any block scale.
"""

from __future__ import annotations

import logging

from sglang.srt.layers.quantization.base_config import FusedMoEMethodBase

from ..errors import BrecciaCheckpointError, BrecciaConfigError
from .moe import MoESpec, choose_moe_kernel
from .sglang_params import counting_loads, per_row_scales_as_blocks

logger = logging.getLogger(__name__)

# loads each stacked parameter takes per expert: w13 holds two projections (gate, up), w2 one
LOADS_PER_EXPERT = {"w13": 2, "w2": 1}


class BrecciaMoEMethod(FusedMoEMethodBase):
    """Serve one FusedMoE layer from breccia expert tensors (``format.experts.ExpertWeights``)."""

    def __init__(self, experts, announced: set | None = None):
        self.experts = experts
        self.announced = announced if announced is not None else set()
        self.kernel = None

    def create_weights(self, layer, num_experts: int, hidden_size: int, intermediate_size_per_partition: int,
                       params_dtype, **extra_weight_attrs):
        from sglang.srt.layers.moe.utils import get_moe_a2a_backend

        a2a = get_moe_a2a_backend()
        if not a2a.is_none():  # DeepEP and the like hand the kernel their own dispatch formats
            raise BrecciaConfigError(
                f"{self.experts.prefix}: breccia experts run with SGLang's standard dispatcher only; "
                f"--moe-a2a-backend {a2a.value} is not supported (leave it unset; --ep-size works without it)")
        ep_size = getattr(layer, "moe_ep_size", 1)
        if num_experts * ep_size != self.experts.num_experts:
            raise BrecciaCheckpointError(
                f"{self.experts.prefix}: the model has {num_experts} experts on each of {ep_size} expert-parallel "
                f"rank(s), the checkpoint {self.experts.num_experts} breccia experts")
        intermediate = loaded_intermediate_size(layer, self.experts, intermediate_size_per_partition)
        spec = MoESpec.for_experts(self.experts.prefix, self.experts.served_first(intermediate), num_experts,
                                   hidden_size, intermediate, params_dtype, expert_parallel=ep_size)
        self.kernel = choose_moe_kernel(spec)()
        loader = extra_weight_attrs["weight_loader"]
        if self.experts.per_row:
            full_k = {"w13": hidden_size, "w2": self.experts.first.data.shape[0]}  # the checkpoint's intermediate
            loader = per_row_scales_as_blocks(loader, layer, spec.block, full_k)
        self.kernel.create_weights(layer, spec, counting_loads(loader))
        layer.breccia_kernel = self.kernel.name
        layer.breccia_elements = num_experts * sum(n * k for n, k in spec.projections().values())  # this rank's
        label = self.experts.label
        if self.experts.reblocked(spec.block):
            label += f", served as 1x{spec.block} blocks"
        if (f"experts {label}", self.kernel.name) not in self.announced:
            self.announced.add((f"experts {label}", self.kernel.name))
            per_rank = f", {num_experts} on each of {ep_size} expert-parallel ranks" if ep_size > 1 else ""
            logger.info("breccia-sglang: MoE experts (%s, %d per layer%s) run kernel %s", label,
                        self.experts.num_experts, per_rank, self.kernel.name)

    def create_moe_runner(self, layer, moe_runner_config):
        self.moe_runner_config = moe_runner_config
        self.kernel.create_moe_runner(layer, moe_runner_config)
        self.runner = getattr(self.kernel, "runner", None)  # FusedMoE reads layer.runner from here

    def get_moe_runner_backend(self, layer):
        return getattr(self.kernel, "runner_backend", None)  # None: a direct kernel (the emulated one)

    def get_triton_quant_info(self, layer):
        """What SGLang's LoRA MoE runner passes its Triton kernel: the fused kernels' quant info."""
        if not hasattr(self.kernel, "quant_info"):
            raise NotImplementedError(f"{self.experts.prefix}: kernel {self.kernel.name} runs no Triton MoE kernel")
        return self.kernel.quant_info(layer)

    def process_weights_after_loading(self, layer) -> None:
        self._check_everything_loaded(layer)
        self.kernel.process_weights_after_loading(layer)

    def apply(self, layer, dispatch_output):
        return self.kernel.apply(layer, dispatch_output)

    def _check_everything_loaded(self, layer) -> None:
        for name, param in layer.named_parameters(recurse=False):
            expected = LOADS_PER_EXPERT[name.split("_", 1)[0]] * self.experts.num_experts  # every rank: all E
            loads = getattr(param, "breccia_loads", 0)
            if loads != expected:
                raise BrecciaCheckpointError(
                    f"{self.experts.prefix}.{name}: {loads} of {expected} expert tensors were loaded from the "
                    f"checkpoint ({self.experts.num_experts} experts under {self.experts.prefix}); the model did "
                    "not consume the rest, so experts would run on zeros")


def loaded_intermediate_size(layer, experts, intermediate_size_per_partition: int) -> int:
    """The expert intermediate columns SGLang's FusedMoE loader fills on this rank.

    On CPU, SGLang pads the model's expert intermediate size for tensor parallelism (its model
    runner calls ``adjust_config_with_unaligned_cpu_tp`` for device "cpu": 96 at tp=2 becomes
    128, 64 a rank), but FusedMoE loads into that padding only when ``SGLANG_USE_CPU_ENGINE=1``
    (``use_padded_loading``), which our CPU platform runs without. Its loader then narrows each
    checkpoint tensor by (checkpoint size) / tp: 48 code columns a rank, but only 3 / 2 = 1 of
    the 3 32-wide scale columns, so block scales would no longer line up with their codes.
    Sized by what is loaded, the layer is the one a GPU gets, and a shard that splits a block is
    refused by name as it is there."""
    if getattr(layer, "use_padded_loading", False):
        return intermediate_size_per_partition
    total, tp = experts.first.data.shape[0], getattr(layer, "moe_tp_size", 1)
    if total % tp:
        raise BrecciaCheckpointError(
            f"{experts.prefix}: the experts' intermediate size {total} does not divide by the expert tensor "
            f"parallel size {tp}")
    return total // tp
