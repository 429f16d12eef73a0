"""MoE expert weights found in a breccia checkpoint by name (``format.experts``): every expert's
three projections onto FusedMoE's w1 / w3 / w2 shards, or a refusal that names the layer."""

from __future__ import annotations

import pytest

from breccia_sglang.errors import BrecciaCheckpointError
from breccia_sglang.format.experts import expert_weights
from breccia_sglang.format.reader import BrecciaEntry, StoredTensor

PREFIX = "model.layers.3.mlp.experts"


def entry(name: str, recipe_name: str = "block") -> BrecciaEntry:
    from breccia_sglang.format import make_recipe
    from breccia_sglang.format.recipes import layout_of

    recipe = make_recipe("fp8-block" if recipe_name == "block" else recipe_name, block_k=32)
    return BrecciaEntry(name, recipe, layout_of(recipe), StoredTensor(f"{name}.data", "f", "F8_E4M3", (96, 64)),
                        StoredTensor(f"{name}.scale", "f", "F32", (96, 2)), None)


def experts(count: int, projections=("gate_proj", "up_proj", "down_proj"), recipe="block") -> dict:
    names = [f"{PREFIX}.{e}.{p}.weight" for e in range(count) for p in projections]
    return {n: entry(n, recipe) for n in names}


def test_every_expert_projection_lands_on_its_fused_shard():
    entries = {**experts(10), f"{PREFIX}.gate.weight": entry("router"),  # not an expert
               "model.layers.13.mlp.experts.0.gate_proj.weight": entry("other layer"),
               "model.layers.3.mlp.experts.1.gate_proj.weight_extra": entry("no")}
    found = expert_weights(entries, PREFIX)
    assert found.num_experts == 10 and sorted(found.entries) == list(range(10))  # 10 after 1: numeric, not text
    assert found.entries[7]["w1"].name == f"{PREFIX}.7.gate_proj.weight"
    assert found.entries[7]["w3"].name == f"{PREFIX}.7.up_proj.weight"
    assert found.entries[7]["w2"].name == f"{PREFIX}.7.down_proj.weight"
    assert [e.name for e in found.all()[:3]] == [f"{PREFIX}.0.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
    mixtral = expert_weights(experts(2, ("w1", "w2", "w3")), PREFIX)  # Mixtral names its projections w1 / w2 / w3
    assert mixtral.entries[1]["w3"].name == f"{PREFIX}.1.w3.weight"
    assert expert_weights(experts(2), "model.layers.4.mlp.experts") is None


def test_an_expert_missing_a_projection_is_refused_by_name():
    entries = experts(4)
    del entries[f"{PREFIX}.2.up_proj.weight"]
    with pytest.raises(BrecciaCheckpointError, match=rf"{PREFIX}: experts {PREFIX}\.2 lack"):
        expert_weights(entries, PREFIX)


def test_experts_of_one_layer_in_two_recipes_are_refused():
    entries = {**experts(2), **{k: entry(k, "mxfp8") for k in experts(2) if ".1." in k}}
    with pytest.raises(BrecciaCheckpointError, match="different recipes"):
        expert_weights(entries, PREFIX)
