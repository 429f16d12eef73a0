"""What many tests use: reading checkpoints back, running an engine through the harness, and the
HF transformers reference an engine's tokens are compared with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_NEW_TOKENS = 24


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


def run_engine(spec: dict, tmp_path: Path, timeout: float = 900) -> dict:
    """``spec`` in a real engine process (``breccia_sglang.harness.run_engine``)."""
    from breccia_sglang.harness.engine_process import run_engine as run

    return run(spec, tmp_path, timeout)


def runs_per_gemm_kernel(checkpoint: Path, kernels, interpreted: str, requests: list, tmp_path_factory,
                         env: dict | None = None, engine: dict | None = None) -> dict:
    """One real engine per GEMM kernel (``BRECCIA_SGLANG_GEMM``) on ``checkpoint`` in fp16, the
    ``interpreted`` one under TRITON_INTERPRET=1, KV in fp16 so only the GEMM differs, and
    ``env`` set and ``engine`` added to the engine's arguments for every one: kernel -> the
    engine's result."""
    from breccia_sglang import names

    results = {}
    for kernel in kernels:
        run_env = {**(env or {}), names.ENV_GEMM: kernel, names.ENV_FP8_KV: "0"}
        if kernel == interpreted:
            run_env["TRITON_INTERPRET"] = "1"
        spec = {"env": run_env,
                "engine": {"model_path": str(checkpoint), "device": "cpu", "dtype": "float16",
                           "max_total_tokens": 512, "quantization": names.QUANT_METHOD,
                           "skip_tokenizer_init": True, "log_level": "info", **(engine or {})},
                "requests": requests}
        results[kernel] = run_engine(spec, tmp_path_factory.mktemp(kernel))
        assert results[kernel]["ok"], results[kernel]
    return results


def batch_output_ids(result: dict, request: int = 0) -> list[list[int]]:
    """The tokens each prompt of batch request ``request`` got in an engine's ``result``."""
    return [r["output_ids"] for r in result["results"][request]]


def assert_log_names_each_layers_kernel(runs: dict, recipes: dict) -> None:
    """Each engine's log (``runs``: kernel -> result, ``runs_per_gemm_kernel``) names, for every
    kind of layer, that kernel and a recipe label starting with ``recipes[kind]``."""
    import re

    for kernel, result in runs.items():
        for kind, recipe in recipes.items():
            announced = re.findall(rf"breccia-sglang: {kind} layers \((.+?)\) run GEMM kernel (\S+)", result["stderr"])
            assert announced and {k for _, k in announced} == {kernel}, (kind, announced)
            assert all(label.startswith(recipe) for label, _ in announced), (kind, announced)


def per_row_experts(layer: int, recipe_name: str, **kwargs) -> tuple:
    """A ``quantize_checkpoint`` override giving MoE layer ``layer``'s experts one scale per row
    (``--block-k -1`` / ``--group-size -1``: compressed-tensors' "channel" FP8, GPTQ's group -1),
    a block as wide as each projection's K: the hidden size for gate / up, the intermediate
    size for down."""
    from breccia_sglang.format import make_recipe

    width = "block_k" if recipe_name == "fp8-block" else "group_size"
    return ((f"model.layers.{layer}.mlp.experts.*", make_recipe(recipe_name, **{width: -1}, **kwargs)),)


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


def dequantized_hf_checkpoint(model_dir: Path, breccia_checkpoint: Path, dest: Path) -> Path:
    """An HF checkpoint of ``model_dir``'s config holding ``breccia_checkpoint``'s weights, each
    breccia tensor dequantized by breccia: what HF transformers compares the engine with.
    (transformers' own loader then maps per-expert tensors onto its fused expert modules.)"""
    import shutil

    import breccia
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    shutil.copy(Path(model_dir) / "config.json", dest / "config.json")
    tensors = {name: t for name, t in stored_tensors(breccia_checkpoint).items()
               if not name.endswith((".data", ".scale", ".zero_point"))}
    tensors.update({name: breccia.dequantize(st).contiguous() for name, st in breccia_tensors(breccia_checkpoint).items()})
    save_file(tensors, str(dest / "model.safetensors"))
    return dest


def hf_argmax_tokens(model_dir: Path, prompt: list[int], new_tokens: int) -> tuple[list[int], list[tuple]]:
    """Plain argmax decoding in fp32 (no EOS or generation-config rules): the tokens, and per
    step (runner-up token, its logit gap to the chosen one)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids, gaps = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(new_tokens):
            top = torch.topk(model(ids).logits[0, -1], 2)
            gaps.append((int(top.indices[1]), float(top.values[0] - top.values[1])))
            ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist(), gaps


def assert_same_greedy_tokens(served: list[int], reference: list[int], gaps: list[tuple], tie: float,
                              at_least: int) -> None:
    """``served`` is ``reference`` up to the reference's first near-tie (a step whose top-2 logit
    gap is below ``tie``), where either of the two tied tokens may come; the sequences may part
    after it. At least ``at_least`` steps must come before that tie, or the check is too weak."""
    steps = next((i for i, (_, gap) in enumerate(gaps) if gap < tie), len(reference))
    assert steps >= at_least, f"a near-tie at step {steps} of {reference} ({gaps}): too few steps to compare"
    assert served[:steps] == reference[:steps], (served, reference, gaps)
    if steps < len(reference):
        assert served[steps] in (reference[steps], gaps[steps][0]), (served, reference, gaps)


def strip_eos(ids: list[int], eos) -> list[int]:
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids

# The benchmark scripts. Tests run them as users do (``python benchmarks/X.py``) and import
# them by name for their pure functions (pytest puts benchmarks/ on the path: pyproject.toml).
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str, out: Path, timeout: float = 900, env=None) -> tuple[dict, str]:
    """Run ``benchmarks/<script>`` as a user would, writing its report to ``out``: (report, stdout).
    A failed run fails the caller with the tail of both streams."""
    cmd = [sys.executable, str(BENCHMARKS / script), *map(str, args), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, (f"{script} failed ({done.returncode}):\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return json.loads(out.read_text()), done.stdout

# The folder of a sitecustomize.py that counts how engine processes read the KV pool's views.
VIEW_SPY = Path(__file__).resolve().parent / "engine" / "view_spy"


def view_spy_env(out_dir: Path) -> dict:
    """Environment for an engine whose processes count their view reads into ``out_dir``."""
    import os

    out_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(VIEW_SPY), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "BRECCIA_TEST_VIEW_SPY": str(out_dir)}


def view_spy_counts(out_dir: Path) -> dict:
    """The counts of every process that built a view, summed."""
    import json

    total: dict = {}
    for path in out_dir.glob("*.json"):
        for key, value in json.loads(path.read_text()).items():
            total[key] = total.get(key, 0) + value
    return total


def scheduler_pids(server_pid: int) -> list[int]:
    """SGLang names its scheduler processes ``sglang::scheduler``; find the server's children."""
    import psutil

    pids = []
    for child in psutil.Process(server_pid).children():
        try:
            if " ".join(child.cmdline()).startswith("sglang::scheduler"):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system
