"""``PagedScaledTensor``: breccia's ScaledTensor, seen through a block table.

breccia's ``ScaledTensor`` owns contiguous data. A paged KV cache keeps each token's K/V
in a pool slot chosen by the allocator (slot = page * page_size + offset), and a prefix
shared by many requests lives in the same slots for all of them. ``PagedScaledTensor``
describes "these tokens of this layer's K (or V)" as references into the pool: slicing and
concatenating views gives views of the same storage, and no KV or scale byte moves until
``dequantize()`` or ``materialize()`` asks for values.

One chain runs from SGLang's prefix cache to the attention kernels, views all the way:

- a radix-tree node's slot ids (its block table, expanded to slots) -> a one-sequence view;
- a request's view = ``cat`` of its cached prefix's views and its new tokens' view;
- a batch view = ``batch`` of the requests' views: one slot list plus an ``indptr``, the
  ragged form SGLang's attention metadata already has (``kv_indptr`` / ``kv_indices``), so
  the serving path builds it from those tensors directly, without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import breccia
import torch

from .quant import FP8, dequantize_kv, kv_recipe

INDEX_DTYPES = (torch.int32, torch.int64)


class PagedScaledTensor:
    """A view of one layer's K or V over pages of a paged FP8 pool: one sequence, or a batch.

    Parameters
    ----------
    data : torch.Tensor, (num_slots, num_kv_heads, head_dim), float8_e4m3fn (or its uint8 bytes)
        The pool's storage for one layer's K or V. Shared, never copied.
    scale : torch.Tensor, (num_slots, num_kv_heads), float32
        The dequant multiplier of each (slot, head), stored beside ``data``.
    slots : torch.Tensor, (num_tokens,) int64 / int32
        The pool slot of each token of the view, in token order (a block table expanded to
        slots; see ``from_pages``). A batch view's list may be longer than its tokens (SGLang's
        CUDA-graph buffers are sized for the largest batch); only ``slots[:indptr[-1]]`` count.
    page_size : int
        Tokens per page of the pool (1 when the pool is not paged).
    indptr : torch.Tensor, (num_sequences + 1,) int32 / int64, or None
        A batch view: sequence b's tokens are ``slots[indptr[b]:indptr[b + 1]]``. None for
        one sequence.

    The logical tensor of one sequence is ``(num_tokens, num_kv_heads, head_dim)``; in breccia's
    terms each (token, head) row is one ``Float8BlockScaling(block_k=head_dim)`` block.

    Construction checks shapes and dtypes. Slot values are checked against the pool when they
    are on the host; on a GPU that check would wait for the device on every attention call
    (and break CUDA-graph capture), and SGLang's slot ids index its pool by construction.
    """

    __slots__ = ("data", "scale", "slots", "page_size", "indptr")

    def __init__(self, data: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, page_size: int = 1,
                 *, indptr: torch.Tensor | None = None):
        if data.dtype == torch.uint8:
            data = data.view(FP8)
        if data.ndim != 3 or data.dtype != FP8:
            raise ValueError(f"data must be (slots, heads, head_dim) float8_e4m3fn, got {tuple(data.shape)} {data.dtype}")
        if scale.shape != data.shape[:2] or scale.dtype != torch.float32:
            raise ValueError(f"scale must be {tuple(data.shape[:2])} float32, got {tuple(scale.shape)} {scale.dtype}")
        if slots.ndim != 1 or slots.dtype not in INDEX_DTYPES:
            raise ValueError(f"slots must be 1-D int64 or int32, got {tuple(slots.shape)} {slots.dtype}")
        if indptr is not None and (indptr.ndim != 1 or indptr.numel() < 1 or indptr.dtype not in INDEX_DTYPES):
            raise ValueError(f"indptr must be 1-D int64 or int32 with at least one entry, got "
                             f"{tuple(indptr.shape)} {indptr.dtype}")
        if page_size < 1 or data.shape[0] % page_size:
            raise ValueError(f"page_size {page_size} must divide the pool's {data.shape[0]} slots")
        self.data, self.scale, self.slots, self.page_size, self.indptr = data, scale, slots, page_size, indptr
        if not slots.is_cuda:
            self._check_slots_on_host()

    def _check_slots_on_host(self) -> None:
        if self.indptr is not None:
            total = int(self.indptr[-1])
            if total > self.slots.numel():
                raise ValueError(f"indptr ends at token {total}, past the {self.slots.numel()} slots given")
        used = self.token_slots()
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= self.data.shape[0]):
            raise ValueError(f"slots must lie in [0, {self.data.shape[0]}), got [{int(used.min())}, {int(used.max())}]")

    @classmethod
    def from_pages(cls, data, scale, page_ids: torch.Tensor, page_size: int, start: int = 0,
                   length: int | None = None) -> "PagedScaledTensor":
        """The view of ``length`` tokens starting at token ``start`` of the pages ``page_ids``."""
        offsets = torch.arange(page_size, device=page_ids.device)
        slots = (page_ids.to(torch.int64)[:, None] * page_size + offsets).reshape(-1)
        stop = slots.numel() if length is None else start + length
        if not 0 <= start <= stop <= slots.numel():
            raise ValueError(f"token range [{start}, {stop}) outside {slots.numel()} tokens of {page_ids.numel()} pages")
        return cls(data, scale, slots[start:stop], page_size)

    @classmethod
    def batch(cls, views: Sequence["PagedScaledTensor"]) -> "PagedScaledTensor":
        """One batch view of one-sequence views of the same pool (their slot lists joined)."""
        first = _same_pool(views, "batch")
        lengths = torch.tensor([0] + [len(v) for v in views], device=first.slots.device)
        return cls(first.data, first.scale, torch.cat([v.slots for v in views]), first.page_size,
                   indptr=lengths.cumsum(0))

    # --- shape ---------------------------------------------------------------------------

    @property
    def is_ragged(self) -> bool:
        return self.indptr is not None

    @property
    def num_sequences(self) -> int:
        """1 for a one-sequence view; for a batch view, the sequences its indptr describes."""
        return 1 if self.indptr is None else self.indptr.numel() - 1

    def token_slots(self) -> torch.Tensor:
        """The slot of every token the view covers, in order (a batch view's sequences one
        after another). Reads ``indptr[-1]`` on the host for a batch view."""
        return self.slots if self.indptr is None else self.slots[: int(self.indptr[-1])]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.token_slots().numel(), self.data.shape[1], self.data.shape[2])

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        if self.is_ragged:
            return (f"PagedScaledTensor(sequences={self.num_sequences}, tokens={len(self)}, heads={self.shape[1]}, "
                    f"head_dim={self.shape[2]})")
        return (f"PagedScaledTensor(tokens={len(self)}, heads={self.shape[1]}, head_dim={self.shape[2]}, "
                f"pages={self.page_ids().tolist()})")

    # --- views (no KV or scale bytes move) -----------------------------------------------

    def __getitem__(self, index: slice) -> "PagedScaledTensor":
        self._need_one_sequence("slicing")
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("PagedScaledTensor supports contiguous token slices only, e.g. view[a:b]")
        return PagedScaledTensor(self.data, self.scale, self.slots[index], self.page_size)

    def sequence(self, b: int) -> "PagedScaledTensor":
        """Sequence ``b`` of a batch view, as a one-sequence view (reads indptr on the host)."""
        if not self.is_ragged:
            if b != 0:
                raise IndexError(f"a one-sequence view has no sequence {b}")
            return self
        if not 0 <= b < self.num_sequences:
            raise IndexError(f"sequence {b} outside the batch view's {self.num_sequences}")
        lo, hi = int(self.indptr[b]), int(self.indptr[b + 1])
        return PagedScaledTensor(self.data, self.scale, self.slots[lo:hi], self.page_size)

    @staticmethod
    def cat(views: Sequence["PagedScaledTensor"]) -> "PagedScaledTensor":
        """Concatenate one-sequence views of the same pool along tokens (only the slot indices
        are joined), e.g. a request's cached prefix and its new tokens."""
        first = _same_pool(views, "cat")
        for v in views:
            v._need_one_sequence("cat")
        return PagedScaledTensor(first.data, first.scale, torch.cat([v.slots for v in views]), first.page_size)

    def shares_storage_with(self, other: "PagedScaledTensor") -> bool:
        return self.data.data_ptr() == other.data.data_ptr() and self.scale.data_ptr() == other.scale.data_ptr()

    def page_ids(self) -> torch.Tensor:
        """The pool pages this view touches, in order of first use (runs of one page merged)."""
        pages = self.token_slots() // self.page_size
        if pages.numel() == 0:
            return pages
        keep = torch.ones_like(pages, dtype=torch.bool)
        keep[1:] = pages[1:] != pages[:-1]
        return pages[keep]

    def _need_one_sequence(self, what: str) -> None:
        if self.is_ragged:
            raise TypeError(f"{what} takes one-sequence views; use .sequence(b) on a batch view")

    # --- the places bytes move -----------------------------------------------------------

    def materialize(self) -> breccia.ScaledTensor:
        """A contiguous ``breccia.ScaledTensor`` of the view's tokens (a copy).

        data (T, H, D) float8_e4m3fn, scale (T, H, 1) float32,
        recipe ``Float8BlockScaling(block_k=D)``, layout ``PerBlockK(D)``.
        """
        slots, head_dim = self.token_slots(), self.data.shape[2]
        return breccia.from_buffer(self.data[slots], self.scale[slots].unsqueeze(-1), kv_recipe(head_dim),
                                   breccia.PerBlockK(head_dim))

    def dequantize(self) -> torch.Tensor:
        """The high-precision values of the view's tokens, (num_tokens, num_kv_heads, head_dim) float32.

        The one place cached K/V become values outside the Triton kernels: the torch attention
        backend reads the cache through it, and the kernels' fp32 references do too.
        """
        slots = self.token_slots()
        return dequantize_kv(self.data[slots], self.scale[slots])


class PagedKV(NamedTuple):
    """K and V of the same tokens of one layer: two views that share one slot list (and, for a
    batch, one indptr). What the attention kernels take."""

    k: PagedScaledTensor
    v: PagedScaledTensor

    @classmethod
    def of(cls, k_data, k_scale, v_data, v_scale, slots, page_size: int = 1, *, indptr=None) -> "PagedKV":
        return cls(PagedScaledTensor(k_data, k_scale, slots, page_size, indptr=indptr),
                   PagedScaledTensor(v_data, v_scale, slots, page_size, indptr=indptr))


def _same_pool(views: Sequence[PagedScaledTensor], what: str) -> PagedScaledTensor:
    if not views:
        raise ValueError(f"{what} needs at least one view")
    first = views[0]
    for v in views[1:]:
        if not first.shares_storage_with(v) or v.page_size != first.page_size:
            raise ValueError(f"{what} needs views of the same pool storage")
    return first
