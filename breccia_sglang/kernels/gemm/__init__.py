"""Triton GEMMs over breccia's low-precision weights, read in place (weight-only: activations
stay in their dtype).

- ``w4a16.py``: the W4A16 dequant-GEMM over 4-bit codes packed two per byte (INT4, UINT4 with
  zero points, NVFP4's E2M1 with E4M3 scales), with its tile configs per range of M;
  ``moe_w4a16.py``: the same K loop over routed (token, expert) pairs and stacked experts.
- ``w8a16.py``: the W8A16 dequant-GEMM over FP8 E4M3 codes (per-tensor, 1 x B block, MXFP8);
  ``moe_w8a16.py``: its K loop over routed pairs and stacked experts.
- ``routed_blocks.py``: what both MoE kernels share: the routed pairs grouped by expert in
  blocks (SGLang's align layout), a program's rows over them and its routed store.
- ``dequantize.py``: those FP8 weights written in the activation dtype in one pass, for the
  platform's dense GEMM at prefill sizes; ``dequantize_packed.py``: the same for 4-bit weights.
- ``four_bit.py``: a tile of packed 4-bit codes as its scaled values (W4A16 and its dequantize),
  and the inline PTX that decodes them two values an instruction on NVIDIA GPUs.
- ``tiling.py``: what both launches share: tile configs, bands over M, K splits and their sum.
- ``tuned_configs.py``: their decode tile configs tuned per GPU model (``tuned/``).
- ``reference.py``: the fp32 torch references they are tested against.
"""

from .dequantize import dequantize_fp8, dequantized_linear
from .dequantize_packed import dequantize_4bit, dequantized_4bit_linear
from .moe_w4a16 import choose_moe_config, moe_w4a16_matmul
from .moe_w8a16 import choose_moe_w8a16_config, moe_w8a16_matmul
from .routed_blocks import RoutedBlocks
from .w4a16 import w4a16_matmul
from .w8a16 import w8a16_matmul

__all__ = ["RoutedBlocks", "choose_moe_config", "choose_moe_w8a16_config", "dequantize_4bit", "dequantize_fp8",
           "dequantized_4bit_linear", "dequantized_linear", "moe_w4a16_matmul", "moe_w8a16_matmul", "w4a16_matmul",
           "w8a16_matmul"]
