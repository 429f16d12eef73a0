"""FP8 checkpoints people already have, as breccia FP8 weights, bit for bit.

Each format holds a quantized linear ``P`` as ``P.weight``, (N, K) E4M3 codes, and a dequant
multiplier beside it (weight = code x scale):

- ``fp8``: SGLang's and vLLM's native FP8 (``quant_method: fp8``; what ``export-sglang-fp8``
  writes): ``P.weight_scale`` per tensor, or, with ``weight_block_size: [bn, bk]``,
  ``P.weight_scale_inv`` per bn x bk block.
- ``deepseek-fp8``: that block form (DeepSeek-V3's checkpoints), the name it has always had here.
- ``compressed-tensors-fp8``: llm-compressor's ``float-quantized``, ``P.weight_scale`` per tensor
  (strategy "tensor"), per output channel ("channel") or per ``block_structure`` block ("block").
- ``modelopt-fp8``: NVIDIA ModelOpt's ``quant_algo: FP8`` (in config.json's
  ``quantization_config``, or the older ``hf_quant_config.json``), ``P.weight_scale`` per tensor.
- ``fbgemm-fp8``: FBGEMM's (``quant_method: fbgemm_fp8``, Meta's Llama 3.1 405B FP8),
  ``P.weight_scale`` per output channel; SGLang 0.5.23 has no loader for it, so converting is how
  SGLang serves it.

Per tensor is breccia's ``Float8CurrentScaling``; per channel one K block as wide as the row;
a bn x bk block scale is the scale of each of its rows, so one scale per row and K block
(``PerBlockK(bk)``), exact. Codes and scales are copied, never recomputed. Static activation
scales (``input_scale``) and KV-cache scales (``k_scale``, ``v_scale``, ``kv_scale``) are
dropped and reported: breccia-sglang quantizes activations per token, and its FP8 KV cache
scales each (token, KV head) as it writes it.
"""

from __future__ import annotations

from collections.abc import Callable

import breccia
import torch
from breccia.bridges import from_deepseek_v3

from ..errors import BrecciaCheckpointError

FP8_SOURCE_FORMATS = ("fp8", "deepseek-fp8", "compressed-tensors-fp8", "modelopt-fp8", "fbgemm-fp8")

# Scale tensors a converter consumes with their weight.
WEIGHT_SCALES = (".weight_scale_inv", ".weight_scale")
# Static scales the server does not need, with why (matched on how the tensor's name ends).
DROPPED_SCALES = {
    ".input_scale": "static activation scale; activations are quantized dynamically, per token",
    ".input_scale_ub": "static bound on activation scales; activations are quantized dynamically, per token",
    ".k_scale": "static KV-cache scale; the breccia FP8 KV cache scales every (token, KV head)",
    ".v_scale": "static KV-cache scale; the breccia FP8 KV cache scales every (token, KV head)",
    ".kv_scale": "static KV-cache scale; the breccia FP8 KV cache scales every (token, KV head)",
}

# A weight's breccia form: (the ScaledTensor, its label), or (a high-precision tensor to store
# instead, the reason).
Converted = tuple[breccia.ScaledTensor | torch.Tensor, str]
ScaleOf = Callable[[str], torch.Tensor]  # the fp32 scale tensor beside the weight, by suffix


# Why a ModelOpt quant_algo other than FP8 does not convert, where there is more to say.
MODELOPT_REFUSALS = {
    "NVFP4": ": its per-tensor weight_scale_2 has no place in breccia's NVFP4, and folding it into the E4M3 "
             "block scales would round them; quantize the BF16 model with --recipe nvfp4 instead",
}


def check_fp8_config(source_format: str, quant_config: dict, where: str) -> None:
    """Refuse a checkpoint whose quantization config is not the FP8 format ``--from`` names."""
    method = quant_config.get("quant_method")
    if source_format == "modelopt-fp8":
        algo = quant_config.get("quant_algo")
        if method not in ("modelopt", None) or algo is None:
            raise BrecciaCheckpointError(f"{where}: --from modelopt-fp8 needs a ModelOpt quantization config "
                                         f"(quant_algo 'FP8'), found quant_method {method!r}")
        if algo != "FP8":
            raise BrecciaCheckpointError(f"{where}: ModelOpt quant_algo is {algo!r}; only 'FP8' (per-tensor "
                                         f"scales) converts{MODELOPT_REFUSALS.get(algo, '')}")
        return
    expected = {"compressed-tensors-fp8": "compressed-tensors", "fbgemm-fp8": "fbgemm_fp8"}.get(source_format, "fp8")
    if method != expected:
        raise BrecciaCheckpointError(f"{where}: --from {source_format} needs quantization_config.quant_method "
                                     f"{expected!r}, found {method!r}")
    if source_format == "compressed-tensors-fp8":
        try:
            compressed_tensors_block(quant_config)
        except BrecciaCheckpointError as exc:
            raise BrecciaCheckpointError(f"{where}: {exc}") from None
    if source_format == "deepseek-fp8" and not quant_config.get("weight_block_size"):
        raise BrecciaCheckpointError(f"{where}: --from deepseek-fp8 needs quantization_config.weight_block_size "
                                     "(block scales); a per-tensor FP8 checkpoint converts with --from fp8")


def fp8_weight(source_format: str) -> Callable[[str, torch.Tensor, ScaleOf, dict], Converted]:
    """How ``source_format`` turns one FP8 ``P.weight`` into breccia's form."""
    if source_format == "deepseek-fp8":
        return block_scaled
    if source_format == "fp8":
        return native_fp8
    return scaled_per_tensor_or_channel


def native_fp8(name: str, data: torch.Tensor, scale_of: ScaleOf, quant_config: dict) -> Converted:
    """SGLang's native FP8: block scales where the config has blocks, else one scale per tensor."""
    if quant_config.get("weight_block_size"):
        return block_scaled(name, data, scale_of, quant_config)
    return scaled_per_tensor_or_channel(name, data, scale_of, quant_config)


def block_scaled(name: str, data: torch.Tensor, scale_of: ScaleOf, quant_config: dict) -> Converted:
    bn, bk = quant_config.get("weight_block_size", [128, 128])
    return _from_blocks(data, scale_of(".weight_scale_inv"), bn, bk)


def _from_blocks(data: torch.Tensor, block_scales: torch.Tensor, bn: int, bk: int) -> Converted:
    """(rows, k) codes with one scale per bn x bk block, (ceil(rows / bn), ceil(k / bk)), edge
    blocks partial."""
    rows, k = data.shape
    row_scales = block_scales.repeat_interleave(bn, 0)[:rows]
    if k % bk:
        # breccia's layouts need whole K blocks; keep this weight exactly dequantized.
        dequantized = data.to(torch.float32) * row_scales.repeat_interleave(bk, 1)[:, :k]
        return dequantized.to(torch.bfloat16), f"K={k} is not a multiple of {bk}: stored dequantized (bf16)"
    # breccia's own DeepSeek bridge assumes 1 x bk blocks, hence the scales expanded over rows first.
    return from_deepseek_v3(data, row_scales.contiguous(), block_k=bk), f"block(E4M3,k={bk}) from {bn}x{bk} blocks"


def scaled_per_tensor_or_channel(name: str, data: torch.Tensor, scale_of: ScaleOf, quant_config: dict) -> Converted:
    scale = scale_of(".weight_scale")
    rows, k = data.shape
    block = compressed_tensors_block(quant_config)
    if block is not None and scale.ndim == 2 and tuple(scale.shape) == (-(-rows // block[0]), -(-k // block[1])):
        return _from_blocks(data, scale, *block)
    if scale.numel() == 1:
        scaled = breccia.from_buffer(data, scale.reshape(()), breccia.Float8CurrentScaling(), breccia.PerTensor())
        return scaled, "current(E4M3)/per_tensor"
    if tuple(scale.shape) in ((rows, 1), (rows,)):
        # One scale per output channel is one K block as wide as the row.
        scaled = breccia.from_buffer(data, scale.reshape(rows, 1), breccia.Float8BlockScaling(block_k=k),
                                     breccia.PerBlockK(k))
        return scaled, f"block(E4M3,k={k}) per channel"
    raise BrecciaCheckpointError(f"{name!r} has weight_scale shape {list(scale.shape)}; only per-tensor and "
                                 "per-channel FP8 scales convert")


def compressed_tensors_block(quant_config: dict) -> tuple[int, int] | None:
    """The [rows, K] of compressed-tensors' "block" strategy, if a config group uses it."""
    blocks = set()
    for name, group in (quant_config.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        if weights.get("strategy") == "block":
            structure = weights.get("block_structure")
            if not (isinstance(structure, list) and len(structure) == 2):
                raise BrecciaCheckpointError(f"quantization_config.config_groups.{name}.weights.block_structure is "
                                             f"{structure!r}; the block strategy needs [rows, K]")
            blocks.add(tuple(structure))
    if len(blocks) > 1:
        raise BrecciaCheckpointError(f"config groups use different block_structure {sorted(blocks)}; "
                                     "one block shape per checkpoint converts")
    return blocks.pop() if blocks else None
