"""Mixture-of-experts weights in a breccia checkpoint: each expert's three projections, found by name.

Checkpoints store experts one linear per projection, ``{layer}.experts.{i}.{projection}.weight``.
SGLang's FusedMoE loads them into two stacked parameters per layer: ``w13`` (gate and up, one
after the other: shards ``w1`` then ``w3``) and ``w2`` (down). The projection names differ by
model family (Qwen / DeepSeek: gate_proj, up_proj, down_proj; Mixtral: w1, w3, w2); every
family's loader maps them onto the same three shards.

Experts with one scale per row (compressed-tensors' "channel" FP8, GPTQ's group -1) have blocks
as wide as each projection's K: the hidden size for gate and up, the intermediate size for down.
The fused kernels take one block width per layer, so such a layer is served with the widest
block that divides both (``row_block``), each row's scale repeated along K: exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass

from ..errors import BrecciaCheckpointError
from .recipes import block_width, is_per_row, per_row_label, recipe_apart_from_width, with_block

# checkpoint projection name -> the FusedMoE shard it loads into
EXPERT_SHARDS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2", "w1": "w1", "w3": "w3", "w2": "w2"}
SHARD_ORDER = ("w1", "w3", "w2")
# K blocks the fused MoE kernels take, widest first (``row_block``)
ROW_BLOCKS = (128, 64, 32, 16)


@dataclass(frozen=True)
class ExpertWeights:
    """The breccia weights of one MoE layer: ``entries[expert][shard]`` (shard w1 / w3 / w2)."""

    prefix: str  # e.g. "model.layers.0.mlp.experts"
    entries: dict  # int -> {"w1": BrecciaEntry, "w3": ..., "w2": ...}

    @property
    def num_experts(self) -> int:
        return len(self.entries)

    @property
    def first(self):
        """The gate projection of expert 0: every expert weight shares its recipe and layout."""
        return self.entries[min(self.entries)]["w1"]

    def all(self) -> list:
        return [self.entries[e][s] for e in sorted(self.entries) for s in SHARD_ORDER]

    @functools.cached_property  # read by label, reblocked, served_first and the layer methods
    def per_row(self) -> bool:
        """Every expert projection has one scale per row (``recipes.is_per_row``)."""
        return all(is_per_row(e.recipe, e.layout, e.data.shape[1]) for e in self.all())

    @property
    def down(self):
        """The down projection of expert 0."""
        return self.entries[min(self.entries)]["w2"]

    @property
    def label(self) -> str:
        """The experts' recipe, e.g. ``block(E4M3,k=32)/per_block_k``; per-row experts whose
        projections differ in K show ``k=row`` (``g=row`` for INT4)."""
        if self.per_row and self.first.label != self.down.label:
            return per_row_label(self.first.label)
        return self.first.label

    def reblocked(self, block: int) -> bool:
        """Per-row experts served in ``block``-wide blocks that are not the checkpoint's own."""
        return self.per_row and any(block_width(e.layout) != block for e in (self.first, self.down))

    def served_first(self, intermediate_size: int):
        """``first`` as the layer is served on a rank that holds ``intermediate_size`` columns of
        each expert's intermediate: per-row experts get ``row_block``'s blocks."""
        if not self.per_row:
            return self.first
        recipe, layout = with_block(self.first.recipe, row_block(self.first.data.shape[1], intermediate_size))
        return dataclasses.replace(self.first, recipe=recipe, layout=layout)


def row_block(hidden_size: int, intermediate_size: int) -> int:
    """The K block per-row experts are served with: one that divides both projections' K (the
    hidden size, and the intermediate size a rank holds), so a row's scale repeated along K is
    exactly its block scales. The widest the fused kernels take (``ROW_BLOCKS``), else the
    greatest common divisor, which the kernels that cannot take it refuse by name."""
    common = math.gcd(hidden_size, intermediate_size)
    return next((block for block in ROW_BLOCKS if common % block == 0), common)


_EXPERT_NAME = re.compile(r"(.+\.experts)\.(\d+)\.(\w+)\.weight")


def moe_prefixes(entries: dict) -> list[str]:
    """Every MoE layer (``...experts``) with breccia expert weights, in name order."""
    found = {m.group(1) for m in map(_EXPERT_NAME.fullmatch, entries) if m and m.group(3) in EXPERT_SHARDS}
    return sorted(found)


def expert_weights(entries: dict, prefix: str) -> ExpertWeights | None:
    """The breccia weights under MoE layer ``prefix`` (None if it has none). Every expert must
    have all three projections, all in one recipe: SGLang runs them as one fused kernel."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.(\w+)\.weight")
    found: dict[int, dict] = {}
    for name, entry in entries.items():
        match = pattern.fullmatch(name)
        if match and match.group(2) in EXPERT_SHARDS:
            found.setdefault(int(match.group(1)), {})[EXPERT_SHARDS[match.group(2)]] = entry
    if not found:
        return None
    experts = ExpertWeights(prefix, found)
    incomplete = [f"{prefix}.{e}" for e, shards in sorted(found.items()) if set(shards) != set(SHARD_ORDER)]
    if incomplete:
        raise BrecciaCheckpointError(
            f"{prefix}: experts {', '.join(incomplete[:4])} lack a breccia gate, up or down projection; "
            "SGLang loads every expert's three projections into one fused layer: quantize all of them or none")
    # Per-row experts differ in width between projections by nature: the rest must match.
    kinds = {recipe_apart_from_width(e.recipe) if experts.per_row else e.label for e in experts.all()}
    if len(kinds) > 1:
        labels = sorted({entry.label for entry in experts.all()})
        raise BrecciaCheckpointError(
            f"{prefix}: expert weights use different recipes {labels}; SGLang runs a layer's experts as one "
            "fused kernel, so they need one recipe, with blocks of one width or one scale per row in all of them")
    return experts
