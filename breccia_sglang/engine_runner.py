"""Run a real ``sgl.Engine`` in its own process: ``python -m breccia_sglang.engine_runner SPEC.json OUT.json``.

Tests and benchmarks use it because a failing engine start kills its parent process.

SPEC: {"enable": bool, "env": {...}, "engine": {...Engine kwargs...}, "requests": [{"input_ids": [...] or
[[...], ...] (a batch), "sampling_params": {...}} | {"flush": true}, ...]}. OUT: {"ok": true, "results": [...]} or
{"ok": false, "error_type": ..., "error": ...} when constructing the Engine raised. An "ok" OUT also
has "engine_start_s", the wall time of ``sgl.Engine(...)``.
"""

import json
import os
import sys
import time


def run_engine(spec: dict, workdir, timeout: float = 900) -> dict:
    """Run ``spec`` in a fresh Python process; return its OUT dict (+ "returncode", "stderr")."""
    import subprocess
    from pathlib import Path

    spec_path, out_path = Path(workdir) / "spec.json", Path(workdir) / "out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)  # a result left from an earlier run must not be read as this one's
    done = subprocess.run([sys.executable, "-m", "breccia_sglang.engine_runner", str(spec_path), str(out_path)],
                          capture_output=True, text=True, timeout=timeout)
    if not out_path.exists():
        raise RuntimeError(f"engine process failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    result = json.loads(out_path.read_text())
    result.update(returncode=done.returncode, stderr=done.stderr)
    return result


def _flush(engine, attempts: int = 100) -> None:
    # SGLang refuses to flush while the previous request is still being finalized.
    for _ in range(attempts):
        if engine.flush_cache().success:
            return
        time.sleep(0.1)
    raise RuntimeError(f"flush_cache() refused {attempts} times")


def _summary(out: dict) -> dict:
    return {"output_ids": out["output_ids"], "text": out.get("text"),  # no text without a tokenizer
            "cached_tokens": out["meta_info"].get("cached_tokens", 0)}


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    os.environ.update(spec.get("env", {}))  # scheduler processes inherit it
    import sglang as sgl

    if spec.get("enable"):
        import breccia_sglang

        breccia_sglang.enable()
    started = time.perf_counter()
    try:
        engine = sgl.Engine(**spec["engine"])
    except Exception as exc:  # reported to the test, which decides whether it was expected
        json.dump({"ok": False, "error_type": type(exc).__name__, "error": str(exc)}, open(out_path, "w"))
        return
    start_s = time.perf_counter() - started
    try:
        results = []
        for request in spec["requests"]:
            if request.get("flush"):  # drop the prefix cache, so the next request recomputes
                _flush(engine)
                continue
            # A list of prompts is one batch (scheduled together); its result is a list.
            out = engine.generate(input_ids=request["input_ids"], sampling_params=request["sampling_params"])
            results.append([_summary(o) for o in out] if isinstance(out, list) else _summary(out))
        info = engine.get_server_info()
        json.dump({"ok": True, "results": results, "max_total_num_tokens": info["max_total_num_tokens"],
                   "memory_usage": info["internal_states"][0]["memory_usage"], "engine_start_s": start_s},
                  open(out_path, "w"), default=float)
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
