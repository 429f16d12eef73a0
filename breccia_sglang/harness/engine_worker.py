"""The engine process of ``engine_process.run_engine``:
``python -m breccia_sglang.harness.engine_worker SPEC.json OUT.json``.

It starts one real ``sgl.Engine``, runs a task on it and writes what the task returns.

SPEC: {"env": {...}, "enable": bool, "engine": {...Engine kwargs...},
       "task": "module:function" or "path/to/file.py:function" (default: the requests below),
       ...anything the task reads}
The default task reads "requests": [{"input_ids": [...] or [[...], ...] (a batch),
"sampling_params": {...}} | {"flush": true}, ...] and returns {"results": [...], and the
engine's "max_total_num_tokens", "memory_usage" and "server_args"}.
A task is ``function(engine, spec) -> dict``.

OUT: {"ok": true, "engine_start_s": float (the wall time of ``sgl.Engine(...)``),
      "max_total_num_tokens", "memory_usage", ...the task's dict}, or
     {"ok": false, "error_type": ..., "error": ..., "stage": "engine" | "task"} when the Engine
     raised (the caller decides whether that was expected) or the task did.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path


def flush_cache(engine, attempts: int = 100) -> None:
    """Drop the prefix cache. SGLang refuses while a finished request is still being finalized."""
    for _ in range(attempts):
        if engine.flush_cache().success:
            return
        time.sleep(0.1)
    raise RuntimeError(f"flush_cache() refused {attempts} times")


SERVER_ARG_KEYS = ("dtype", "kv_cache_dtype", "quantization", "attention_backend", "page_size", "device",
                   "max_total_tokens", "chunked_prefill_size")


def engine_report(engine) -> dict:
    """What the engine says it built: pool size and bytes, the model dtype it resolved from
    "auto", and the server arguments that decide what is measured."""
    info = engine.get_server_info()
    memory = info["internal_states"][0].get("memory_usage") or {}
    return {"max_total_num_tokens": info["max_total_num_tokens"], "memory_usage": memory,
            "kvcache_gib": memory.get("kvcache"),
            "model_dtype": str(engine.tokenizer_manager.model_config.dtype).removeprefix("torch."),
            "server_args": {k: info.get(k) for k in SERVER_ARG_KEYS}}


def run_requests(engine, spec: dict) -> dict:
    """The default task: each request in order; ``{"flush": true}`` empties the prefix cache
    so the next request recomputes."""
    results = []
    for request in spec.get("requests", []):
        if request.get("flush"):
            flush_cache(engine)
            continue
        # A list of prompts is one batch (scheduled together); its result is a list.
        out = engine.generate(input_ids=request["input_ids"], sampling_params=request["sampling_params"])
        results.append([_summary(o) for o in out] if isinstance(out, list) else _summary(out))
    report = engine_report(engine)
    return {"results": results, "max_total_num_tokens": report["max_total_num_tokens"],
            "memory_usage": report["memory_usage"], "server_args": report["server_args"]}


def _summary(out: dict) -> dict:
    return {"output_ids": out["output_ids"], "text": out.get("text"),  # no text without a tokenizer
            "cached_tokens": out["meta_info"].get("cached_tokens", 0)}


def load_task(name: str | None):
    """``module:function``, or ``path/to/file.py:function`` (benchmarks are scripts, not modules)."""
    if not name:
        return run_requests
    where, _, function = name.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would (dataclasses look their module up)
        sys.path.insert(0, str(Path(where).parent))  # so a benchmark's own helpers import
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, function)


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(spec.get("env", {}))  # before SGLang is imported; its schedulers inherit it
    import sglang as sgl

    if spec.get("enable"):
        import breccia_sglang

        breccia_sglang.enable()
    task = load_task(spec.get("task"))
    started = time.perf_counter()
    try:
        engine = sgl.Engine(**spec["engine"])
    except Exception as exc:
        _write(out_path, {"ok": False, "stage": "engine", "error_type": type(exc).__name__, "error": str(exc)})
        return
    engine_start_s = time.perf_counter() - started
    try:
        try:
            result = {"ok": True, "engine_start_s": engine_start_s, **task(engine, spec)}
        except Exception as exc:
            traceback.print_exc()
            result = {"ok": False, "stage": "task", "error_type": type(exc).__name__,
                      "error": f"{type(exc).__name__}: {exc}"}
        _write(out_path, result)  # before shutdown, which a caller's timeout may cut short
    finally:
        engine.shutdown()


def _write(path: str, result: dict) -> None:
    tmp = Path(path).with_suffix(".partial")
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(path)  # the caller never reads half a result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
