"""Mixture-of-experts weights in a breccia checkpoint: each expert's three projections, found by name.

Checkpoints store experts one linear per projection, ``{layer}.experts.{i}.{projection}.weight``.
SGLang's FusedMoE loads them into two stacked parameters per layer: ``w13`` (gate and up, one
after the other: shards ``w1`` then ``w3``) and ``w2`` (down). The projection names differ by
model family (Qwen / DeepSeek: gate_proj, up_proj, down_proj; Mixtral: w1, w3, w2); every
family's loader maps them onto the same three shards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BrecciaCheckpointError

# checkpoint projection name -> the FusedMoE shard it loads into
EXPERT_SHARDS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2", "w1": "w1", "w3": "w3", "w2": "w2"}
SHARD_ORDER = ("w1", "w3", "w2")


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
    labels = {entry.label for entry in experts.all()}
    if len(labels) > 1:
        raise BrecciaCheckpointError(
            f"{prefix}: expert weights use different recipes {sorted(labels)}; SGLang runs a layer's experts "
            "as one fused kernel, so they need one recipe")
    return experts
