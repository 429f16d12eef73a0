"""AutoAWQ, GPTQ and compressed-tensors (llm-compressor W4A16) INT4 checkpoints into breccia
INT4: every converted weight dequantizes to what SGLang's own code makes of the source, bit for
bit, and what breccia cannot hold is refused by tensor and field.

Source tensors are random int32 words, so every nibble value and every packing position
occurs; the oracles are SGLang's (its AWQ Triton dequantizer; its AWQ, GPTQ and
compressed-tensors unpackers, with the "gptq" format's z - 1 as its GPTQ kernels apply it and
compressed-tensors' zero points unpacked as its W4A16 scheme does), never our packers.
"""

from __future__ import annotations

import json

import breccia
import pytest
import torch
from safetensors.torch import save_file

from breccia_sglang.errors import BrecciaCheckpointError
from breccia_sglang.format.convert import INT4_ON_DISK_NOTE, convert_to_breccia
from breccia_sglang.format.int4_sources import awq_to_breccia, compressed_tensors_to_breccia, gptq_to_breccia
from breccia_sglang.weights.packing import pack_low_first
from breccia_sglang.weights.sglang_layouts import AwqInt4, to_awq, to_gptq

from ..helpers import breccia_tensors, stored_tensors
from ..weights.test_sglang_layouts import awq_dequantized, same_bits

N, K = 40, 96  # N: five AWQ words; K: three groups of 32 (or one per-channel group)


def words(*shape, seed):
    return torch.randint(-2**31, 2**31 - 1, shape, dtype=torch.int32, generator=torch.Generator().manual_seed(seed))


def scales(groups, n, dtype, seed):
    return (torch.rand(groups, n, generator=torch.Generator().manual_seed(seed)) * 0.1 + 1e-3).to(dtype)


def gptq_zeros(groups: int, n: int, stored: int | None, seed: int) -> torch.Tensor:
    """(groups, N/8) qzeros: every nibble ``stored``, or random nibbles when None."""
    if stored is None:
        return words(groups, n // 8, seed=seed)
    word = sum(stored << (4 * j) for j in range(8))
    return torch.full((groups, n // 8), word - (1 << 32 if word >= 1 << 31 else 0), dtype=torch.int32)


def gptq_reference(qweight, qzeros, scale, group, v2):
    """(N, K) fp32: GPTQ's dequantization as SGLang's XPU GPTQ kernel reads the checkpoint."""
    from sglang.srt.hardware_backend.xpu.quantization.int4pack_utils import unpack_gptq_qweight, unpack_gptq_qzeros

    zeros = unpack_gptq_qzeros(qzeros).to(torch.float32) + (0 if v2 else 1)
    values = (unpack_gptq_qweight(qweight).to(torch.float32) - zeros.repeat_interleave(group, 0)) \
        * scale.to(torch.float32).repeat_interleave(group, 0)
    return values.T


def awq_reference(qweight, qzeros, scale):
    """(N, K) fp32: (u - z) * s with u and z unpacked by SGLang's own AWQ unpacker."""
    from sglang.srt.hardware_backend.xpu.quantization.int4pack_utils import unpack_awq_to_codes

    group = qweight.shape[0] // scale.shape[0]
    zeros = unpack_awq_to_codes(qzeros, qzeros.shape[0]).to(torch.float32).repeat_interleave(group, 0)
    values = (unpack_awq_to_codes(qweight, qweight.shape[0]).to(torch.float32) - zeros) \
        * scale.to(torch.float32).repeat_interleave(group, 0)
    return values.T


@pytest.mark.parametrize("group", [32, K])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_awq_converts_to_what_sglangs_awq_dequantizers_compute(group, dtype):
    qweight, qzeros, scale = words(K, N // 8, seed=1), words(K // group, N // 8, seed=2), scales(K // group, N, dtype, 3)
    st = awq_to_breccia("layer", qweight, qzeros, scale)
    assert st.recipe == breccia.INT4Scaling(group_size=group, signed=False, symmetric=False,
                                            scale_dtype="fp16" if dtype == torch.float16 else "fp32")
    assert st.data.shape == (N, K) and st.layout == breccia.PerBlockK(group)
    assert torch.equal(breccia.dequantize(st), awq_reference(qweight, qzeros, scale))
    if dtype == torch.float16:
        # SGLang's AWQ Triton kernel computes (u - z) * s in fp16: one rounding of the exact
        # product breccia computes in fp32 (a 5-bit integer times an 11-bit significand).
        # (In bf16 that kernel rounds more than once, so bf16 is held to the fp32 reference above.)
        assert same_bits(awq_dequantized(AwqInt4(qweight, qzeros, scale)), breccia.dequantize(st).to(dtype))


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("group", [32, K])
def test_symmetric_gptq_becomes_signed_int4_exactly(v2, group):
    qweight, scale = words(K // 8, N, seed=4), scales(K // group, N, torch.float16, 5)
    qzeros = gptq_zeros(K // group, N, 8 if v2 else 7, seed=0)
    g_idx = torch.arange(K, dtype=torch.int32) // group  # desc_act false still stores the trivial g_idx
    st = gptq_to_breccia("layer", qweight, qzeros, scale, g_idx, sym=True, v2=v2)
    assert st.recipe == breccia.INT4Scaling(group_size=group, signed=True, symmetric=True, scale_dtype="fp16")
    assert st.zero_point is None
    assert torch.equal(breccia.dequantize(st), gptq_reference(qweight, qzeros, scale, group, v2))


@pytest.mark.parametrize("v2", [False, True])
def test_asymmetric_gptq_keeps_its_zero_points(v2):
    qweight, scale = words(K // 8, N, seed=6), scales(K // 32, N, torch.float16, 7)
    qzeros = words(K // 32, N // 8, seed=8)
    if not v2:  # format "gptq" cannot store a zero point of 0 (z - 1 wraps to 15); keep stored nibbles < 15
        qzeros &= 0x77777777
    st = gptq_to_breccia("layer", qweight, qzeros, scale, None, sym=False, v2=v2)
    assert st.recipe == breccia.INT4Scaling(group_size=32, signed=False, symmetric=False, scale_dtype="fp16")
    assert torch.equal(breccia.dequantize(st), gptq_reference(qweight, qzeros, scale, 32, v2))


def compressed_tensors_reference(weight_packed, scale, zero_point):
    """(N, K) fp32 as SGLang reads pack-quantized INT4: codes offset by 8 (uint4b8) without zero
    points, else (u - z) with z unpacked as its W4A16 scheme unpacks them (``unpack_cols``)."""
    from sglang.srt.hardware_backend.xpu.quantization.int4pack_utils import unpack_compressed_tensors_qweight
    from sglang.srt.layers.quantization.utils import unpack_cols

    codes = unpack_compressed_tensors_qweight(weight_packed).to(torch.float32)
    n, groups = scale.shape
    if zero_point is None:
        zeros = torch.full((n, groups), 8.0)
    else:
        zeros = unpack_cols(zero_point.T.contiguous(), 4, groups, n).T.to(torch.float32)
    group = codes.shape[1] // groups
    return (codes - zeros.repeat_interleave(group, 1)) * scale.to(torch.float32).repeat_interleave(group, 1)


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("group, dtype", [(32, torch.bfloat16), (K, torch.float16)])
def test_compressed_tensors_pack_quantized_converts_exactly(asymmetric, group, dtype):
    weight_packed, scale = words(N, K // 8, seed=11), scales(N, K // group, dtype, 12)
    zero_point = words(N // 8, K // group, seed=13) if asymmetric else None
    shape = torch.tensor([N, K])
    st = compressed_tensors_to_breccia("layer", weight_packed, scale, zero_point, None, shape)
    assert st.recipe == breccia.INT4Scaling(group_size=group, signed=not asymmetric, symmetric=not asymmetric,
                                            scale_dtype="fp16" if dtype == torch.float16 else "fp32")
    assert torch.equal(breccia.dequantize(st), compressed_tensors_reference(weight_packed, scale, zero_point))


def test_compressed_tensors_refusals_name_the_tensor_and_the_reason():
    weight_packed, scale = words(N, K // 8, seed=14), scales(N, K // 32, torch.float16, 15)
    with pytest.raises(BrecciaCheckpointError, match=r"o_proj\.weight_g_idx: act-order quantization"):
        compressed_tensors_to_breccia("o_proj", weight_packed, scale, None, torch.arange(K).flip(0) // 32, None)
    with pytest.raises(BrecciaCheckpointError, match=r"o_proj\.weight_shape: \[40, 90\], but weight_packed holds \[40, 96\] codes"):
        compressed_tensors_to_breccia("o_proj", weight_packed, scale, None, None, torch.tensor([N, 90]))
    with pytest.raises(BrecciaCheckpointError, match=r"o_proj\.weight_scale: shape \[40, 5\] is not \(N, K/G\)"):
        compressed_tensors_to_breccia("o_proj", weight_packed, scales(N, 5, torch.float16, 0), None, None, None)


def test_gptq_refusals_name_the_tensor_and_the_reason():
    qweight, scale = words(K // 8, N, seed=9), scales(K // 32, N, torch.float16, 10)
    act_order = torch.arange(K).flip(0) // 32
    with pytest.raises(BrecciaCheckpointError, match=r"mlp\.down_proj\.g_idx: act-order quantization puts K rows"):
        gptq_to_breccia("mlp.down_proj", qweight, None, scale, act_order, sym=True, v2=False)
    with pytest.raises(BrecciaCheckpointError, match=r"mlp\.down_proj\.qzeros: sym is true, so every zero point"):
        gptq_to_breccia("mlp.down_proj", qweight, gptq_zeros(K // 32, N, 3, 0), scale, None, sym=True, v2=False)
    with pytest.raises(BrecciaCheckpointError, match=r"mlp\.down_proj\.qzeros: 40 zero points read as 16"):
        wrapped = gptq_zeros(K // 32, N, 14, 0)
        wrapped[0] = gptq_zeros(1, N, 15, 0)[0]  # one group row of z - 1 = -1
        gptq_to_breccia("mlp.down_proj", qweight, wrapped, scale, None, sym=False, v2=False)
    with pytest.raises(BrecciaCheckpointError, match=r"mlp\.down_proj\.scales: shape \[5, 40\] is not \(K/G, N\)"):
        gptq_to_breccia("mlp.down_proj", qweight, None, scales(5, N, torch.float16, 0), None, sym=True, v2=False)


# --- whole checkpoints, through the CLI ----------------------------------------------------------

GROUP = 32
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}
CONFIGS = {
    "awq": AWQ_CONFIG,
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False, "sym": True,
             "checkpoint_format": "gptq"},
    "compressed-tensors-int4": {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": GROUP}}}},
}


def is_linear(name, t):
    return name.endswith(".weight") and t.ndim == 2 and "embed" not in name and "lm_head" not in name


def layer_in(source_format: str, prefix: str, t: torch.Tensor) -> dict:
    """One linear RTN-quantized in groups of 32 as ``source_format`` stores it (fp16 scales):
    AWQ zero-point, GPTQ symmetric (format "gptq": zero points stored as 8 - 1), compressed-tensors
    symmetric pack-quantized (codes offset by 8, packed along K)."""
    symmetric = source_format != "awq"
    recipe = breccia.INT4Scaling(group_size=GROUP, signed=symmetric, symmetric=symmetric)
    st = breccia.cast(t.to(torch.float32), recipe)
    packed = pack_low_first(st.data)
    if source_format == "awq":
        awq = to_awq(packed, st.scale, st.zero_point, recipe, dtype=torch.float16, name=prefix)
        return {f"{prefix}.qweight": awq.qweight, f"{prefix}.qzeros": awq.qzeros, f"{prefix}.scales": awq.scales}
    n, k = t.shape
    if source_format == "gptq":
        gptq = to_gptq(packed, st.scale, None, recipe, dtype=torch.float16, name=prefix)
        return {f"{prefix}.qweight": gptq.qweight, f"{prefix}.scales": gptq.scales,
                f"{prefix}.qzeros": gptq_zeros(k // GROUP, n, 7, seed=0),
                f"{prefix}.g_idx": torch.arange(k, dtype=torch.int32) // GROUP}
    return {f"{prefix}.weight_packed": (packed ^ 0x88).view(torch.int32), f"{prefix}.weight_scale": st.scale.half(),
            f"{prefix}.weight_shape": torch.tensor([n, k])}


def int4_checkpoint(model, dst, source_format="awq", quant_config=None, quantized=is_linear):
    """``model`` as ``source_format``'s tools write it: every ``quantized`` linear in that layout,
    everything else in fp16."""
    out = {}
    for name, t in stored_tensors(model).items():
        if quantized(name, t):
            out.update(layer_in(source_format, name.removesuffix(".weight"), t))
        else:
            out[name] = t.to(torch.float16)
    dst.mkdir()
    save_file(out, str(dst / "model.safetensors"))
    config = json.loads((model / "config.json").read_text())
    config.update(quantization_config=quant_config or CONFIGS[source_format], torch_dtype="float16")
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def reference_of(source_format: str, source: dict, prefix: str) -> torch.Tensor:
    """(N, K) fp32: the layer's values as SGLang's own unpackers read the source."""
    if source_format == "awq":
        return awq_reference(*(source[prefix + part] for part in (".qweight", ".qzeros", ".scales")))
    if source_format == "gptq":
        return gptq_reference(source[f"{prefix}.qweight"], source[f"{prefix}.qzeros"], source[f"{prefix}.scales"],
                              GROUP, v2=False)
    return compressed_tensors_reference(source[f"{prefix}.weight_packed"], source[f"{prefix}.weight_scale"], None)


@pytest.fixture()
def tiny_awq(tiny_llama, tmp_path):
    return int4_checkpoint(tiny_llama, tmp_path / "awq")


@pytest.mark.parametrize("source_format", list(CONFIGS))
def test_an_int4_checkpoint_converts_through_the_cli_and_inspects_clean(source_format, tiny_llama, tmp_path, capsys):
    from breccia_sglang.cli import main

    src, dst = int4_checkpoint(tiny_llama, tmp_path / "src", source_format), tmp_path / "breccia"
    assert main(["convert", str(src), str(dst), "--from", source_format]) == 0
    printed = capsys.readouterr().out
    assert "14 weights converted, 7 tensors copied" in printed and INT4_ON_DISK_NOTE in printed
    source, converted = stored_tensors(src), breccia_tensors(dst)
    assert len(converted) == 14
    for name, st in converted.items():
        assert torch.equal(breccia.dequantize(st), reference_of(source_format, source, name.removesuffix(".weight")))
    plain = {name: t for name, t in stored_tensors(dst).items() if name in source}
    assert sorted(plain) == sorted(name for name, t in stored_tensors(tiny_llama).items() if not is_linear(name, t))
    assert all(torch.equal(t, source[name]) for name, t in plain.items())
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "breccia", "converted_from": source_format}
    assert main(["inspect", str(dst)]) == 0


def test_awq_experts_convert_one_by_one_and_the_router_stays(tiny_moe, tmp_path):
    from breccia_sglang.cli import main

    # AutoAWQ leaves MoE routers unquantized (modules_to_not_convert); every expert is one linear.
    src = int4_checkpoint(tiny_moe, tmp_path / "awq", quantized=lambda name, t: is_linear(name, t)
                          and ".mlp.gate." not in name)
    report = convert_to_breccia(src, tmp_path / "breccia", "awq", progress=False)
    converted = breccia_tensors(tmp_path / "breccia")
    assert sorted(converted) == sorted(name for name, _ in report.converted)
    assert len([n for n in converted if ".mlp.experts." in n]) == 3 * 6 * 3  # layers x experts x projections
    assert "model.layers.0.mlp.gate.weight" in stored_tensors(tmp_path / "breccia")
    assert main(["inspect", str(tmp_path / "breccia")]) == 0


def ct_group(**weights_or_group):
    """CONFIGS' compressed-tensors group 0 with some of its fields changed."""
    group = json.loads(json.dumps(CONFIGS["compressed-tensors-int4"]["config_groups"]["group_0"]))
    for key, value in weights_or_group.items():
        (group["weights"] if key in group["weights"] else group)[key] = value
    return {"config_groups": {"group_0": group}}


@pytest.mark.parametrize("source_format, change, message", [
    ("awq", {"bits": 8}, r"quantization_config\.bits is 8; breccia holds 4-bit INT4 only"),
    ("awq", {"version": "gemv"}, r"AWQ version 'gemv' packs its words differently"),
    ("awq", {"quant_method": "gptq"}, r"--from awq needs quantization_config\.quant_method 'awq', found 'gptq'"),
    ("gptq", {"checkpoint_format": "marlin"}, r"GPTQ checkpoint_format 'marlin' does not convert"),
    ("compressed-tensors-int4", ct_group(num_bits=8),
     r"quantization_config\.config_groups\.group_0\.weights are 8-bit int; breccia holds 4-bit int only"),
    ("compressed-tensors-int4", ct_group(input_activations={"num_bits": 8, "type": "int"}),
     r"quantization_config\.config_groups\.group_0 quantizes activations too; only W4A16 converts"),
    ("compressed-tensors-int4", {"format": "marlin-24"},
     r"quantization_config\.config_groups\.group_0 has format 'marlin-24'; only 'pack-quantized'"),
])
def test_a_source_config_breccia_cannot_hold_is_refused_naming_the_field(tiny_llama, tmp_path, source_format,
                                                                         change, message):
    src = int4_checkpoint(tiny_llama, tmp_path / "src", source_format, {**CONFIGS[source_format], **change})
    with pytest.raises(BrecciaCheckpointError, match=rf"config\.json: {message}"):
        convert_to_breccia(src, tmp_path / "breccia", source_format, progress=False)
    assert not (tmp_path / "breccia").exists()


def without(checkpoint, name):
    """``checkpoint`` with tensor ``name`` deleted from its one file."""
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(checkpoint / "model.safetensors"))
    return checkpoint


def test_a_qweight_without_its_scales_is_refused_naming_the_file(tiny_awq, tmp_path):
    src = without(tiny_awq, "model.layers.1.mlp.up_proj.scales")
    with pytest.raises(BrecciaCheckpointError, match=r"^model\.safetensors: 'model\.layers\.1\.mlp\.up_proj\.qweight' "
                                                     r"has no 'model\.layers\.1\.mlp\.up_proj\.scales'"):
        convert_to_breccia(src, tmp_path / "breccia", "awq", progress=False)


def test_scales_without_their_codes_are_refused_not_dropped(tiny_awq, tmp_path):
    # e.g. a layer in another scheme: its scales would otherwise vanish with nothing said.
    src = without(tiny_awq, "model.layers.0.self_attn.o_proj.qweight")
    with pytest.raises(BrecciaCheckpointError, match=r"'model\.layers\.0\.self_attn\.o_proj\.(qzeros|scales)' has no "
                                                     r"'model\.layers\.0\.self_attn\.o_proj\.qweight' beside it"):
        convert_to_breccia(src, tmp_path / "breccia", "awq", progress=False)


@pytest.mark.engine
def test_a_converted_awq_checkpoint_serves_like_hf(tiny_awq, tiny_llama, tmp_path):
    from ..engine.test_recipes_engine import _hf_greedy, _serve

    convert_to_breccia(tiny_awq, tmp_path / "breccia", "awq", progress=False)
    result = _serve(tmp_path / "breccia", tmp_path)
    assert result["ok"], result
    assert result["results"][0]["output_ids"] == _hf_greedy(tiny_llama, tmp_path / "breccia")
