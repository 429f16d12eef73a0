"""GEMM kernels for breccia linear layers inside SGLang, chosen from a description of the layer.

- ``base.py``: ``LinearSpec`` (what a kernel decides on), ``Target`` (the machine it is for)
  and ``GemmKernel`` (the interface).
- ``emulated.py``: breccia's dequantize in torch, then a plain matmul; runs anywhere.
- ``w8a8_reference.py``: FP8 activations too, in fp32 torch; only when asked for.
- ``sglang_fp8.py``: SGLang's native FP8 linear for per-tensor FP8 on sm_89+.
- ``sglang_fp8_channel.py``: FP8 with one scale per output row (per channel) on SGLang's
  per-channel W8A8 linear, sm_89+.
- ``triton_block_fp8.py``: block FP8 (1x32/64/128) and MXFP8 on SGLang's Triton W8A8 block
  kernels, with tile configs of ours (``block_fp8_tiles.py``, tuned per GPU model in ``tuned/``).
- ``blockscale_sm90.py``: 1x128 block FP8 on Hopper's blockwise GEMMs (torch's cuBLASLt kernel,
  or FlashInfer's DeepGEMM one); first for 1x128 on sm_90, as measured on an H200.
- ``marlin_w4a16.py``: INT4 on SGLang's AWQ-Marlin and NVFP4 on its FP4 Marlin (W4A16, sm_80+),
  converted once after loading; ``marlin_fp8.py``: 1x128 block FP8 on its FP8 Marlin (W8A16,
  sm_80+: the GPUs without FP8 tensor cores); ``marlin_rules.py``: which layers Marlin takes.
- ``batch_routes.py``: the batch sizes an FP8 layer's kernel hands on: decode-sized ones to the
  W8A16 kernel, prefill-sized ones to the weight dequantized in one pass and a dense GEMM, by
  the bounds a GPU model's tuned file (or an environment variable) gives.
- ``triton_w8a16.py``: every FP8 E4M3 recipe on our Triton W8A16 GEMM (sm_80+; the FP8 path
  for what SGLang's kernels refuse: 1x32 / 1x64 / MXFP8 below sm_89, 1x256 anywhere).
- ``triton_w4a16.py``: INT4 and NVFP4 on our Triton W4A16 GEMM, packed codes read in place
  (sm_80+; every group and shape Marlin refuses).
- ``activation_quant.py``: FP8 activations per token and K block, as SGLang quantizes them.
- ``registry.py``: every kernel, best first, and ``choose_kernel``.
"""

from .base import GemmKernel, LinearSpec, Target
from .registry import KERNELS, choose_kernel, kernel_report

__all__ = ["KERNELS", "GemmKernel", "LinearSpec", "Target", "choose_kernel", "kernel_report"]
