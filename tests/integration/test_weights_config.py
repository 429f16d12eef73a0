"""BrecciaConfig: which SGLang layer takes which breccia tensor, and nothing is dropped."""

from __future__ import annotations

import breccia
import pytest
import torch
from breccia.bridges import save_safetensors
from safetensors.torch import save_file

from breccia_sglang.errors import BrecciaCheckpointError
from breccia_sglang.integration.quant_config import BrecciaConfig
from breccia_sglang.integration.weight_loading import rename_breccia_tensors

FP8 = breccia.Float8CurrentScaling()


def _checkpoint(tmp_path, names, recipe=FP8, plain=None):
    save_safetensors({n: breccia.cast(torch.randn(16, 32), recipe) for n in names},
                     str(tmp_path / "model-breccia.safetensors"))
    if plain:
        save_file(plain, str(tmp_path / "model-plain.safetensors"))
    return BrecciaConfig.from_checkpoint(str(tmp_path))


def test_merged_layers_take_their_shards_in_sglang_order(tmp_path):
    attn = "model.layers.0.self_attn"
    config = _checkpoint(tmp_path, [f"{attn}.{p}.weight" for p in ("v_proj", "q_proj", "k_proj", "o_proj")])
    qkv = config.entries_for_module(f"{attn}.qkv_proj")
    assert [e.name for e in qkv] == [f"{attn}.{p}_proj.weight" for p in "qkv"]
    assert [e.name for e in config.entries_for_module(f"{attn}.o_proj")] == [f"{attn}.o_proj.weight"]
    assert config.entries_for_module("model.layers.0.mlp.gate_up_proj") == []


def test_half_quantized_merged_layer_is_refused(tmp_path):
    config = _checkpoint(tmp_path, ["model.layers.0.mlp.gate_proj.weight"])
    with pytest.raises(BrecciaCheckpointError, match=r"gate_up_proj: .*\['model.layers.0.mlp.up_proj'\] are not breccia"):
        config.entries_for_module("model.layers.0.mlp.gate_up_proj")


def test_is_linear_unquantized_is_a_query_that_claims_nothing(tmp_path):
    config = _checkpoint(tmp_path, ["model.layers.0.mlp.down_proj.weight"])
    assert not config.is_linear_unquantized("model.layers.0.mlp.down_proj")
    assert config.is_linear_unquantized("model.layers.0.self_attn.o_proj")
    assert config.unclaimed() == ["model.layers.0.mlp.down_proj.weight"]


def test_tensors_no_layer_claimed_stop_the_load_before_any_weight_moves(tmp_path):
    config = _checkpoint(tmp_path, ["model.layers.0.mlp.down_proj.weight", "vision.proj.weight"])
    config.claimed.add("model.layers.0.mlp.down_proj.weight")
    stream = rename_breccia_tensors(iter([("model.norm.weight", torch.ones(2))]), config)
    with pytest.raises(BrecciaCheckpointError, match=r"1 breccia tensor\(s\) .* silently dropped: vision.proj.weight"):
        next(stream)


def test_names_map_onto_sglang_fp8_parameters_and_uint8_codes_are_reviewed(tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"
    blocked = breccia.Float8BlockScaling(block_k=16)
    config = _checkpoint(tmp_path, [name], recipe=blocked)
    config.claimed.add(name)
    codes = torch.randint(0, 255, (16, 32), dtype=torch.uint8)
    scale = torch.rand(16, 2)
    out = dict(rename_breccia_tensors(
        iter([(f"{name}.data", codes), (f"{name}.scale", scale), ("model.norm.weight", torch.ones(2))]), config))
    assert set(out) == {name, "model.layers.0.mlp.down_proj.weight_scale", "model.norm.weight"}
    assert out[name].dtype == torch.float8_e4m3fn
    assert out[name].data_ptr() == codes.data_ptr()  # a view of the same bytes, not a conversion
    assert torch.equal(out[name].view(torch.uint8), codes)


def test_breccia_format_on_a_pickle_only_checkpoint_names_the_pickle_and_never_loads_it(tmp_path):
    # What --breccia-format runs when SGLang builds the model (get_quant_config ->
    # BrecciaConfig.from_checkpoint), before any weight is read.
    from ..format.test_checkpoint_errors import _pickle_only_checkpoint

    marker = tmp_path / "the-pickle-ran"
    directory = _pickle_only_checkpoint(tmp_path / "ckpt", marker)
    with pytest.raises(BrecciaCheckpointError, match=r"holds pytorch_model\.bin \(a pickle.*never loaded"):
        BrecciaConfig.from_checkpoint(str(directory))
    assert not marker.exists()
