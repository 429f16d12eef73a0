"""``PagedScaledTensor``: breccia's ScaledTensor, seen through a block table.

breccia's ``ScaledTensor`` owns contiguous data. A paged KV cache keeps each token's K/V
in a pool slot chosen by the allocator (slot = page * page_size + offset), and a prefix
shared by many requests lives in the same slots for all of them. ``PagedScaledTensor``
describes "these tokens of this layer's K (or V)" as references into the pool: slicing
and concatenating views gives views of the same storage, and no KV or scale byte moves
until ``materialize()`` is asked for a contiguous ``breccia.ScaledTensor``.
"""

from __future__ import annotations

from collections.abc import Sequence

import breccia
import torch

from .kv_quant import FP8, dequantize_kv, kv_recipe


class PagedScaledTensor:
    """A view of one layer's K or V over pages of a paged FP8 pool.

    Parameters
    ----------
    data : torch.Tensor, (num_slots, num_kv_heads, head_dim), float8_e4m3fn (or its uint8 bytes)
        The pool's storage for one layer's K or V. Shared, never copied.
    scale : torch.Tensor, (num_slots, num_kv_heads), float32
        The dequant multiplier of each (slot, head), stored beside ``data``.
    slots : torch.Tensor, (num_tokens,), int64
        The pool slot of each token of the view, in token order (a block table expanded
        to slots; see ``from_pages``).
    page_size : int
        Tokens per page of the pool (1 when the pool is not paged).

    The logical tensor is ``(num_tokens, num_kv_heads, head_dim)``; in breccia's terms each
    (token, head) row is one ``Float8BlockScaling(block_k=head_dim)`` block.
    """

    __slots__ = ("data", "scale", "slots", "page_size")

    def __init__(self, data: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, page_size: int = 1):
        if data.dtype == torch.uint8:
            data = data.view(FP8)
        if data.ndim != 3 or data.dtype != FP8:
            raise ValueError(f"data must be (slots, heads, head_dim) float8_e4m3fn, got {tuple(data.shape)} {data.dtype}")
        if scale.shape != data.shape[:2] or scale.dtype != torch.float32:
            raise ValueError(f"scale must be {tuple(data.shape[:2])} float32, got {tuple(scale.shape)} {scale.dtype}")
        if slots.ndim != 1 or slots.dtype != torch.int64:
            raise ValueError(f"slots must be 1-D int64, got {tuple(slots.shape)} {slots.dtype}")
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= data.shape[0]):
            raise ValueError(f"slots must lie in [0, {data.shape[0]}), got [{int(slots.min())}, {int(slots.max())}]")
        if page_size < 1 or data.shape[0] % page_size:
            raise ValueError(f"page_size {page_size} must divide the pool's {data.shape[0]} slots")
        self.data, self.scale, self.slots, self.page_size = data, scale, slots, page_size

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

    # --- shape ---------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slots.numel(), self.data.shape[1], self.data.shape[2])

    def __len__(self) -> int:
        return self.slots.numel()

    def __repr__(self) -> str:
        return f"PagedScaledTensor(tokens={len(self)}, heads={self.shape[1]}, head_dim={self.shape[2]}, pages={self.page_ids().tolist()})"

    # --- views (no KV or scale bytes move) -----------------------------------------------

    def __getitem__(self, index: slice) -> "PagedScaledTensor":
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("PagedScaledTensor supports contiguous token slices only, e.g. view[a:b]")
        return PagedScaledTensor(self.data, self.scale, self.slots[index], self.page_size)

    @staticmethod
    def cat(views: Sequence["PagedScaledTensor"]) -> "PagedScaledTensor":
        """Concatenate views of the same pool along tokens (only the slot indices are joined)."""
        if not views:
            raise ValueError("cat needs at least one view")
        first = views[0]
        for v in views[1:]:
            if not first.shares_storage_with(v) or v.page_size != first.page_size:
                raise ValueError("cat needs views of the same pool storage")
        return PagedScaledTensor(first.data, first.scale, torch.cat([v.slots for v in views]), first.page_size)

    def shares_storage_with(self, other: "PagedScaledTensor") -> bool:
        return self.data.data_ptr() == other.data.data_ptr() and self.scale.data_ptr() == other.scale.data_ptr()

    def page_ids(self) -> torch.Tensor:
        """The pool pages this view touches, in order of first use."""
        pages = self.slots // self.page_size
        if pages.numel() == 0:
            return pages
        keep = torch.ones_like(pages, dtype=torch.bool)
        keep[1:] = pages[1:] != pages[:-1]
        return pages[keep]

    # --- the places bytes move -----------------------------------------------------------

    def materialize(self) -> breccia.ScaledTensor:
        """A contiguous ``breccia.ScaledTensor`` (the one place a copy is made).

        data (T, H, D) float8_e4m3fn, scale (T, H, 1) float32,
        recipe ``Float8BlockScaling(block_k=D)``, layout ``PerBlockK(D)``.
        """
        head_dim = self.data.shape[2]
        return breccia.from_buffer(
            self.data[self.slots], self.scale[self.slots].unsqueeze(-1), kv_recipe(head_dim), breccia.PerBlockK(head_dim)
        )

    def dequantize(self) -> torch.Tensor:
        """The high-precision tensor, (num_tokens, num_kv_heads, head_dim) float32."""
        return dequantize_kv(self.data[self.slots], self.scale[self.slots])
