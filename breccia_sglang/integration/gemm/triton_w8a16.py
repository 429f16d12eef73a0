"""FP8 E4M3 weights of every recipe on our Triton W8A16 GEMM (``kernels/gemm/w8a16.py``):
per-tensor FP8, block FP8 of any 1 x B, and MXFP8, codes read in place, activations unquantized.

It is the FP8 path for what SGLang's kernels refuse:
- GPUs without FP8 tensor cores (sm_80-88: A100, A10, RTX 30xx), where SGLang's FP8 Marlin
  takes only per-tensor and 1 x 128 scales (``sglang_fp8.py``, ``marlin_fp8.py``) and only N % 64,
  K % 128: 1 x 32 / 1 x 64 block FP8, MXFP8 and other shapes come here;
- block widths no W8A8 kernel takes (1 x 256: SGLang's block kernels need a K tile per scale).
On sm_89+ the W8A8 kernels rank above it; it runs there when asked for
(``BRECCIA_SGLANG_GEMM=triton-w8a16``), e.g. to compare decode-sized batches, where it skips the
activation quantization pass (``benchmarks/bench_gemm.py``).

Prefill-sized batches can take the weight dequantized in one pass and a dense GEMM instead,
where a GPU model's tuned file says so (``batch_routes``).

Scales become fp32 once after loading, the codes stay as loaded (N * K bytes): one scale per
row for per-tensor FP8 (each merged shard's scale over its rows, exactly breccia's values), the
(N, K / B) block scales as they are, MXFP8's E8M0 exponents as their exact powers of two.
"""

from __future__ import annotations

from breccia.layouts import PerTensor

from ... import names
from ...errors import BrecciaCheckpointError
from ...format.recipes import PER_TENSOR_FP8, stores_native_fp8
from ...kernels.gemm import w8a16_matmul
from ...weights.dequant import row_scales, scale_values
from ..sglang_params import SCALE_PARAM, code_params, fp8_params, replace_param, stored_weight
from .base import GemmKernel, layer_output, needs_gpu, token_rows
from .batch_routes import BatchRoutes


def fp8_e4m3_refusal(spec) -> str | None:
    """Why the W8A16 kernels cannot read ``spec``'s weights, or None: FP8 E4M3 codes with one
    scale per tensor (or merged shard) or per 1 x B block (MXFP8's included)."""
    per_tensor = isinstance(spec.recipe, PER_TENSOR_FP8) and isinstance(spec.layout, PerTensor)
    if spec.fp8_format != "E4M3" or not (per_tensor or spec.block):
        return "needs FP8 E4M3 weights (per-tensor, 1xB block or MXFP8)"
    return None


class TritonW8A16Kernel(BatchRoutes, GemmKernel):
    """W8A16 on our Triton kernel: FP8 E4M3 weights (per-tensor, 1 x B block, MXFP8), sm_80+."""

    name = names.GEMM_TRITON_W8A16
    SMALL_ROUTE = False  # it is the W8A16 kernel; prefill-sized batches may still go on
    priority = 70  # below SGLang's kernels (W8A8 on sm_89+, FP8 Marlin below) and above emulated

    @classmethod
    def why_not(cls, spec):
        if refusal := fp8_e4m3_refusal(spec):
            return refusal
        if spec.block and spec.input_size_per_partition % spec.block:
            return f"K={spec.input_size_per_partition} splits a {spec.block}-wide scale block"
        return needs_gpu(spec, cls.name, 80, triton=True)

    def configure(self, spec) -> "TritonW8A16Kernel":
        """What process_weights_after_loading() and apply() need to know of the layer's spec."""
        self.recipe, self.per_tensor, self.group = spec.recipe, isinstance(spec.layout, PerTensor), spec.block
        return self

    def create_weights(self, layer, spec, weight_loader):
        self.configure(spec)
        (fp8_params if stores_native_fp8(spec.recipe) else code_params)(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        w = stored_weight(layer)
        if not w.data.is_contiguous():
            raise BrecciaCheckpointError(f"{self.name}: the loaded weight is not contiguous")
        if self.per_tensor:
            scales = row_scales(w.scale, w.shard_widths, w.data.shape[0])
        else:
            scales = scale_values(w.scale, self.recipe)
        replace_param(layer, SCALE_PARAM, scales.contiguous())
        self.route_batches(layer, None if self.per_tensor else self.group)

    def apply(self, layer, x, bias):
        rows = token_rows(x)
        out = self.routed(layer, rows)
        if out is None:
            out = w8a16_matmul(rows, layer.weight, layer.weight_scale, group=self.route_group)
        return layer_output(out, x, bias)
