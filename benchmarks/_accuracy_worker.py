"""One configuration of ``bench_accuracy.py``: a real ``sgl.Engine`` and the requests it is scored on.

    python benchmarks/_accuracy_worker.py SPEC.json OUT.json

A failing engine start kills its parent process, so the benchmark starts one of these per
configuration. The worker only asks and records; all scoring happens in the benchmark.

SPEC: {"config": name, "env": {...}, "engine": {...Engine kwargs...},
       "text_ids": [...],                        # scored by its input-token logprobs
       "chat": {"prompts": [[ids], ...], "max_new_tokens": int},
       "needles": [{"input_ids": [...], ...}, ...], "needle_new_tokens": int}
OUT:  {"ok": true, "text": {"logprobs": [...], "top1_ids": [...]}, "chat": [[ids], ...],
       "needles": [{"output_ids": [...]}, ...], "engine": {...}, "seconds": {...}}
      or {"ok": false, "error": "..."}.

Progress goes to stdout as lines ``@@progress <step>`` (the benchmark turns them into its
progress bar); SGLang's own log goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

PROGRESS_MARK = "@@progress"


def report_progress(step: str) -> None:
    print(f"{PROGRESS_MARK} {step}", flush=True)


def text_logprobs(engine, text_ids: list[int]) -> dict:
    """Per input position i >= 1: log p(token i | tokens < i) and the argmax token at i.

    SGLang 0.5.23 returns ``input_token_logprobs`` as (logprob, token_id, text) per input token
    and ``input_top_logprobs`` as a list of (logprob, token_id, text) per input token; both are
    None at position 0, which nothing predicts. One extra token is generated because SGLang
    needs at least one; it is not scored.
    """
    out = engine.generate(input_ids=text_ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                          return_logprob=True, logprob_start_len=0, top_logprobs_num=1)
    meta = out["meta_info"]
    token_logprobs, top = meta["input_token_logprobs"], meta["input_top_logprobs"]
    if len(token_logprobs) != len(text_ids) or len(top) != len(text_ids):
        raise RuntimeError(f"expected {len(text_ids)} input logprobs, got {len(token_logprobs)} and {len(top)}")
    if [entry[1] for entry in token_logprobs] != text_ids:  # the logprobs must be of our tokens, in order
        raise RuntimeError("input_token_logprobs are not aligned with the input ids")
    return {"logprobs": [entry[0] for entry in token_logprobs[1:]],
            "top1_ids": [entries[0][1] for entries in top[1:]]}


def greedy(engine, prompts: list, max_new_tokens: list[int], ignore_eos: list[bool]) -> list[dict]:
    """Greedy continuations of a batch of prompts (scheduled together, like a server would)."""
    params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": i} for n, i in zip(max_new_tokens, ignore_eos)]
    if not prompts:
        return []
    return [{"output_ids": out["output_ids"]} for out in engine.generate(input_ids=prompts, sampling_params=params)]


def engine_report(engine) -> dict:
    """What SGLang built: the KV pool (tokens and GiB, from which the benchmark checks its format)
    and the dtypes it resolved from "auto"."""
    info = engine.get_server_info()
    keys = ("kv_cache_dtype", "quantization", "attention_backend", "device", "max_total_tokens")
    return {"max_total_num_tokens": info["max_total_num_tokens"],
            "kvcache_gib": info["internal_states"][0]["memory_usage"]["kvcache"],
            "model_dtype": str(engine.tokenizer_manager.model_config.dtype).removeprefix("torch."),
            "server_args": {k: info.get(k) for k in keys}}


def run(spec: dict) -> dict:
    import sglang as sgl

    seconds = {}
    started = time.monotonic()
    engine = sgl.Engine(**spec["engine"])
    seconds["engine_start"] = time.monotonic() - started
    report_progress("engine started")
    try:
        started = time.monotonic()
        text = text_logprobs(engine, spec["text_ids"])
        seconds["text"] = time.monotonic() - started
        report_progress("text logprobs")

        started = time.monotonic()
        # Chat prompts and needle prompts go in one batch, as concurrent users would: on CPU the
        # emulated kernels dequantize every weight once per forward pass, so the number of passes,
        # not of tokens, sets the time. ignore_eos: every config generates exactly max_new_tokens
        # per chat prompt, so outputs compare position by position.
        chat, needles = spec["chat"], spec["needles"]
        outputs = greedy(engine, chat["prompts"] + [n["input_ids"] for n in needles],
                         [chat["max_new_tokens"]] * len(chat["prompts"]) + [spec["needle_new_tokens"]] * len(needles),
                         ignore_eos=[True] * len(chat["prompts"]) + [False] * len(needles))
        seconds["greedy"] = time.monotonic() - started
        report_progress("chat and needles")
        return {"ok": True, "text": text, "chat": [o["output_ids"] for o in outputs[: len(chat["prompts"])]],
                "needles": outputs[len(chat["prompts"]):], "engine": engine_report(engine),
                "seconds": seconds}
    finally:
        engine.shutdown()


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    os.environ.update(spec.get("env", {}))  # before SGLang is imported; its schedulers inherit it
    try:
        result = run(spec)
    except Exception as exc:  # recorded by the benchmark, which goes on with the next configuration
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
