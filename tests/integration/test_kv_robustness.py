"""NaN, inf and huge activations written to the FP8 KV cache: the torch path and the Triton
write kernel (under TRITON_INTERPRET=1) treat them alike, every scale stays finite, and no
NaN reaches another token's or another request's attention."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.integration.attention.torch_backend import ViewReader
from breccia_sglang.kernels.attention import paged_decode_attention, paged_extend_attention, write_kv_fp8
from breccia_sglang.kvcache import PagedKV, PagedScaledTensor, dequantize_kv, quantize_kv, store_kv
from breccia_sglang.kvcache.quant import KV_ABS_MAX

HEADS, DIM = 2, 64
HOSTILE = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "huge": 3e38,
    "fp16-overflow": 1e6,
}


def poisoned_rows(value: float, gen: torch.Generator) -> torch.Tensor:
    """(6, HEADS, DIM) ordinary rows; row 2 head 1 holds ``value`` in two channels, row 4 is all ``value``."""
    x = torch.randn(6, HEADS, DIM, generator=gen)
    x[2, 1, [3, 40]] = value
    x[4] = value
    return x


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_path_and_write_kernel_store_the_same_safe_bytes(kind, dtype):
    gen = torch.Generator().manual_seed(0)
    x = poisoned_rows(HOSTILE[kind], gen).to(dtype)  # in fp16, 1e6 and 3e38 are already inf
    loc = torch.tensor([9, 1, 4, 7, 2, 12])
    kernel = torch.zeros(16, HEADS, DIM, dtype=torch.uint8), torch.zeros(16, HEADS)
    torch_path = kernel[0].clone(), kernel[1].clone()
    write_kv_fp8(x, PagedScaledTensor(*kernel, loc))
    store_kv(x, PagedScaledTensor(*torch_path, loc))
    assert torch.equal(kernel[0], torch_path[0]) and torch.equal(kernel[1], torch_path[1])

    data, scale = kernel
    assert torch.isfinite(scale).all() and scale.max() <= KV_ABS_MAX / 448
    values = dequantize_kv(data[loc].view(torch.float8_e4m3fn), scale[loc])
    assert torch.isfinite(values).all() and values.abs().max() <= KV_ABS_MAX * (1 + 1e-7)
    # Rows that held nothing hostile are stored exactly as breccia would store them.
    clean = [0, 1, 3, 5]
    expected_data, expected_scale = quantize_kv(x[clean].float())
    assert torch.equal(data[loc[clean]], expected_data.view(torch.uint8))
    assert torch.equal(scale[loc[clean]], expected_scale)


def test_nan_is_stored_as_zero_and_infinities_saturate():
    x = torch.zeros(1, 1, DIM)
    x[0, 0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    x[0, 0, 3] = 1.0
    data, scale = quantize_kv(x)
    values = dequantize_kv(data, scale)[0, 0]
    # scale = fl(65504 / 448), so 448 * scale is 65504 to within fp32 rounding.
    assert values[0] == 0
    torch.testing.assert_close(values[1:3], torch.tensor([KV_ABS_MAX, -KV_ABS_MAX]), rtol=1e-7, atol=0)
    # Beside a saturated channel, small values fall in e4m3's subnormal steps (2^-9 of the
    # scale, ~0.29 here): 1.0 survives only to within half a step.
    assert abs(values[3] - 1.0) <= scale[0, 0] * 2**-10


def test_a_poisoned_token_leaves_other_requests_untouched_and_its_own_finite():
    gen = torch.Generator().manual_seed(1)
    k_data, v_data = torch.zeros(64, HEADS, DIM, dtype=torch.uint8), torch.zeros(64, HEADS, DIM, dtype=torch.uint8)
    k_scale, v_scale = torch.zeros(64, HEADS), torch.zeros(64, HEADS)
    slots = torch.arange(1, 41)
    keys, values = torch.randn(40, HEADS, DIM, generator=gen), torch.randn(40, HEADS, DIM, generator=gen)
    buffers = (k_data, k_scale, v_data, v_scale)

    def views(token_slots, indptr=None):
        return PagedKV.of(*buffers, token_slots, indptr=None if indptr is None else torch.tensor(indptr, dtype=torch.int32))

    written = views(slots)
    write_kv_fp8(keys, written.k)
    write_kv_fp8(values, written.v)
    # Request 0 reads slots 1..20, request 1 slots 21..40. Baseline outputs:
    context, q = views(slots, [0, 20, 40]), torch.randn(2, HEADS * 2, DIM, generator=gen)
    before = paged_decode_attention(q, context)
    # A bad token overwrites slot 5 (request 0) with NaN keys and inf values.
    bad_k, bad_v = torch.full((1, HEADS, DIM), float("nan")), torch.full((1, HEADS, DIM), float("inf"))
    bad = views(torch.tensor([5]))
    write_kv_fp8(bad_k, bad.k)
    write_kv_fp8(bad_v, bad.v)
    after = paged_decode_attention(q, context)
    assert torch.isfinite(after).all()
    assert torch.equal(after[1], before[1])  # the other request does not see it at all
    # Extend over the same prefix (a later turn) stays finite too.
    extended = paged_extend_attention(q[:1], views(slots[:19], [0, 19]), views(slots[19:20], [0, 1]),
                                      max_new_tokens=1)
    assert torch.isfinite(extended).all()
    # The torch backend's reads (through the views) give the same finite values.
    gathered = ViewReader(lambda s: PagedScaledTensor(v_data, v_scale, s))[torch.tensor([5])]
    assert torch.isfinite(gathered).all()
    torch.testing.assert_close(gathered.abs().max(), torch.tensor(KV_ABS_MAX), rtol=1e-7, atol=0)
