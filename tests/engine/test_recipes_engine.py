"""Every breccia recipe through the real ``sgl.Engine`` on CPU (emulated kernel), token for
token against HF transformers running the same breccia-dequantized weights."""

from __future__ import annotations

from pathlib import Path

import breccia
import pytest
import torch

from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import breccia_tensors, run_engine

pytestmark = pytest.mark.engine

PROMPT = [1, 5, 17, 42, 99, 7, 3, 250, 64]
NEW_TOKENS = 12
RECIPES = {  # the tiny model's K is 64 or 96: every block size below divides both
    "fp8-delayed": dict(name="fp8-delayed"),
    "fp8-block-32": dict(name="fp8-block", block_k=32),
    "mxfp8": dict(name="mxfp8"),
    "nvfp4": dict(name="nvfp4"),
    "int4-g32": dict(name="int4", group_size=32),
    "int4-g32-asym": dict(name="int4", group_size=32, symmetric=False),
}
RECIPE_OF_LINEARS = (  # (fnmatch pattern, recipe): K is 64 everywhere but down_proj's 96
    ("model.layers.0.self_attn.[qkv]_proj.*", "fp8-delayed"),
    ("model.layers.0.self_attn.o_proj.*", "fp8-block-32"),
    ("model.layers.0.mlp.[gu]*_proj.*", "mxfp8"),
    ("model.layers.0.mlp.down_proj.*", "nvfp4"),
    ("model.layers.1.self_attn.[qkv]_proj.*", "int4-g32"),
    ("model.layers.1.self_attn.o_proj.*", "int4-g32-asym"),
)


def _hf_greedy(model_dir, checkpoint) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    scaled_tensors = breccia_tensors(checkpoint)
    assert len(scaled_tensors) == 14  # 2 layers x 7 linears
    for name, scaled in scaled_tensors.items():
        model.get_submodule(name.removesuffix(".weight")).weight.data.copy_(breccia.dequantize(scaled))
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):  # plain argmax decoding: no EOS or generation-config rules
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(PROMPT):].tolist()


def _quantize(tiny_llama, tmp_path, params) -> Path:
    params = dict(params)
    checkpoint = tmp_path / "ckpt"
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe(params.pop("name"), **params), progress=False)
    return checkpoint


def _serve(checkpoint, tmp_path, tp_size: int = 1) -> dict:
    env = {"BRECCIA_SGLANG_FP8_KV": "0"}  # KV in fp32 like HF: only the weights differ
    if tp_size > 1:
        # SGLang's CPU TP binds each rank to cores; with no NUMA split, give each rank one core.
        env["SGLANG_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(tp_size))
    spec = {
        "env": env,
        "engine": {"model_path": str(checkpoint), "device": "cpu", "max_total_tokens": 1024, "tp_size": tp_size,
                   "quantization": "breccia", "skip_tokenizer_init": True, "log_level": "error"},
        "requests": [{"input_ids": PROMPT,
                      "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}}],
    }
    return run_engine(spec, tmp_path)


def test_every_recipe_in_one_checkpoint_serves_hfs_tokens_on_the_dequantized_weights(tiny_llama, tmp_path):
    # Each recipe on its own linears of the tiny model (merged qkv and gate_up take one recipe
    # each), per-tensor FP8 on layer 1's MLP: one quantize, one engine, one HF run. A checkpoint
    # per recipe took six engines, ~25 s each; a wrong recipe still changes the tokens.
    checkpoint = tmp_path / "ckpt"
    overrides = tuple((pattern, make_recipe(**RECIPES[recipe])) for pattern, recipe in RECIPE_OF_LINEARS)
    report = quantize_checkpoint(tiny_llama, checkpoint, make_recipe("fp8"), overrides=overrides, progress=False)
    assert len(list(checkpoint.glob("model-breccia-*"))) == 1
    labels = set(report.labels.values())
    assert len(labels) == len(RECIPES) + 1, labels  # the six recipes, and layer 1's per-tensor FP8
    result = _serve(checkpoint, tmp_path)
    assert result["ok"], result
    assert result["results"][0]["output_ids"] == _hf_greedy(tiny_llama, checkpoint)


# With tp=2 a row-parallel shard has K = 32 (o_proj) or 64 (down_proj, padded by SGLang). One
# checkpoint holds each kind of sharded state (first pattern that matches wins):
TP_OVERRIDES = (
    # One scale per row (compressed-tensors' "channel", FBGEMM, GPTQ group -1) scales every K
    # column alike, so a row-parallel shard keeps it whole: o_proj's 64-wide groups here and
    # down_proj's 96-wide blocks below were refused at tp=2 as blocks split in two.
    ("model.layers.0.self_attn.*", dict(name="int4", group_size=-1, symmetric=False)),  # per row (K = 64)
    ("model.layers.0.mlp.*", dict(name="int4", group_size=16, symmetric=False)),  # scales + zero points, down's K
    ("model.layers.1.self_attn.*", dict(name="fp8-block", block_k=16)),  # o_proj's K = 32 in two 16-wide blocks
    ("model.layers.1.mlp.down_proj.*", dict(name="fp8-block", block_k=-1)),  # per row (K = 96)
)  # and per-tensor FP8 in layer 1's merged gate_up: each shard keeps its own scale


def test_tensor_parallel_shards_data_scales_and_zero_points_consistently(tiny_llama, tmp_path):
    # tp=2 through SGLang's real column/row-parallel loaders and a gloo all-reduce must give
    # HF's tokens, as tp=1 does (above). One engine for every kind of shard: each kind's own
    # tp=2 engine took ~30 s of the suite. (A block that is not the whole K still is refused
    # when a shard splits it: inspect --tp and the MoE engine test show that refusal.)
    checkpoint = tmp_path / "ckpt"
    overrides = tuple((pattern, make_recipe(**params)) for pattern, params in TP_OVERRIDES)
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe("fp8"), overrides=overrides, progress=False)
    scaled = breccia_tensors(checkpoint)
    assert {st.recipe.name for st in scaled.values()} == {"current", "int4", "block"}
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert tuple(scaled[name].scale.shape) == (64, 1), name  # one scale per row
    result = _serve(checkpoint, tmp_path, tp_size=2)
    assert result["ok"], result
    assert result["results"][0]["output_ids"] == _hf_greedy(tiny_llama, checkpoint)


def test_a_nan_scale_stops_loading_with_the_tensor_named(tiny_llama, tmp_path):
    """The value check `breccia-sglang inspect` runs is the one the loader runs on each scale."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    checkpoint = _quantize(tiny_llama, tmp_path, dict(name="mxfp8"))
    (file,) = checkpoint.glob("model-breccia-*.safetensors")
    target = "model.layers.1.mlp.up_proj.weight.scale"
    with safe_open(str(file), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors[target].view(-1)[3] = 0xFF  # E8M0 NaN
    save_file(tensors, str(file), metadata=metadata)

    with pytest.raises(RuntimeError) as failure:  # the failed scheduler takes the engine process down
        _serve(checkpoint, tmp_path)
    assert f"{file}: '{target}' has 1 bad value(s)" in str(failure.value)


def test_a_pickle_load_format_is_refused(tiny_llama, tmp_path):
    checkpoint = _quantize(tiny_llama, tmp_path, dict(name="fp8-delayed"))
    torch.save({}, checkpoint / "pytorch_model.bin")  # what "pt" would unpickle
    with pytest.raises(RuntimeError) as failure:
        run_engine({"env": {"BRECCIA_SGLANG_FP8_KV": "0"},
                    "engine": {"model_path": str(checkpoint), "device": "cpu", "max_total_tokens": 1024,
                               "quantization": "breccia", "load_format": "pt", "skip_tokenizer_init": True,
                               "log_level": "error"},
                    "requests": []}, tmp_path)
    assert "--load-format pt is refused" in str(failure.value)


# The demo model with all six recipes at once, five layers each (every K of SmolLM2, 576 and
# 1536, is a multiple of each block and group size below): one quantize, one engine, one HF run.
DEMO_LAYERS_BY_RECIPE = {
    "fp8-delayed": (range(0, 5), dict(name="fp8-delayed")),
    "fp8-block-64": (range(5, 10), dict(name="fp8-block", block_k=64)),
    "mxfp8": (range(10, 15), dict(name="mxfp8")),
    "nvfp4": (range(15, 20), dict(name="nvfp4")),
    "int4-g32": (range(20, 25), dict(name="int4", group_size=32)),
    "int4-g32-asym": (range(25, 30), dict(name="int4", group_size=32, symmetric=False)),
}


def test_the_demo_model_with_every_recipe_serves_hf_tokens(demo_model, chat_prompt_ids, tmp_path):
    from ..helpers import MAX_NEW_TOKENS, hf_reference_ids, strip_eos

    overrides = []
    for layers, params in DEMO_LAYERS_BY_RECIPE.values():
        params = dict(params)
        recipe = make_recipe(params.pop("name"), **params)
        overrides += [(f"model.layers.{i}.*", recipe) for i in layers]
    checkpoint = tmp_path / "every-recipe"
    report = quantize_checkpoint(demo_model, checkpoint, make_recipe("fp8"), overrides=tuple(overrides), progress=False)
    assert len(report.quantized) == 210  # every linear of 30 layers; embeddings stay high precision
    assert all("embed" in name or "lm_head" in name for name, _ in report.kept), report.kept
    labels = {report.labels[f"model.layers.{layers[0]}.mlp.down_proj.weight"] for layers, _ in DEMO_LAYERS_BY_RECIPE.values()}
    assert len(labels) == 6, labels  # six different recipes really are in the checkpoint

    result = run_engine({
        "env": {"BRECCIA_SGLANG_FP8_KV": "0"},  # KV in the model's dtype: only the weights differ from HF
        "engine": {"model_path": str(checkpoint), "device": "cpu", "max_total_tokens": 4096,
                   "quantization": "breccia", "log_level": "error"},
        "requests": [{"input_ids": chat_prompt_ids, "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS}}],
    }, tmp_path)
    assert result["ok"], result
    served = strip_eos(result["results"][0]["output_ids"], [2])  # SmolLM2's <|im_end|>
    assert served == hf_reference_ids(demo_model, checkpoint, chat_prompt_ids)
    assert len(served) > 4
