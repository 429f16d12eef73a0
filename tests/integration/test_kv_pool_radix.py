"""BrecciaFP8KVPool with SGLang's real allocators and RadixCache, on CPU.

The property test drives random insert / match / lock / unlock / evict sequences through
the real prefix tree and checks after every step that no referenced page is free, no page
leaks, every cached token's K/V (data and scale) is exactly what was written for that
prefix, and that a prefix hit writes no KV or scale byte.
"""

from __future__ import annotations

from array import array

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

from breccia_sglang.kvcache import PagedScaledTensor, dequantize_kv, quantize_kv
from breccia_sglang.integration.kv_pool import BrecciaFP8KVPool
from breccia_sglang.kvcache import cell_bytes

HEADS, HEAD_DIM, SIZE = 2, 16, 48  # a small pool, so inserts must evict


class CountingPool(BrecciaFP8KVPool):
    """Counts the K/V and scale bytes every write stores (to show prefix hits store none)."""

    bytes_written = 0

    def set_kv_buffer(self, layer, loc_info, cache_k, cache_v, *args, **kwargs):
        n = int(loc_info.numel())
        self.bytes_written += 2 * n * HEADS * (HEAD_DIM + 4)
        return super().set_kv_buffer(layer, loc_info, cache_k, cache_v, *args, **kwargs)


def _build(page_size: int):
    pool = CountingPool(SIZE, page_size, torch.float32, HEADS, HEAD_DIM, 1, "cpu", False)
    if page_size == 1:
        allocator = TokenToKVPoolAllocator(SIZE, torch.float32, "cpu", pool, False)
    else:
        allocator = PagedTokenToKVPoolAllocator(SIZE, page_size, torch.float32, "cpu", pool, False)
    tree = RadixCache(CacheInitParams(disable=False, req_to_token_pool=None,
                                      token_to_kv_pool_allocator=allocator, page_size=page_size))
    return pool, allocator, tree


def _kv_for(prefix: tuple) -> torch.Tensor:
    """The K (and, negated, V) a model would write for the last token of ``prefix``."""
    g = torch.Generator().manual_seed(hash(prefix) & 0x7FFFFFFF)
    x = torch.randn(HEADS, HEAD_DIM, generator=g)
    x[:, 3] *= 30.0  # outlier channel
    return x


def _free_slots(allocator, page_size):
    pages = allocator.free_pages
    if page_size == 1:
        return set(pages.tolist())
    return {p * page_size + o for p in pages.tolist() for o in range(page_size)}


def _path(node):
    """The tree nodes from the root's child down to ``node``."""
    path = []
    while node.parent is not None:
        path.append(node)
        node = node.parent
    return path[::-1]


def _walk(node, prefix=()):
    for child in node.children.values():
        tokens = prefix + tuple(child.key.token_ids)
        yield child, prefix, tokens
        yield from _walk(child, tokens)


class Model:
    """Drives the real tree the way SGLang's scheduler checkpoints a request."""

    def __init__(self, page_size):
        self.page_size = page_size
        self.pool, self.allocator, self.tree = _build(page_size)
        self.locked = []

    def insert(self, seq):
        seq = seq[: len(seq) // self.page_size * self.page_size]  # partial tail pages stay private
        if not seq:
            return
        key = RadixKey(array("q", seq))
        match = self.tree.match_prefix(MatchPrefixParams(key=key))
        hit = match.device_prefix_len
        prefix_slots = self.tree.path_device_indices(match.last_device_node)[:hit]
        new = len(seq) - hit
        before = self.pool.bytes_written
        if new == 0:
            assert self.pool.bytes_written == before  # a full hit stores nothing
            return
        # As the scheduler does: the matched prefix is locked while the request runs, so
        # making room for its new tokens cannot evict the prefix it is reading.
        self.tree.inc_lock_ref(match.last_device_node)
        try:
            if self.allocator.available_size() < new:
                self.tree.evict(EvictParams(num_tokens=new))
            if self.allocator.available_size() < new:
                return  # everything left is locked
            slots = self.allocator.alloc(new)
            kv = torch.stack([_kv_for(tuple(seq[: i + 1])) for i in range(hit, len(seq))])
            self.pool.set_kv_buffer(None, slots, kv, -kv, layer_id_override=0)
            # Only the new tokens were written: the shared prefix's bytes never move.
            assert self.pool.bytes_written - before == 2 * new * HEADS * (HEAD_DIM + 4)
            result = self.tree.insert(InsertParams(key=key, value=torch.cat([prefix_slots, slots])))
            assert result.prefix_len == hit
        finally:
            self.tree.dec_lock_ref(match.last_device_node)

    def lock(self, seq):
        match = self.tree.match_prefix(MatchPrefixParams(key=RadixKey(array("q", seq))))
        if match.device_prefix_len:
            self.tree.inc_lock_ref(match.last_device_node)
            self.locked.append(match.last_device_node)

    def unlock(self, i):
        if self.locked:
            self.tree.dec_lock_ref(self.locked.pop(i % len(self.locked)))

    def evict(self, n):
        self.tree.evict(EvictParams(num_tokens=n))

    def check(self):
        tree_slots = [s for node, _, _ in _walk(self.tree.root_node) for s in node.value.tolist()]
        free = _free_slots(self.allocator, self.page_size)
        assert len(tree_slots) == len(set(tree_slots)), "a slot is in two tree nodes"
        assert not free & set(tree_slots), "a page referenced by the tree is free"
        padding = set(range(self.page_size))  # SGLang's page 0
        assert free | set(tree_slots) | padding == set(range(SIZE + self.page_size)), "a page leaked"
        for node in self.locked:
            assert not node.evicted, "a locked node was evicted"
        views = {}  # node -> its own K view; a prefix's view is the cat of its path's views
        for node, prefix, tokens in _walk(self.tree.root_node):
            views[node] = self.pool.key_view(0, node.value)
            path = [views[n] for n in _path(node)]
            matched_k, _ = self.pool.prefix_views(self.tree, node, 0)
            assert matched_k.shares_storage_with(path[0])
            assert torch.equal(PagedScaledTensor.cat(path).slots, matched_k.slots)
            slots = node.value
            expected = torch.stack([_kv_for(tokens[: len(prefix) + i + 1]) for i in range(len(slots))])
            k = self.pool.key_view(0, slots)
            v = self.pool.value_view(0, slots)
            assert k.shares_storage_with(self.pool.key_view(0, slots[:1]))
            assert torch.equal(k.dequantize(), dequantize_kv(*quantize_kv(expected))), "K/scale did not follow its page"
            assert torch.equal(v.dequantize(), dequantize_kv(*quantize_kv(-expected))), "V/scale did not follow its page"


# Few distinct tokens, so sequences share prefixes; long enough to fill 16-token pages.
tokens = st.lists(st.integers(0, 2), min_size=12, max_size=48)
insert = st.tuples(st.just("insert"), tokens)
ops = st.lists(
    st.one_of(
        insert, insert, insert,  # inserts dominate, so the small pool must evict
        st.tuples(st.just("lock"), tokens),
        st.tuples(st.just("unlock"), st.integers(0, 100)),
        st.tuples(st.just("evict"), st.integers(1, 64)),
    ),
    min_size=4, max_size=30,
)


@pytest.mark.parametrize("page_size", [1, 4, 16])
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_random_cache_traffic_keeps_pages_and_scales_consistent(page_size, ops):
    model = Model(page_size)
    for op, arg in ops:
        getattr(model, op)(arg)
        model.check()


def test_block_table_to_request_view_to_batch_view_is_one_chain_of_views():
    # A radix node's slot ids -> its prefix views -> a request's view (prefix cat its new
    # tokens) -> a batch view: the same pool storage all the way, and what each request reads
    # back is what was written for its tokens.
    model = Model(page_size=4)
    shared, a, b = [0, 1, 2, 1, 0, 2, 2, 1], [0, 0, 1, 2], [2, 2, 2, 0, 1, 1, 0, 1]
    for seq in (shared, shared + a, shared + b):
        model.insert(seq)
    pool, tree = model.pool, model.tree
    requests = []
    for tail in (a, b):
        match = tree.match_prefix(MatchPrefixParams(key=RadixKey(array("q", shared))))
        prefix = pool.prefix_views(tree, match.last_device_node, 0)
        assert len(prefix.k) == len(shared)
        # The request's new tokens: the slots the tree holds after the shared prefix.
        full = tree.match_prefix(MatchPrefixParams(key=RadixKey(array("q", shared + tail))))
        slots = tree.path_device_indices(full.last_device_node)
        new = pool.key_view(0, slots[len(shared):])
        request = PagedScaledTensor.cat([prefix.k, new])
        assert torch.equal(request.slots, slots) and request.shares_storage_with(prefix.k)
        requests.append((request, shared + tail))
    batch = PagedScaledTensor.batch([r for r, _ in requests])
    assert batch.num_sequences == 2 and batch.shares_storage_with(requests[0][0])
    assert torch.equal(batch.sequence(0).slots[:len(shared)], batch.sequence(1).slots[:len(shared)])  # shared pages
    for i, (_, tokens) in enumerate(requests):
        expected = torch.stack([_kv_for(tuple(tokens[: j + 1])) for j in range(len(tokens))])
        assert torch.equal(batch.sequence(i).dequantize(), dequantize_kv(*quantize_kv(expected)))


def test_pool_counts_scale_bytes_and_capacity_matches_the_bound():
    pool = BrecciaFP8KVPool(SIZE, 16, torch.bfloat16, HEADS, HEAD_DIM, 3, "cpu", False)
    assert pool.k_buffer[0].dtype == torch.uint8 and pool.k_scale_buffer[0].shape == (SIZE + 16, HEADS)
    k_bytes, v_bytes = pool.get_kv_size_bytes()
    rows, layers = SIZE + 16, 3
    assert k_bytes == v_bytes == layers * rows * HEADS * (HEAD_DIM + 4)
    # Tokens per byte vs BF16 K/V: 2D / (D + 4), e.g. 1.94x at D=128, 1.88x at D=64.
    for d in (64, 128):
        bf16_cell = HEADS * layers * 2 * d * 2
        assert bf16_cell / cell_bytes(HEADS, d, d, layers) == pytest.approx(2 * d / (d + 4))


def test_paths_that_would_drop_scales_refuse():
    pool = BrecciaFP8KVPool(SIZE, 1, torch.float32, HEADS, HEAD_DIM, 1, "cpu", False)
    with pytest.raises(NotImplementedError, match="scales"):
        pool.get_cpu_copy(torch.arange(4))
    with pytest.raises(NotImplementedError):
        pool.set_kv_buffer_prefix_valid()


def test_writes_accept_flat_or_per_head_k_and_v():
    pool = BrecciaFP8KVPool(SIZE, 1, torch.float32, HEADS, HEAD_DIM, 1, "cpu", False)
    kv = torch.randn(5, HEADS, HEAD_DIM)
    pool.set_kv_buffer(None, torch.arange(1, 6), kv, -kv, layer_id_override=0)
    pool.set_kv_buffer(None, torch.arange(11, 16), kv.flatten(1), -kv.flatten(1), layer_id_override=0)
    first, second = pool.key_view(0, torch.arange(1, 6)), pool.key_view(0, torch.arange(11, 16))
    assert torch.equal(first.dequantize(), second.dequantize())
    assert torch.equal(first.dequantize(), dequantize_kv(*quantize_kv(kv)))
    assert torch.equal(pool.value_view(0, torch.arange(11, 16)).dequantize(), dequantize_kv(*quantize_kv(-kv)))
