"""One configuration of ``bench_accuracy.py``: the requests a real ``sgl.Engine`` is scored on.

``ask`` is the engine task (``breccia_sglang.harness``'s ``run_engine`` starts one engine
process per configuration and runs it there). It only asks and records; all scoring happens
in the benchmark.

Task SPEC: {"config": name, "env": {...}, "engine": {...Engine kwargs...},
            "task": "<this file>:ask",
            "text_ids": [...],                        # scored by its input-token logprobs
            "chat": {"prompts": [[ids], ...], "max_new_tokens": int},
            "needles": [{"input_ids": [...], ...}, ...], "needle_new_tokens": int}
It returns {"text": {"logprobs": [...], "top1_ids": [...]}, "chat": [[ids], ...],
            "needles": [{"output_ids": [...]}, ...], "engine": {...}, "seconds": {...}}.

Progress goes to stdout as lines ``@@progress <step>`` (the benchmark turns them into its
progress bar); SGLang's own log goes to stderr.
"""

from __future__ import annotations

import time

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


def ask(engine, spec: dict) -> dict:
    """The engine task: the text's input logprobs, then the chat and needle prompts in one batch."""
    from breccia_sglang.harness.engine_worker import engine_report

    report_progress("engine started")
    seconds = {}
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
    return {"text": text, "chat": [o["output_ids"] for o in outputs[: len(chat["prompts"])]],
            "needles": outputs[len(chat["prompts"]):], "engine": engine_report(engine), "seconds": seconds}
