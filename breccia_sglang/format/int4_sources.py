"""INT4 checkpoints people already have (AutoAWQ, GPTQ, llm-compressor's W4A16) as breccia
INT4 weights, exactly.

Each format holds a quantized linear ``P`` as int32 words of eight 4-bit codes plus scales in
the model's dtype; breccia holds ``P.weight`` as one code per byte, (N, K), with (N, K/G)
scales and zero points. All compute ``(u - z) * s`` on unsigned codes u:

- AWQ (AutoAWQ "gemm"): ``qweight`` (K, N/8), nibble p of word c holding column
  8c + AWQ_PACK_ORDER[p]; ``qzeros`` (K/G, N/8) packed the same way. Always zero-point:
  breccia's asymmetric INT4 (u, z) as they are.
- GPTQ (AutoGPTQ / GPTQModel): ``qweight`` (K/8, N), nibble i of word r holding row 8r + i;
  ``qzeros`` (K/G, N/8), nibble j of word c holding column 8c + j, storing z - 1 (format
  "gptq", the common one) or z ("gptq_v2"). Symmetric GPTQ has z = 8 everywhere, so it is
  breccia's signed symmetric INT4: c = u - 8, whose 4-bit two's complement is u ^ 8. With
  ``sym: false`` it is breccia's asymmetric INT4.
- compressed-tensors "pack-quantized" (llm-compressor W4A16): ``weight_packed`` (N, K/8),
  nibble i of word w holding k = 8w + i; ``weight_scale`` (N, K/G); asymmetric layers add
  ``weight_zero_point`` (N/8, K/G), nibble j of word r holding row 8r + j. Codes and zero
  points are stored offset by 8 (u = q + 8), so symmetric layers are breccia's signed INT4
  (u ^ 8) and asymmetric ones its zero-point INT4 (u, z).

Codes and zero points are moved, never recomputed, and fp16 scales stay fp16 (bf16 ones become
fp32, exactly: breccia holds no bf16 scale), so ``breccia.dequantize`` gives what each format's
own dequantizer gives, bit for bit. What breccia cannot hold is refused by tensor and field:
other bit widths, AWQ's GEMV packings, quantized activations (W4A8), and act-order (GPTQ's
``desc_act``, compressed-tensors' ``actorder: group``), whose groups are not contiguous in K
(breccia would need the activations permuted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import breccia
import torch
from breccia.recipes import INT4Scaling

from ..errors import BrecciaCheckpointError

# AWQ's nibble order: nibble p of an int32 word holds column 8c + AWQ_PACK_ORDER[p]
# (SGLang's awq_triton unpacks with its inverse, [0, 4, 1, 5, 2, 6, 3, 7]).
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def check_int4_config(source_format: str, quant_config: dict, where: str) -> None:
    """Refuse what the checkpoint's ``quantization_config`` says breccia cannot hold."""
    expected = "compressed-tensors" if source_format == "compressed-tensors-int4" else source_format
    method = quant_config.get("quant_method")
    if method != expected:
        raise BrecciaCheckpointError(f"{where}: --from {source_format} needs quantization_config.quant_method "
                                     f"{expected!r}, found {method!r}")
    if source_format == "compressed-tensors-int4":
        _check_compressed_tensors_groups(quant_config, where)
        return
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


def _check_compressed_tensors_groups(quant_config: dict, where: str) -> None:
    groups = quant_config.get("config_groups") or {}
    if not groups:
        raise BrecciaCheckpointError(f"{where}: quantization_config has no config_groups")
    for name, group in groups.items():
        field = f"quantization_config.config_groups.{name}"
        weights = group.get("weights") or {}
        form = group.get("format") or quant_config.get("format")
        if form != "pack-quantized":
            raise BrecciaCheckpointError(f"{where}: {field} has format {form!r}; only 'pack-quantized' (W4A16) "
                                         "converts (FP8: --from compressed-tensors-fp8)")
        if weights.get("num_bits") != 4 or weights.get("type") != "int":
            raise BrecciaCheckpointError(f"{where}: {field}.weights are {weights.get('num_bits')}-bit "
                                         f"{weights.get('type')}; breccia holds 4-bit int only")
        if group.get("input_activations"):
            raise BrecciaCheckpointError(f"{where}: {field} quantizes activations too; only W4A16 converts "
                                         "(breccia-sglang's 4-bit kernels keep activations in 16 bits)")


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
    _need_groups_in_order(f"{name}.g_idx", g_idx, k, group)
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


def compressed_tensors_to_breccia(name: str, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                                  weight_zero_point: torch.Tensor | None, g_idx: torch.Tensor | None,
                                  weight_shape: torch.Tensor | None) -> breccia.ScaledTensor:
    """A compressed-tensors pack-quantized ``name.weight_packed`` / ``.weight_scale``
    (/ ``.weight_zero_point``, ``.weight_g_idx``, ``.weight_shape``) as one breccia INT4 weight."""
    n, k = weight_packed.shape[0], weight_packed.shape[1] * 8
    if weight_shape is not None and [int(v) for v in weight_shape] != [n, k]:
        raise BrecciaCheckpointError(f"{name}.weight_shape: {[int(v) for v in weight_shape]}, but weight_packed "
                                     f"holds {[n, k]} codes; a K that is not whole words of eight does not convert")
    group = _group_size(name, k, n, weight_scale.T, part="weight_scale")
    _need_groups_in_order(f"{name}.weight_g_idx", g_idx, k, group)
    codes = _nibbles(weight_packed)  # (N, K)
    if weight_zero_point is None:
        return _int4(codes ^ 8, weight_scale, None, group, symmetric=True)
    _need_shape(name, "weight_zero_point", weight_zero_point, (n // 8, k // group))
    zeros = _nibbles(weight_zero_point.T.contiguous()).T  # packed along N: (N, K/G)
    return _int4(codes, weight_scale, zeros, group, symmetric=False)


@dataclass(frozen=True)
class Int4Source:
    """How a format spells one quantized layer ``P``: ``P + codes`` names it, ``parts`` go with
    it (consumed, never copied), and ``to_breccia(P, part, quant_config)`` builds the weight."""

    codes: str
    parts: tuple[str, ...]
    to_breccia: Callable


INT4_SOURCES = {
    "awq": Int4Source(".qweight", (".qzeros", ".scales"), lambda prefix, part, config: awq_to_breccia(
        prefix, part(".qweight"), part(".qzeros"), part(".scales"))),
    "gptq": Int4Source(".qweight", (".qzeros", ".scales", ".g_idx"), lambda prefix, part, config: gptq_to_breccia(
        prefix, part(".qweight"), part(".qzeros", required=False), part(".scales"), part(".g_idx", required=False),
        sym=config.get("sym", True), v2=config.get("checkpoint_format") == "gptq_v2")),
    "compressed-tensors-int4": Int4Source(
        ".weight_packed", (".weight_scale", ".weight_zero_point", ".weight_g_idx", ".weight_shape"),
        lambda prefix, part, config: compressed_tensors_to_breccia(
            prefix, part(".weight_packed"), part(".weight_scale"), part(".weight_zero_point", required=False),
            part(".weight_g_idx", required=False), part(".weight_shape", required=False))),
}
INT4_SOURCE_FORMATS = tuple(INT4_SOURCES)


def _need_groups_in_order(what: str, g_idx: torch.Tensor | None, k: int, group: int) -> None:
    # A g_idx that is just k // G (desc_act false still stores one) is breccia's grouping.
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64), torch.arange(k) // group):
        raise BrecciaCheckpointError(
            f"{what}: act-order quantization puts K rows in groups out of order; breccia's {group}-wide "
            "groups are contiguous in K, so this checkpoint cannot convert (quantize without act-order, or "
            "quantize the original with `breccia-sglang quantize --recipe int4`)")


def _int4(codes, scale, zero_point, group: int, *, symmetric: bool) -> breccia.ScaledTensor:
    # breccia holds fp16 or fp32 scales; bf16 -> fp32 is exact. Zero points take the scales' dtype.
    scale = scale.contiguous() if scale.dtype == torch.float16 else scale.to(torch.float32).contiguous()
    recipe = INT4Scaling(group_size=group, signed=symmetric, symmetric=symmetric,
                         scale_dtype="fp16" if scale.dtype == torch.float16 else "fp32")
    zero_point = None if zero_point is None else zero_point.to(scale.dtype).contiguous()
    return breccia.from_buffer(codes.contiguous(), scale, recipe, breccia.PerBlockK(group), zero_point)


def _group_size(name: str, k: int, n: int, scales: torch.Tensor, part: str = "scales") -> int:
    """G from (K/G, N) scales (pass a transposed view for (N, K/G) ones)."""
    if scales.dim() != 2 or scales.shape[1] != n or scales.shape[0] < 1 or k % scales.shape[0]:
        shape = list(scales.shape) if part == "scales" else list(scales.T.shape)
        wanted = "(K/G, N)" if part == "scales" else "(N, K/G)"
        raise BrecciaCheckpointError(f"{name}.{part}: shape {shape} is not {wanted} for K={k}, N={n}")
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
