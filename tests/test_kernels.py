"""The Triton kernels under TRITON_INTERPRET=1, against their fp32 torch references.

Shapes are chosen to be awkward: batch 1 and 17, context lengths that are not multiples of
the page size, page sizes 1 / 16 / 64, GQA ratios 1 / 3 / 8, head_dim 64 and 128, fp32 and
fp16 queries. The cases cover every pair of those values without the full product, which
the interpreter could not finish in CI time.

``BRECCIA_KERNEL_DEVICE=cuda`` runs the same tests on a GPU, compiled instead of interpreted
(``scripts/gpu_checks.sh`` does this on a lent GPU machine).
"""

from __future__ import annotations

import os

DEVICE = os.environ.get("BRECCIA_KERNEL_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import pytest
import torch
import triton
import triton.language as tl

from breccia_sglang.kernels import launch
from breccia_sglang.kernels.decode import paged_decode_attention, paged_decode_attention_reference
from breccia_sglang.kernels.extend import paged_extend_attention, paged_extend_attention_reference
from breccia_sglang.kernels.fp8_codec import e4m3_decode
from breccia_sglang.kernels.kv_write import _write_kv_fp8_kernel, write_kv_fp8, write_kv_fp8_reference
from breccia_sglang.paged import PagedScaledTensor, quantize_kv

if DEVICE == "cpu" and type(_write_kv_fp8_kernel).__name__ != "InterpretedFunction":
    raise RuntimeError("test_kernels.py needs TRITON_INTERPRET=1 on CPU: a kernel module was imported before it was set")


def on_device(t: torch.Tensor) -> torch.Tensor:
    """Inputs are drawn on the CPU (seeded generators) and moved to the device under test."""
    return t.to(DEVICE)


KV_HEADS = 2
# (batch, page_size, gqa_group, head_dim, query dtype)
CASES = [
    (1, 1, 1, 64, torch.float32),
    (17, 16, 3, 128, torch.float16),
    (17, 64, 8, 64, torch.float32),
    (1, 64, 3, 128, torch.float32),
    (17, 1, 8, 128, torch.float16),
    (1, 16, 1, 64, torch.float16),
    (17, 16, 1, 128, torch.float32),
]


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    # fp32: only summation order and exp2 (log2(e) folded into the scale) differ from the
    # reference, ~1e-7 relative per step. fp16: the kernel rounds the probabilities and the
    # dequantized V tile to fp16 before P.V and the output to fp16, each 2^-11 relative, so a
    # few 1e-3 of the output's magnitude.
    tolerance = 2e-5 if dtype == torch.float32 else 4e-3
    scale = max(1.0, ref.abs().max().item())
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= tolerance * scale


class PagedPool:
    """One layer's FP8 K/V buffers with requests laid out on shuffled pages (page 0 unused,
    as in SGLang), filled through the write kernel."""

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
        self.views = []
        for n, count in zip(lengths, pages_per_req):
            pages, order = order[:count], order[count:]
            if shared_prefix_pages and self.views and count > shared_prefix_pages:
                # Like a radix-cache hit: this request's first pages are the previous one's.
                pages[:shared_prefix_pages] = self.views[-1].page_ids()[:shared_prefix_pages].tolist()
            self.views.append(PagedScaledTensor.from_pages(self.k_data, self.k_scale, on_device(torch.tensor(pages)),
                                                           page_size, length=n))
        written = torch.cat([v.slots for v in self.views]).unique()
        keys = torch.randn(len(written), KV_HEADS, head_dim, generator=gen) * 2
        keys[:, :, 3] *= 30  # an outlier channel, as real keys have
        write_kv_fp8(on_device(keys), written, self.k_data, self.k_scale)
        values = torch.randn(len(written), KV_HEADS, head_dim, generator=gen)
        write_kv_fp8(on_device(values), written, self.v_data, self.v_scale)

    @property
    def buffers(self):
        return self.k_data, self.k_scale, self.v_data, self.v_scale

    @staticmethod
    def indptr(lengths) -> torch.Tensor:
        return on_device(torch.tensor([0, *lengths]).cumsum(0).to(torch.int32))


def context_lengths(batch: int, page_size: int, gen: torch.Generator, longest: int = 300) -> list[int]:
    lengths = torch.randint(1, longest, (batch,), generator=gen).tolist()
    if batch > 2:
        lengths[:3] = [1, page_size * 2, page_size * 2 + 1]  # one token, a full page boundary, one past it
    return lengths


# --- write ---------------------------------------------------------------------------------

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
    write_kv_fp8(x, loc, data, scale)
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
    torch_path = kernel[0].clone(), kernel[1].clone()
    write_kv_fp8(x, loc, *kernel)
    write_kv_fp8_reference(x, loc, *torch_path)
    assert torch.equal(kernel[0], torch_path[0])
    assert torch.equal(kernel[1], torch_path[1])
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
    write_kv_fp8(k, loc, data, scale)
    expected_data, expected_scale = quantize_kv(k.contiguous())
    assert torch.equal(data[loc].view(torch.uint8), expected_data.view(torch.uint8))
    assert torch.equal(scale[loc], expected_scale)


def test_launchers_name_the_bad_argument():
    data, scale = torch.zeros(8, KV_HEADS, 64, dtype=torch.uint8), torch.zeros(8, KV_HEADS)
    with pytest.raises(ValueError, match="scale: expected shape"):
        write_kv_fp8(torch.zeros(2, KV_HEADS, 64), torch.arange(2), data, scale[:, :1])
    with pytest.raises(TypeError, match="loc: expected dtype"):
        write_kv_fp8(torch.zeros(2, KV_HEADS, 64), torch.arange(2.0), data, scale)
    q = torch.zeros(1, 3, 64)
    with pytest.raises(ValueError, match="not a multiple"):
        paged_decode_attention(q, data, scale, data, scale, torch.tensor([0, 1]), torch.tensor([1]))


# --- decode --------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", CASES)
def test_decode_matches_fp32_reference(batch, page_size, group, head_dim, dtype):
    gen = torch.Generator().manual_seed(batch * 1000 + page_size * 10 + group)
    lengths = context_lengths(batch, page_size, gen)
    pool = PagedPool(lengths, page_size, head_dim, gen, shared_prefix_pages=1 if batch > 1 else 0)
    kv_indices = torch.cat([v.slots for v in pool.views]).to(torch.int32)
    kv_indptr = PagedPool.indptr(lengths)
    q = on_device(torch.randn(batch, KV_HEADS * group, head_dim, generator=gen).to(dtype))
    # Uneven split counts, including more splits than a short context has tokens.
    splits = on_device(torch.randint(1, 5, (batch,), generator=gen, dtype=torch.int32))
    out = paged_decode_attention(q, *pool.buffers, kv_indptr, kv_indices, num_kv_splits=splits, max_kv_splits=4)
    ref = paged_decode_attention_reference(q, *pool.buffers, kv_indptr, kv_indices)
    assert_matches_reference(out, ref, dtype)


def test_decode_split_count_does_not_change_the_result():
    gen = torch.Generator().manual_seed(7)
    lengths = [700, 5, 257]
    pool = PagedPool(lengths, 16, 64, gen)
    kv_indices = torch.cat([v.slots for v in pool.views])
    q = on_device(torch.randn(3, KV_HEADS * 3, 64, generator=gen))
    args = (q, *pool.buffers, PagedPool.indptr(lengths), kv_indices)
    one = paged_decode_attention(*args, num_kv_splits=on_device(torch.ones(3, dtype=torch.int32)), max_kv_splits=8)
    many = paged_decode_attention(*args, num_kv_splits=on_device(torch.full((3,), 8, dtype=torch.int32)),
                                  max_kv_splits=8)
    default = paged_decode_attention(*args, max_kv_splits=8)  # 3, 1 and 2 splits by length
    # Same math, merged in a different order: fp32 rounding only.
    torch.testing.assert_close(one, many, rtol=0, atol=2e-6)
    torch.testing.assert_close(one, default, rtol=0, atol=2e-6)


def test_decode_reads_each_request_only_through_its_own_slots():
    # Overwriting slots no request references must not change any output.
    gen = torch.Generator().manual_seed(3)
    lengths = [40, 23]
    pool = PagedPool(lengths, 16, 64, gen)
    kv_indices = torch.cat([v.slots for v in pool.views])
    q = on_device(torch.randn(2, KV_HEADS, 64, generator=gen))
    before = paged_decode_attention(q, *pool.buffers, PagedPool.indptr(lengths), kv_indices)
    unused = torch.ones(pool.k_data.shape[0], dtype=torch.bool, device=DEVICE)
    unused[kv_indices] = False
    for buf in pool.buffers:
        buf[unused] = 7 if buf.dtype == torch.uint8 else 1e6
    after = paged_decode_attention(q, *pool.buffers, PagedPool.indptr(lengths), kv_indices)
    assert torch.equal(before, after)


# --- extend --------------------------------------------------------------------------------

def extend_case(batch: int, page_size: int, group: int, head_dim: int, dtype, gen: torch.Generator):
    """A pool whose requests have a cached prefix (none for request 0) and new tokens:
    returns (pool, paged_extend_attention's positional arguments, max_new_tokens)."""
    prefix = context_lengths(batch, page_size, gen, longest=120)
    prefix[0] = 0  # a request with no cached prefix at all
    new = torch.randint(1, 70, (batch,), generator=gen).tolist()
    pool = PagedPool([p + n for p, n in zip(prefix, new)], page_size, head_dim, gen)
    prefix_indices = torch.cat([v[:p].slots for v, p in zip(pool.views, prefix)])
    new_slots = torch.cat([v[p:].slots for v, p in zip(pool.views, prefix)])
    q = on_device(torch.randn(sum(new), KV_HEADS * group, head_dim, generator=gen).to(dtype))
    args = (q, *pool.buffers, PagedPool.indptr(new), PagedPool.indptr(prefix), prefix_indices, new_slots)
    return pool, args, max(new)


@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", CASES)
def test_extend_matches_fp32_reference(batch, page_size, group, head_dim, dtype):
    gen = torch.Generator().manual_seed(batch * 1000 + page_size * 10 + group + 1)
    _, args, max_new = extend_case(batch, page_size, group, head_dim, dtype, gen)
    out = paged_extend_attention(*args, max_new_tokens=max_new)
    ref = paged_extend_attention_reference(*args)
    assert_matches_reference(out, ref, dtype)


def test_extend_over_a_cached_prefix_equals_extending_the_whole_sequence():
    # A prefix hit (prefix from the cache, the rest new) and a recompute (everything new)
    # see the same FP8 K/V, so the last tokens' outputs agree.
    gen = torch.Generator().manual_seed(11)
    pool = PagedPool([90], 16, 64, gen)
    slots = pool.views[0].slots
    q = on_device(torch.randn(90, KV_HEADS * 3, 64, generator=gen))
    whole = paged_extend_attention(q, *pool.buffers, PagedPool.indptr([90]), PagedPool.indptr([0]),
                                   slots[:0], slots, max_new_tokens=90)
    hit = paged_extend_attention(q[64:], *pool.buffers, PagedPool.indptr([26]), PagedPool.indptr([64]),
                                 slots[:64], slots[64:], max_new_tokens=26)
    torch.testing.assert_close(hit, whole[64:], rtol=0, atol=2e-6)


def test_decode_equals_the_last_row_of_extend():
    gen = torch.Generator().manual_seed(5)
    pool = PagedPool([77], 64, 128, gen)
    slots = pool.views[0].slots
    q = on_device(torch.randn(1, KV_HEADS * 8, 128, generator=gen))
    decode = paged_decode_attention(q, *pool.buffers, PagedPool.indptr([77]), slots, max_kv_splits=3,
                                    num_kv_splits=on_device(torch.tensor([3], dtype=torch.int32)))
    extend = paged_extend_attention(q, *pool.buffers, PagedPool.indptr([1]), PagedPool.indptr([76]),
                                    slots[:76], slots[76:], max_new_tokens=1)
    torch.testing.assert_close(decode, extend, rtol=0, atol=2e-6)


# --- the GPU's tile sizes, under the interpreter ---------------------------------------------

@pytest.mark.parametrize("batch,page_size,group,head_dim,dtype", [CASES[1], CASES[2], CASES[6]])
def test_gpu_tile_sizes_match_the_reference_too(batch, page_size, group, head_dim, dtype, monkeypatch):
    # On a GPU the launches take bigger tiles (16-row head tiles however small the GQA group,
    # 64-token extend tiles), so more rows and tokens are masked. Run that configuration here
    # (it is a no-op on a GPU, which takes those tiles anyway).
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    assert launch.gpu_tiles(torch.zeros(1))
    test_decode_matches_fp32_reference(batch, page_size, group, head_dim, dtype)
    test_extend_matches_fp32_reference(batch, page_size, group, head_dim, dtype)


# --- the two E4M3 decodes: native conversion (sm_89+) and bit moves (older GPUs) ----------

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
    pool, extend_args, max_new = extend_case(batch, page_size, group, head_dim, dtype, gen)
    decode_args = (on_device(torch.randn(batch, KV_HEADS * group, head_dim, generator=gen).to(dtype)), *pool.buffers,
                   PagedPool.indptr([len(v) for v in pool.views]), torch.cat([v.slots for v in pool.views]))

    def both_kernels():
        return paged_decode_attention(*decode_args), paged_extend_attention(*extend_args, max_new_tokens=max_new)

    monkeypatch.setattr(launch, "FORCE_INTEGER_FP8_DECODE", True)
    assert not launch.native_fp8_decode(decode_args[0])
    integer = both_kernels()
    assert_matches_reference(integer[0], paged_decode_attention_reference(*decode_args), dtype)
    assert_matches_reference(integer[1], paged_extend_attention_reference(*extend_args), dtype)
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


# --- CUDA graphs (GPU only) ------------------------------------------------------------------

@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: run with BRECCIA_KERNEL_DEVICE=cuda on a GPU")
def test_write_and_decode_replay_from_a_cuda_graph():
    # SGLang captures one decode step per batch size and replays it with new inputs copied into
    # the same buffers. So the kernels must take every length and slot from device memory (no
    # host syncs, no shapes read from tensor values): replays at two different context lengths
    # must match the eager reference.
    gen = torch.Generator().manual_seed(13)
    lengths, group, head_dim = [50, 130, 17], 4, 128
    pool = PagedPool([n + 1 for n in lengths], 16, head_dim, gen)
    slots = [view.slots for view in pool.views]
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
        write_kv_fp8(k_new, new_loc, pool.k_data, pool.k_scale)
        write_kv_fp8(v_new, new_loc, pool.v_data, pool.v_scale)
        paged_decode_attention(q, *pool.buffers, indptr, indices, num_kv_splits=splits, out=out,
                               part_out=part_out, part_lse=part_lse)

    def fill(context):  # each request's cached tokens before this step's new one
        flat = torch.cat([s[:n + 1] for s, n in zip(slots, context)])
        indices[:len(flat)] = flat.to(torch.int32)
        indptr.copy_(torch.tensor([0, *[n + 1 for n in context]]).cumsum(0))
        new_loc.copy_(torch.stack([s[n] for s, n in zip(slots, context)]))
        for buffer in (q, k_new, v_new):
            buffer.copy_(torch.randn(buffer.shape, generator=gen))

    fill([n - 9 for n in lengths])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for context in ([n - 9 for n in lengths], lengths):
        fill(context)
        graph.replay()
        torch.cuda.synchronize()
        k_row, k_row_scale = quantize_kv(k_new)
        assert torch.equal(pool.k_data[new_loc], k_row.view(torch.uint8))
        assert torch.equal(pool.k_scale[new_loc], k_row_scale)
        ref = paged_decode_attention_reference(q, *pool.buffers, indptr, indices)
        assert_matches_reference(out, ref, torch.float32)
