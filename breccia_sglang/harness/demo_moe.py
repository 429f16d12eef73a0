"""Tiny mixture-of-experts models, built offline: no model hub.

- ``build_tiny_moe``: a random-weight Qwen3-MoE (transformers saves its experts one linear per
  projection, as real Qwen3-MoE checkpoints are), small enough for CPU tests and benchmarks,
  awkward where it counts: 6 experts with top-2 routing, so a short prompt leaves some experts
  without a token.
- ``build_tiny_deepseek_v3``: a random DeepSeek-V3 (MLA attention, one dense layer, then routed
  experts and a shared expert), with 128-wide weights so DeepSeek's 128 x 128 FP8 blocks fit.
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


# DeepSeek-V3's architecture at toy size. SGLang reads a few fields transformers 5 no longer
# writes (moe_layer_freq, a yarn rope_scaling on CPU), so they are set explicitly.
TINY_DEEPSEEK_V3 = {"hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128, "num_hidden_layers": 2,
                    "first_k_dense_replace": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1,
                    "topk_group": 1, "kv_lora_rank": 64, "q_lora_rank": 96, "qk_rope_head_dim": 32,
                    "qk_nope_head_dim": 32, "v_head_dim": 32, "max_position_embeddings": 256,
                    "tie_word_embeddings": False}
SGLANG_DEEPSEEK_FIELDS = {"moe_layer_freq": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
                          "routed_scaling_factor": 2.5,
                          "rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": 1.0,
                                           "original_max_position_embeddings": 256, "beta_fast": 32,
                                           "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}


def build_tiny_deepseek_v3(dest: str | Path, *, seed: int = 0) -> Path:
    """Write a random DeepSeek-V3 checkpoint (fp32 safetensors, vocabulary 256) to ``dest``."""
    import json

    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    dest = Path(dest)
    torch.manual_seed(seed)
    DeepseekV3ForCausalLM(DeepseekV3Config(vocab_size=256, **TINY_DEEPSEEK_V3)).to(torch.float32).save_pretrained(dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **SGLANG_DEEPSEEK_FIELDS}, indent=1))
    return dest
