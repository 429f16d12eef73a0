"""The paged decode kernel under TRITON_INTERPRET=1 (or compiled on a GPU) against its fp32
reference, on awkward shapes: batch 1 and 17, context lengths that are not multiples of the
page size, page sizes 1 / 16 / 64, GQA ratios 1 / 3 / 8, head_dim 64 and 128, fp32 and fp16."""

from __future__ import annotations

import pytest
import torch

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.attention import paged_decode_attention, write_kv_fp8
from breccia_sglang.kernels.attention.reference import paged_decode_attention_reference
from breccia_sglang.kvcache import PagedKV, quantize_kv

from .pool import (
    CASES,
    DEVICE,
    KV_HEADS,
    PagedPool,
    assert_matches_reference,
    assert_same_math,
    captured,
    context_lengths,
    on_device,
)


@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", CASES)
def test_decode_matches_fp32_reference(batch, page_size, group, head_dim, dtype):
    gen = torch.Generator().manual_seed(batch * 1000 + page_size * 10 + group)
    lengths = context_lengths(batch, page_size, gen)
    pool = PagedPool(lengths, page_size, head_dim, gen, shared_prefix_pages=1 if batch > 1 else 0)
    context = pool.contexts(torch.int32)  # SGLang's kv_indices may be int32 or int64
    q = on_device(torch.randn(batch, KV_HEADS * group, head_dim, generator=gen).to(dtype))
    # Uneven split counts, including more splits than a short context has tokens.
    splits = on_device(torch.randint(1, 5, (batch,), generator=gen, dtype=torch.int32))
    out = paged_decode_attention(q, context, num_kv_splits=splits, max_kv_splits=4)
    ref = paged_decode_attention_reference(q, context)
    assert_matches_reference(out, ref, dtype)


@pytest.mark.parametrize("gpu_tiles", [False, True])
def test_bf16_queries_past_fp16s_range_keep_their_values(gpu_tiles, monkeypatch):
    # fp16 / bf16 queries meet the FP8 codes in fp16 dots (so bf16 runs under the interpreter
    # too, whose bf16 dot is broken), each query row over a power-of-two unit that brings it
    # into fp16's range. Queries 2^16 times larger (up to ~2.6e5: fp16 ends at 65504) with a
    # softmax scale 2^16 times smaller are the same attention; without the units they are inf.
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", gpu_tiles)
    gen = torch.Generator().manual_seed(21)
    pool = PagedPool([90, 1, 33], 16, 64, gen)
    context = pool.contexts()
    q = torch.randn(3, KV_HEADS * 3, 64, generator=gen)
    q[:, 1] *= 2.0**16  # every request's second head
    q = on_device(q.to(torch.bfloat16))
    sm_scale = 64**-0.5 * 2.0**-16
    out = paged_decode_attention(q, context, sm_scale=sm_scale)
    assert_matches_reference(out, paged_decode_attention_reference(q, context, sm_scale=sm_scale), torch.bfloat16)


def test_decode_split_count_does_not_change_the_result():
    gen = torch.Generator().manual_seed(7)
    pool = PagedPool([700, 5, 257], 16, 64, gen)
    q = on_device(torch.randn(3, KV_HEADS * 3, 64, generator=gen))
    context = pool.contexts()
    one = paged_decode_attention(q, context, num_kv_splits=on_device(torch.ones(3, dtype=torch.int32)),
                                 max_kv_splits=8)
    many = paged_decode_attention(q, context, num_kv_splits=on_device(torch.full((3,), 8, dtype=torch.int32)),
                                  max_kv_splits=8)
    default = paged_decode_attention(q, context, max_kv_splits=8)  # 3, 1 and 2 splits by length
    # Same math, merged in a different order: fp32 rounding only.
    assert_same_math(one, many)
    assert_same_math(one, default)


def test_decode_reads_each_request_only_through_its_own_slots():
    # Overwriting slots no request references must not change any output.
    gen = torch.Generator().manual_seed(3)
    pool = PagedPool([40, 23], 16, 64, gen)
    context = pool.contexts()
    q = on_device(torch.randn(2, KV_HEADS, 64, generator=gen))
    before = paged_decode_attention(q, context)
    unused = torch.ones(pool.k_data.shape[0], dtype=torch.bool, device=DEVICE)
    unused[context.k.slots] = False
    for buf in (pool.k_data, pool.k_scale, pool.v_data, pool.v_scale):
        buf[unused] = 7 if buf.dtype == torch.uint8 else 1e6
    after = paged_decode_attention(q, context)
    assert torch.equal(before, after)


def test_decode_reads_only_the_batch_of_a_longer_indptr():
    # CUDA-graph replay passes SGLang's buffers sized for the largest captured batch: a batch
    # view may describe more sequences (and hold more slots) than the queries ask for.
    gen = torch.Generator().manual_seed(4)
    pool = PagedPool([33, 70, 9], 16, 64, gen)
    q = on_device(torch.randn(2, KV_HEADS * 2, 64, generator=gen))
    whole, first_two = pool.contexts(), pool.batch([v.slots for v in pool.requests[:2]])
    torch.testing.assert_close(paged_decode_attention(q, whole), paged_decode_attention(q, first_two), rtol=0, atol=0)


@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", [CASES[1], CASES[2], CASES[6]])
def test_gpu_tile_sizes_match_the_reference_too(batch, page_size, group, head_dim, dtype, monkeypatch):
    # On a GPU the launches take bigger tiles (16-row head tiles however small the GQA group),
    # so more rows are masked. Run that configuration here (a no-op on a GPU, which takes those
    # tiles anyway). tests/kernels/test_extend.py does the same for extend.
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    assert launch.gpu_tiles(torch.zeros(1))
    test_decode_matches_fp32_reference(batch, page_size, group, head_dim, dtype)


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_write_and_decode_replay_from_a_cuda_graph():
    # SGLang captures one decode step per batch size and replays it with new inputs copied into
    # the same buffers. So the kernels, and the views the backend builds around SGLang's
    # buffers inside the step, must take every length and slot from device memory (no host
    # syncs, no shapes read from tensor values): replays at two different context lengths must
    # match the eager reference.
    gen = torch.Generator().manual_seed(13)
    lengths, group, head_dim = [50, 130, 17], 4, 128
    pool = PagedPool([n + 1 for n in lengths], 16, head_dim, gen)
    slots = [view.slots for view in pool.requests]
    batch, q_heads = len(lengths), KV_HEADS * group
    indices = torch.zeros(sum(lengths) + batch, dtype=torch.int32, device=DEVICE)
    indptr = torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE)
    new_loc = torch.zeros(batch, dtype=torch.int64, device=DEVICE)
    q = torch.zeros(batch, q_heads, head_dim, device=DEVICE)
    k_new, v_new = (torch.zeros(batch, KV_HEADS, head_dim, device=DEVICE) for _ in range(2))
    splits = torch.full((batch,), 4, dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)
    part_out = torch.empty(batch, q_heads, 4, head_dim, device=DEVICE)
    part_lse = torch.empty(batch, q_heads, 4, device=DEVICE)

    def step():
        into = pool.kv(new_loc)
        write_kv_fp8(k_new, into.k)
        write_kv_fp8(v_new, into.v)
        context = PagedKV.of(pool.k_data, pool.k_scale, pool.v_data, pool.v_scale, indices, pool.page_size,
                             indptr=indptr)
        paged_decode_attention(q, context, num_kv_splits=splits, out=out, part_out=part_out, part_lse=part_lse)

    def fill(context):  # each request's cached tokens before this step's new one
        flat = torch.cat([s[:n + 1] for s, n in zip(slots, context)])
        indices[:len(flat)] = flat.to(torch.int32)
        indptr.copy_(torch.tensor([0, *[n + 1 for n in context]]).cumsum(0))
        new_loc.copy_(torch.stack([s[n] for s, n in zip(slots, context)]))
        for buffer in (q, k_new, v_new):
            buffer.copy_(torch.randn(buffer.shape, generator=gen))

    fill([n - 9 for n in lengths])
    graph, _ = captured(step)
    for context in ([n - 9 for n in lengths], lengths):
        fill(context)
        graph.replay()
        torch.cuda.synchronize()
        k_row, k_row_scale = quantize_kv(k_new.cpu())  # on CPU: exact division, as the kernel divides
        assert torch.equal(pool.k_data[new_loc].cpu(), k_row.view(torch.uint8))
        assert torch.equal(pool.k_scale[new_loc].cpu(), k_row_scale)
        ref = paged_decode_attention_reference(q, PagedKV.of(pool.k_data, pool.k_scale, pool.v_data, pool.v_scale,
                                                             indices, pool.page_size, indptr=indptr))
        assert_matches_reference(out, ref, torch.float32)
