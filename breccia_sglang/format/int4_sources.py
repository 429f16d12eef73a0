"""INT4 checkpoints people already have (AutoAWQ, GPTQ) as breccia INT4 weights, exactly.

Both formats hold each quantized linear ``P`` as int32 words of eight 4-bit codes plus
``P.scales`` (K/G, N) in the model's dtype; breccia holds ``P.weight`` as one code per byte,
(N, K), with (N, K/G) scales and zero points. Both compute ``(u - z) * s`` on unsigned codes u:

- AWQ (AutoAWQ "gemm"): ``qweight`` (K, N/8), nibble p of word c holding column
  8c + AWQ_PACK_ORDER[p]; ``qzeros`` (K/G, N/8) packed the same way. Always zero-point:
  breccia's asymmetric INT4 (u, z) as they are.
- GPTQ (AutoGPTQ / GPTQModel): ``qweight`` (K/8, N), nibble i of word r holding row 8r + i;
  ``qzeros`` (K/G, N/8), nibble j of word c holding column 8c + j, storing z - 1 (format
  "gptq", the common one) or z ("gptq_v2"). Symmetric GPTQ has z = 8 everywhere, so it is
  breccia's signed symmetric INT4: c = u - 8, whose 4-bit two's complement is u ^ 8. With
  ``sym: false`` it is breccia's asymmetric INT4.

Codes and zero points are moved, never recomputed, and fp16 scales stay fp16 (bf16 ones become
fp32, exactly: breccia holds no bf16 scale), so ``breccia.dequantize`` gives what each format's
own dequantizer gives, bit for bit. What breccia cannot hold is refused by tensor and field:
other bit widths, AWQ's GEMV packings, and GPTQ's act-order (``desc_act``), whose groups are
not contiguous in K (breccia would need the activations permuted).
"""

from __future__ import annotations

import breccia
import torch
from breccia.recipes import INT4Scaling

from ..errors import BrecciaCheckpointError

# AWQ's nibble order: nibble p of an int32 word holds column 8c + AWQ_PACK_ORDER[p]
# (SGLang's awq_triton unpacks with its inverse, [0, 4, 1, 5, 2, 6, 3, 7]).
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
INT4_SOURCE_FORMATS = ("awq", "gptq")
QUANTIZED_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")


def check_int4_config(source_format: str, quant_config: dict, where: str) -> None:
    """Refuse what the checkpoint's ``quantization_config`` says breccia cannot hold."""
    method = quant_config.get("quant_method")
    if method != source_format:
        raise BrecciaCheckpointError(f"{where}: --from {source_format} needs quantization_config.quant_method "
                                     f"{source_format!r}, found {method!r}")
    bits = quant_config.get("bits", quant_config.get("w_bit"))
    if bits != 4:
        raise BrecciaCheckpointError(f"{where}: quantization_config.bits is {bits!r}; breccia holds 4-bit INT4 only")
    if source_format == "awq":
        version = str(quant_config.get("version", "gemm")).lower()
        if version != "gemm":
            raise BrecciaCheckpointError(f"{where}: AWQ version {version!r} packs its words differently; only "
                                         "'gemm' (AutoAWQ's default) converts")
        if quant_config.get("zero_point", True) is not True:
            raise BrecciaCheckpointError(f"{where}: AWQ with zero_point {quant_config['zero_point']!r} is not the "
                                         "layout AutoAWQ writes; only zero-point AWQ converts")
    elif str(quant_config.get("checkpoint_format", "gptq")) not in ("gptq", "gptq_v2"):
        raise BrecciaCheckpointError(f"{where}: GPTQ checkpoint_format {quant_config['checkpoint_format']!r} does "
                                     "not convert; only 'gptq' and 'gptq_v2'")


def awq_to_breccia(name: str, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> breccia.ScaledTensor:
    """AutoAWQ's ``name.qweight`` / ``.qzeros`` / ``.scales`` as one breccia asymmetric INT4 weight."""
    k, n = qweight.shape[0], qweight.shape[1] * 8
    group = _group_size(name, k, n, scales)
    _need_shape(name, "qzeros", qzeros, (k // group, n // 8))
    codes = _awq_columns(qweight).T  # (N, K)
    zeros = _awq_columns(qzeros).T  # (N, K/G)
    return _int4(codes, scales.T, zeros, group, symmetric=False)


def gptq_to_breccia(name: str, qweight: torch.Tensor, qzeros: torch.Tensor | None, scales: torch.Tensor,
                    g_idx: torch.Tensor | None, *, sym: bool, v2: bool) -> breccia.ScaledTensor:
    """A GPTQ ``name.qweight`` / ``.qzeros`` / ``.scales`` (/ ``.g_idx``) as one breccia INT4 weight."""
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    group = _group_size(name, k, n, scales)
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64), torch.arange(k) // group):
        raise BrecciaCheckpointError(
            f"{name}.g_idx: act-order GPTQ (desc_act) puts K rows in groups out of order; breccia's "
            f"{group}-wide groups are contiguous in K, so this checkpoint cannot convert (re-quantize it "
            "with desc_act false, or quantize the original with `breccia-sglang quantize --recipe int4`)")
    codes = _nibbles(qweight.T.contiguous())  # word r of column n -> rows 8r..8r+7: (N, K)
    if qzeros is None:
        if not sym:
            raise BrecciaCheckpointError(f"{name}: asymmetric GPTQ (sym false) without {name}.qzeros")
        return _int4(codes ^ 8, scales.T, None, group, symmetric=True)
    _need_shape(name, "qzeros", qzeros, (k // group, n // 8))
    zeros = _nibbles(qzeros).to(torch.int16) + (0 if v2 else 1)  # (K/G, N); format "gptq" stores z - 1
    if sym:
        if not bool((zeros == 8).all()):
            raise BrecciaCheckpointError(f"{name}.qzeros: sym is true, so every zero point must be 8, but "
                                         f"{int((zeros != 8).sum())} are not (is checkpoint_format right?)")
        return _int4(codes ^ 8, scales.T, None, group, symmetric=True)
    if bool((zeros > 15).any()):
        # Format "gptq" cannot store z = 0 (it wraps z - 1 = -1 to 15, read back as 16).
        raise BrecciaCheckpointError(f"{name}.qzeros: {int((zeros > 15).sum())} zero points read as 16 (stored 15 "
                                     "in format 'gptq'); 4-bit zero points run 0..15")
    return _int4(codes, scales.T, zeros.T.to(torch.uint8), group, symmetric=False)


def _int4(codes, scale, zero_point, group: int, *, symmetric: bool) -> breccia.ScaledTensor:
    # breccia holds fp16 or fp32 scales; bf16 -> fp32 is exact. Zero points take the scales' dtype.
    scale = scale.contiguous() if scale.dtype == torch.float16 else scale.to(torch.float32).contiguous()
    recipe = INT4Scaling(group_size=group, signed=symmetric, symmetric=symmetric,
                         scale_dtype="fp16" if scale.dtype == torch.float16 else "fp32")
    zero_point = None if zero_point is None else zero_point.to(scale.dtype).contiguous()
    return breccia.from_buffer(codes.contiguous(), scale, recipe, breccia.PerBlockK(group), zero_point)


def _group_size(name: str, k: int, n: int, scales: torch.Tensor) -> int:
    if scales.dim() != 2 or scales.shape[1] != n or scales.shape[0] < 1 or k % scales.shape[0]:
        raise BrecciaCheckpointError(f"{name}.scales: shape {list(scales.shape)} is not (K/G, N) for K={k}, N={n}")
    return k // scales.shape[0]


def _need_shape(name: str, part: str, tensor: torch.Tensor, shape: tuple) -> None:
    if tuple(tensor.shape) != shape:
        raise BrecciaCheckpointError(f"{name}.{part}: shape {list(tensor.shape)}, expected {list(shape)}")


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """(R, W) int32 -> (R, 8W) uint8: nibble p of word w at 8w + p (bits 4p..4p+3, little-endian
    bytes, low nibble first)."""
    b = words.contiguous().view(torch.uint8)
    return torch.stack((b & 0x0F, b >> 4), dim=-1).reshape(words.shape[0], -1)


def _awq_columns(words: torch.Tensor) -> torch.Tensor:
    """(R, N/8) AWQ-packed int32 -> (R, N) uint8 codes in column order."""
    rows = words.shape[0]
    inverse = torch.argsort(torch.tensor(AWQ_PACK_ORDER))
    return _nibbles(words).reshape(rows, -1, 8)[..., inverse].reshape(rows, -1)
