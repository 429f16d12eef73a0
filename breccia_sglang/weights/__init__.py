"""Quantized-weight maths in plain torch. Knows breccia's recipes; never imports SGLang.

- ``codes.py``: breccia's code formats (E4M3, E5M2, E2M1, E8M0, INT4) decoded to fp32.
- ``dequant.py``: every recipe's dequantize, bit for bit breccia's, with no NumPy round
  trip; and the same values straight in an activation dtype, fast enough to serve.
- ``packing.py``: 4-bit codes two per byte (the even element in the low nibble, as SGLang's
  4-bit layouts hold them), and a checkpoint's codes as a loaded layer holds them.
- ``sglang_layouts.py``: packed INT4 / NVFP4 weights in SGLang's AWQ, GPTQ and ModelOpt NVFP4
  layouts, converted once after loading.
- ``activations.py``: per-token-group FP8 quantization of activations, as SGLang's W8A8
  kernels do it.
- ``w8a8.py``: the fp32 W8A8 reference, what an FP8 GEMM that quantizes its activations computes.
"""

from .activations import quantize_activations_fp8
from .dequant import dequantize, dequantize_as

__all__ = ["dequantize", "dequantize_as", "quantize_activations_fp8"]
