"""Scale-aware paged FP8 KV cache and PagedScaledTensor (not built yet: see the paged-KV issue)."""
