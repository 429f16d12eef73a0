"""A DeepSeek-V3-style MoE FP8 checkpoint (128 x 128 block scales, routed experts and a shared
expert as DeepSeek names them, router kept in high precision as DeepSeek ships it), built here
from a tiny random DeepSeek-V3: ``convert --from deepseek-fp8`` carries every expert bit for
bit, and ``--breccia-format`` loads them all into SGLang's FusedMoE (each expert tensor counted
as it loads, so none is lost), with MLA attention on SGLang's own KV cache.

What is not run here: a forward pass. SGLang 0.5.23's CPU attention (torch_native) cannot run
MLA (its absorbed keys are 96 wide and its values 64, which its SDPA call refuses), even for the
unquantized model; DeepSeek's numerics are for a GPU session.
"""

from __future__ import annotations

import re

import pytest
import torch

from breccia_sglang.format.convert import convert_to_breccia
from breccia_sglang.harness.demo_moe import build_tiny_deepseek_v3

from ..format.test_convert import _block_expand, _deepseek_scales, _fp8_checkpoint
from ..helpers import breccia_tensors, run_engine, stored_tensors

BLOCK = [128, 128]


def _deepseek_fp8_weight(name, t):
    # DeepSeek-V3 ships linears in FP8 and keeps embeddings, the LM head and routers in BF16.
    return name.endswith(".weight") and t.ndim == 2 and not any(k in name for k in ("embed", "lm_head", ".mlp.gate."))


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deepseek")
    model = build_tiny_deepseek_v3(tmp / "model")
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": BLOCK}
    source = _fp8_checkpoint(model, tmp / "fp8", lambda t: _deepseek_scales(t, BLOCK), config,
                             is_fp8=_deepseek_fp8_weight)
    report = convert_to_breccia(source, tmp / "breccia", "deepseek-fp8")
    return source, tmp / "breccia", report


def test_every_expert_converts_bit_exactly(deepseek):
    source, converted, report = deepseek
    src, out = stored_tensors(source), breccia_tensors(converted)
    experts = [n for n in src if re.search(r"\.mlp\.(experts\.\d+|shared_experts)\.\w+_proj\.weight$", n)]
    assert len(experts) == 4 * 3 + 3  # one MoE layer: 4 routed experts and the shared one, 3 projections each
    for name in experts:
        st = out[name]
        assert torch.equal(st.data.view(torch.uint8), src[name].view(torch.uint8)), name
        rows, k = src[name].shape
        scale = src[name.removesuffix(".weight") + ".weight_scale_inv"]
        assert torch.equal(st.scale, _block_expand(scale, rows, 128, 128, 128)[:, ::128][:, : k // 128]), name
    assert "model.layers.1.mlp.gate.weight" not in out and "model.layers.1.mlp.gate.weight" in stored_tensors(converted)


@pytest.mark.engine
def test_the_experts_load_through_breccia_format_and_mla_keeps_sglangs_kv_cache(deepseek, tmp_path):
    _, converted, _ = deepseek
    spec = {"engine": {"model_path": str(converted), "device": "cpu", "max_total_tokens": 512,
                       "quantization": "breccia", "skip_tokenizer_init": True, "log_level": "info"},
            "requests": []}  # load only: see the module docstring
    result = run_engine(spec, tmp_path)
    assert result["ok"], result
    log = result["stderr"]
    assert re.search(r"breccia-sglang: MoE experts \(block\(E4M3,k=128\)/per_block_k, \d+ per layer\) run kernel "
                     r"emulated", log), log[-3000:]
    assert "FP8 KV cache supports plain MHA models only; using SGLang's KV cache" in log
    assert re.search(r"\d+ quantized layers \(linear and MoE\) hold", log)
