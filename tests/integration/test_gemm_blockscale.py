"""Hopper's 1x128 blockwise GEMM (``blockscale-sm90``) without a Hopper: the call it makes to
torch's ``F.scaled_mm`` is well formed (the meta device runs no kernel), the scales get
cuBLASLt's MN-major strides once after loading, the rows are padded as cuBLASLt needs, and
FlashInfer's kernel (where torch's backend is missing) gets breccia's scales as stored. The GPU maths itself is bench_gemm.py's to check, against the W8A8 reference."""

from __future__ import annotations

import breccia
import pytest
import torch
import torch.nn.functional as F

from breccia_sglang.format import make_recipe
from breccia_sglang.integration.gemm import blockscale_sm90 as hopper

M, N, K = 7, 192, 384  # N: 3 x 64, K: 3 x 128; M odd


def layer_with(weight: torch.Tensor, scale: torch.Tensor) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
    return layer


def breccia_1x128(n: int, k: int) -> breccia.ScaledTensor:
    return breccia.cast(torch.randn(n, k, generator=torch.Generator().manual_seed(0)),
                        make_recipe("fp8-block", block_k=128))


def test_mn_major_keeps_values_and_makes_rows_contiguous():
    scale = torch.arange(12.0).view(4, 3)
    out = hopper.mn_major(scale)
    assert torch.equal(out, scale) and out.shape == (4, 3) and out.stride() == (1, 4)


@pytest.mark.skipif(not hasattr(F, "scaled_mm"), reason="this torch has no F.scaled_mm (torch < 2.10)")
def test_the_torch_call_is_well_formed():
    """The meta device checks the call: argument names, enums, operand shapes and the output.
    Whether cuBLASLt accepts the scale grid only a Hopper can say (the C++ check runs on CUDA)."""
    meta = dict(device="meta")
    x_codes = torch.empty(M, K, dtype=torch.float8_e4m3fn, **meta)
    weight = torch.empty(N, K, dtype=torch.float8_e4m3fn, **meta)
    out = hopper.torch_blockwise_matmul(x_codes, torch.empty(M, K // 128, **meta), weight,
                                        hopper.mn_major(torch.empty(N, K // 128, **meta)), torch.bfloat16)
    assert out.shape == (M, N) and out.dtype == torch.bfloat16
    # torch 2.14 says the shapes "cannot be multiplied"; torch 2.11 (the GPU machine's) names the scale shape
    with pytest.raises(RuntimeError, match="cannot be multiplied|must have shape"):
        hopper.torch_blockwise_matmul(x_codes[:, :128], torch.empty(M, 1, **meta), weight,
                                      hopper.mn_major(torch.empty(N, K // 128, **meta)), torch.bfloat16)


def test_without_flashinfer_the_scales_become_mn_major_once(monkeypatch):
    st = breccia_1x128(N, K)
    layer = layer_with(st.data.view(torch.float8_e4m3fn), st.scale.clone())
    monkeypatch.setattr(hopper, "flashinfer_gemm", lambda: None)
    kernel = hopper.BlockscaleSm90Kernel()
    kernel.process_weights_after_loading(layer)
    assert kernel.flashinfer is None
    assert torch.equal(layer.weight_scale, st.scale) and layer.weight_scale.stride() == (1, N)


def test_torch_first_where_it_has_blockwise_scaled_mm(monkeypatch):
    st = breccia_1x128(N, K)
    layer = layer_with(st.data.view(torch.float8_e4m3fn), st.scale.clone())
    monkeypatch.setattr(hopper, "flashinfer_gemm", lambda: pytest.fail("FlashInfer asked for"))
    monkeypatch.setattr(hopper, "torch_has_blockwise", lambda: True)
    kernel = hopper.BlockscaleSm90Kernel()
    kernel.process_weights_after_loading(layer)
    assert kernel.flashinfer is None and layer.weight_scale.stride() == (1, N)


@pytest.mark.parametrize("m", [1, 4, 7, 9])
def test_torchs_backend_pads_the_rows_to_a_multiple_of_4_and_drops_them_after(monkeypatch, m):
    # cuBLASLt has no blockwise algorithm for a row count that is not a multiple of 4 (seen on an
    # H200): padded rows are zeros, quantized with the rest, and their outputs are not returned.
    st = breccia_1x128(N, K)
    rows = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).bfloat16()
    seen = []

    def matmul(codes, scales, weight, weight_scale, out_dtype):
        seen.append(codes)
        return codes.float() @ weight.float().T

    monkeypatch.setattr(hopper, "torch_blockwise_matmul", matmul)
    out = hopper.torch_blockwise_linear(rows, st.data.view(torch.float8_e4m3fn), hopper.mn_major(st.scale),
                                        torch.bfloat16)
    padded = seen[0]
    assert hopper.ROW_MULTIPLE == 4 and padded.shape == (-(-m // 4) * 4, K)
    assert not padded[m:].float().any()
    # The same rows' products (fp32 sums may group differently for m and the padded rows).
    assert out.shape == (m, N)
    torch.testing.assert_close(out, padded[:m].float() @ st.data.float().T, rtol=1e-6, atol=1e-6 * out.abs().max())


def test_with_flashinfer_the_kernel_gets_breccias_scales_as_stored(monkeypatch):
    st = breccia_1x128(N, K)
    layer = layer_with(st.data.view(torch.float8_e4m3fn), st.scale.clone())
    calls = []

    def flashinfer_like(x, weight, x_scale, weight_scale, out_dtype):
        calls.append((x.shape, weight is layer.weight, x_scale, weight_scale.stride(), out_dtype))
        return torch.zeros(x.shape[0], weight.shape[0], dtype=out_dtype)

    monkeypatch.setattr(hopper, "flashinfer_gemm", lambda: flashinfer_like)
    monkeypatch.setattr(hopper, "torch_has_blockwise", lambda: False)  # torch's backend goes first where it is
    kernel = hopper.BlockscaleSm90Kernel()
    kernel.process_weights_after_loading(layer)
    bias = torch.arange(N, dtype=torch.bfloat16)
    out = kernel.apply(layer, torch.zeros(2, 3, K, dtype=torch.bfloat16), bias)
    # BF16 rows in (FlashInfer quantizes them itself), (N, K / 128) row-major scales, bias added.
    assert calls == [((6, K), True, None, (K // 128, 1), torch.bfloat16)]
    assert out.shape == (2, 3, N) and torch.equal(out[1, 2], bias)


def test_a_weight_that_is_not_contiguous_is_refused_by_name():
    st = breccia_1x128(N, K)
    layer = layer_with(st.data.view(torch.float8_e4m3fn).t().contiguous().t(), st.scale)
    with pytest.raises(Exception, match="blockscale-sm90: the loaded weight is not contiguous"):
        hopper.BlockscaleSm90Kernel().process_weights_after_loading(layer)


ON_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) and hopper.torch_has_blockwise()


@pytest.mark.skipif(not ON_HOPPER, reason="torch's blockwise scaled_mm needs a Hopper and CUDA 12.9+ "
                                          "(scripts/gpu_checks.sh runs this on a lent H200)")
@pytest.mark.parametrize("m", [1, 2, 3, 7, 8, 9, 17, 33])
def test_torchs_backend_on_a_hopper_matches_the_w8a8_reference_for_any_row_count(m):
    from breccia_sglang.weights import quantize_activations_fp8
    from breccia_sglang.weights.w8a8 import w8a8_reference_linear

    st = breccia_1x128(N, K)
    rows = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).bfloat16()
    # SGLang's activation quantization is a JIT CUDA kernel a bare GPU machine cannot build:
    # breccia's torch formula quantizes the same way (per token and 128 K).
    out = hopper.torch_blockwise_linear(rows.cuda(), st.data.view(torch.float8_e4m3fn).cuda(),
                                        hopper.mn_major(st.scale.cuda()), torch.bfloat16, quantize_activations_fp8)
    ref = w8a8_reference_linear(rows, st.data, st.scale, st.recipe, st.layout, group=128)
    # The same FP8 operands and scales; cuBLASLt sums in fp32 in its own order and rounds the
    # output to bf16 (2^-8 relative): 1e-2 of the output's norm bounds both.
    assert out.shape == (m, N) and torch.isfinite(out).all()
    assert (out.float().cpu() - ref).norm() <= 1e-2 * ref.norm()
