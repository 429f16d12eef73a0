"""Which layers SGLang's Marlin kernels take: SGLang's own rules, asked for the described GPU.

``marlin_w4a16.py`` (INT4, NVFP4) and ``marlin_fp8.py`` (1x128 block FP8) share them.
"""

from __future__ import annotations

MIN_CAPABILITY = 80  # Marlin: Ampere and later


def scalar_types():
    """SGLang's Marlin weight types (``scalar_types.uint4``, ``float8_e4m3fn``, ...)."""
    from sglang.srt.layers.quantization.utils import get_scalar_types

    return get_scalar_types()[1]


def marlin_refusal(spec, quant_type, has_zp: bool) -> str | None:
    """SGLang's own rule for a Marlin layer: the type and group on this GPU, then the shape."""
    from sglang.srt.layers.quantization.marlin_utils import _check_marlin_supported, check_marlin_supports_shape

    ok, why = _check_marlin_supported(quant_type, spec.block, has_zp, device_capability=spec.capability)
    if not ok:
        return f"SGLang's Marlin: {why}"
    n, k = spec.out_features, spec.input_size_per_partition
    ok, why = check_marlin_supports_shape(n, k, k, spec.block)
    return None if ok else f"SGLang's Marlin needs N % 64 and K % 128; this layer is {n} x {k}"
