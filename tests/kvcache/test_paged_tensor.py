"""PagedScaledTensor: views of pool storage that never move KV or scale bytes."""

from __future__ import annotations

import breccia
import pytest
import torch

from breccia_sglang.kvcache import PagedScaledTensor, dequantize_kv, quantize_kv

HEADS, HEAD_DIM, PAGE = 3, 64, 16


def _pool(num_pages=8, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(num_pages * PAGE, HEADS, HEAD_DIM)
    x[:, :, 7] *= 40.0  # an outlier channel, like real keys
    data, scale = quantize_kv(x)
    return x, data, scale


def test_quantize_kv_is_breccia_block_scaling_per_token_and_head():
    x, data, scale = _pool()
    assert data.dtype == torch.float8_e4m3fn and data.shape == x.shape
    assert scale.shape == (x.shape[0], HEADS) and scale.dtype == torch.float32
    # The dequant multiplier is amax / 448 of each (token, head) row: breccia's recipe.
    torch.testing.assert_close(scale, x.abs().amax(-1) / 448.0)
    expected = breccia.dequantize(breccia.cast(x, breccia.Float8BlockScaling(block_k=HEAD_DIM)))
    assert torch.equal(dequantize_kv(data, scale), expected)
    # e4m3 keeps 3 mantissa bits: relative error per element <= 2^-4 of the row's amax.
    err = (dequantize_kv(data, scale) - x).abs().amax(-1) / x.abs().amax(-1)
    assert float(err.max()) <= 2**-4


def test_from_pages_maps_tokens_to_slots():
    _, data, scale = _pool()
    view = PagedScaledTensor.from_pages(data, scale, torch.tensor([5, 2]), PAGE, start=3, length=20)
    expected = list(range(5 * PAGE + 3, 6 * PAGE)) + list(range(2 * PAGE, 2 * PAGE + 7))
    assert view.slots.tolist() == expected
    assert view.shape == (20, HEADS, HEAD_DIM) and view.page_ids().tolist() == [5, 2]


def test_views_of_views_share_storage_and_agree_with_direct_views():
    _, data, scale = _pool()
    view = PagedScaledTensor.from_pages(data, scale, torch.tensor([1, 4, 6]), PAGE)
    inner = view[10:40][5:20]
    assert inner.slots.tolist() == view.slots[15:30].tolist()
    assert inner.shares_storage_with(view)
    assert inner.data.data_ptr() == data.data_ptr() and inner.scale.data_ptr() == scale.data_ptr()
    assert inner.slots.untyped_storage().data_ptr() == view.slots.untyped_storage().data_ptr()
    joined = PagedScaledTensor.cat([view[:16], view[32:]])
    assert joined.page_ids().tolist() == [1, 6] and joined.shares_storage_with(view)
    assert torch.equal(joined.dequantize(), torch.cat([view[:16].dequantize(), view[32:].dequantize()]))


def test_materialize_is_a_breccia_scaled_tensor_that_dequantizes_like_the_view():
    x, data, scale = _pool()
    view = PagedScaledTensor.from_pages(data, scale, torch.tensor([3, 0, 7]), PAGE, start=5, length=33)
    st = view.materialize()
    assert isinstance(st, breccia.ScaledTensor)
    assert st.recipe == breccia.Float8BlockScaling(block_k=HEAD_DIM) and st.layout == breccia.PerBlockK(HEAD_DIM)
    assert st.data.data_ptr() != data.data_ptr()  # the one copy
    assert torch.equal(breccia.dequantize(st), view.dequantize())
    # Same bound as above: e4m3 rounding, relative to each (token, head) row's amax.
    row_amax = x[view.slots].abs().amax(-1, keepdim=True)
    assert float(((view.dequantize() - x[view.slots]).abs() / row_amax).max()) <= 2**-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": torch.zeros(16, 3, 64)}, "float8_e4m3fn"),
        ({"scale": torch.zeros(16, 2)}, r"scale must be \(16, 3\) float32"),
        ({"slots": torch.tensor([0, 16])}, r"slots must lie in \[0, 16\)"),
        ({"slots": torch.tensor([0.0, 1.0])}, "slots must be 1-D int64 or int32"),
        ({"slots": torch.tensor([[0, 1]])}, "slots must be 1-D int64 or int32"),
        ({"page_size": 5}, "page_size 5 must divide"),
    ],
)
def test_construction_checks_invariants(kwargs, message):
    args = {"data": torch.zeros(16, 3, 64, dtype=torch.float8_e4m3fn), "scale": torch.zeros(16, 3),
            "slots": torch.tensor([0, 1]), "page_size": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PagedScaledTensor(**args)


def test_cat_refuses_views_of_different_pools():
    _, d1, s1 = _pool(seed=1)
    _, d2, s2 = _pool(seed=2)
    a = PagedScaledTensor(d1, s1, torch.arange(4))
    b = PagedScaledTensor(d2, s2, torch.arange(4))
    with pytest.raises(ValueError, match="same pool storage"):
        PagedScaledTensor.cat([a, b])


def test_the_package_exports_the_view_types():
    import breccia_sglang
    from breccia_sglang import PagedKV as exported_kv
    from breccia_sglang import PagedScaledTensor as exported

    assert exported is PagedScaledTensor and exported_kv is breccia_sglang.kvcache.PagedKV


def test_a_batch_view_is_its_sequences_views_joined():
    _, data, scale = _pool()
    requests = [PagedScaledTensor.from_pages(data, scale, torch.tensor(pages), PAGE, start=start, length=n)
                for pages, start, n in (([6, 1], 3, 20), ([2], 0, 1), ([0, 4, 7], 9, 35))]
    batch = PagedScaledTensor.batch(requests)
    assert batch.is_ragged and batch.num_sequences == 3 and batch.indptr.tolist() == [0, 20, 21, 56]
    assert batch.shape == (56, HEADS, HEAD_DIM) and batch.shares_storage_with(requests[0])
    for b, request in enumerate(requests):
        assert torch.equal(batch.sequence(b).slots, request.slots)
    assert torch.equal(batch.dequantize(), torch.cat([r.dequantize() for r in requests]))
    assert torch.equal(batch.materialize().data.view(torch.uint8),
                       torch.cat([r.materialize().data for r in requests]).view(torch.uint8))
    with pytest.raises(TypeError, match="one-sequence views"):
        batch[0:4]
    with pytest.raises(IndexError, match="sequence 3 outside"):
        batch.sequence(3)


def test_a_batch_view_takes_sglangs_indptr_and_indices_as_they_are():
    # SGLang's attention metadata: kv_indptr (int32) and kv_indices (int64), the latter possibly a
    # buffer longer than the batch needs (CUDA-graph replay). The view keeps both tensors: no copy.
    _, data, scale = _pool()
    kv_indptr = torch.tensor([0, 5, 5, 12], dtype=torch.int32)
    kv_indices = torch.arange(40, 60)  # 20 slots, 12 in use
    view = PagedScaledTensor(data, scale, kv_indices, PAGE, indptr=kv_indptr)
    assert view.slots is kv_indices and view.indptr is kv_indptr
    assert len(view) == 12 and view.sequence(1).shape == (0, HEADS, HEAD_DIM)
    assert view.sequence(2).slots.tolist() == list(range(45, 52))
    with pytest.raises(ValueError, match="indptr ends at token 30, past the 20 slots"):
        PagedScaledTensor(data, scale, kv_indices, PAGE, indptr=torch.tensor([0, 30]))
    with pytest.raises(ValueError, match="slots must lie in"):
        PagedScaledTensor(data, scale, torch.tensor([1, 10**6]), PAGE, indptr=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="indptr must be 1-D"):
        PagedScaledTensor(data, scale, kv_indices, PAGE, indptr=torch.tensor([0.0, 1.0]))


def test_store_kv_writes_data_and_scales_through_a_view():
    from breccia_sglang.kvcache import store_kv

    x, data, scale = _pool()
    data, scale = torch.zeros_like(data), torch.zeros_like(scale)
    into = PagedScaledTensor(data, scale, torch.tensor([9, 3, 30]))
    store_kv(x[:3], into)
    assert torch.equal(into.dequantize(), dequantize_kv(*quantize_kv(x[:3])))
    assert not data.view(torch.uint8)[[0, 1, 2]].any() and not scale[[0, 1, 2]].any()
    with pytest.raises(ValueError, match="one-sequence view"):
        store_kv(x[:3], PagedScaledTensor.batch([into]))
