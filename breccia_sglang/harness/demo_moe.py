"""A tiny mixture-of-experts model, built offline: no model hub.

A random-weight Qwen3-MoE (transformers saves its experts one linear per projection, as real
Qwen3-MoE checkpoints are), small enough for CPU tests and benchmarks, awkward where it counts:
6 experts with top-2 routing, so a short prompt leaves some experts without a token.
"""

from __future__ import annotations

from pathlib import Path

# Hidden 64 and expert intermediate 96: K of 64 and 96, so every block and group size the
# recipes use (16 / 32 / 64 wide) divides both, and 96 is no power of two.
TINY_MOE = {"hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
            "num_experts": 6, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "norm_topk_prob": True,
            "tie_word_embeddings": False}


def build_tiny_moe(dest: str | Path, *, vocab_size: int = 256, seed: int = 0, tokenizer_dir: str | Path | None = None,
                   **overrides) -> Path:
    """Write a random Qwen3-MoE checkpoint to ``dest`` (fp32 safetensors); with ``tokenizer_dir``,
    its tokenizer files come along (the vocabulary then follows the tokenizer)."""
    import torch
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    dest = Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None
    if tokenizer is not None:
        vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=vocab_size, **{**TINY_MOE, **overrides})
    if tokenizer is not None:
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    Qwen3MoeForCausalLM(config).to(torch.float32).save_pretrained(dest)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    return dest
