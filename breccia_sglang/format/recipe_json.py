"""The recipe/layout JSON stored beside each breccia tensor (``{name}.config``).

breccia owns this format: ``breccia.bridges.save_safetensors`` writes it and keeps the
name -> class tables we read here. breccia 0.1.3 exposes them only as private names, so
every private import lives in this one module; nothing here re-implements the format.
"""

from __future__ import annotations

import json

from breccia.bridges._huggingface import (  # private in breccia 0.1.3, see module doc
    _LAYOUT_REGISTRY,
    _RECIPE_REGISTRY,
)

from ..errors import BrecciaCheckpointError

KNOWN_RECIPES = tuple(sorted(_RECIPE_REGISTRY))
KNOWN_LAYOUTS = tuple(sorted(_LAYOUT_REGISTRY))


def parse_config(text: str, where: str):
    """Parse one ``{name}.config`` JSON string into ``(recipe, layout)``.

    ``where`` names the tensor and file for error messages.
    """
    try:
        obj = json.loads(text)
        recipe_name = obj["recipe"]["name"]
        recipe_fields = obj["recipe"].get("fields", {})
        layout_name = obj["layout"]["name"]
        layout_fields = obj["layout"].get("fields", {})
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BrecciaCheckpointError(
            f"{where}: recipe JSON is malformed ({exc.__class__.__name__}: {exc}); "
            'expected {"recipe": {"name": ..., "fields": {...}}, "layout": {...}}'
        ) from None
    if recipe_name not in _RECIPE_REGISTRY:
        raise BrecciaCheckpointError(
            f"{where}: unknown breccia recipe {recipe_name!r} (known: {', '.join(KNOWN_RECIPES)})"
        )
    if layout_name not in _LAYOUT_REGISTRY:
        raise BrecciaCheckpointError(
            f"{where}: unknown breccia layout {layout_name!r} (known: {', '.join(KNOWN_LAYOUTS)})"
        )
    if not isinstance(recipe_fields, dict) or not isinstance(layout_fields, dict):
        raise BrecciaCheckpointError(f"{where}: recipe/layout 'fields' must be JSON objects")
    try:
        recipe = _RECIPE_REGISTRY[recipe_name](**recipe_fields)
        layout = _LAYOUT_REGISTRY[layout_name](**layout_fields)
    except (TypeError, ValueError) as exc:
        raise BrecciaCheckpointError(
            f"{where}: invalid fields for recipe {recipe_name!r} / layout {layout_name!r}: {exc}"
        ) from None
    return recipe, layout


def describe(recipe, layout) -> str:
    """A short human label, e.g. ``current(E4M3)/per_tensor``."""
    detail = getattr(recipe, "fp8_format", None) or getattr(recipe, "fp4_format", None)
    if hasattr(recipe, "block_k"):
        detail = f"{detail},k={recipe.block_k}"
    if hasattr(recipe, "group_size"):
        sym = "asym" if not recipe.symmetric else "sym" if recipe.signed else "sym,unsigned"
        detail = f"g={recipe.group_size},{sym}"
    label = f"{recipe.name}({detail})" if detail else recipe.name
    return f"{label}/{layout.name}"
