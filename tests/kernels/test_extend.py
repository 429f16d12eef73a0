"""The paged extend kernel under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference: each request's new tokens over its cached prefix view, then causally over the view
of themselves, on the same awkward shapes as decode."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.attention import paged_decode_attention, paged_extend_attention
from breccia_sglang.kernels.attention.reference import paged_extend_attention_reference

from .pool import CASES, KV_HEADS, PagedPool, assert_matches_reference, assert_same_math, extend_case, on_device


@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", CASES)
def test_extend_matches_fp32_reference(batch, page_size, group, head_dim, dtype):
    gen = torch.Generator().manual_seed(batch * 1000 + page_size * 10 + group + 1)
    _, q, prefix, new, max_new = extend_case(batch, page_size, group, head_dim, dtype, gen)
    out = paged_extend_attention(q, prefix, new, max_new_tokens=max_new)
    ref = paged_extend_attention_reference(q, prefix, new)
    assert_matches_reference(out, ref, dtype)


def test_bf16_queries_past_fp16s_range_keep_their_values():
    # As in test_decode.py: bf16 query rows past fp16's range (2^16 times larger, with a softmax
    # scale 2^16 times smaller) take a power-of-two unit into the fp16 dots.
    gen = torch.Generator().manual_seed(22)
    _, q, prefix, new, max_new = extend_case(3, 16, 2, 64, torch.float32, gen)
    q = q.clone()
    q[::2, 1] *= 2.0**16  # every other new token's second head
    q = q.to(torch.bfloat16)
    sm_scale = 64**-0.5 * 2.0**-16
    out = paged_extend_attention(q, prefix, new, max_new, sm_scale=sm_scale)
    assert_matches_reference(out, paged_extend_attention_reference(q, prefix, new, sm_scale=sm_scale),
                             torch.bfloat16)


def test_extend_over_a_cached_prefix_equals_extending_the_whole_sequence():
    # A prefix hit (prefix from the cache, the rest new) and a recompute (everything new)
    # see the same FP8 K/V, so the last tokens' outputs agree.
    gen = torch.Generator().manual_seed(11)
    pool = PagedPool([90], 16, 64, gen)
    slots = pool.requests[0].slots
    q = on_device(torch.randn(90, KV_HEADS * 3, 64, generator=gen))
    whole = paged_extend_attention(q, pool.batch([slots[:0]]), pool.batch([slots]), max_new_tokens=90)
    hit = paged_extend_attention(q[64:], pool.batch([slots[:64]]), pool.batch([slots[64:]]), max_new_tokens=26)
    assert_same_math(hit, whole[64:])


def test_decode_equals_the_last_row_of_extend():
    gen = torch.Generator().manual_seed(5)
    pool = PagedPool([77], 64, 128, gen)
    slots = pool.requests[0].slots
    q = on_device(torch.randn(1, KV_HEADS * 8, 128, generator=gen))
    decode = paged_decode_attention(q, pool.batch([slots]), max_kv_splits=3,
                                    num_kv_splits=on_device(torch.tensor([3], dtype=torch.int32)))
    extend = paged_extend_attention(q, pool.batch([slots[:76]]), pool.batch([slots[76:]]), max_new_tokens=1)
    assert_same_math(decode, extend)


def test_prefix_and_new_views_of_different_pools_are_refused():
    gen = torch.Generator().manual_seed(6)
    one, other = PagedPool([20], 16, 64, gen), PagedPool([20], 16, 64, gen)
    q = on_device(torch.randn(4, KV_HEADS, 64, generator=gen))
    slots = one.requests[0].slots
    with pytest.raises(ValueError, match="different pool buffers"):
        paged_extend_attention(q, other.batch([slots[:16]]), one.batch([slots[16:]]), max_new_tokens=4)


@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", [CASES[1], CASES[2], CASES[6]])
def test_gpu_tile_sizes_match_the_reference_too(batch, page_size, group, head_dim, dtype, monkeypatch):
    # On a GPU extend takes 64-token tiles of keys and rows, so more of both are masked.
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    assert launch.gpu_tiles(torch.zeros(1))
    test_extend_matches_fp32_reference(batch, page_size, group, head_dim, dtype)
