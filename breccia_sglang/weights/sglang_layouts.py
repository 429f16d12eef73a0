"""breccia's packed 4-bit weights in the layouts SGLang's 4-bit kernels load, converted once
after loading. Plain torch on any device; no SGLang import (paths below are SGLang 0.5.23's).

A breccia INT4 weight as this package holds it: ``packed`` (N, K/2) uint8, even k in the low
nibble (``packing.py``); ``scale`` (N, K/G) fp32; ``zero_point`` (N, K/G) or None. SGLang's
INT4 kernels compute ``(u - z) * s`` on unsigned codes u, so each recipe maps to a (u, z):

- asymmetric: u = code, z = zero_point (integers 0..15, else ``ValueError``);
- symmetric signed (two's complement): u = code ^ 8, z = 8, since (c ^ 8) - 8 is c sign-extended;
- symmetric unsigned: u = code, z = 0.

Layouts:

- AWQ (``AwqInt4``; ``awq/schemes/awq_marlin.py`` creates it, ``kernels/ops/quantization/
  awq_triton.py`` and ``AWQMarlinLinearKernel`` read it): ``qweight`` int32 (K, N/8), nibble
  p of word c holds column 8c + AWQ_PACK_ORDER[p] (``marlin_utils.awq_to_marlin_zero_points``
  undoes exactly that order); ``qzeros`` int32 (K/G, N/8) packed the same way; ``scales``
  (K/G, N) in the activation dtype. Serves all three INT4 recipes (``scalar_types.uint4``).
- GPTQ (``GptqInt4``; ``gptq/schemes/gptq_marlin.py``, packed as ``quantization/utils.py::
  pack_rows`` does): ``qweight`` int32 (K/8, N), nibble i of word r holds row 8r + i;
  ``scales`` (K/G, N). Symmetric only (``scalar_types.uint4b8``: value = u - 8, no zero
  points), so only the signed recipe fits; the others raise ``ValueError`` (use AWQ).
- ModelOpt NVFP4 (``ModeloptNvfp4``; ``modelopt_quant.py::ModelOptFp4LinearMethod`` and
  ``ModelOptNvFp4A16LinearMethod``): ``weight`` uint8 (N, K/2), even k in the low nibble,
  which is our packed layout already, so it is returned as is; ``weight_scale``
  float8_e4m3fn (N, K/16), a view of breccia's E4M3 scale bytes; ``weight_scale_2`` fp32,
  one per merged shard, 1.0 (breccia has no global scale).

Why each is exact: codes and zero points are only moved, never recomputed, and u - z is
breccia's integer q for every recipe. NVFP4's bytes are breccia's bytes and 1.0 multiplies
exactly. The one change is INT4's scale, cast to ``dtype`` (Marlin multiplies in the
activation dtype): fp32 keeps breccia's scale; in fp16 / bf16 a kernel computing
``(u - z) * s`` in that dtype rounds once, to round(q * s_dtype), because q is a 4-bit
integer and q * s_dtype is exact in fp32.

Merged layers (shards concatenated along N) and TP shards (a column-parallel shard is an N
slice, a row-parallel one a K slice with its K/G groups) need nothing special: every layout
is row-local in K and packs along N only in whole words of 8 columns, so converting a slice
equals slicing the conversion when N offsets are multiples of 8 and K offsets of G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..format.int4_sources import AWQ_PACK_ORDER
from .packing import pack_low_first, unpack_low_first

NVFP4_BLOCK = 16


@dataclass(frozen=True)
class AwqInt4:
    """AWQ INT4 (``scalar_types.uint4``, zero points): ``qweight`` int32 (K, N/8); ``qzeros``
    int32 (K/G, N/8); ``scales`` (K/G, N) in the activation dtype."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self):
        k, words = self.qweight.shape
        groups, n = self.scales.shape
        if self.qweight.dtype != torch.int32 or self.qzeros.dtype != torch.int32 or words * 8 != n \
                or self.qzeros.shape != (groups, words) or k % groups:
            raise ValueError(f"not an AWQ layout: qweight {tuple(self.qweight.shape)} {self.qweight.dtype}, qzeros "
                             f"{tuple(self.qzeros.shape)} {self.qzeros.dtype}, scales {tuple(self.scales.shape)}")

    @property
    def group_size(self) -> int:
        return self.qweight.shape[0] // self.scales.shape[0]


@dataclass(frozen=True)
class GptqInt4:
    """GPTQ INT4, symmetric (``scalar_types.uint4b8``: value = u - 8): ``qweight`` int32
    (K/8, N); ``scales`` (K/G, N) in the activation dtype."""

    qweight: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self):
        words, n = self.qweight.shape
        groups = self.scales.shape[0]
        if self.qweight.dtype != torch.int32 or self.scales.shape[1] != n or (words * 8) % groups:
            raise ValueError(f"not a GPTQ layout: qweight {tuple(self.qweight.shape)} {self.qweight.dtype}, "
                             f"scales {tuple(self.scales.shape)}")

    @property
    def group_size(self) -> int:
        return self.qweight.shape[0] * 8 // self.scales.shape[0]


@dataclass(frozen=True)
class ModeloptNvfp4:
    """ModelOpt NVFP4: ``weight`` uint8 (N, K/2), even k in the low nibble; ``weight_scale``
    float8_e4m3fn (N, K/16); ``weight_scale_2`` fp32 (shards,), one global scale per shard."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_2: torch.Tensor

    def __post_init__(self):
        n, half_k = self.weight.shape
        if self.weight.dtype != torch.uint8 or self.weight_scale.dtype != torch.float8_e4m3fn \
                or self.weight_scale.shape != (n, half_k * 2 // NVFP4_BLOCK) \
                or self.weight_scale_2.dtype != torch.float32 or self.weight_scale_2.dim() != 1:
            raise ValueError(f"not a ModelOpt NVFP4 layout: weight {tuple(self.weight.shape)} {self.weight.dtype}, "
                             f"weight_scale {tuple(self.weight_scale.shape)} {self.weight_scale.dtype}, "
                             f"weight_scale_2 {tuple(self.weight_scale_2.shape)} {self.weight_scale_2.dtype}")


def to_awq(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, recipe, *,
           dtype: torch.dtype, name: str = "weight") -> AwqInt4:
    """A breccia INT4 weight (any of its three recipes) in AWQ's layout. N % 8 == 0."""
    n, k = _int4_shape(packed, scale, name)
    if n % 8:
        raise ValueError(f"{name}: AWQ packs 8 output columns per int32 word, so N (rows, {n}) "
                         "must be a multiple of 8")
    codes = unpack_low_first(packed)
    if recipe.signed:
        codes ^= 8
    zeros = _zero_points(zero_point, scale, recipe, name)
    return AwqInt4(qweight=_pack_awq_columns(codes.T), qzeros=_pack_awq_columns(zeros.T),
                   scales=scale.T.to(dtype).contiguous())


def to_gptq(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, recipe, *,
            dtype: torch.dtype, name: str = "weight") -> GptqInt4:
    """A symmetric signed breccia INT4 weight in GPTQ's uint4b8 layout. K % 8 == 0 (GPTQ packs
    8 rows of K per word; N needs no multiple)."""
    n, k = _int4_shape(packed, scale, name)
    if not (recipe.symmetric and recipe.signed) or zero_point is not None:
        raise ValueError(f"{name}: GPTQ's uint4b8 means value = u - 8 with no zero points, which only "
                         "symmetric signed INT4 is; unsigned symmetric (z = 0) and asymmetric weights "
                         "need zero points: use the AWQ layout (to_awq)")
    if k % 8:
        raise ValueError(f"{name}: GPTQ packs 8 rows of K per int32 word, so K ({k}) must be a multiple of 8")
    # Our bytes already run along K, even k low: four consecutive bytes, read as one
    # little-endian int32, put k = 8r + i in nibble i. ^ 0x88 makes both codes of a byte u = c ^ 8.
    words = (packed ^ 0x88).contiguous().view(torch.int32)
    return GptqInt4(qweight=words.T.contiguous(), scales=scale.T.to(dtype).contiguous())


def to_modelopt_nvfp4(packed: torch.Tensor, scale: torch.Tensor, *, shards: int = 1,
                      name: str = "weight") -> ModeloptNvfp4:
    """A breccia NVFP4 weight in ModelOpt's layout: ``packed`` (N, K/2) is already ModelOpt's
    ``weight`` and is returned as is; ``scale`` (N, K/16) E4M3 bytes become a float8 view."""
    n, half_k = packed.shape
    if packed.dtype != torch.uint8 or scale.dtype != torch.uint8 or scale.shape != (n, half_k * 2 // NVFP4_BLOCK) \
            or half_k * 2 % NVFP4_BLOCK:
        raise ValueError(f"{name}: NVFP4 wants packed (N, K/2) uint8 and scale (N, K/16) uint8 with K % 16 == 0, "
                         f"got {tuple(packed.shape)} {packed.dtype} and {tuple(scale.shape)} {scale.dtype}")
    return ModeloptNvfp4(weight=packed, weight_scale=scale.view(torch.float8_e4m3fn),
                         weight_scale_2=torch.ones(shards, dtype=torch.float32, device=packed.device))


def _int4_shape(packed: torch.Tensor, scale: torch.Tensor, name: str) -> tuple[int, int]:
    if packed.dtype != torch.uint8 or packed.dim() != 2 or scale.dim() != 2 or scale.shape[0] != packed.shape[0]:
        raise ValueError(f"{name}: INT4 wants packed (N, K/2) uint8 and scale (N, K/G), "
                         f"got {tuple(packed.shape)} {packed.dtype} and {tuple(scale.shape)}")
    n, k = packed.shape[0], packed.shape[1] * 2
    if k % scale.shape[1]:
        raise ValueError(f"{name}: K ({k}) is not a whole number of groups ({scale.shape[1]})")
    return n, k


def _zero_points(zero_point: torch.Tensor | None, scale: torch.Tensor, recipe, name: str) -> torch.Tensor:
    """(N, K/G) uint8 z: the checkpoint's zero points, or 8 / 0 for the symmetric recipes."""
    if recipe.symmetric and zero_point is not None:
        raise ValueError(f"{name}: a symmetric INT4 recipe has no zero points, yet a zero_point was given")
    if not recipe.symmetric and zero_point is None:
        raise ValueError(f"{name}: an asymmetric INT4 recipe needs its zero_point tensor")
    if zero_point is None:
        return torch.full(scale.shape, 8 if recipe.signed else 0, dtype=torch.uint8, device=scale.device)
    if recipe.signed:
        raise ValueError(f"{name}: asymmetric INT4 stores unsigned codes; a signed recipe with zero points "
                         "has no (u, z) form")
    return four_bit_zero_points(zero_point, name)


def four_bit_zero_points(zero_point: torch.Tensor, name: str) -> torch.Tensor:
    """Zero points as the 4-bit integers every SGLang INT4 kernel packs (uint8 0..15); anything
    else (a fraction, 16, NaN) is refused with the tensor's name."""
    z = zero_point.to(torch.float32)
    bad = ~((z == z.round()) & (z >= 0) & (z <= 15))  # NaN fails every comparison
    if bool(bad.any()):
        raise ValueError(f"{name}: 4-bit kernels pack zero points as integers (0..15); "
                         f"{name}'s zero_point holds {z[bad][0].item()!r}")
    return z.to(torch.uint8)


def _pack_awq_columns(values: torch.Tensor) -> torch.Tensor:
    """(R, N) codes 0..15 -> (R, N/8) int32, nibble p of word c holding column 8c + AWQ_PACK_ORDER[p]."""
    rows, n = values.shape
    order = torch.tensor(AWQ_PACK_ORDER, device=values.device)
    nibbles = values.reshape(rows, n // 8, 8)[..., order].reshape(rows, n)
    # Pairs into bytes (nibble 2j low, 2j + 1 high), four bytes into a little-endian int32 word:
    # nibble p lands on bits 4p..4p+3. Bytes avoid int32 shifts into the sign bit.
    return pack_low_first(nibbles).view(torch.int32)
