"""Converters: DeepSeek-V3-style and compressed-tensors FP8 into breccia, and breccia back to
SGLang's native FP8 layout, bit for bit, on checkpoints built here from the tiny Llama."""

from __future__ import annotations

import json
import shutil

import breccia
import pytest
import torch
from safetensors.torch import save_file

from breccia_sglang.format.convert import LLAMA_BLOCK_FP8_NOTE, convert_to_breccia, export_sglang_fp8
from breccia_sglang.errors import BrecciaCheckpointError

from ..helpers import breccia_tensors, stored_tensors

FP8 = torch.float8_e4m3fn
BLOCK = [64, 32]  # rows x K per scale; the tiny model's 96- and 32-row weights leave partial edge blocks


def _is_linear(name, t):
    return name.endswith(".weight") and t.ndim == 2 and "embed" not in name and "lm_head" not in name


def _block_expand(scale, rows, k, bn, bk):
    return scale.repeat_interleave(bn, 0)[:rows].repeat_interleave(bk, 1)[:, :k]


def _fp8_checkpoint(tiny_llama, dst, scales_for, quant_config, extra=None, is_fp8=_is_linear):
    """Write tiny_llama with every linear (``is_fp8``) as FP8 codes + the scales ``scales_for`` computes."""
    dst.mkdir()
    out = {}
    for name, t in stored_tensors(tiny_llama).items():
        if not is_fp8(name, t):
            out[name] = t
            continue
        scale_name, scale, expanded = scales_for(t)
        out[name] = (t / expanded).to(FP8)
        out[name.removesuffix(".weight") + scale_name] = scale
    out.update(extra or {})
    save_file(out, str(dst / "model.safetensors"))
    for f in tiny_llama.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, dst / f.name)
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = quant_config
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _deepseek_scales(t, block=None):
    bn, bk = block or BLOCK
    rows, k = t.shape
    padded = torch.zeros(-(-rows // bn) * bn, -(-k // bk) * bk)
    padded[:rows, :k] = t.abs()  # zero-padded edges, as DeepSeek-V3's checkpoints
    amax = padded.reshape(padded.shape[0] // bn, bn, padded.shape[1] // bk, bk).amax((1, 3))
    scale = amax.clamp(min=1e-12) / 448
    return ".weight_scale_inv", scale, _block_expand(scale, rows, k, bn, bk)


@pytest.fixture()
def deepseek_fp8(tiny_llama, tmp_path):
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": BLOCK}
    return _fp8_checkpoint(tiny_llama, tmp_path / "dsv3", _deepseek_scales, config)


def test_deepseek_blocks_become_per_row_k_blocks_exactly(deepseek_fp8, tmp_path):
    report = convert_to_breccia(deepseek_fp8, tmp_path / "breccia", "deepseek-fp8")
    assert len(report.converted) == 14 and report.kept == []
    src = stored_tensors(deepseek_fp8)
    scaled = breccia_tensors(tmp_path / "breccia")
    assert len(scaled) == 14
    for name, st in scaled.items():
        data, block_scale = src[name], src[name.removesuffix(".weight") + ".weight_scale_inv"]
        assert st.recipe == breccia.Float8BlockScaling(block_k=BLOCK[1]) and st.layout == breccia.PerBlockK(BLOCK[1])
        assert torch.equal(st.data.view(torch.uint8), data.view(torch.uint8))
        expected = data.to(torch.float32) * _block_expand(block_scale, *data.shape, *BLOCK)
        assert torch.equal(breccia.dequantize(st), expected)


def test_deepseek_round_trip_through_breccia_back_to_sglang_fp8_is_bit_exact(deepseek_fp8, tmp_path):
    convert_to_breccia(deepseek_fp8, tmp_path / "breccia", "deepseek-fp8")
    report = export_sglang_fp8(tmp_path / "breccia", tmp_path / "native", block_n=BLOCK[0])
    assert report.notes == [LLAMA_BLOCK_FP8_NOTE]  # a block FP8 Llama: SGLang's default loader drops its scales
    before, after = stored_tensors(deepseek_fp8), stored_tensors(tmp_path / "native")
    assert set(before) == set(after)
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(after[name].view(torch.uint8), t.view(torch.uint8)), name
    config = json.loads((tmp_path / "native" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "fp8" and config["weight_block_size"] == BLOCK


def test_deepseek_weight_with_a_partial_k_block_is_kept_dequantized_and_reported(tiny_llama, tmp_path):
    global BLOCK
    saved, BLOCK = BLOCK, [64, 64]  # K = 96 is not a whole number of 64-wide blocks
    try:
        config = {"quant_method": "fp8", "weight_block_size": BLOCK}
        src = _fp8_checkpoint(tiny_llama, tmp_path / "dsv3", _deepseek_scales, config)
        report = convert_to_breccia(src, tmp_path / "breccia", "deepseek-fp8")
    finally:
        BLOCK = saved
    kept = dict(report.kept)
    assert set(kept) == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)}
    assert all("K=96 is not a multiple of 64" in why for why in kept.values())
    assert len(report.converted) == 12


def _per_tensor(t):
    scale = (t.abs().amax() / 448).reshape(1)
    return ".weight_scale", scale, scale


def _per_channel(t):
    scale = t.abs().amax(1, keepdim=True) / 448
    return ".weight_scale", scale, scale


CT_CONFIG = {"quant_method": "compressed-tensors", "format": "float-quantized",
             "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float"}}}}


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_compressed_tensors_fp8_converts_bit_exactly(tiny_llama, tmp_path, strategy):
    scales = _per_tensor if strategy == "tensor" else _per_channel
    extra = {"model.layers.0.self_attn.q_proj.input_scale": torch.tensor([0.02])}
    src = _fp8_checkpoint(tiny_llama, tmp_path / "ct", scales, CT_CONFIG, extra)
    report = convert_to_breccia(src, tmp_path / "breccia", "compressed-tensors-fp8")
    assert len(report.converted) == 14
    assert [name for name, _ in report.dropped] == ["model.layers.0.self_attn.q_proj.input_scale"]
    before = stored_tensors(src)
    for name, st in breccia_tensors(tmp_path / "breccia").items():
        scale = before[name.removesuffix(".weight") + ".weight_scale"]
        assert torch.equal(st.data.view(torch.uint8), before[name].view(torch.uint8))
        assert torch.equal(st.scale.flatten(), scale.flatten())
        assert torch.equal(breccia.dequantize(st), before[name].to(torch.float32) * scale)
    if strategy == "tensor":
        assert export_sglang_fp8(tmp_path / "breccia", tmp_path / "native").notes == []  # per tensor loads fine
        after = stored_tensors(tmp_path / "native")
        for name, t in before.items():
            if "input_scale" not in name:  # scales go from shape [1] to breccia's scalar: compare bytes
                assert torch.equal(after[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
    else:
        # Per-channel is one K block as wide as the row, so a different block size per layer
        # shape; SGLang's FP8 config has one block size per model.
        with pytest.raises(BrecciaCheckpointError, match=r"one recipe per model, found \['block\(E4M3,k=64\)"):
            export_sglang_fp8(tmp_path / "breccia", tmp_path / "native")
        assert not (tmp_path / "native").exists()  # nothing half-written


def test_fp8_weight_without_its_scale_is_refused(tiny_llama, tmp_path):
    def no_scale(t):
        return ".unrelated", torch.ones(1), torch.ones(1)

    src = _fp8_checkpoint(tiny_llama, tmp_path / "ct", no_scale, CT_CONFIG)
    with pytest.raises(BrecciaCheckpointError, match=r"model.safetensors: FP8 tensor '.*' has no '.*\.weight_scale'"):
        convert_to_breccia(src, tmp_path / "breccia", "compressed-tensors-fp8")
    assert not (tmp_path / "breccia").exists()


@pytest.mark.engine
def test_a_converted_deepseek_checkpoint_serves_like_hf(deepseek_fp8, tiny_llama, tmp_path):
    from ..engine.test_recipes_engine import _hf_greedy, _serve

    convert_to_breccia(deepseek_fp8, tmp_path / "breccia", "deepseek-fp8")
    result = _serve(tmp_path / "breccia", tmp_path)
    assert result["ok"], result
    assert result["results"][0]["output_ids"] == _hf_greedy(tiny_llama, tmp_path / "breccia")


def test_compressed_tensors_fp8_experts_convert_bit_exactly_and_routers_stay(tiny_moe, tmp_path):
    # llm-compressor ignores MoE routers (they stay high precision); every expert is one FP8 linear.
    def fp8_weight(name, t):
        return _is_linear(name, t) and ".mlp.gate." not in name

    src = _fp8_checkpoint(tiny_moe, tmp_path / "ct", _per_channel, CT_CONFIG, is_fp8=fp8_weight)
    report = convert_to_breccia(src, tmp_path / "breccia", "compressed-tensors-fp8")
    before, converted = stored_tensors(src), breccia_tensors(tmp_path / "breccia")
    experts = [n for n in before if ".mlp.experts." in n and n.endswith(".weight")]
    assert len(experts) == 3 * 6 * 3 and set(experts) <= set(converted)  # layers x experts x projections
    for name in experts:
        assert torch.equal(converted[name].data.view(torch.uint8), before[name].view(torch.uint8)), name
        assert torch.equal(converted[name].scale.flatten(), before[name.removesuffix(".weight") + ".weight_scale"].flatten())
    assert not any(".mlp.gate." in n for n in converted) and len(report.converted) == len(converted)
    # Per-channel scales span each projection's own K (64 for gate / up, 96 for down): one scale
    # per row, which the MoE kernels serve as blocks dividing both (1x32 here), not a refusal.
    from breccia_sglang.integration.inspect_report import inspect_checkpoint

    moe_rows = [line for line in inspect_checkpoint(tmp_path / "breccia", 90).splitlines() if "(MoE)" in line]
    assert len(moe_rows) == 3 and all(row.endswith("triton-fused-moe (as 1x32 blocks)") for row in moe_rows), moe_rows


# --- ModelOpt FP8 and SGLang's native FP8 (--from modelopt-fp8, --from fp8) ---------------------

# hf_quant_config.json's "quantization" section; config.json's flat form names the excluded
# modules "ignore" (as SGLang's ModelOptFp8Config reads them).
MODELOPT_FP8 = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}


def _modelopt_scales(t):
    scale = t.abs().amax() / 448  # ModelOpt stores a 0-d fp32 weight_scale per linear
    return ".weight_scale", scale, scale


def _modelopt_fp8(tiny_llama, dst, form):
    """tiny_llama as ModelOpt exports FP8: a 0-d weight_scale and input_scale per linear, and
    k_scale / v_scale under k_proj / v_proj; described in config.json (newer exports) or in
    hf_quant_config.json (older ones, config.json then has no quantization_config)."""
    static = {f"model.layers.{i}.self_attn.{name}": torch.tensor(0.05)
              for i in range(2) for name in ("k_proj.k_scale", "v_proj.v_scale")}
    static.update({name.removesuffix(".weight") + ".input_scale": torch.tensor(0.02)
                   for name, t in stored_tensors(tiny_llama).items() if _is_linear(name, t)})
    flat = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "ignore": ["lm_head"]}
    src = _fp8_checkpoint(tiny_llama, dst, _modelopt_scales, flat, static)
    if form == "hf_quant_config.json":
        config = json.loads((src / "config.json").read_text())
        del config["quantization_config"]
        (src / "config.json").write_text(json.dumps(config))
        (src / form).write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": MODELOPT_FP8}))
    return src, sorted(static)


@pytest.mark.parametrize("form", ["config.json", "hf_quant_config.json"])
def test_modelopt_fp8_converts_bit_exactly_and_drops_its_static_scales(tiny_llama, tmp_path, form):
    from sglang.srt.layers.quantization.modelopt_quant import ModelOptFp8Config

    src, static = _modelopt_fp8(tiny_llama, tmp_path / "modelopt", form)
    # The oracle for the fixture: SGLang reads it as a ModelOpt FP8 checkpoint with FP8 KV scales.
    described = (json.loads((src / form).read_text()) if form != "config.json"
                 else json.loads((src / "config.json").read_text())["quantization_config"])
    sglang_view = ModelOptFp8Config.from_config(described)
    assert sglang_view.kv_cache_quant_algo == "FP8" and sglang_view.exclude_modules == ["lm_head"]

    report = convert_to_breccia(src, tmp_path / "breccia", "modelopt-fp8")
    before, converted = stored_tensors(src), breccia_tensors(tmp_path / "breccia")
    assert len(converted) == len(report.converted) == 14 and report.kept == []
    for name, st in converted.items():
        scale = before[name.removesuffix(".weight") + ".weight_scale"]
        assert st.recipe == breccia.Float8CurrentScaling() and st.layout == breccia.PerTensor()
        assert torch.equal(st.data.view(torch.uint8), before[name].view(torch.uint8)), name
        assert torch.equal(st.scale, scale)
    dropped = dict(report.dropped)
    assert sorted(n for n in dropped if n.endswith("_scale")) == static
    assert all("per token" in dropped[n] for n in static if n.endswith("input_scale"))
    assert all("(token, KV head)" in dropped[n] for n in static if n.endswith(("k_scale", "v_scale")))
    # The source's description is not carried over: config.json now says breccia.
    assert ("hf_quant_config.json" in dropped) == (form == "hf_quant_config.json")
    assert not (tmp_path / "breccia" / "hf_quant_config.json").exists()
    config = json.loads((tmp_path / "breccia" / "config.json").read_text())["quantization_config"]
    assert config == {"quant_method": "breccia", "converted_from": "modelopt-fp8"}
    assert not set(stored_tensors(tmp_path / "breccia")) & set(static)


def test_modelopt_fp8_converts_through_the_cli_which_lists_what_it_dropped(tiny_llama, tmp_path, capsys):
    from breccia_sglang.cli import main

    src, static = _modelopt_fp8(tiny_llama, tmp_path / "modelopt", "hf_quant_config.json")
    assert main(["convert", str(src), str(tmp_path / "breccia")]) == 0  # --from as hf_quant_config.json says
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{src}: read as --from modelopt-fp8, as its quantization config says"
    assert printed[1] == f"{tmp_path / 'breccia'}: 14 weights converted, 7 tensors copied"
    dropped = [line.split(": ")[1] for line in printed if line.startswith("  dropped: ")]
    assert sorted(dropped) == sorted(static + ["hf_quant_config.json"])
    assert main(["inspect", str(tmp_path / "breccia")]) == 0


@pytest.mark.parametrize("algo, why", [
    ("NVFP4", r"quant_algo is 'NVFP4'; only 'FP8' \(per-tensor scales\) converts: its per-tensor weight_scale_2"),
    ("W4A8_AWQ", r"quant_algo is 'W4A8_AWQ'; only 'FP8' \(per-tensor scales\) converts$"),
])
def test_modelopt_other_than_fp8_is_refused_naming_its_quant_algo(tiny_llama, tmp_path, algo, why):
    config = {"quant_method": "modelopt", "quant_algo": algo}
    src = _fp8_checkpoint(tiny_llama, tmp_path / "modelopt", _modelopt_scales, config)
    with pytest.raises(BrecciaCheckpointError, match=rf"config\.json: ModelOpt {why}"):
        convert_to_breccia(src, tmp_path / "breccia", "modelopt-fp8")
    assert not (tmp_path / "breccia").exists()


@pytest.mark.parametrize("quant_config, says", [({}, "nothing"), ({"quant_method": "bitsandbytes"}, "quant_method 'bitsandbytes'")])
def test_without_from_a_config_that_names_no_format_is_refused_listing_them(tiny_llama, tmp_path, quant_config, says):
    src = _fp8_checkpoint(tiny_llama, tmp_path / "src", _per_tensor, quant_config)
    with pytest.raises(BrecciaCheckpointError, match=rf"src/config\.json: its quantization config says {says}, which "
                                                     r"names no format convert reads; pass --from \(fp8, deepseek-fp8, "):
        convert_to_breccia(src, tmp_path / "breccia")
    assert not (tmp_path / "breccia").exists()


def test_a_refusal_names_hf_quant_config_json_when_that_is_where_the_config_is(tiny_llama, tmp_path):
    src, _ = _modelopt_fp8(tiny_llama, tmp_path / "modelopt", "hf_quant_config.json")
    (src / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    with pytest.raises(BrecciaCheckpointError, match=r"modelopt/hf_quant_config\.json: ModelOpt quant_algo is 'NVFP4'"):
        convert_to_breccia(src, tmp_path / "breccia", "modelopt-fp8")


@pytest.mark.parametrize("source_format, config, why", [
    ("fp8", CT_CONFIG, r"--from fp8 needs quantization_config.quant_method 'fp8', found 'compressed-tensors'"),
    ("deepseek-fp8", {"quant_method": "fp8"}, r"needs quantization_config.weight_block_size .* --from fp8"),
    ("modelopt-fp8", {"quant_method": "fp8"}, r"needs a ModelOpt quantization config .* found quant_method 'fp8'"),
    ("compressed-tensors-fp8", {"quant_method": "fp8"}, r"needs .*'compressed-tensors', found 'fp8'"),
    ("fbgemm-fp8", CT_CONFIG, r"needs quantization_config.quant_method 'fbgemm_fp8', found 'compressed-tensors'"),
])
def test_a_source_format_that_is_not_the_checkpoints_is_refused(tiny_llama, tmp_path, source_format, config, why):
    src = _fp8_checkpoint(tiny_llama, tmp_path / "src", _per_tensor, config)
    with pytest.raises(BrecciaCheckpointError, match=why):
        convert_to_breccia(src, tmp_path / "breccia", source_format)


CT_BLOCK_CONFIG = {"quant_method": "compressed-tensors", "format": "float-quantized",
                   "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                       "num_bits": 8, "type": "float", "strategy": "block", "block_structure": BLOCK,
                       "symmetric": True, "dynamic": False}}}}


def test_compressed_tensors_block_fp8_converts_as_the_same_blocks_from_deepseek_do(tiny_llama, tmp_path):
    from sglang.srt.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig

    # The oracle for the fixture: SGLang reads its block structure as the weight block size.
    assert CompressedTensorsConfig.from_config(CT_BLOCK_CONFIG).weight_block_size == BLOCK

    def ct_block_scales(t):
        _, scale, expanded = _deepseek_scales(t)
        return ".weight_scale", scale, expanded

    src = _fp8_checkpoint(tiny_llama, tmp_path / "ct", ct_block_scales, CT_BLOCK_CONFIG)
    report = convert_to_breccia(src, tmp_path / "breccia", "compressed-tensors-fp8")
    assert len(report.converted) == 14 and report.kept == []
    before = stored_tensors(src)
    for name, st in breccia_tensors(tmp_path / "breccia").items():
        data, block_scale = before[name], before[name.removesuffix(".weight") + ".weight_scale"]
        assert st.layout == breccia.PerBlockK(BLOCK[1]) and torch.equal(st.data.view(torch.uint8), data.view(torch.uint8))
        assert torch.equal(breccia.dequantize(st), data.to(torch.float32) * _block_expand(block_scale, *data.shape, *BLOCK))


def test_compressed_tensors_block_without_its_structure_is_refused_naming_the_field(tiny_llama, tmp_path):
    config = json.loads(json.dumps(CT_BLOCK_CONFIG))
    del config["config_groups"]["group_0"]["weights"]["block_structure"]
    src = _fp8_checkpoint(tiny_llama, tmp_path / "ct", _per_tensor, config)
    with pytest.raises(BrecciaCheckpointError, match=r"config.json: quantization_config.config_groups.group_0.weights"
                                                     r".block_structure is None; the block strategy needs \[rows, K\]"):
        convert_to_breccia(src, tmp_path / "breccia", "compressed-tensors-fp8")


def test_fbgemm_fp8_converts_per_channel_and_drops_its_activation_bound(tiny_llama, tmp_path):
    # FBGEMM FP8 (Meta's Llama 3.1 405B FP8): one fp32 scale per output channel, (N, 1), and a
    # 0-d input_scale_ub per linear; SGLang 0.5.23 has no loader for it.
    config = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}
    bounds = {name.removesuffix(".weight") + ".input_scale_ub": torch.tensor(1200.0)
              for name, t in stored_tensors(tiny_llama).items() if _is_linear(name, t)}
    src = _fp8_checkpoint(tiny_llama, tmp_path / "fbgemm", _per_channel, config, bounds)
    report = convert_to_breccia(src, tmp_path / "breccia", "fbgemm-fp8")
    assert len(report.converted) == 14 and sorted(n for n, _ in report.dropped) == sorted(bounds)
    before = stored_tensors(src)
    for name, st in breccia_tensors(tmp_path / "breccia").items():
        scale = before[name.removesuffix(".weight") + ".weight_scale"]
        assert st.layout == breccia.PerBlockK(before[name].shape[1]), name  # per channel: one block per row
        assert torch.equal(st.data.view(torch.uint8), before[name].view(torch.uint8))
        assert torch.equal(breccia.dequantize(st), before[name].to(torch.float32) * scale)


def test_per_tensor_breccia_to_sglang_native_fp8_and_back_is_the_same_checkpoint(tiny_llama, tmp_path):
    # --from fp8 is export-sglang-fp8's inverse: every weight comes back with its codes, scale,
    # recipe and layout.
    src = _fp8_checkpoint(tiny_llama, tmp_path / "ct", _per_tensor, CT_CONFIG)
    convert_to_breccia(src, tmp_path / "breccia", "compressed-tensors-fp8")
    export_sglang_fp8(tmp_path / "breccia", tmp_path / "native")
    report = convert_to_breccia(tmp_path / "native", tmp_path / "again", "fp8")
    first, again = breccia_tensors(tmp_path / "breccia"), breccia_tensors(tmp_path / "again")
    assert len(report.converted) == len(again) == 14 and set(first) == set(again)
    for name, st in first.items():
        assert (again[name].recipe, again[name].layout) == (st.recipe, st.layout), name
        assert torch.equal(again[name].data.view(torch.uint8), st.data.view(torch.uint8)), name
        assert torch.equal(again[name].scale, st.scale), name
    assert stored_tensors(tmp_path / "again").keys() == stored_tensors(tmp_path / "breccia").keys()


def test_block_fp8_converts_the_same_from_fp8_as_from_deepseek_fp8(deepseek_fp8, tmp_path):
    convert_to_breccia(deepseek_fp8, tmp_path / "deepseek", "deepseek-fp8")
    convert_to_breccia(deepseek_fp8, tmp_path / "fp8", "fp8")
    by_deepseek, by_fp8 = stored_tensors(tmp_path / "deepseek"), stored_tensors(tmp_path / "fp8")
    assert by_deepseek.keys() == by_fp8.keys()
    assert all(torch.equal(by_fp8[n].view(torch.uint8), t.view(torch.uint8)) for n, t in by_deepseek.items())


@pytest.mark.engine
def test_a_converted_modelopt_checkpoint_serves_like_hf(tiny_llama, tmp_path):
    from ..engine.test_recipes_engine import _hf_greedy, _serve

    src, _ = _modelopt_fp8(tiny_llama, tmp_path / "modelopt", "hf_quant_config.json")
    convert_to_breccia(src, tmp_path / "breccia", "modelopt-fp8")
    result = _serve(tmp_path / "breccia", tmp_path)
    assert result["ok"], result
    assert result["results"][0]["output_ids"] == _hf_greedy(tiny_llama, tmp_path / "breccia")
