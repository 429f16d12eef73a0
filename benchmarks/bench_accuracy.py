"""End-to-end accuracy through the real ``sgl.Engine``: every breccia weight recipe and KV cache format
against the unquantized model.

    python benchmarks/bench_accuracy.py [--configs unquantized,fp8,...] [--needle-context 2048|max|0]
                                        [--text-tokens N] [--chat-prompts N] [--chat-tokens N] [--out PATH]

What is measured, per configuration (one engine process each, run one after another)
-------------------------------------------------------------------------------------
- Text: TEXT (the opening of Moby-Dick, then bench_kv_accuracy's PARIS_TEXT; ~970 tokens of English
  prose) is prefilled once with ``return_logprob=True, logprob_start_len=0, top_logprobs_num=1``.
  SGLang returns, for every position i >= 1, log p(token_i | tokens_<i) and the argmax token there.
      perplexity      = exp(-mean_i log p(token_i | tokens_<i))              (i = 1 .. n-1)
      top-1 agreement = share of positions whose argmax equals the unquantized model's argmax
      mean |d logprob| = mean_i |log p_config(token_i) - log p_reference(token_i)|
- Chat: the 8 CHAT_PROMPTS (chat template applied), greedy, ``--chat-tokens`` (16) tokens each with
  ``ignore_eos`` so every config generates the same count.
      chat agreement  = share of generated tokens identical, position by position, to the
                        unquantized model's (one early divergence usually changes the rest, so the
                        first divergent position is reported too)
- Needle: "The secret code is NNNNN." hidden at ``--needle-depths`` of a haystack of TEXT repeated,
  ``--needle-context`` tokens in all with the answer (SmolLM2's longest is config.json's max_position_embeddings =
  8192, ``--needle-context max``; the CPU default is 2048 to keep the run short), then the question
  and the answer prefix "The secret code is"; greedy. Exact match: the first number in the answer
  is the code. Chat and needle prompts are one batch: on CPU every forward pass of an emulated-kernel
  config dequantizes every weight, so the number of passes, not of tokens, sets the time.

Configurations (``--configs``; the unquantized reference always runs, first)
  unquantized                 the demo model as is, SGLang's KV cache in the model dtype (reference)
  unquantized+sglang-fp8-kv   the same with SGLang's FP8 KV (kv_cache_dtype="fp8_e4m3", per-tensor scale 1.0)
  fp8 ... int4-g32-asym       weights only: each breccia recipe, quantization="breccia",
                              BRECCIA_SGLANG_FP8_KV=0 (KV in the model dtype, as the reference)
  fp8+breccia-fp8-kv          breccia FP8 weights + breccia FP8 KV (the default with quantization="breccia")
  fp8+sglang-fp8-kv           breccia FP8 weights + SGLang's FP8 KV
  fp8+w8a8 ... mxfp8+w8a8     the FP8 recipes with FP8 activations too (BRECCIA_SGLANG_GEMM=w8a8-reference:
                              per token and K block, as SGLang's FP8 GEMMs quantize them; fp32 maths), so
                              the cost of activation quantization reads off against the W8A16 row above it.
                              fp8-channel is one scale per row (--block-k -1), activations per token: what
                              sglang-fp8-channel computes on a GPU.
                              fp8-block-128 quantizes down_proj only (576, the other layers' K, is not a
                              multiple of 128; they stay high precision, as in any 1x128 checkpoint of it).
Every engine computes in ``--dtype``: float32 by default, the checkpoint's own dtype, so the
reference is exact and every difference is the quantization's (SGLang's "auto" would pick float16
for this fp32 checkpoint; ``--dtype bfloat16`` shows a GPU server's setting, whose own rounding then
sits in every number). Which KV pool an engine really built is checked from its own report (KV
bytes per token) before anything is scored.

Sanity check (``--no-hf-check`` skips it): HF transformers in fp32 on TEXT gives the perplexity and
argmaxes the reference should reproduce; the reference's agreement with it is the noise floor of
the top-1 agreement column.

Writes ``--out`` (default benchmarks/out/accuracy.json) and a PNG beside it; engine logs in
``<out stem>_logs/``. Quantized checkpoints are cached in ~/.cache/breccia-sglang/bench-accuracy/.
Exit status 1 if any configuration failed (its error is in the JSON).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _accuracy_worker import PROGRESS_MARK
from _common import HERE, OUT_DIR, PARIS_TEXT, report_header, run_engine
from breccia_sglang import names

TASK = f"{HERE / '_accuracy_worker.py'}:ask"  # what each configuration's engine process runs

# Public domain (Herman Melville, 1851): the first four paragraphs of chapter 1, as Project
# Gutenberg prints them (ASCII dashes).
MOBY_DICK = (
    "Call me Ishmael. Some years ago--never mind how long precisely--having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world. It is a way I have of driving off the spleen and regulating the circulation. Whenever I find myself "
    "growing grim about the mouth; whenever it is a damp, drizzly November in my soul; whenever I find myself "
    "involuntarily pausing before coffin warehouses, and bringing up the rear of every funeral I meet; and "
    "especially whenever my hypos get such an upper hand of me, that it requires a strong moral principle to "
    "prevent me from deliberately stepping into the street, and methodically knocking people's hats off--then, I "
    "account it high time to get to sea as soon as I can. This is my substitute for pistol and ball. With a "
    "philosophical flourish Cato throws himself upon his sword; I quietly take to the ship. There is nothing "
    "surprising in this. If they but knew it, almost all men in their degree, some time or other, cherish very "
    "nearly the same feelings towards the ocean with me.\n\n"
    "There now is your insular city of the Manhattoes, belted round by wharves as Indian isles by coral reefs--"
    "commerce surrounds it with her surf. Right and left, the streets take you waterward. Its extreme downtown is "
    "the battery, where that noble mole is washed by waves, and cooled by breezes, which a few hours previous were "
    "out of sight of land. Look at the crowds of water-gazers there.\n\n"
    "Circumambulate the city of a dreamy Sabbath afternoon. Go from Corlears Hook to Coenties Slip, and from "
    "thence, by Whitehall, northward. What do you see?--Posted like silent sentinels all around the town, stand "
    "thousands upon thousands of mortal men fixed in ocean reveries. Some leaning against the spiles; some seated "
    "upon the pier-heads; some looking over the bulwarks of ships from China; some high aloft in the rigging, as "
    "if striving to get a still better seaward peep. But these are all landsmen; of week days pent up in lath and "
    "plaster--tied to counters, nailed to benches, clinched to desks. How then is this? Are the green fields gone? "
    "What do they here?\n\n"
    "But look! here come more crowds, pacing straight for the water, and seemingly bound for a dive. Strange! "
    "Nothing will content them but the extremest limit of the land; loitering under the shady lee of yonder "
    "warehouses will not suffice. No. They must get just as nigh the water as they possibly can without falling "
    "in. And there they stand--miles of them--leagues. Inlanders all, they come from lanes and alleys, streets and "
    "avenues--north, east, south, and west. Yet here they all unite. Tell me, does the magnetic virtue of the "
    "needles of the compasses of all those ships attract them thither?"
)
# Two kinds of prose: a famous public-domain text the model may have half memorised, and a
# paragraph written for this project that it cannot have seen.
TEXT = MOBY_DICK + "\n\n" + PARIS_TEXT

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning a new language.",
    "What is the difference between a virus and a bacterium?",
    "Write a Python function that reverses a string.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "How many minutes are there in a day? Show your working.",
)

NEEDLE = "The secret code is {code}."
NEEDLE_QUESTION = "What is the secret code mentioned in the text above? Answer with the number only."
ANSWER_PREFIX = "The secret code is"  # primes the answer's form, as RULER-style needle tests do
NEEDLE_CODES = ("48213", "71956", "30587", "92641", "15378", "66402", "83129")  # one per depth

# Same recipe names and parameters as tests/test_recipes_engine.py, with blocks that divide
# SmolLM2's K (576 and 1536), so every linear weight is quantized and none is kept.
RECIPES = {
    "fp8": dict(name="fp8"),
    "fp8-block-64": dict(name="fp8-block", block_k=64),
    "fp8-block-128": dict(name="fp8-block", block_k=128),  # down_proj only: see the docstring
    "fp8-channel": dict(name="fp8-block", block_k=-1),  # one scale per row (compressed-tensors' "channel")
    "mxfp8": dict(name="mxfp8"),
    "nvfp4": dict(name="nvfp4"),
    "int4-g32": dict(name="int4", group_size=32),
    "int4-g32-asym": dict(name="int4", group_size=32, symmetric=False),
}

KV_MODEL_DTYPE = "model dtype"
KV_SGLANG_FP8 = "SGLang FP8 (per-tensor, scale 1.0)"
KV_BRECCIA_FP8 = "breccia FP8 (per token, head)"


@dataclass(frozen=True)
class Config:
    name: str
    recipe: str | None  # a RECIPES key; None serves the original checkpoint
    kv: str
    gemm: str | None = None  # a GEMM kernel to ask for (BRECCIA_SGLANG_GEMM); None: the usual choice

    def engine_kwargs(self) -> dict:
        kwargs = {} if self.recipe is None else {"quantization": names.QUANT_METHOD}
        if self.kv == KV_SGLANG_FP8:
            kwargs["kv_cache_dtype"] = "fp8_e4m3"  # explicit, so a breccia model keeps SGLang's own cache
        return kwargs

    def env(self) -> dict:
        if self.recipe is None:
            return {}
        # Set either way, so a value in the caller's environment cannot change the config.
        return {names.ENV_FP8_KV: "1" if self.kv == KV_BRECCIA_FP8 else "0", names.ENV_GEMM: self.gemm or ""}


REFERENCE = "unquantized"
CONFIGS = {c.name: c for c in [
    Config(REFERENCE, None, KV_MODEL_DTYPE),
    Config("unquantized+sglang-fp8-kv", None, KV_SGLANG_FP8),
    *(Config(recipe, recipe, KV_MODEL_DTYPE) for recipe in RECIPES),
    Config("fp8+breccia-fp8-kv", "fp8", KV_BRECCIA_FP8),
    Config("fp8+sglang-fp8-kv", "fp8", KV_SGLANG_FP8),
    *(Config(f"{recipe}+w8a8", recipe, KV_MODEL_DTYPE, names.GEMM_W8A8_REFERENCE)
      for recipe in ("fp8", "fp8-channel", "fp8-block-64", "fp8-block-128", "mxfp8")),
]}


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_for(recipe: str | None, source: Path) -> tuple[Path, dict]:
    """The checkpoint a config serves (quantized once, then cached) and how it was made."""
    if recipe is None:
        return source, {"recipe": None}
    from breccia_sglang.harness.cache import cache_dir, cached_checkpoint
    from breccia_sglang.format import make_recipe
    from breccia_sglang.format.quantize import quantize_checkpoint

    path = cache_dir() / "bench-accuracy" / f"{source.name}-breccia-{recipe}"
    info = {"recipe": recipe, "params": RECIPES[recipe], "path": str(path), "cached": True}

    def quantize(dst):
        info["cached"] = False
        params = dict(RECIPES[recipe])
        started = time.monotonic()
        quantize_checkpoint(source, dst, make_recipe(params.pop("name"), **params), progress=False, overwrite=True)
        info["quantize_s"] = round(time.monotonic() - started, 1)

    cached_checkpoint(path, quantize)
    return path, {**info, **checkpoint_summary(path, source)}


@functools.lru_cache(maxsize=None)  # three configs serve the fp8 checkpoint
def checkpoint_summary(path: Path, source: Path) -> dict:
    """How many linear weights the checkpoint holds quantized, which it kept high precision, and
    the weight error over all quantized weights:
        weight SQNR (dB) = 10 log10(sum w^2 / sum (w - dequantize(cast(w)))^2)
    (breccia's own dequantize; it explains the end-to-end numbers without any engine)."""
    import breccia
    from breccia.bridges import load_safetensors
    from safetensors import safe_open

    quantization = json.loads((path / "config.json").read_text())["quantization_config"]
    scaled = {}
    for file in sorted(path.glob("model-breccia-*.safetensors")):
        scaled.update(load_safetensors(str(file)))
    signal = noise = 0.0
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in scaled.keys() & set(f.keys()):
                weight = f.get_tensor(name).float()
                signal += weight.pow(2).sum().item()
                noise += (weight - breccia.dequantize(scaled[name]).float()).pow(2).sum().item()
    return {"quantized_weights": len(scaled), "kept_high_precision": quantization["kept_high_precision"],
            "weight_sqnr_db": 10 * math.log10(signal / noise)}


# ---------------------------------------------------------------------------------------------
# Prompts (token ids, built once so every config sees exactly the same)
# ---------------------------------------------------------------------------------------------


def chat_ids(tokenizer, user: str, answer_prefix: str = "") -> list[int]:
    messages = [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text + answer_prefix, add_special_tokens=False)


def haystack_ids(tokenizer, num_tokens: int) -> list[int]:
    """The first ``num_tokens`` tokens of TEXT repeated."""
    once = tokenizer.encode(TEXT + "\n\n", add_special_tokens=False)
    return (once * (num_tokens // len(once) + 1))[:num_tokens]


def needle_prompt(tokenizer, max_tokens: int, depth: float, code: str) -> dict:
    """A prompt of at most ``max_tokens`` tokens (a few fewer at most): haystack with the needle
    after the first sentence end at ``depth`` of it, then the question and the answer prefix."""
    needle = " " + NEEDLE.format(code=code) + " "
    overhead = len(chat_ids(tokenizer, "\n\n" + NEEDLE_QUESTION, ANSWER_PREFIX))
    haystack_tokens = max_tokens - overhead - len(tokenizer.encode(needle, add_special_tokens=False))
    for _ in range(10):  # decoded text re-tokenizes a little differently: shrink until it fits
        haystack = tokenizer.decode(haystack_ids(tokenizer, haystack_tokens))
        cut = sentence_end_after(haystack, int(depth * len(haystack)))
        user = haystack[:cut] + needle + haystack[cut:].lstrip() + "\n\n" + NEEDLE_QUESTION
        ids = chat_ids(tokenizer, user, ANSWER_PREFIX)
        if len(ids) <= max_tokens:
            break
        haystack_tokens -= len(ids) - max_tokens
    else:
        raise RuntimeError(f"could not fit a needle prompt into {max_tokens} tokens")
    text = tokenizer.decode(ids)

    def tokens_before(marker: str) -> int:
        return len(tokenizer.encode(text[: text.index(marker)], add_special_tokens=False))

    start, at = tokens_before(haystack[:40]), tokens_before(needle.strip())
    end = tokens_before("\n\n" + NEEDLE_QUESTION) - len(tokenizer.encode(needle, add_special_tokens=False))
    return {"input_ids": ids, "depth": depth, "code": code, "prompt_tokens": len(ids), "needle_at_token": at,
            "depth_actual": round((at - start) / (end - start), 3)}  # share of the haystack before the needle


def sentence_end_after(text: str, position: int) -> int:
    match = re.compile(r"[.?!]\s").search(text, position)
    return match.start() + 1 if match else len(text)


def build_workload(tokenizer, args, max_context: int) -> dict:
    text_ids = tokenizer.encode(TEXT, add_special_tokens=False)
    if args.text_tokens:
        text_ids = text_ids[: args.text_tokens]
    needles = []
    if args.needle_context:
        if args.needle_context > max_context:
            raise SystemExit(f"--needle-context {args.needle_context} > the model's {max_context}")
        # The prompt and its answer must fit the context together, or SGLang refuses the request.
        prompt_tokens = args.needle_context - args.needle_tokens
        for depth, code in zip(args.needle_depths, NEEDLE_CODES):  # a different code at each depth
            needles.append(needle_prompt(tokenizer, prompt_tokens, depth, code))
    prompts = [chat_ids(tokenizer, p) for p in CHAT_PROMPTS[: args.chat_prompts]]
    return {"text_ids": text_ids, "chat": {"prompts": prompts, "max_new_tokens": args.chat_tokens},
            "needles": needles, "needle_new_tokens": args.needle_tokens}


# ---------------------------------------------------------------------------------------------
# Running one configuration
# ---------------------------------------------------------------------------------------------


def engine_spec(config: Config, model: Path, workload: dict, args) -> dict:
    longest = max([len(n["input_ids"]) for n in workload["needles"]] + [len(workload["text_ids"])])
    engine = {"model_path": str(model), "device": "cpu", "dtype": args.dtype, "log_level": "error",
              "skip_tokenizer_init": True,  # prompts are token ids; the benchmark decodes the outputs
              # room for the longest prompt and its answer, plus what the radix cache keeps around
              "max_total_tokens": max(4096, longest + 1024), **config.engine_kwargs()}
    return {"config": config.name, "env": config.env(), "engine": engine, **workload}


def run_worker(spec: dict, log_path: Path, bar, timeout: float) -> dict:
    """One engine process running the worker's ``ask`` task; its progress lines become ``bar``
    updates, everything else it says goes to ``log_path`` with SGLang's log."""
    other_lines = []

    def on_line(line: str) -> None:
        if line.startswith(PROGRESS_MARK):
            bar.set_postfix_str(line[len(PROGRESS_MARK):].strip())
            bar.update(1)
        else:
            other_lines.append(line)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = run_engine({**spec, "task": TASK}, tmp, timeout, log_path=log_path, stdout=on_line)
        except (TimeoutError, RuntimeError) as exc:
            result = {"ok": False, "error": str(exc)}
    with open(log_path, "a") as log:
        log.writelines(other_lines)
    result.pop("stderr", None)  # it is the log file
    return result


# KV bytes per (token, layer, kv head) by format; D = head_dim. The engine's own pool report must
# match the config's format, or the config would be scored on a cache it does not claim.
def kv_bytes_per_token(kv: str, dtype_bytes: int, head_dim: int, kv_heads: int, layers: int) -> float:
    per_head = {KV_MODEL_DTYPE: 2 * head_dim * dtype_bytes, KV_SGLANG_FP8: 2 * head_dim,
                KV_BRECCIA_FP8: 2 * head_dim + 2 * 4}[kv]
    return per_head * kv_heads * layers


def check_kv_format(config: Config, engine: dict, model_config: dict) -> dict:
    """Which KV format the engine's reported pool size fits best; raises if it is not the config's."""
    dtype_bytes = {"bfloat16": 2, "float16": 2, "float32": 4}[engine["model_dtype"]]
    shape = (model_config["head_dim"], model_config["num_key_value_heads"], model_config["num_hidden_layers"])
    expected = {kv: kv_bytes_per_token(kv, dtype_bytes, *shape)
                for kv in (KV_MODEL_DTYPE, KV_SGLANG_FP8, KV_BRECCIA_FP8)}
    measured = float(engine["kvcache_gib"]) * 2**30 / engine["max_total_num_tokens"]
    nearest = min(expected, key=lambda kv: abs(expected[kv] - measured))
    if nearest != config.kv:
        raise RuntimeError(f"{config.name}: the engine built a {nearest} KV pool ({measured:.0f} B/token), "
                           f"not {config.kv} ({expected[config.kv]:.0f} B/token)")
    return {"kv_bytes_per_token": round(measured, 1), "expected_kv_bytes_per_token": expected[config.kv]}


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def text_scores(text: dict, reference: dict | None) -> dict:
    logprobs = text["logprobs"]
    scores = {"tokens_scored": len(logprobs), "perplexity": math.exp(-sum(logprobs) / len(logprobs))}
    if reference is not None:
        scores["top1_agreement"] = agreement(text["top1_ids"], reference["top1_ids"])
        diffs = [abs(a - b) for a, b in zip(logprobs, reference["logprobs"])]
        scores["mean_abs_logprob_diff"] = sum(diffs) / len(diffs)
    return scores


def agreement(ids: list, reference_ids: list) -> float:
    if len(ids) != len(reference_ids):
        raise ValueError(f"{len(ids)} tokens vs the reference's {len(reference_ids)}")
    return sum(a == b for a, b in zip(ids, reference_ids)) / len(ids)


def first_divergence(ids: list, reference_ids: list) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ids, reference_ids)) if a != b), None)


def chat_scores(outputs: list, reference: list, tokenizer) -> dict | None:
    """Position-by-position agreement of greedy outputs with the reference's (``reference`` is
    the reference's own outputs when scoring it)."""
    if not outputs:
        return None
    per_prompt = [{"output_ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True),
                   "agreement": agreement(ids, ref), "first_divergence": first_divergence(ids, ref)}
                  for ids, ref in zip(outputs, reference)]
    total = sum(len(ref) for ref in reference)
    return {"prompts": len(outputs), "tokens_per_prompt": [len(ids) for ids in outputs], "per_prompt": per_prompt,
            "token_agreement": sum(r["agreement"] * len(ref) for r, ref in zip(per_prompt, reference)) / total,
            "identical_outputs": sum(r["first_divergence"] is None for r in per_prompt)}


def needle_scores(outputs: list, needles: list, tokenizer) -> dict | None:
    if not needles:
        return None
    rows = []
    for out, needle in zip(outputs, needles):
        answer = tokenizer.decode(out["output_ids"], skip_special_tokens=True)
        number = re.search(r"\d+", answer)
        rows.append({"depth": needle["depth"], "depth_actual": needle["depth_actual"],
                     "prompt_tokens": needle["prompt_tokens"], "code": needle["code"], "answer": answer,
                     "correct": bool(number) and number.group() == needle["code"]})
    return {"exact_match": sum(r["correct"] for r in rows) / len(rows), "results": rows}


def score(result: dict, reference: dict | None, workload: dict, tokenizer) -> dict:
    """One JSON row; ``reference`` is the unquantized config's raw result (None for itself)."""
    ref_text = None if reference is None else reference["text"]
    return {"text": text_scores(result["text"], ref_text or result["text"]),
            "chat": chat_scores(result["chat"], (reference or result)["chat"], tokenizer),
            "needle": needle_scores(result["needles"], workload["needles"], tokenizer)}


# ---------------------------------------------------------------------------------------------
# The HF fp32 sanity check, the table, the plot, the machine
# ---------------------------------------------------------------------------------------------


def hf_fp32_text(model: Path, text_ids: list[int]) -> dict:
    """The text's logprobs and argmaxes from HF transformers in fp32 (what SGLang should reproduce)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ids = torch.tensor([text_ids])
    with torch.no_grad():
        logprobs = hf(ids).logits[0, :-1].float().log_softmax(-1)
    return {"logprobs": logprobs.gather(1, ids[0, 1:, None])[:, 0].tolist(), "top1_ids": logprobs.argmax(-1).tolist()}


def hf_check(hf_text: dict, reference_text: dict) -> dict:
    """How closely the SGLang reference (in --dtype) reproduces HF transformers in fp32 on TEXT."""
    reference = text_scores(reference_text, hf_text)
    return {"perplexity": text_scores(hf_text, None)["perplexity"], "reference_perplexity": reference["perplexity"],
            "reference_top1_agreement": reference["top1_agreement"],
            "reference_mean_abs_logprob_diff": reference["mean_abs_logprob_diff"]}


def print_table(rows: list[dict]) -> None:
    head = (f"{'config':<26} {'W SQNR':>7} {'KV cache':<34} {'ppl':>8} {'dppl':>7} {'top-1':>7} {'|dlp|':>7} "
            f"{'chat':>6} {'same':>5} {'needle':>7} {'s':>5}")
    print(head)
    print("-" * len(head))
    reference_ppl = rows[0]["text"]["perplexity"] if rows[0].get("ok") else None
    for r in rows:
        if not r.get("ok"):
            print(f"{r['config']:<26} FAILED: {r['error'][:100]}")
            continue
        text, chat, needle = r["text"], r["chat"], r["needle"]
        dppl = 100 * (text["perplexity"] / reference_ppl - 1) if reference_ppl else float("nan")
        sqnr = r["checkpoint"].get("weight_sqnr_db")
        sqnr = "-" if sqnr is None else f"{sqnr:.1f}dB"
        chat = (f"{'-':>6} {'-':>5}" if chat is None
                else f"{chat['token_agreement']:6.3f} {chat['identical_outputs']:>2}/{chat['prompts']:<2}")
        needle = "-" if needle is None else format(needle["exact_match"], ".2f")
        print(f"{r['config']:<26} {sqnr:>7} {r['kv']:<34} {text['perplexity']:8.3f} {dppl:+6.2f}% "
              f"{text['top1_agreement']:7.4f} {text['mean_abs_logprob_diff']:7.4f} {chat} {needle:>7} "
              f"{r['seconds']['total']:5.0f}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("ok")]
    if not rows:
        return
    names = [r["config"] for r in rows]
    colors = ["#555" if r["config"] == REFERENCE else "#1f77b4" if r["kv"] == KV_MODEL_DTYPE else "#ff7f0e"
              for r in rows]
    # (title, values, label format, whether the values are fractions with 1.0 at best)
    panels = [("perplexity on TEXT (lower is better)", [r["text"]["perplexity"] for r in rows], "{:.2f}", False),
              ("top-1 agreement with unquantized", [r["text"]["top1_agreement"] for r in rows], "{:.3f}", True),
              ("greedy chat tokens identical to unquantized", [(r["chat"] or {}).get("token_agreement") for r in rows],
               "{:.3f}", True)]
    panels = [panel for panel in panels if None not in panel[1]]  # no chat panel without chat prompts
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.42 * len(rows) + 1.6), sharey=True,
                             squeeze=False)
    axes = axes[0]
    for ax, (title, values, fmt, fraction) in zip(axes, panels):
        ax.barh(names, values, color=colors)
        ax.axvline(values[0], ls="--", c="k", lw=1)  # the reference's value
        low, high = min(values), max(values)
        margin = 0.25 * (high - low + 1e-3)  # zoomed on the spread, with room for the labels
        ax.set_xlim(0 if fraction and low < 0.5 else low - margin, 1.08 if fraction else high + margin)
        for i, v in enumerate(values):
            ax.text(v, i, " " + fmt.format(v), va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].invert_yaxis()
    fig.suptitle("SmolLM2-135M-Instruct through sgl.Engine: gray = reference, blue = breccia weights only, "
                 "orange = FP8 KV cache", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of: {', '.join(CONFIGS)} (the reference always runs)")
    parser.add_argument("--text-tokens", type=int, default=0, help="score only the first N tokens of TEXT (0: all)")
    parser.add_argument("--chat-prompts", type=int, default=len(CHAT_PROMPTS), choices=range(0, len(CHAT_PROMPTS) + 1))
    # 16, not more: on CPU each decode step of an emulated-kernel config costs seconds (every
    # weight is dequantized per forward pass), and the prompts share those steps as one batch.
    parser.add_argument("--chat-tokens", type=int, default=16, help="greedy tokens per chat prompt")
    parser.add_argument("--needle-context", default="2048",
                        help="needle prompt length in tokens, 'max' (the model's max_position_embeddings) or 0 (off)")
    parser.add_argument("--needle-depths", default="0.1,0.5,0.9", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--needle-tokens", type=int, default=8, help="greedy tokens for the needle answer")
    parser.add_argument("--dtype", default="float32", choices=("bfloat16", "float16", "float32"),
                        help="the dtype every engine computes in (float32: the checkpoint's own)")
    parser.add_argument("--no-hf-check", action="store_true", help="skip the HF transformers fp32 sanity check")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per configuration")
    parser.add_argument("--model", type=Path, default=None, help="HF checkpoint dir (default: the demo model)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "accuracy.json")
    args = parser.parse_args()
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    args.configs = [REFERENCE] + [n for n in CONFIGS if n in names and n != REFERENCE]  # table order
    if args.text_tokens == 1:
        parser.error("--text-tokens must be 0 (all) or at least 2: the first token is never scored")
    if len(args.needle_depths) > len(NEEDLE_CODES):
        parser.error(f"at most {len(NEEDLE_CODES)} needle depths")
    return args


def run_configs(args, source: Path, workload: dict, tokenizer, model_config: dict) -> tuple[list[dict], dict | None]:
    """Every config in order; returns the JSON rows and the reference's raw result (None if it failed)."""
    from tqdm import tqdm

    steps = 3  # the worker reports: engine started, text logprobs, chat and needles
    log_dir = args.out.with_name(args.out.stem + "_logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    rows, reference = [], None
    with tqdm(total=steps * len(args.configs), unit="step", dynamic_ncols=True) as bar:
        for name in args.configs:
            config = CONFIGS[name]
            bar.set_description(name)
            started = time.monotonic()
            row = {"config": name, "weights": config.recipe or "unquantized", "kv": config.kv,
                   "activations": "FP8 (W8A8)" if config.gemm == names.GEMM_W8A8_REFERENCE else "model dtype"}
            try:
                model, row["checkpoint"] = checkpoint_for(config.recipe, source)
                spec = engine_spec(config, model, workload, args)
                result = run_worker(spec, log_dir / f"{name}.log", bar, args.timeout)
                if not result["ok"]:
                    raise RuntimeError(result["error"])
                row["engine"] = {**result["engine"], **check_kv_format(config, result["engine"], model_config)}
                row.update(score(result, reference, workload, tokenizer), ok=True)
                seconds = {"engine_start": result["engine_start_s"], **result["seconds"]}
                row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
                if name == REFERENCE:
                    reference = result
            except Exception as exc:  # noqa: BLE001 - record it and go on with the next config
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                if name == REFERENCE:  # nothing can be compared without it
                    rows.append(row)
                    break
            row.setdefault("seconds", {})["total"] = round(time.monotonic() - started, 1)
            bar.n = steps * (len(rows) + 1)  # a failed config skips its remaining steps
            bar.refresh()
            rows.append(row)
    return rows, reference


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    from transformers import AutoTokenizer

    from breccia_sglang.harness.demo_model import fetch_demo_model

    source = args.model or fetch_demo_model()
    model_config = json.loads((source / "config.json").read_text())
    max_context = model_config["max_position_embeddings"]
    args.needle_context = max_context if args.needle_context == "max" else int(args.needle_context)
    tokenizer = AutoTokenizer.from_pretrained(source)
    workload = build_workload(tokenizer, args, max_context)

    hf_text = None if args.no_hf_check else hf_fp32_text(source, workload["text_ids"])
    rows, reference = run_configs(args, source, workload, tokenizer, model_config)
    hf = None if hf_text is None or reference is None else hf_check(hf_text, reference["text"])
    print()
    print_table(rows)
    if hf is not None:
        print(f"\nHF transformers fp32 on TEXT: perplexity {hf['perplexity']:.3f}; the SGLang reference "
              f"({args.dtype}): {hf['reference_perplexity']:.3f}, top-1 agreement {hf['reference_top1_agreement']:.4f}")
    report = {
        **report_header("accuracy", args),
        "model": {"path": str(source), "max_position_embeddings": max_context, "dtype": args.dtype},
        "workload": {"text_tokens": len(workload["text_ids"]), "chat_prompts": list(CHAT_PROMPTS[: args.chat_prompts]),
                     "chat_tokens": args.chat_tokens, "needle_context": args.needle_context,
                     "needles": [{k: v for k, v in n.items() if k != "input_ids"} for n in workload["needles"]],
                     "needle_tokens": args.needle_tokens},
        "hf_fp32": hf,
        "configs": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} ({report['seconds']:.0f} s)")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
