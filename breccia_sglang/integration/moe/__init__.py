"""Kernels for breccia mixture-of-experts layers inside SGLang's FusedMoE, chosen like the GEMMs.

- ``spec.py``: ``MoESpec``, what a kernel decides on (a ``LinearSpec`` of the gate/up
  projection plus the number of experts).
- ``params.py``: the stacked expert parameters (codes, scales, zero points) SGLang's FusedMoE
  weight loader fills, one expert and shard at a time.
- ``triton_fused.py``: SGLang's fused MoE Triton kernels through its Triton MoE runner, with
  tile configs of ours: FP8 experts W8A8, INT4 experts W4A16.
- ``triton_w4a16.py``: our Triton MoE W4A16 kernel for INT4 and NVFP4 experts, codes read in
  place; ``triton_w8a16.py``: our MoE W8A16 kernel for FP8 experts where SGLang's W8A8 one
  cannot run (sm_80 / sm_86, unusual blocks); ``routed_experts.py``: the layer steps both share.
- ``emulated.py``: each routed expert dequantized in torch, then SGLang's native MoE loop.
- ``align.py``: the routed pairs grouped by expert in blocks: SGLang's CUDA op where it runs,
  else the same in torch; neither syncs with the host.
- ``combine.py``: the layer output as SGLang's combine step takes it.
- ``registry.py``: every MoE kernel, best first, and ``choose_moe_kernel``.
"""

from .registry import MOE_KERNELS, choose_moe_kernel, moe_kernel_report
from .spec import MoESpec

__all__ = ["MOE_KERNELS", "MoESpec", "choose_moe_kernel", "moe_kernel_report"]
