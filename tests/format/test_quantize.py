"""`breccia-sglang quantize`: breccia's own cast and safetensors convention, nothing dropped."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import breccia
import pytest
import torch

from breccia_sglang.errors import BrecciaCheckpointError
from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import breccia_tensors, stored_tensors


def test_fp8_checkpoint_matches_breccia_cast_bit_for_bit(tiny_llama, tmp_path):
    dst = tmp_path / "fp8"
    report = quantize_checkpoint(tiny_llama, dst, make_recipe("fp8"), progress=False)
    src = stored_tensors(tiny_llama)
    scaled = breccia_tensors(dst)
    linear = {n for n, t in src.items() if n.endswith(".weight") and t.ndim == 2 and "embed" not in n and "lm_head" not in n}
    assert set(scaled) == linear == {n for n, _ in report.quantized}
    for name, st in scaled.items():
        expected = breccia.cast(src[name], breccia.Float8CurrentScaling())
        assert st.recipe == breccia.Float8CurrentScaling() and st.layout == breccia.PerTensor()
        assert torch.equal(st.data.view(torch.uint8), expected.data.view(torch.uint8)), name
        assert torch.equal(st.scale, expected.scale), name


def test_nothing_is_dropped_and_config_names_breccia(tiny_llama, tmp_path):
    dst = tmp_path / "fp8"
    report = quantize_checkpoint(tiny_llama, dst, make_recipe("fp8"), progress=False)
    src = stored_tensors(tiny_llama)
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    stored = set(index)
    for name in src:
        assert name in stored or {f"{name}.data", f"{name}.scale"} <= stored, name
    kept = dict(report.kept)
    assert "model.embed_tokens.weight" in kept and "lm_head.weight" in kept
    plain = stored_tensors(dst)
    for name in list(kept) + [n for n, _ in report.copied]:
        assert torch.equal(plain[name], src[name]), name
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "breccia"
    assert (dst / "tokenizer_config.json").is_file()


def test_shapes_a_recipe_cannot_take_are_kept_and_reported(tiny_llama, tmp_path):
    # Block 128 needs K % 128 == 0; the tiny model's K is 64 or 96, so every weight stays
    # high precision, and says why.
    report = quantize_checkpoint(tiny_llama, tmp_path / "blk", make_recipe("fp8-block", block_k=128), progress=False)
    assert report.quantized == []
    reasons = [why for name, why in report.kept if "embed" not in name and "lm_head" not in name]
    assert reasons and all("not supported" in why and "divisible" in why for why in reasons)
    report32 = quantize_checkpoint(tiny_llama, tmp_path / "blk32", make_recipe("fp8-block", block_k=32), progress=False)
    st = breccia_tensors(tmp_path / "blk32")["model.layers.0.mlp.down_proj.weight"]
    assert st.layout == breccia.PerBlockK(32) and tuple(st.scale.shape) == (64, 3)
    assert len(report32.quantized) == 14


def test_refuses_to_overwrite_without_flag(tiny_llama, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(BrecciaCheckpointError, match="exists and is not empty"):
        quantize_checkpoint(tiny_llama, dst, make_recipe("fp8"), progress=False)
    assert (dst / "keep.txt").read_text() == "mine"


def test_a_failure_midway_leaves_nothing_behind(tiny_llama, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in tiny_llama.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # header intact, last tensor truncated
    with pytest.raises(Exception):
        quantize_checkpoint(src, tmp_path / "out", make_recipe("fp8"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_prints_the_report_and_a_progress_bar(tiny_llama, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama), str(tmp_path / "q"),
         "--recipe", "fp8"], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "quantized: 14 weights" in done.stdout
    assert "model.embed_tokens.weight: kept by --keep rule" in done.stdout
    # tqdm's bar counts parameters (a norm and an MLP weight are not one unit of work each) and
    # ends at the checkpoint's total, read from the headers before the first tensor is.
    assert re.search(r"quantize: 100%\|\S+\| (\S+)/\1 \[.*param/s\]", done.stderr), done.stderr


@pytest.fixture(scope="module")
def two_cast_workers():
    from breccia_sglang.format.chunked_cast import cast_workers

    with cast_workers(2, (make_recipe("mxfp8"), make_recipe("nvfp4"))) as workers:
        assert workers is not None
        yield workers


@pytest.mark.parametrize("on_workers", [False, True], ids=["here", "two-workers"])
@pytest.mark.parametrize("recipe", ["mxfp8", "nvfp4", "int4", "int4-asym", "fp8-block"])
def test_row_chunked_cast_is_bit_identical_to_breccias_whole_tensor_cast(recipe, on_workers, two_cast_workers,
                                                                          monkeypatch):
    from breccia_sglang.format import chunked_cast

    # 7-row chunks (an odd split of 50 rows: the last chunk holds one row), 2 chunks a worker task
    monkeypatch.setattr(chunked_cast, "CAST_CHUNK_ELEMENTS", 7 * 96)
    monkeypatch.setattr(chunked_cast, "SEARCH_CHUNK_ELEMENTS", 7 * 96)
    monkeypatch.setattr(chunked_cast, "CHUNKS_PER_TASK", 2)
    monkeypatch.setattr(chunked_cast, "TASKS_PER_WORKER", 1)
    x = torch.randn(50, 96)
    x[3, :32] = 0.0  # a block of zeros: its scale is breccia's floor, in every chunk the same
    r = make_recipe(recipe.removesuffix("-asym"), block_k=32, group_size=32, symmetric=not recipe.endswith("asym"))
    chunked = chunked_cast.chunked_cast(x, r, two_cast_workers if on_workers else None)
    whole = breccia.cast(x, r)
    assert chunked.layout == whole.layout
    assert chunked.data.dtype == whole.data.dtype and chunked.scale.dtype == whole.scale.dtype
    assert torch.equal(chunked.data.view(torch.uint8), whole.data.view(torch.uint8))
    assert torch.equal(chunked.scale.view(torch.uint8), whole.scale.view(torch.uint8))
    assert (chunked.zero_point is None) == (whole.zero_point is None)
    if whole.zero_point is not None:
        assert torch.equal(chunked.zero_point, whole.zero_point)


def test_quantize_writes_the_same_checkpoint_on_any_number_of_cast_workers(tiny_llama, tmp_path, monkeypatch):
    # MXFP8 and NVFP4 weights are cast on worker processes (--jobs, default every CPU); the
    # checkpoint must not depend on how many: every tensor's bytes and metadata are compared.
    # 7-row chunks, so the tiny model's 64- and 96-row weights take several chunks each (at the
    # real 2^13 elements they would be one chunk, cast here); the spy shows the workers ran.
    from concurrent.futures import ProcessPoolExecutor

    from safetensors import safe_open

    from breccia_sglang.format import chunked_cast

    monkeypatch.setattr(chunked_cast, "SEARCH_CHUNK_ELEMENTS", 7 * 64)
    mapped = []
    real_map = ProcessPoolExecutor.map
    monkeypatch.setattr(ProcessPoolExecutor, "map", lambda pool, *a, **k: mapped.append(1) or real_map(pool, *a, **k))
    written = {}
    for jobs in (1, 2):
        dst = tmp_path / f"jobs{jobs}"
        quantize_checkpoint(tiny_llama, dst, make_recipe("mxfp8"), overrides=(("*.mlp.*", make_recipe("nvfp4")),),
                            progress=False, jobs=jobs)
        tensors, metadata = {}, {}
        for file in sorted(dst.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                metadata[file.name] = f.metadata()
                tensors.update({name: f.get_tensor(name) for name in f.keys()})
        written[jobs] = tensors, metadata
        assert bool(mapped) == (jobs == 2)
    (one, one_meta), (two, two_meta) = written[1], written[2]
    assert one_meta == two_meta and one.keys() == two.keys()
    assert any(name.endswith("mlp.down_proj.weight.data") for name in one)  # quantized, not kept
    for name in one:
        assert torch.equal(one[name].view(torch.uint8), two[name].view(torch.uint8)), name


def test_a_cast_worker_that_dies_stops_quantize_naming_the_weight_and_writes_nothing(tiny_llama, tmp_path,
                                                                                     monkeypatch):
    # The out-of-memory killer ends a worker: here SIGKILL, sent to one worker just before the
    # first weight is cast. The run must stop with the weight's name and leave no output.
    import os
    import signal

    from breccia_sglang.format import chunked_cast, quantize

    monkeypatch.setattr(chunked_cast, "SEARCH_CHUNK_ELEMENTS", 7 * 64)  # several chunks: the workers run
    real_cast = quantize.chunked_cast

    def cast_after_killing_a_worker(x, recipe, workers):
        os.kill(next(iter(workers.pool._processes)), signal.SIGKILL)
        return real_cast(x, recipe, workers)

    monkeypatch.setattr(quantize, "chunked_cast", cast_after_killing_a_worker)
    with pytest.raises(BrecciaCheckpointError, match=r"model\.layers\.0\.\S+\.weight: a cast worker process died"):
        quantize_checkpoint(tiny_llama, tmp_path / "out", make_recipe("mxfp8"), progress=False, jobs=2)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_cli_jobs_takes_a_positive_count_and_names_the_flag_otherwise(tiny_llama, tmp_path):
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama),
                           str(tmp_path / "two"), "--recipe", "nvfp4", "--jobs", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "nvfp4" in done.stdout, done.stderr
    for bad in ("0", "two"):
        refused = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama),
                                  str(tmp_path / "none"), "--recipe", "mxfp8", "--jobs", bad],
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "--jobs" in refused.stderr and not (tmp_path / "none").exists()


def test_per_layer_overrides_pick_the_recipe_and_keep_rules_still_win(tiny_llama, tmp_path):
    dst = tmp_path / "mixed"
    done = subprocess.run(
        [sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama), str(dst), "--recipe", "fp8",
         "--override", "*.mlp.*=int4", "--group-size", "32", "--override", "*embed_tokens*=int4"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    scaled = breccia_tensors(dst)
    mlp = [n for n in scaled if ".mlp." in n]
    attn = [n for n in scaled if ".self_attn." in n]
    assert len(mlp) == 6 and len(attn) == 8
    assert all(scaled[n].recipe == breccia.INT4Scaling(group_size=32) for n in mlp)
    assert all(scaled[n].recipe == breccia.Float8CurrentScaling() for n in attn)
    assert "model.embed_tokens.weight" not in scaled  # --keep's default rule beats the override
    assert "int4(g=32,sym)/per_block_k: 6" in done.stdout and "current(E4M3)/per_tensor: 8" in done.stdout
    config = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert config["recipe"] == ["current(E4M3)/per_tensor", "int4(g=32,sym)/per_block_k"]


def test_minus_one_is_one_scale_per_row_each_weights_own_k_wide(tiny_llama, tmp_path):
    # --block-k -1 / --group-size -1 (GPTQ's spelling): compressed-tensors' "channel" scheme,
    # one scale per row: a block as wide as each weight's K (64, or down_proj's 96), which the
    # per-channel kernels serve whole, on every TP rank too.
    dst = tmp_path / "per-row"
    done = subprocess.run(
        [sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama), str(dst), "--recipe", "fp8-block",
         "--block-k", "-1", "--override", "*.mlp.*=int4", "--group-size", "-1", "--asymmetric"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{dst}: block(E4M3,k=row)/per_block_k")
    src, scaled = stored_tensors(tiny_llama), breccia_tensors(dst)
    assert len(scaled) == 14
    for name, st in scaled.items():
        k = src[name].shape[1]
        recipe = (breccia.INT4Scaling(group_size=k, signed=False, symmetric=False) if ".mlp." in name
                  else breccia.Float8BlockScaling(block_k=k))
        assert st.recipe == recipe and st.layout == breccia.PerBlockK(k) and st.scale.shape == (src[name].shape[0], 1)
        expected = breccia.cast(src[name].float(), recipe)  # breccia's own cast with that width, bit for bit
        assert torch.equal(st.data.view(torch.uint8), expected.data.view(torch.uint8)) and torch.equal(st.scale, expected.scale)
    assert "int4 at a smaller group" not in done.stdout
    assert "int4(g=96,asym)/per_block_k: 2" in done.stdout  # the two down projections


def test_a_width_that_is_neither_positive_nor_minus_one_is_refused_naming_the_flag(tiny_llama, tmp_path):
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama), str(tmp_path / "q"),
                           "--recipe", "fp8-block", "--block-k", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "argument --block-k: '0': expected a positive number" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "q").exists()


def test_int4_takes_group_128_and_falls_back_per_layer_where_k_requires_it(tiny_llama, tmp_path):
    # The tiny Llama's K is 64 (q/k/v/o, gate/up) or 96 (down_proj): neither splits into 128.
    dst = tmp_path / "int4"
    done = subprocess.run(
        [sys.executable, "-m", "breccia_sglang.cli", "quantize", str(tiny_llama), str(dst), "--recipe", "int4",
         "--asymmetric"], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    scaled = breccia_tensors(dst)
    assert len(scaled) == 14
    for name, st in scaled.items():
        group = 32 if "down_proj" in name else 64
        assert st.recipe == breccia.INT4Scaling(group_size=group, signed=False, symmetric=False), name
        # Zero points are whole numbers in the code range: what AWQ / Marlin zero points hold.
        z = st.zero_point.float()
        assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 15, name
    assert "int4 at a smaller group: 14" in done.stdout
    assert "model.layers.0.mlp.down_proj.weight: K=96 is not a multiple of 128: group 32" in done.stdout
    assert "model.layers.0.self_attn.q_proj.weight: K=64 is not a multiple of 128: group 64" in done.stdout


def test_an_int4_weight_no_group_fits_stays_high_precision_and_is_reported(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "src"
    src.mkdir()
    save_file({"a.weight": torch.randn(8, 40), "b.weight": torch.randn(8, 128)}, str(src / "model.safetensors"))
    (src / "config.json").write_text("{}")
    report = quantize_checkpoint(src, tmp_path / "dst", make_recipe("int4"), progress=False)
    assert [name for name, _ in report.quantized] == ["b.weight"]  # 128 keeps its asked-for group
    assert report.regrouped == []
    assert [name for name, _ in report.kept] == ["a.weight"] and "40" in report.kept[0][1]


# An already-quantized checkpoint would be quantized again from its codes without their scales:
# a model that loads and talks nonsense. quantize refuses it, and says what to run instead.

def _quantized_copy(tiny_llama, dst, quant_config, extra_files=()):
    from .test_convert import _fp8_checkpoint, _per_tensor

    src = _fp8_checkpoint(tiny_llama, dst, _per_tensor, quant_config)
    for name, text in extra_files:
        (src / name).write_text(text)
    return src


@pytest.mark.parametrize("quant_config, extra_files, says", [
    ({"quant_method": "modelopt", "quant_algo": "FP8"}, (), r"convert {src} DST --from modelopt-fp8`"),
    ({}, [("hf_quant_config.json", '{"quantization": {"quant_algo": "FP8"}}')], r"convert {src} DST --from modelopt-fp8`"),
    ({"quant_method": "fp8"}, (), r"convert {src} DST --from fp8`"),
    ({"quant_method": "bitsandbytes"}, (), r"quant_method 'bitsandbytes'\), and convert does not read that format"),
    ({"quant_method": "breccia"}, (), r"a breccia checkpoint already: serve it with --breccia-format"),
])
def test_a_quantized_checkpoint_is_refused_with_what_to_run_instead(tiny_llama, tmp_path, quant_config,
                                                                    extra_files, says):
    src = _quantized_copy(tiny_llama, tmp_path / "src", quant_config, extra_files)
    if not quant_config:
        config = json.loads((src / "config.json").read_text())
        del config["quantization_config"]
        (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(BrecciaCheckpointError, match=rf"{src}: quantize reads a BF16 / FP16 / FP32 checkpoint, but "
                                                     rf".*{says.format(src=src)}"):
        quantize_checkpoint(src, tmp_path / "out", make_recipe("fp8"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_fp8_weights_without_a_quantization_config_are_refused_by_name(tiny_llama, tmp_path):
    src = _quantized_copy(tiny_llama, tmp_path / "src", {})
    config = json.loads((src / "config.json").read_text())
    del config["quantization_config"]
    (src / "config.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.cli", "quantize", str(src), str(tmp_path / "out"),
                           "--recipe", "fp8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert (f"breccia-sglang: error: {src / 'model.safetensors'}: 'model.layers.0.mlp.down_proj.weight' is "
            "torch.float8_e4m3fn, quantized already") in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
