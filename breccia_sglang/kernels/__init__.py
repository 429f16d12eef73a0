"""Triton paged dequant-attention kernels (not built yet: see the kernels issue)."""
