"""What one token costs in the breccia FP8 KV cache, in bytes (SGLang sizes its pool by this)."""

SCALE_BYTES = 4  # one fp32 scale per (token, kv head), for K and for V


def cell_bytes(num_kv_heads: int, head_dim: int, v_head_dim: int, num_layers: int) -> int:
    """Bytes one token costs in the pool: FP8 K and V plus one fp32 scale per head for each.

    Against BF16 K/V (4 * head_dim bytes per head) that is 2D / (D + 4) of BF16's tokens in
    the same memory: 1.88x at D=64, 1.94x at D=128.
    """
    return num_kv_heads * num_layers * (head_dim + v_head_dim + 2 * SCALE_BYTES)
