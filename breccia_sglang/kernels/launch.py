"""Argument checks shared by the kernel launchers: a wrong shape, dtype or stride fails
here with the argument's name, instead of as an out-of-bounds read inside a kernel."""

from __future__ import annotations

import torch


def check_tensor(name: str, t: torch.Tensor, *, shape: tuple | None = None, dtypes: tuple = (),
                 last_dim_contiguous: bool = False, min_rows: int = 0) -> None:
    """``shape`` may hold None for a dimension of any size; ``min_rows`` bounds dimension 0."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if shape is not None and (t.ndim != len(shape) or any(w is not None and w != s for w, s in zip(shape, t.shape))):
        wanted = tuple("*" if w is None else w for w in shape)
        raise ValueError(f"{name}: expected shape {wanted}, got {tuple(t.shape)}")
    if dtypes and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if last_dim_contiguous and t.ndim and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")
    if t.ndim and t.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} rows, got {t.shape[0]}")


# Tests set this to run the GPU's tile sizes under the interpreter on CPU, so the masking of a
# GPU launch (e.g. 16-row head tiles for a group of 3) is checked before any GPU is at hand.
FORCE_GPU_TILES = False


def gpu_tiles(t: torch.Tensor) -> bool:
    """Whether a launch over ``t`` takes the GPU's tile sizes (tl.dot needs >= 16 rows there;
    the interpreter runs smaller tiles much faster)."""
    return t.is_cuda or FORCE_GPU_TILES
