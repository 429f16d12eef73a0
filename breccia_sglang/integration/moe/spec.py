"""``MoESpec``: the description of one MoE layer a kernel decides on.

It is the ``LinearSpec`` of the layer's gate/up projection (K = hidden size, two shards of the
expert intermediate size) plus the number of experts; the down projection is the transposed
shape (K = intermediate size), so a kernel checks both through ``projections``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..gemm.base import LinearSpec, Target


@dataclass(frozen=True)
class MoESpec(LinearSpec):
    num_experts: int = 1  # on this rank
    expert_parallel: int = 1  # ranks sharing the layer's experts (--ep-size)

    @classmethod
    def for_experts(cls, prefix, entry, num_experts: int, hidden_size: int, intermediate_size_per_partition: int,
                    params_dtype, target: Target | None = None, expert_parallel: int = 1) -> "MoESpec":
        """The spec of MoE layer ``prefix`` whose experts are stored like ``entry``."""
        gate_up = LinearSpec.for_entry(prefix, entry, hidden_size, (intermediate_size_per_partition,) * 2,
                                       params_dtype, target)
        return cls(**vars(gate_up), num_experts=num_experts, expert_parallel=expert_parallel)

    @property
    def model_experts(self) -> int:
        """The layer's experts on all ranks. A rank gets about 1 / expert_parallel of the routed
        pairs for its 1 / expert_parallel of the experts, so pairs / model_experts is what each
        of its experts gets on average."""
        return self.num_experts * self.expert_parallel

    @property
    def hidden_size(self) -> int:
        return self.input_size_per_partition

    @property
    def intermediate_size(self) -> int:
        """The expert intermediate size on this rank (tensor parallel splits it)."""
        return self.output_partition_sizes[0]

    def projections(self) -> dict[str, tuple[int, int]]:
        """(N, K) of each stacked weight, per expert: w13 (gate and up) and w2 (down)."""
        return {"w13": (2 * self.intermediate_size, self.hidden_size), "w2": (self.hidden_size, self.intermediate_size)}
