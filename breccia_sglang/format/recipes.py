"""breccia's recipes as this package names and classifies them.

The CLI's recipe names (``make_recipe``), and the facts about a recipe that decide how it is
stored and served: which recipes keep FP8 codes that SGLang holds as ``float8_e4m3fn`` weights,
and how many K elements share one scale.
"""

from __future__ import annotations

import dataclasses
import re

import breccia
import torch
from breccia.layouts import PerBlockK, PerBlockMN
from breccia.recipes import DelayedScaling, Float8BlockScaling, Float8CurrentScaling

from .recipe_json import describe

PER_TENSOR_FP8 = (Float8CurrentScaling, DelayedScaling)

RECIPE_NAMES = ("fp8", "fp8-delayed", "fp8-block", "mxfp8", "nvfp4", "int4")
# --block-k / --group-size -1 (GPTQ's spelling): one scale per row, each weight's whole K wide
PER_ROW = -1


def make_recipe(name: str, *, block_k: int = 128, group_size: int = 128, symmetric: bool = True):
    """The breccia recipe for a CLI recipe name; ``block_k`` / ``group_size`` ``PER_ROW``: one
    scale per row (``PerRow``)."""
    if (name, block_k) == ("fp8-block", PER_ROW) or (name, group_size) == ("int4", PER_ROW):
        return PerRow(make_recipe(name, symmetric=symmetric))
    makers = {
        "fp8": lambda: breccia.Float8CurrentScaling(fp8_format="E4M3"),
        "fp8-delayed": lambda: breccia.DelayedScaling(fp8_format="E4M3"),
        "fp8-block": lambda: breccia.Float8BlockScaling(block_k=block_k),
        "mxfp8": lambda: breccia.MXFP8BlockScaling(),
        "nvfp4": lambda: breccia.NVFP4BlockScaling(),
        "int4": lambda: breccia.INT4Scaling(group_size=group_size, symmetric=symmetric, signed=symmetric),
    }
    if name not in makers:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPE_NAMES)}")
    return makers[name]()


def stores_native_fp8(recipe) -> bool:
    """Recipes whose data SGLang holds as float8_e4m3fn weights (per-tensor and block FP8).

    Every other recipe (MXFP8, NVFP4, INT4) keeps breccia's one-code-per-byte uint8 data.
    """
    return isinstance(recipe, PER_TENSOR_FP8 + (Float8BlockScaling,))


FOUR_BIT_RECIPES = ("nvfp4", "int4")


def packs_two_per_byte(recipe) -> bool:
    """4-bit recipes (NVFP4, INT4): breccia stores one code per byte; served, they take two
    (``weights/packing.py``), so a layer's weight is (N, K / 2) bytes."""
    return recipe.name in FOUR_BIT_RECIPES


def block_width(layout) -> int | None:
    """K elements per scale for row-local layouts (one scale row per weight row), else None."""
    if isinstance(layout, PerBlockK):
        return layout.block_size
    if isinstance(layout, PerBlockMN) and layout.block_m == 1:
        return layout.block_n
    return None


def layout_of(recipe):
    """The layout ``breccia.cast`` produces for ``recipe`` (for labels): cast one block of zeros."""
    width = next((getattr(recipe, a) for a in ("block_k", "group_size", "block_size") if hasattr(recipe, a)), 1)
    return breccia.cast(torch.zeros(1, width), recipe).layout


def _width_field(recipe) -> str | None:
    """The recipe field that sets its K block (block FP8's ``block_k``, INT4's ``group_size``),
    or None: MXFP8's and NVFP4's blocks are fixed by their format, never a row's whole K."""
    return next((field for field in ("block_k", "group_size") if hasattr(recipe, field)), None)


def is_per_row(recipe, layout, k: int) -> bool:
    """One scale per row: a block (or INT4 group) as wide as the weight's whole K
    (compressed-tensors' "channel" strategy, FBGEMM, GPTQ's group -1). It scales every K column
    alike, so it is exactly the scale of any narrower block of that row."""
    return _width_field(recipe) is not None and isinstance(layout, PerBlockK) and layout.block_size == k


def recipe_apart_from_width(recipe) -> tuple:
    """What two recipes must share to differ only in their K block width: their type and every
    other field (``dataclasses.replace`` cannot blank the width: breccia validates it)."""
    width = _width_field(recipe)
    return type(recipe), tuple((f.name, getattr(recipe, f.name)) for f in dataclasses.fields(recipe) if f.name != width)


def with_block(recipe, width: int):
    """(recipe, layout) of ``recipe`` with K blocks of ``width`` (a recipe with a width field)."""
    return dataclasses.replace(recipe, **{_width_field(recipe): width}), PerBlockK(width)


@dataclasses.dataclass(frozen=True)
class PerRow:
    """``base`` (block FP8 or INT4) with one scale per row: as each weight is quantized, its
    block or group becomes that weight's K (``for_k``), which compressed-tensors calls "channel"."""

    base: object

    @property
    def name(self) -> str:
        return self.base.name

    def for_k(self, k: int):
        return with_block(self.base, k)[0]


def per_row_label(label: str) -> str:
    """A per-row recipe's label: its width is each weight's K, shown ``k=row`` (``g=row``)."""
    return re.sub(r"=\d+", "=row", label, count=1)


def recipe_label(recipe) -> str:
    """What ``quantize`` reports for the recipe it was asked for, e.g. ``block(E4M3,k=row)/per_block_k``."""
    if isinstance(recipe, PerRow):
        return per_row_label(describe(recipe.base, layout_of(recipe.base)))
    return describe(recipe, layout_of(recipe))


def per_row_on_shard(recipe, layout, full_k: int, shard_k: int):
    """(recipe, layout) of a K shard of a weight, for tensor parallelism.

    One scale per row (``is_per_row``) scales every K column alike, so a shard of K keeps it
    whole: its block is the shard's K. Any other layout is returned as it is (a shard that
    splits one of its blocks is refused by the kernels, by name)."""
    if not is_per_row(recipe, layout, full_k) or shard_k >= full_k:
        return recipe, layout
    return with_block(recipe, shard_k)
