"""The main job, end to end on CPU: the demo model, quantized to breccia FP8, served by
SGLang's own HTTP server with ``--breccia-format``, holding a short multi-turn chat.
"""

from __future__ import annotations

import time

from .. import names
from ..format import make_recipe
from ..format.quantize import quantize_checkpoint
from .cache import cache_dir, cached_checkpoint
from .demo_model import DEMO_NAME, fetch_demo_model
from .server import CPU_ARGS, SGLangServer

TURNS = (
    "What is the capital of France?",
    "Name one famous landmark in that city.",
    "In one sentence, why do people visit it?",
)


def quantized_demo_model(recipe_name: str = "fp8", *, log=print):
    """The demo model as a breccia checkpoint (cached beside the source model)."""
    src = fetch_demo_model(log=log)

    def quantize(dst):
        log(f"quantizing {src.name} with recipe {recipe_name} ...")
        report = quantize_checkpoint(src, dst, make_recipe(recipe_name), overwrite=True)
        log(f"  {len(report.quantized)} weights quantized, {len(report.kept)} kept high precision")

    return cached_checkpoint(cache_dir() / f"{DEMO_NAME}-breccia-{recipe_name}", quantize, log=log)


def run_demo(recipe_name: str = "fp8", max_tokens: int = 48, log=print) -> list[dict]:
    model = quantized_demo_model(recipe_name, log=log)
    log_path = cache_dir() / "logs" / "demo-server.log"
    log(f"starting `python -m sglang.launch_server --model-path {model} {names.FLAG} {' '.join(CPU_ARGS)}` ...")
    started = time.monotonic()
    results = []
    with SGLangServer(model, names.FLAG, *CPU_ARGS, "--enable-cache-report", log_path=log_path) as server:
        log(f"server up in {time.monotonic() - started:.0f}s at {server.url} (log: {log_path})\n")
        messages = []
        for turn, question in enumerate(TURNS, 1):
            messages.append({"role": "user", "content": question})
            reply = server.chat(messages, max_tokens=max_tokens)
            messages.append({"role": "assistant", "content": reply["text"]})
            results.append(reply)
            log(f"[turn {turn}] user: {question}")
            log(f"[turn {turn}] assistant: {reply['text'].strip()}")
            log(
                f"[turn {turn}] prefix cache: {reply['cached_tokens']} of {reply['prompt_tokens']} "
                "prompt tokens reused\n"
            )
    hits = sum(r["cached_tokens"] for r in results)
    log(f"done: {len(results)} turns, {hits} prompt tokens served from SGLang's radix prefix cache")
    return results
