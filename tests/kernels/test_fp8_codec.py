"""The two E4M3 decodes inside the kernels, the native conversion (sm_89+) and integer bit moves
(older GPUs, ROCm), and the launch-time choice between them."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.attention import paged_decode_attention, paged_extend_attention
from breccia_sglang.kernels.attention.fp8_codec import e4m3_decode
from breccia_sglang.kernels.attention.reference import (
    paged_decode_attention_reference,
    paged_extend_attention_reference,
)

from .pool import CASES, DEVICE, KV_HEADS, assert_matches_reference, extend_case, on_device

NATIVE_FP8_HERE = launch.native_fp8_on(torch.device(DEVICE))
DECODE_PATHS = [False, True] if NATIVE_FP8_HERE else [False]  # native cannot compile before sm_89


@triton.jit
def _decode_codes_kernel(codes_ptr, out_ptr, NATIVE: tl.constexpr):
    i = tl.arange(0, 256)
    tl.store(out_ptr + i, e4m3_decode(tl.load(codes_ptr + i), out_ptr.dtype.element_ty, NATIVE))


@pytest.mark.parametrize("native", DECODE_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_e4m3_decode_gives_torchs_value_for_every_code(native, dtype):
    codes = on_device(torch.arange(256, dtype=torch.uint8))
    expected = codes.view(torch.float8_e4m3fn).to(dtype)
    out = on_device(torch.empty(256, dtype=dtype))
    _decode_codes_kernel[(1,)](codes, out, NATIVE=native)
    nan = expected.isnan()
    assert nan.sum() == 2  # 0x7F and 0xFF
    # The bits, so -0.0 (0x80) and the subnormals (exponent field 0) are checked exactly.
    int_type = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(out[~nan].view(int_type), expected[~nan].view(int_type))
    # No cache row holds the NaN codes (the write kernel zeroes NaN and saturates at 448).
    # The interpreter's native conversion reads them as +-480; a GPU's and the bit moves give NaN.
    if not (native and DEVICE == "cpu"):
        assert out[nan].isnan().all()


@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", [CASES[1], CASES[3]])
def test_attention_through_the_integer_fp8_decode_equals_the_native_one(batch, page_size, group, head_dim,
                                                                        dtype, monkeypatch):
    # What a GPU before sm_89 runs. Both decodes give every K/V element the same value, so
    # the attention outputs are equal bit for bit where the native one exists, and match the
    # fp32 reference either way.
    gen = torch.Generator().manual_seed(batch + page_size + group)
    pool, q_new, prefix, new, max_new = extend_case(batch, page_size, group, head_dim, dtype, gen)
    q = on_device(torch.randn(batch, KV_HEADS * group, head_dim, generator=gen).to(dtype))
    context = pool.contexts()

    def both_kernels():
        return paged_decode_attention(q, context), paged_extend_attention(q_new, prefix, new, max_new_tokens=max_new)

    monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", True)
    assert not launch.native_fp8_decode(q)
    integer = both_kernels()
    assert_matches_reference(integer[0], paged_decode_attention_reference(q, context), dtype)
    assert_matches_reference(integer[1], paged_extend_attention_reference(q_new, prefix, new), dtype)
    if NATIVE_FP8_HERE:
        monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", False)
        native = both_kernels()
        assert torch.equal(integer[0], native[0]) and torch.equal(integer[1], native[1])


@pytest.mark.parametrize("capability,native", [((7, 5), False), ((8, 0), False), ((8, 6), False),
                                               ((8, 9), True), ((9, 0), True), ((10, 0), True), ((12, 0), True)])
def test_native_fp8_decode_is_chosen_by_compute_capability(capability, native, monkeypatch):
    # torch.device("cuda:1") exists without a GPU; only the capability lookup is replaced.
    monkeypatch.setattr(launch, "_cuda_capability", lambda index: capability if index == 1 else None)
    assert launch.native_fp8_on(torch.device("cuda:1")) is native
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm builds report AMD GPUs as "cuda" too
    assert launch.native_fp8_on(torch.device("cuda:1")) is False
