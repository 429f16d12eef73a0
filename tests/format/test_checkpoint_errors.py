"""Bad breccia checkpoints are refused before anything loads, with an error naming the
file and tensor; `breccia-sglang inspect` reports it in one line with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import breccia
import pytest
import torch
from breccia.bridges import save_safetensors
from safetensors.torch import save_file

from breccia_sglang.format.reader import BrecciaCheckpoint
from breccia_sglang.errors import BrecciaCheckpointError

NAME = "model.layers.0.mlp.down_proj.weight"


def _fp8(shape=(32, 64)):
    return breccia.cast(torch.randn(*shape), breccia.Float8CurrentScaling())


def _write(path, tensors: dict, metadata: dict):
    path.mkdir(exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata=metadata)
    return path


def _good_parts(st=None):
    st = st or _fp8()
    tensors = {f"{NAME}.data": st.data, f"{NAME}.scale": st.scale}
    config = json.dumps({"recipe": {"name": "current", "fields": {"fp8_format": "E4M3"}},
                         "layout": {"name": "per_tensor", "fields": {}}})
    return tensors, {f"{NAME}.config": config}


def test_a_valid_checkpoint_written_by_breccia_opens(tmp_path):
    st = _fp8()
    save_safetensors({NAME: st}, str(tmp_path / "model.safetensors"))
    ckpt = BrecciaCheckpoint.open(tmp_path)
    entry = ckpt.entries[NAME]
    assert entry.recipe == st.recipe and entry.layout == st.layout
    assert entry.data.shape == (32, 64) and entry.data.dtype == "F8_E4M3" and entry.scale.shape == ()


def test_missing_scale_names_the_tensor_and_file(tmp_path):
    tensors, meta = _good_parts()
    del tensors[f"{NAME}.scale"]
    with pytest.raises(BrecciaCheckpointError, match=rf"model.safetensors: .*missing tensor '{NAME}.scale'"):
        BrecciaCheckpoint.open(_write(tmp_path, tensors, meta))


def test_scale_shape_that_breaks_the_layout(tmp_path):
    st = breccia.cast(torch.randn(32, 64), breccia.Float8BlockScaling(block_k=32))
    tensors = {f"{NAME}.data": st.data, f"{NAME}.scale": st.scale[:, :1].contiguous()}  # (32, 1), needs (32, 2)
    meta = {f"{NAME}.config": json.dumps({"recipe": {"name": "block", "fields": {"block_k": 32}},
                                          "layout": {"name": "per_block_k", "fields": {"block_size": 32}}})}
    with pytest.raises(BrecciaCheckpointError, match=rf"'{NAME}.scale' has shape \[32, 1\].*per_block_k"):
        BrecciaCheckpoint.open(_write(tmp_path, tensors, meta))


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"recipe": {"name": "fp3", "fields": {}}, "layout": {"name": "per_tensor"}}', "unknown breccia recipe 'fp3'"),
        ('{"recipe": {"name": "current", "fields": {}}, "layout": {"name": "diagonal"}}', "unknown breccia layout 'diagonal'"),
        ('{"recipe": {"name": "current", "fields": {"fp8_format": "E9M9"}}, "layout": {"name": "per_tensor"}}', "invalid fields"),
        ('{"recipe": {"name": "current", "fields": {"bogus": 1}}, "layout": {"name": "per_tensor"}}', "invalid fields"),
        ("not json", "recipe JSON is malformed"),
        ('{"layout": {}}', "recipe JSON is malformed"),
    ],
)
def test_unknown_or_malformed_recipe_json(tmp_path, config, message):
    tensors, _ = _good_parts()
    with pytest.raises(BrecciaCheckpointError, match=rf"model.safetensors: breccia tensor '{NAME}': .*{message}"):
        BrecciaCheckpoint.open(_write(tmp_path, tensors, {f"{NAME}.config": config}))


def test_checkpoint_without_breccia_tensors(tmp_path):
    _write(tmp_path, {"model.norm.weight": torch.ones(4)}, {})
    with pytest.raises(BrecciaCheckpointError, match=r"no breccia tensors found.*breccia-sglang quantize SRC DST"):
        BrecciaCheckpoint.open(tmp_path)


@pytest.mark.parametrize("quant_config, source", [
    ({"quant_method": "awq", "bits": 4}, "awq"),
    ({"quant_method": "gptq", "bits": 4}, "gptq"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {}}},
     "compressed-tensors-int4"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"format": "float-quantized"}}},
     "compressed-tensors-fp8"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8"),
    ({"quant_method": "fp8", "activation_scheme": "static"}, "fp8"),
    ({"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}, "modelopt-fp8"),
    ({"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0}, "fbgemm-fp8"),
])
def test_a_checkpoint_in_a_format_convert_reads_is_met_with_the_command(tmp_path, quant_config, source):
    # Its FP8 codes are not breccia tensors either; the command to run is the more useful answer.
    _write(tmp_path, {"model.norm.weight": torch.ones(4), "model.layers.0.mlp.up_proj.weight":
                      torch.ones(4, 4).to(torch.float8_e4m3fn)}, {})
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": quant_config}))
    with pytest.raises(BrecciaCheckpointError, match=rf"no breccia tensors found.*convert it with `breccia-sglang "
                                                     rf"convert {tmp_path} DST --from {source}`"):
        BrecciaCheckpoint.open(tmp_path)


def test_a_modelopt_checkpoint_described_by_hf_quant_config_json_is_met_with_the_command(tmp_path):
    # Older ModelOpt exports (nvidia/Llama-3.1-8B-Instruct-FP8) leave config.json without a
    # quantization_config and describe it in hf_quant_config.json, which SGLang also reads.
    _write(tmp_path, {"model.norm.weight": torch.ones(4)}, {})
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8"}}))
    with pytest.raises(BrecciaCheckpointError, match=r"says ModelOpt quant_algo 'FP8': convert it with "
                                                     rf"`breccia-sglang convert {tmp_path} DST --from modelopt-fp8`"):
        BrecciaCheckpoint.open(tmp_path)


def test_a_modelopt_nvfp4_checkpoint_is_not_offered_a_conversion(tmp_path):
    _write(tmp_path, {"model.norm.weight": torch.ones(4)}, {})
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "modelopt",
                                                                              "quant_algo": "NVFP4"}}))
    with pytest.raises(BrecciaCheckpointError, match=r"no breccia tensors found.*breccia-sglang quantize SRC DST"):
        BrecciaCheckpoint.open(tmp_path)


def test_data_without_config_is_not_silently_skipped(tmp_path):
    tensors, _ = _good_parts()
    with pytest.raises(BrecciaCheckpointError, match=rf"'{NAME}.data' looks like breccia data .* no '{NAME}.config'"):
        BrecciaCheckpoint.open(_write(tmp_path, tensors, {}), require_breccia=False)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_codes_beside_breccia_tensors_but_not_breccia_are_refused(tmp_path, dtype):
    # A weight left in another FP8 format (a checkpoint half converted, or two merged) would
    # load its codes as values without their scale.
    tensors, meta = _good_parts()
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.randn(8, 16).to(dtype)
    tensors["model.layers.0.mlp.up_proj.weight_scale"] = torch.tensor(0.01)
    with pytest.raises(BrecciaCheckpointError, match=r"model.safetensors: 'model.layers.0.mlp.up_proj.weight' is "
                                                     r"F8_E(4M3|5M2) but not a breccia tensor .* without their scales"):
        BrecciaCheckpoint.open(_write(tmp_path, tensors, meta))


def test_fp8_data_stored_as_float32_is_refused(tmp_path):
    tensors, meta = _good_parts()
    tensors[f"{NAME}.data"] = tensors[f"{NAME}.data"].to(torch.float32)
    with pytest.raises(BrecciaCheckpointError, match=rf"'{NAME}.data' is F32"):
        BrecciaCheckpoint.open(_write(tmp_path, tensors, meta))


def test_uint8_fp8_codes_are_accepted(tmp_path):
    tensors, meta = _good_parts()
    tensors[f"{NAME}.data"] = tensors[f"{NAME}.data"].view(torch.uint8)
    assert BrecciaCheckpoint.open(_write(tmp_path, tensors, meta)).entries[NAME].data.dtype == "U8"


def test_index_listing_a_missing_shard(tmp_path):
    tensors, meta = _good_parts()
    _write(tmp_path, tensors, meta)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {f"{NAME}.data": "model.safetensors", "x": "model-00002.safetensors"}})
    )
    with pytest.raises(BrecciaCheckpointError, match="lists missing file.*model-00002.safetensors"):
        BrecciaCheckpoint.open(tmp_path)


def test_truncated_safetensors_file(tmp_path):
    tensors, meta = _good_parts()
    _write(tmp_path, tensors, meta)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(BrecciaCheckpointError, match="model.safetensors: unreadable safetensors header"):
        BrecciaCheckpoint.open(tmp_path)


def _inspect(path):
    return subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "inspect", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_inspect_reports_a_bad_checkpoint_in_one_line(tmp_path):
    tensors, meta = _good_parts()
    del tensors[f"{NAME}.scale"]
    done = _inspect(_write(tmp_path, tensors, meta))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"missing tensor '{NAME}.scale'" in lines[0]


def test_inspect_lists_layers_and_the_kernel_that_would_run(tmp_path):
    save_safetensors({NAME: _fp8()}, str(tmp_path / "model.safetensors"))
    done = _inspect(tmp_path)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith(NAME))
    assert "current(E4M3)/per_tensor" in row and "32x64" in row and "emulated" in row
    assert done.stdout.strip().endswith("OK")


def _poisoned(recipe, part: str, value):
    """A real breccia tensor with one value of ``part`` (scale or zero_point) replaced."""
    st = breccia.cast(torch.randn(32, 64), recipe)
    poisoned = getattr(st, part).clone()
    poisoned.view(-1)[-1] = value  # the last element: the error must find it, not just the first
    return breccia.ScaledTensor(st.data, poisoned if part == "scale" else st.scale, st.recipe, st.layout,
                                poisoned if part == "zero_point" else st.zero_point)


POISONED = {
    "fp8-nan-scale": (breccia.Float8CurrentScaling(), "scale", float("nan")),
    "fp8-negative-scale": (breccia.Float8CurrentScaling(), "scale", -0.5),
    "fp8-block-inf-scale": (breccia.Float8BlockScaling(block_k=32), "scale", float("inf")),
    "mxfp8-e8m0-nan-code": (breccia.MXFP8BlockScaling(), "scale", 255),  # E8M0 0xFF is NaN
    "nvfp4-e4m3-nan-code": (breccia.NVFP4BlockScaling(), "scale", 0x7F),  # E4M3 S.1111.111 is NaN
    "nvfp4-negative-code": (breccia.NVFP4BlockScaling(), "scale", 0xB8),  # E4M3 -1.0
    "int4-nan-zero-point": (breccia.INT4Scaling(group_size=32, symmetric=False, signed=False), "zero_point",
                            float("nan")),
}


@pytest.mark.parametrize("case", list(POISONED))
def test_nan_inf_or_negative_scales_are_refused_by_name(case, tmp_path):
    recipe, part, value = POISONED[case]
    save_safetensors({NAME: _poisoned(recipe, part, value)}, str(tmp_path / "model.safetensors"))
    ckpt = BrecciaCheckpoint.open(tmp_path)  # headers alone cannot show a value
    with pytest.raises(BrecciaCheckpointError) as failure:
        ckpt.check_scale_values()
    message = str(failure.value)
    assert str(tmp_path / "model.safetensors") in message and f"'{NAME}.{part}'" in message
    assert "1 bad value(s)" in message
    done = _inspect(tmp_path)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"breccia-sglang: error: {message}"


@pytest.mark.parametrize("recipe", [breccia.Float8BlockScaling(block_k=32), breccia.MXFP8BlockScaling(),
                                    breccia.NVFP4BlockScaling()], ids=["fp8-block", "mxfp8", "nvfp4"])
def test_valid_scales_including_zero_pass_the_value_check(recipe, tmp_path):
    zero = 0 if recipe.name != "fp8-block" else 0.0  # an all-zero block may carry a zero scale
    save_safetensors({NAME: _poisoned(recipe, "scale", zero)}, str(tmp_path / "model.safetensors"))
    BrecciaCheckpoint.open(tmp_path).check_scale_values()
    assert _inspect(tmp_path).returncode == 0


class _WritesAMarker:
    """Unpickling this object creates ``path``: a pickle that runs code when loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_only_checkpoint(directory, marker):
    import pickle

    directory.mkdir()
    (directory / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.layers.0.mlp.down_proj.weight": _WritesAMarker(marker)}, f)
    return directory


def test_a_pickle_only_checkpoint_is_named_and_never_loaded(tmp_path):
    import pickle

    marker = tmp_path / "the-pickle-ran"
    directory = _pickle_only_checkpoint(tmp_path / "ckpt", marker)
    with open(directory / "pytorch_model.bin", "rb") as f:  # the pickle is armed: loading it runs code
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(BrecciaCheckpointError) as failure:
        BrecciaCheckpoint.open(directory)
    message = str(failure.value)
    assert f"{directory} holds pytorch_model.bin" in message and "pickle" in message and "never loaded" in message
    assert "breccia checkpoints are safetensors" in message
    done = _inspect(directory)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"breccia-sglang: error: {message}"
    assert not marker.exists()
