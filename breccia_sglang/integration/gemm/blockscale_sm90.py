"""1x128 block FP8 on Hopper's blockwise FP8 GEMMs: torch's blockwise ``scaled_mm`` (cuBLASLt,
CUDA 12.9+), else FlashInfer's ``fp8_blockscale_gemm_sm90`` (DeepGEMM) where FlashInfer has it.

Both take breccia's 1 x 128 weight scales, (N, K / 128) fp32, without requantizing anything:
- torch in MN-major strides, converted once after loading: the layout of torch's own blockwise
  samples (``sample_inputs_scaled_mm_v2``: scales (rows, K / 128), rows contiguous). Its input
  is quantized as SGLang's FP8 linears do (``activation_quant``), in rows padded to a multiple
  of ``ROW_MULTIPLE``: cuBLASLt has no blockwise algorithm for a row count that is not a
  multiple of 4 (CUBLAS_STATUS_NOT_SUPPORTED on an H200).
- FlashInfer as they are (its "per-token" weight granularity, beside DeepSeek's 128 x 128); it
  quantizes the BF16 input itself, per token and 128 K.
SGLang's own dispatch sends 1 x 128 weight scales to neither.

Ranked above ``triton-block-fp8``: on an H200 (benchmarks/RESULTS.md) torch's backend ran every
Llama-3-8B linear faster than SGLang's Triton block kernel with our tuned configs from M = 8 to
2048 (1.1-1.7x) and within 1% of SGLang's own 128x128 kernel. FlashInfer's backend has not run on
a GPU here (a bare GPU machine cannot carry it): torch's, measured, goes first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import names
from ...errors import BrecciaCheckpointError
from ..sglang_params import fp8_params
from .activation_quant import quantize_input
from .base import GemmKernel, layer_output, needs_1x128_block_fp8, needs_gpu, token_rows
from .batch_routes import BatchRoutes

BLOCK = 128
N_MULTIPLE = 64  # FlashInfer's tile; torch's cuBLASLt path accepts it too
TORCH_BLOCKWISE_CUDA = (12, 9)  # cuBLASLt's first release with 1x128 blockwise scaling
# torch's backend pads the rows to a multiple of this: on an H200 (torch 2.11, CUDA 13.0) cuBLASLt
# found no blockwise algorithm for 1, 2, 3, 5, 6, 7, 9, 17 or 33 rows, and ran 4, 8, 12, 16 and 24.
ROW_MULTIPLE = 4


def flashinfer_gemm():
    """FlashInfer's ``fp8_blockscale_gemm_sm90``, or None where FlashInfer lacks it."""
    try:
        from flashinfer.gemm import fp8_blockscale_gemm_sm90
    except Exception:  # noqa: BLE001 - any import failure means: not this backend
        return None
    return fp8_blockscale_gemm_sm90


def torch_has_blockwise() -> bool:
    """torch's ``F.scaled_mm`` with 1 x 128 blockwise scales, built against CUDA 12.9+."""
    scaling = getattr(F, "ScalingType", None)
    if not hasattr(F, "scaled_mm") or not hasattr(scaling, "BlockWise1x128") or not torch.version.cuda:
        return False
    return tuple(int(part) for part in torch.version.cuda.split(".")[:2]) >= TORCH_BLOCKWISE_CUDA


def mn_major(scale: torch.Tensor) -> torch.Tensor:
    """(rows, K / 128) scales with the rows dimension contiguous, as cuBLASLt reads them: strides
    (1, rows), also for one row (``t().contiguous().t()`` keeps a single row's (K / 128, 1)
    strides, which torch refuses: "scale_a strides must be (1, 1)", seen on an H200 at M = 1)."""
    out = torch.empty_strided(scale.shape, (1, max(1, scale.shape[0])), dtype=scale.dtype, device=scale.device)
    return out.copy_(scale)


def torch_blockwise_matmul(x_codes: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                           weight_scale_mn_major: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(M, K) fp8 x (N, K) fp8 -> (M, N): x_scale (M, K / 128), weight_scale (N, K / 128) MN-major."""
    from torch.nn.functional import ScalingType, SwizzleType

    return F.scaled_mm(x_codes, weight.t(), mn_major(x_scale), ScalingType.BlockWise1x128,
                       weight_scale_mn_major, ScalingType.BlockWise1x128,
                       swizzle_a=SwizzleType.NO_SWIZZLE, swizzle_b=SwizzleType.NO_SWIZZLE, output_dtype=out_dtype)


class BlockscaleSm90Kernel(BatchRoutes, GemmKernel):
    """W8A8 1x128 block FP8 on Hopper: torch's cuBLASLt kernel, else FlashInfer's DeepGEMM one;
    decode- and prefill-sized batches on other routes where this GPU model's tuned file says so
    (``batch_routes``)."""

    name = names.GEMM_BLOCKSCALE_SM90
    priority = 85  # above triton-block-fp8 (80): measured faster on an H200, see the module's docstring

    @classmethod
    def why_not(cls, spec):
        if why := needs_1x128_block_fp8(spec):
            return why
        n, k = spec.out_features, spec.input_size_per_partition
        if k % BLOCK or n % N_MULTIPLE:
            return f"needs K % {BLOCK} and N % {N_MULTIPLE}; this layer is {n} x {k}"
        if spec.params_dtype != torch.bfloat16:
            return f"needs bfloat16 activations, not {spec.params_dtype} (FlashInfer's and cuBLASLt's kernels)"
        gpu = needs_gpu(spec, cls.name, 90, 90)
        if gpu or spec.simulated:  # a described H100 cannot be probed: SGLang's install brings FlashInfer
            return gpu
        if flashinfer_gemm() is None and not torch_has_blockwise():
            return (f"needs FlashInfer's fp8_blockscale_gemm_sm90 or torch's blockwise scaled_mm "
                    f"(CUDA {'.'.join(map(str, TORCH_BLOCKWISE_CUDA))}+; this torch: CUDA {torch.version.cuda})")
        return None

    def create_weights(self, layer, spec, weight_loader):
        fp8_params(layer, spec, weight_loader)

    def process_weights_after_loading(self, layer):
        if not layer.weight.is_contiguous():
            raise BrecciaCheckpointError(f"{self.name}: the loaded weight is not contiguous")
        self.flashinfer = None if torch_has_blockwise() else flashinfer_gemm()
        if self.flashinfer is None:  # once: the layout cuBLASLt reads
            layer.weight_scale = torch.nn.Parameter(mn_major(layer.weight_scale.data), requires_grad=False)
        self.route_batches(layer, BLOCK)

    def apply(self, layer, x, bias):
        rows = token_rows(x)
        out = self.routed(layer, rows)
        if out is None:
            out = self.w8a8(layer, rows, x.dtype)
        return layer_output(out, x, bias)

    def w8a8(self, layer, rows: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        if self.flashinfer is not None:
            return self.flashinfer(rows, layer.weight, None, layer.weight_scale, out_dtype=out_dtype)
        return torch_blockwise_linear(rows, layer.weight, layer.weight_scale, out_dtype)


def torch_blockwise_linear(rows: torch.Tensor, weight: torch.Tensor, weight_scale_mn_major: torch.Tensor,
                           out_dtype: torch.dtype, quantize=quantize_input) -> torch.Tensor:
    """(M, K) BF16 rows x the (N, K) fp8 weight on torch's backend: the rows padded with zeros to
    a multiple of ``ROW_MULTIPLE``, quantized per token and 128 K (``quantize(rows, 128)``),
    multiplied, the padding dropped."""
    m = rows.shape[0]
    padding = -m % ROW_MULTIPLE
    if padding:
        rows = F.pad(rows, (0, 0, 0, padding))
    codes, scales = quantize(rows, BLOCK)
    return torch_blockwise_matmul(codes, scales, weight, weight_scale_mn_major, out_dtype)[:m]
