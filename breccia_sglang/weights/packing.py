"""4-bit codes two per byte, as every SGLang 4-bit layout holds them: the even element of a
pair in the LOW nibble (AWQ, ModelOpt NVFP4, the moe_wna16 experts).

breccia stores NVFP4 and INT4 codes one per byte (the low nibble; its ``pack_nibbles`` puts
the even element in the HIGH nibble, the opposite order), so a loaded 4-bit weight is packed
here once, as its tensor streams in, and stays packed: (N, K) codes take N * K / 2 bytes.
"""

from __future__ import annotations

import torch

from ..format.recipes import packs_two_per_byte, stores_native_fp8


def pack_low_first(codes: torch.Tensor) -> torch.Tensor:
    """(..., K) uint8 codes, one per byte (low nibble) -> (..., K / 2) uint8, element 2j in the
    low nibble of byte j and 2j + 1 in the high one. K must be even."""
    if codes.shape[-1] % 2:
        raise ValueError(f"4-bit codes pack two per byte: the last dimension ({codes.shape[-1]}) must be even")
    pairs = codes.view(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] & 0x0F) | ((pairs[..., 1] & 0x0F) << 4)


def unpack_low_first(packed: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The inverse of ``pack_low_first``: (..., K / 2) -> (..., K) codes 0..15 in ``dtype``
    (an integer type; int32 saves the emulated kernel a conversion pass)."""
    out = torch.empty(*packed.shape[:-1], packed.shape[-1], 2, dtype=dtype, device=packed.device)
    bytes_ = packed.view(torch.uint8)
    torch.bitwise_and(bytes_, 0x0F, out=out[..., 0])
    torch.bitwise_right_shift(bytes_, 4, out=out[..., 1])
    return out.view(*packed.shape[:-1], packed.shape[-1] * 2)


def served_codes(data: torch.Tensor, recipe) -> torch.Tensor:
    """A checkpoint's ``NAME.data`` as a loaded layer holds it. Codes are re-viewed, never
    converted numerically: per-tensor and block FP8 as float8_e4m3fn (SGLang's FP8 weights),
    MXFP8 as breccia's uint8 codes, NVFP4 and INT4 packed two per byte. Anything else (a
    high-precision tensor) is returned as it is."""
    if data.dtype not in (torch.uint8, torch.int8, torch.float8_e4m3fn):
        return data
    if packs_two_per_byte(recipe):
        return pack_low_first(data.view(torch.uint8))
    return data.view(torch.float8_e4m3fn if stores_native_fp8(recipe) else torch.uint8)
