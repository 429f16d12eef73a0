"""``format/recipes.py``: how a K shard of a weight is described under tensor parallelism."""

from __future__ import annotations

import breccia
import pytest
from breccia.layouts import PerBlockK

from breccia_sglang.format import make_recipe
from breccia_sglang.format.recipes import per_row_on_shard


@pytest.mark.parametrize("recipe, width", [
    (make_recipe("fp8-block", block_k=4096), "block_k"),
    (make_recipe("int4", group_size=4096, symmetric=False), "group_size"),
])
def test_one_scale_per_row_becomes_the_shards_own(recipe, width):
    shard_recipe, shard_layout = per_row_on_shard(recipe, PerBlockK(4096), 4096, 512)
    assert shard_layout == PerBlockK(512) and getattr(shard_recipe, width) == 512
    assert type(shard_recipe) is type(recipe) and shard_recipe.name == recipe.name  # only the width moves
    if width == "group_size":
        assert (shard_recipe.symmetric, shard_recipe.signed) == (recipe.symmetric, recipe.signed)


@pytest.mark.parametrize("layout, full_k, shard_k", [
    (PerBlockK(128), 4096, 512),  # blocks narrower than K: a shard takes whole blocks or is refused
    (PerBlockK(4096), 4096, 4096),  # column-parallel: nothing split
    (breccia.PerTensor(), 4096, 512),
])
def test_every_other_layout_is_left_as_it_is(layout, full_k, shard_k):
    recipe = make_recipe("fp8-block", block_k=128)
    assert per_row_on_shard(recipe, layout, full_k, shard_k) == (recipe, layout)


@pytest.mark.parametrize("name, block", [("mxfp8", 32), ("nvfp4", 16)])
def test_formats_whose_block_is_fixed_keep_it_even_when_it_is_the_whole_k(name, block):
    recipe = make_recipe(name)
    assert per_row_on_shard(recipe, PerBlockK(block), block, block // 2) == (recipe, PerBlockK(block))
