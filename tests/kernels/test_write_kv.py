"""The FP8 KV write kernel under TRITON_INTERPRET=1 (or compiled on a GPU): bit for bit the
bytes of the torch path, breccia's cast (``kvcache.store_kv``)."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.kernels.attention import paged_decode_attention, write_kv_fp8
from breccia_sglang.kernels.attention.reference import write_kv_fp8_reference
from breccia_sglang.kvcache import PagedKV, PagedScaledTensor, quantize_kv

from .pool import KV_HEADS, on_device


def test_write_kernel_encodes_every_e4m3_value_tie_and_carry_like_torch():
    # Every finite e4m3 value, the midpoints between neighbours (round-half-even ties) and the
    # floats either side of them, times a scale, so x / scale lands exactly there. The
    # interpreter's own fp32 -> fp8 cast gets the carries wrong (1.968 -> -1.0); ours may not.
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite() & (grid >= 0)].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    values = torch.cat([grid, mids, torch.nextafter(mids, grid[1:]), torch.nextafter(mids, grid[:-1]),
                        torch.tensor([1.968, 2.0**-10, 3 * 2.0**-11, 1e-30, 447.9])])
    values = torch.cat([values, -values])
    head_dim = 64
    rows = -(-values.numel() // (head_dim - 1))
    x = torch.zeros(rows * (head_dim - 1))
    x[:values.numel()] = values
    # Column 0 holds 448 in every row, so each row's scale is exactly 1.0.
    x = torch.cat([torch.full((rows, 1), 448.0), x.view(rows, head_dim - 1)], dim=1).view(rows, 1, head_dim)
    x, loc = on_device(x), on_device(torch.arange(rows))
    data, scale = on_device(torch.zeros(rows, 1, head_dim, dtype=torch.uint8)), on_device(torch.zeros(rows, 1))
    write_kv_fp8(x, PagedScaledTensor(data, scale, loc))
    assert torch.equal(scale, torch.ones_like(scale))
    assert torch.equal(data, x.to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 80])
def test_write_kernel_equals_the_torch_path_bit_for_bit(dtype, head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    tokens = 37
    x = torch.randn(tokens, KV_HEADS, head_dim, generator=gen) * torch.logspace(-6, 3, tokens)[:, None, None]
    x[5, 1] = 0.0  # an all-zero row: breccia floors amax at 1e-10, so the scale stays finite
    x[6, 0, :4] = torch.tensor([1.968, -1.968, 2.0**-10, 0.0])
    x = on_device(x.to(dtype))
    loc = on_device(torch.randperm(100, generator=gen)[:tokens])
    kernel = on_device(torch.zeros(100, KV_HEADS, head_dim, dtype=torch.uint8)), on_device(torch.zeros(100, KV_HEADS))
    torch_path = torch.zeros(100, KV_HEADS, head_dim, dtype=torch.uint8), torch.zeros(100, KV_HEADS)
    write_kv_fp8(x, PagedScaledTensor(*kernel, loc))
    # The torch path on CPU: breccia's cast divides amax by 448 exactly there, as the kernel does
    # (div_rn); torch on CUDA divides by a Python scalar through its reciprocal, 1 ulp off at times.
    write_kv_fp8_reference(x.cpu(), PagedScaledTensor(*torch_path, loc.cpu()))
    assert torch.equal(kernel[0].cpu(), torch_path[0])
    assert torch.equal(kernel[1].cpu(), torch_path[1])
    # Slots not written stay untouched.
    untouched = on_device(torch.ones(100, dtype=torch.bool))
    untouched[loc] = False
    assert not kernel[0][untouched].any() and not kernel[1][untouched].any()


def test_write_kernel_takes_flat_strided_input_and_float8_buffers():
    # SGLang hands K as a slice of the fused qkv projection: rows are strided.
    gen = torch.Generator().manual_seed(1)
    qkv = on_device(torch.randn(9, (4 + 2 * KV_HEADS) * 64, generator=gen))
    k = qkv[:, 4 * 64:(4 + KV_HEADS) * 64].view(9, KV_HEADS, 64)
    assert not k.is_contiguous()
    data = on_device(torch.zeros(16, KV_HEADS, 64, dtype=torch.float8_e4m3fn))
    scale = on_device(torch.zeros(16, KV_HEADS))
    loc = on_device(torch.arange(3, 12))
    write_kv_fp8(k, PagedScaledTensor(data, scale, loc))
    expected_data, expected_scale = quantize_kv(k.cpu())  # exact division on CPU (see above)
    assert torch.equal(data[loc].view(torch.uint8).cpu(), expected_data.view(torch.uint8))
    assert torch.equal(scale[loc].cpu(), expected_scale)


def test_launchers_name_the_bad_argument():
    data, scale = torch.zeros(8, KV_HEADS, 64, dtype=torch.uint8), torch.zeros(8, KV_HEADS)
    with pytest.raises(ValueError, match=r"scale must be \(8, 2\) float32"):
        PagedScaledTensor(data, scale[:, :1], torch.arange(2))
    with pytest.raises(ValueError, match="slots must be 1-D int64 or int32"):
        PagedScaledTensor(data, scale, torch.arange(2.0))
    with pytest.raises(ValueError, match=r"into.data: expected shape \('\*', 3, 64\)"):
        write_kv_fp8(torch.zeros(2, 3, 64), PagedScaledTensor(data, scale, torch.arange(2)))
    with pytest.raises(ValueError, match=r"into.slots: expected shape \(3,\)"):
        write_kv_fp8(torch.zeros(3, KV_HEADS, 64), PagedScaledTensor(data, scale, torch.arange(2)))
    context = PagedKV.of(data, scale, data, scale, torch.tensor([1]), indptr=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not a multiple"):
        paged_decode_attention(torch.zeros(1, 3, 64), context)
    with pytest.raises(ValueError, match="expected batch views"):
        paged_decode_attention(torch.zeros(1, 2, 64), PagedKV.of(data, scale, data, scale, torch.tensor([1])))
    with pytest.raises(TypeError, match="expected a PagedKV"):
        paged_decode_attention(torch.zeros(1, 2, 64), (context.k, context.v))
