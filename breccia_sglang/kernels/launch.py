"""What the kernel launchers share: argument checks (a wrong shape, dtype or stride fails
here with the argument's name, instead of as an out-of-bounds read inside a kernel), and the
choices a launch makes from its device (tile sizes, how FP8 bytes become values)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import torch

from .. import names


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


def fp32_on_gpu(q: torch.Tensor) -> bool:
    """Whether a launch over query ``q`` takes the small fp32 tiles: 32 keys (and extend rows)
    per tile over 8 warps instead of 64 over 4.

    An fp32 query's exact ("ieee") dot runs on FMA units, not tensor cores, and keeps its tiles
    in registers: the 64-wide tiles spill 3-12 KB per thread on sm_80-90, the small ones under
    400 B (``benchmarks/compile_kernels.py``, head_dim 128).
    """
    return gpu_tiles(q) and q.dtype == torch.float32


# Tests set this to run the integer E4M3 decode (the path of GPUs before sm_89) under the
# interpreter, and on a GPU that has the native conversion.
FORCE_INTEGER_FP8_DECODE = False


def native_fp8_decode(t: torch.Tensor) -> bool:
    """Whether kernels over ``t`` convert E4M3 with Triton's float8e4nv type.

    Yes on NVIDIA sm_89+ (Ada, Hopper, Blackwell) and in the interpreter. Triton refuses the
    type at compile time on sm_80-86 (A100, A10, RTX 30xx); on ROCm it is not the format
    every AMD GPU converts natively. Both take the integer decode, exact everywhere.
    """
    return not FORCE_INTEGER_FP8_DECODE and native_fp8_on(t.device)


def nvidia_ptx(t: torch.Tensor) -> bool:
    """Whether kernels over ``t`` may run inline PTX: compiled for an NVIDIA GPU (neither the
    interpreter, which runs no assembly, nor ROCm)."""
    return (t.is_cuda and torch.version.hip is None
            and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


def ptx_decode(t: torch.Tensor) -> bool:
    """Whether a launch over ``t`` decodes its weight codes by inline PTX (``gemm/four_bit.py``,
    ``attention/fp8_codec.e4m3_fp16_ptx``): where it may run PTX, unless
    ``BRECCIA_SGLANG_PTX=0`` (or its earlier name ``BRECCIA_SGLANG_W4A16_PTX=0``)."""
    return nvidia_ptx(t) and all(os.environ.get(v, "1") != "0" for v in (names.ENV_PTX, names.ENV_W4A16_PTX))


def gpu_model(t: torch.Tensor) -> str | None:
    """The model of the GPU ``t`` is on, as SGLang names its tuned configs ("NVIDIA H200"), which
    is what our tuned tables are found by; None off CUDA."""
    return _gpu_model(t.device.index or 0) if t.is_cuda else None


@functools.lru_cache(maxsize=None)
def _gpu_model(index: int) -> str:
    return torch.cuda.get_device_name(index)


def tuned_path(chosen: str | None, device_name: str | None, shipped: Callable[[str], Path]) -> Path | None:
    """The tuned file a table lookup reads: the one its environment variable names (``chosen``,
    read whether or not it exists, so a wrong path fails with its name), else the file shipped for
    GPU model ``device_name`` (``shipped(device_name)``) where there is one, else None."""
    if chosen:
        return Path(chosen)
    path = shipped(device_name) if device_name else None
    return path if path is not None and path.exists() else None


def native_fp8_on(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.version.hip is None and has_native_fp8(_cuda_capability(device.index))


def has_native_fp8(capability: tuple[int, int]) -> bool:
    """Whether Triton has float8e4nv on an NVIDIA GPU of this compute capability."""
    return capability >= (8, 9)


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)
