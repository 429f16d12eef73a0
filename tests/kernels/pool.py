"""What the kernel tests share: the device they run on, the awkward cases, the tolerance, and a
paged pool of one layer's FP8 K/V whose requests sit on shuffled pages (page 0 unused, as in
SGLang), filled through the write kernel and read through ``PagedKV`` views.

``BRECCIA_KERNEL_DEVICE=cuda`` runs the same tests on a GPU, compiled instead of interpreted
(``scripts/gpu_checks.sh`` does this on a lent GPU machine); on CPU the root conftest has set
TRITON_INTERPRET=1 before any kernel module was imported.
"""

from __future__ import annotations

import os

import torch

from breccia_sglang import names
from breccia_sglang.kernels.attention import write_kv_fp8
from breccia_sglang.kernels.attention.write_kv import _write_kv_fp8_kernel
from breccia_sglang.kvcache import PagedKV, PagedScaledTensor

DEVICE = os.environ.get(names.ENV_KERNEL_DEVICE, "cpu")
if DEVICE == "cpu" and type(_write_kv_fp8_kernel).__name__ != "InterpretedFunction":
    raise RuntimeError("kernel tests need TRITON_INTERPRET=1 on CPU: a kernel module was imported before it was set")

KV_HEADS = 2
# (batch, page_size, gqa_group, head_dim, query dtype): batch 1 and 17, page sizes 1 / 16 / 64,
# GQA ratios 1 / 3 / 8, head_dim 64 and 128, fp32 and fp16 queries. The cases cover every pair
# of those values without the full product, which the interpreter could not finish in CI time.
CASES = [
    (1, 1, 1, 64, torch.float32),
    (17, 16, 3, 128, torch.float16),
    (17, 64, 8, 64, torch.float32),
    (1, 64, 3, 128, torch.float32),
    (17, 1, 8, 128, torch.float16),
    (1, 16, 1, 64, torch.float16),
    (17, 16, 1, 128, torch.float32),
]


def captured(call):
    """(a CUDA graph of ``call()``, what the captured call returned): ``call`` runs once on a side
    stream first (Triton compiles there, outside the capture), as SGLang warms up before it
    captures its decode steps. Replay the graph after changing the inputs in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    return graph, out


def replays(graph, x: torch.Tensor, gen: torch.Generator, times: int = 2):
    """Replay ``graph`` ``times`` times, each over new random values written into its input ``x``
    in place; yields after each replay has finished, for the caller to check the output."""
    for _ in range(times):
        x.copy_(torch.randn(x.shape, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        yield


def assert_is_dense_matmul(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """``out`` is x @ weight^T from the platform's dense GEMM, for 16-bit ``x`` and ``weight``."""
    w = weight.float()
    # 16-bit weights and x exactly as the reference sees them; cuBLAS sums in fp32 and rounds the
    # output once (bf16: 2^-8 of the magnitude, which bounds every partial sum).
    magnitude = x.float().abs() @ w.abs().T
    assert ((out.float() - x.float() @ w.T).abs() <= 2.0**-8 * magnitude + 1e-6).all()


def on_device(t: torch.Tensor) -> torch.Tensor:
    """Inputs are drawn on the CPU (seeded generators) and moved to the device under test."""
    return t.to(DEVICE)


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    # fp32: only summation order and exp2 (log2(e) folded into the scale) differ from the
    # reference, ~1e-7 relative per step. fp16 / bf16: the kernel rounds each probability times
    # its token's V scale (over the tile's largest) to fp16 before P.V, 2^-11 relative, and the
    # output to fp16 (2^-11) or bf16 (2^-8), so a few 1e-3 of the output's magnitude, twice
    # that with bf16's output rounding.
    tolerance = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 8e-3}[dtype]
    scale = max(1.0, ref.abs().max().item())
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= tolerance * scale


def assert_same_math(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two fp32 kernel results of the same math in a different order (split-KV merges, tiles):
    they may differ by fp32 rounding alone, a few 1e-7 relative per step over tens of steps,
    so at most 2e-6 of the outputs' magnitude (BLAS kernels under the interpreter differ
    between CPUs: 2.9e-6 absolute was measured on outputs of magnitude 3.1)."""
    scale = max(1.0, a.abs().max().item(), b.abs().max().item())
    torch.testing.assert_close(a, b, rtol=0, atol=2e-6 * scale)


def indptr(lengths) -> torch.Tensor:
    return on_device(torch.tensor([0, *lengths]).cumsum(0).to(torch.int32))


class PagedPool:
    """One layer's FP8 K/V buffers holding ``lengths`` requests; ``requests[b]`` is request b's
    one-sequence K view (its slots in token order)."""

    def __init__(self, lengths: list[int], page_size: int, head_dim: int, gen: torch.Generator,
                 shared_prefix_pages: int = 0):
        self.page_size = page_size
        pages_per_req = [-(-n // page_size) for n in lengths]
        num_pages = sum(pages_per_req) + 2
        order = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
        slots = num_pages * page_size
        self.k_data = torch.zeros(slots, KV_HEADS, head_dim, dtype=torch.uint8, device=DEVICE)
        self.v_data = torch.zeros_like(self.k_data)
        self.k_scale = torch.zeros(slots, KV_HEADS, device=DEVICE)
        self.v_scale = torch.zeros(slots, KV_HEADS, device=DEVICE)
        self.requests: list[PagedScaledTensor] = []
        for n, count in zip(lengths, pages_per_req):
            pages, order = order[:count], order[count:]
            if shared_prefix_pages and self.requests and count > shared_prefix_pages:
                # Like a radix-cache hit: this request's first pages are the previous one's.
                pages[:shared_prefix_pages] = self.requests[-1].page_ids()[:shared_prefix_pages].tolist()
            self.requests.append(PagedScaledTensor.from_pages(self.k_data, self.k_scale,
                                                              on_device(torch.tensor(pages)), page_size, length=n))
        written = torch.cat([v.slots for v in self.requests]).unique()
        keys = torch.randn(len(written), KV_HEADS, head_dim, generator=gen) * 2
        keys[:, :, 3] *= 30  # an outlier channel, as real keys have
        values = torch.randn(len(written), KV_HEADS, head_dim, generator=gen)
        into = self.kv(written)
        write_kv_fp8(on_device(keys), into.k)
        write_kv_fp8(on_device(values), into.v)

    def kv(self, slots: torch.Tensor, lengths: list[int] | None = None) -> PagedKV:
        """K and V of the tokens at ``slots``; with ``lengths``, a batch view of that many tokens each."""
        return PagedKV.of(self.k_data, self.k_scale, self.v_data, self.v_scale, slots, self.page_size,
                          indptr=None if lengths is None else indptr(lengths))

    def batch(self, slot_lists: list[torch.Tensor], dtype: torch.dtype = torch.int64) -> PagedKV:
        """A batch view of one slot list per request, as SGLang's kv_indptr / kv_indices."""
        return self.kv(torch.cat(slot_lists).to(dtype), [len(s) for s in slot_lists])

    def contexts(self, dtype: torch.dtype = torch.int64) -> PagedKV:
        """Every request's whole context, as one batch view."""
        return self.batch([v.slots for v in self.requests], dtype)


def context_lengths(batch: int, page_size: int, gen: torch.Generator, longest: int = 300) -> list[int]:
    lengths = torch.randint(1, longest, (batch,), generator=gen).tolist()
    if batch > 2:
        lengths[:3] = [1, page_size * 2, page_size * 2 + 1]  # one token, a full page boundary, one past it
    return lengths


def extend_case(batch: int, page_size: int, group: int, head_dim: int, dtype, gen: torch.Generator):
    """A pool whose requests have a cached prefix (none for request 0) and new tokens:
    returns (pool, q, prefix views, new-token views, max_new_tokens)."""
    prefix = context_lengths(batch, page_size, gen, longest=120)
    prefix[0] = 0  # a request with no cached prefix at all
    new = torch.randint(1, 70, (batch,), generator=gen).tolist()
    pool = PagedPool([p + n for p, n in zip(prefix, new)], page_size, head_dim, gen)
    q = on_device(torch.randn(sum(new), KV_HEADS * group, head_dim, generator=gen).to(dtype))
    prefix_views = pool.batch([v[:p].slots for v, p in zip(pool.requests, prefix)])
    new_views = pool.batch([v[p:].slots for v, p in zip(pool.requests, prefix)])
    return pool, q, prefix_views, new_views, max(new)
