"""The values of breccia scales and zero points, checked as they load and in ``inspect``.

Headers cannot show a NaN, infinite or negative scale, and served, one turns its layer's
output into NaN or flips its sign with no error anywhere, so every scale is read and checked.
"""

from __future__ import annotations

import torch

from ..errors import BrecciaCheckpointError


def scale_values(recipe, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 factors breccia's dequantization multiplies by: MXFP8 stores E8M0 exponents and
    NVFP4 E4M3 codes as uint8 bytes, decoded here with breccia's own decoders."""
    if scale.dtype != torch.uint8:
        return scale.float()
    if recipe.name == "mxfp8":
        from breccia.kernels.reference._utils import dequantize_e8m0_scale as decode
    elif recipe.name == "nvfp4":
        from breccia._formats import decode_e4m3 as decode
    else:
        return scale.float()
    import numpy as np

    with np.errstate(over="ignore"):  # E8M0 0xFF (NaN) decodes to 2**128: inf, refused below
        return torch.from_numpy(decode(scale.cpu().numpy())).float()


def check_part_values(entry, part_name: str, tensor: torch.Tensor, where: str) -> None:
    """Refuse a NaN, infinite or negative scale (or a non-finite zero point) of ``entry`` (a
    ``BrecciaEntry``) by file, tensor, index and value."""
    is_scale = part_name.endswith(".scale")
    values = scale_values(entry.recipe, tensor) if is_scale else tensor.float()
    bad = ~torch.isfinite(values)
    if is_scale:
        bad |= values < 0
    if bad.any():
        flat = bad.flatten().nonzero()[0].item()
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), values.shape)) if values.dim() else ()
        what = "scale must be finite and >= 0" if is_scale else "zero point must be finite"
        value = values.flatten()[flat].item()
        if tensor.dtype == torch.uint8:
            value = f"{value} (stored byte 0x{tensor.flatten()[flat].item():02X})"
        raise BrecciaCheckpointError(
            f"{where}: '{part_name}' has {int(bad.sum())} bad value(s), the first {value} at "
            f"index {list(index)}; every {what}"
        )
