"""MoE expert weights found in a breccia checkpoint by name (``format.experts``): every expert's
three projections onto FusedMoE's w1 / w3 / w2 shards, or a refusal that names the layer."""

from __future__ import annotations

import pytest
from breccia.layouts import PerBlockK

from breccia_sglang.errors import BrecciaCheckpointError
from breccia_sglang.format.experts import expert_weights, row_block
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


def per_row_entry(name: str, recipe_name: str, rows: int, k: int, **kwargs) -> BrecciaEntry:
    """One expert projection with one scale per row: its block (or group) is its whole K."""
    from breccia_sglang.format import make_recipe
    from breccia_sglang.format.recipes import with_block

    recipe, layout = with_block(make_recipe(recipe_name, **kwargs), k)
    return BrecciaEntry(name, recipe, layout, StoredTensor(f"{name}.data", "f", "F8_E4M3", (rows, k)),
                        StoredTensor(f"{name}.scale", "f", "F32", (rows, 1)), None)


def per_row_experts(count: int, hidden: int, intermediate: int, recipe_name="fp8-block", **kwargs) -> dict:
    gate_up = (intermediate, hidden)
    shapes = {"gate_proj": gate_up, "up_proj": gate_up, "down_proj": (hidden, intermediate)}
    return {f"{PREFIX}.{e}.{p}.weight": per_row_entry(f"{PREFIX}.{e}.{p}.weight", recipe_name, *shape, **kwargs)
            for e in range(count) for p, shape in shapes.items()}


def test_one_scale_per_row_is_one_recipe_though_each_projection_has_its_own_k():
    # compressed-tensors "channel" FP8 experts (Qwen3-30B-A3B: hidden 2048, intermediate 768)
    # convert to blocks as wide as each projection's K: 2048 for gate / up, 768 for down.
    found = expert_weights(per_row_experts(4, 2048, 768), PREFIX)
    assert found.per_row and found.label == "block(E4M3,k=row)/per_block_k"
    # Served with a block that divides both K's, so each row's scale repeats along K exactly:
    # the widest the fused kernels take (128), on each rank of tp=8 the 96 columns it holds (32).
    assert found.served_first(768).layout == PerBlockK(128) and found.served_first(768).recipe.block_k == 128
    assert found.served_first(96).layout == PerBlockK(32)
    assert found.first.layout == PerBlockK(2048)  # the checkpoint's own entry is left as it is
    assert found.reblocked(128) and found.reblocked(32)
    # Both K's alike (DeepSeek-V3's tiny test model: 128 and 128): the checkpoint's own blocks
    # serve whole, under its own label; a rank of tp=2 (64 columns) takes them 1x64.
    square = expert_weights(per_row_experts(2, 128, 128), PREFIX)
    assert square.label == "block(E4M3,k=128)/per_block_k" and square.served_first(128).layout == PerBlockK(128)
    assert not square.reblocked(128) and square.reblocked(64) and square.served_first(64).layout == PerBlockK(64)
    int4 = expert_weights(per_row_experts(2, 64, 96, "int4", symmetric=False), PREFIX)  # GPTQ group -1
    assert int4.per_row and int4.label == "int4(g=row,asym)/per_block_k"
    assert int4.served_first(48).recipe.group_size == 16 and not int4.served_first(48).recipe.symmetric


def test_the_row_block_divides_both_ks_and_is_the_widest_the_kernels_take():
    assert (row_block(2048, 768), row_block(4096, 14336), row_block(2048, 1408)) == (128, 128, 128)
    assert (row_block(2048, 704), row_block(64, 48), row_block(64, 96)) == (64, 16, 32)
    assert row_block(72, 120) == 24  # no width the fused kernels take: their gcd (they refuse it by name)


def test_per_row_experts_in_two_recipes_or_with_a_blocked_projection_are_refused():
    mixed = {**per_row_experts(2, 64, 96), **per_row_experts(1, 64, 96, "int4")}  # expert 0 in INT4
    with pytest.raises(BrecciaCheckpointError, match=r"different recipes \['block.*', 'int4.*'\]"):
        expert_weights(mixed, PREFIX)
    blocked_down = {**per_row_experts(2, 64, 96), f"{PREFIX}.1.down_proj.weight": entry("down")}  # 1x32 blocks
    with pytest.raises(BrecciaCheckpointError, match=r"different recipes .*, with blocks of one width or one scale per row"):
        expert_weights(blocked_down, PREFIX)
