"""Run a real ``sgl.Engine`` for the tests: ``python _engine_driver.py SPEC.json OUT.json``.

SPEC: {"enable": bool, "env": {...}, "engine": {...Engine kwargs...}, "requests": [{"input_ids": [...],
"sampling_params": {...}}, ...]}. OUT: {"ok": true, "results": [...]} or
{"ok": false, "error_type": ..., "error": ...} when constructing the Engine raised.
"""

import json
import os
import sys


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    os.environ.update(spec.get("env", {}))  # scheduler processes inherit it
    import sglang as sgl

    if spec.get("enable"):
        import breccia_sglang

        breccia_sglang.enable()
    try:
        engine = sgl.Engine(**spec["engine"])
    except Exception as exc:  # reported to the test, which decides whether it was expected
        json.dump({"ok": False, "error_type": type(exc).__name__, "error": str(exc)}, open(out_path, "w"))
        return
    try:
        results = []
        for request in spec["requests"]:
            out = engine.generate(input_ids=request["input_ids"], sampling_params=request["sampling_params"])
            results.append(
                {"output_ids": out["output_ids"], "text": out["text"],
                 "cached_tokens": out["meta_info"].get("cached_tokens", 0)}
            )
        info = engine.get_server_info()
        json.dump({"ok": True, "results": results, "max_total_num_tokens": info["max_total_num_tokens"],
                   "memory_usage": info["internal_states"][0]["memory_usage"]}, open(out_path, "w"), default=float)
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
