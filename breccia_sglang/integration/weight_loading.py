"""Map breccia checkpoint tensor names onto SGLang's FP8 parameter names while loading.

``NAME.data`` -> ``NAME`` (the ``...weight`` parameter), ``NAME.scale`` -> ``weight_scale``,
``NAME.zero_point`` -> ``weight_zero_point``; NVFP4 and INT4 codes are packed two per byte on
the way (``weights/packing.py``). Tensors are streamed one at a time from
SGLang's own safetensors iterator; nothing is read twice or held whole. Each scale and zero
point is value-checked as it passes (``check_part_values``, the check ``inspect`` runs too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..errors import BrecciaCheckpointError
from ..format.values import check_part_values
from ..weights.packing import served_codes
from .sglang_params import SCALE_PARAM


def load_weights_only(original, model, weights, target_device):
    """AROUND ``DefaultModelLoader.load_weights_only`` (registered in plugin.py): a breccia
    model's checkpoint tensors arrive under SGLang's parameter names."""
    from .quant_config import BrecciaConfig

    if isinstance(getattr(model, "quant_config", None), BrecciaConfig):
        weights = rename_breccia_tensors(weights, model.quant_config)
    return original(model, weights, target_device)


def rename_breccia_tensors(
    weights: Iterable[tuple[str, torch.Tensor]], config
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield SGLang-named tensors; refuse up front if a breccia tensor has no layer."""
    unclaimed = config.unclaimed()
    if unclaimed:
        shown = ", ".join(unclaimed[:5]) + (" ..." if len(unclaimed) > 5 else "")
        raise BrecciaCheckpointError(
            f"{len(unclaimed)} breccia tensor(s) have no quantizable linear layer in the "
            f"SGLang model and would be silently dropped: {shown}"
        )
    entries = config.checkpoint.entries
    for name, tensor in weights:
        base, _, part = name.rpartition(".")
        entry = entries.get(base)
        if entry is None:
            yield name, tensor
            continue
        module = base[: -len(".weight")]
        if part in ("scale", "zero_point"):
            stored = getattr(entry, part)
            check_part_values(entry, name, tensor, str(config.checkpoint.directory / stored.file))
        if part == "data":
            yield base, served_codes(tensor, entry.recipe)
        elif part == "scale":
            yield f"{module}.{SCALE_PARAM}", tensor
        elif part == "zero_point":
            yield f"{module}.weight_zero_point", tensor
        else:
            yield name, tensor
