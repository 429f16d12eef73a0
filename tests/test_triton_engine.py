"""The Triton attention backend (``breccia_triton``) inside a real ``sgl.Engine`` on CPU.

The kernels run under TRITON_INTERPRET=1, so the model is tiny (2 layers, 4 query heads over
2 kv heads); it is served in fp32 because the interpreter's bf16 is broken. Its tokens must
equal those of the plain-torch reference path (``breccia_torch``) on the same checkpoint.
"""

from __future__ import annotations

import pytest
from conftest import run_engine

from breccia_sglang.quantize import make_recipe, quantize_checkpoint

pytestmark = pytest.mark.engine

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
TURN1 = list(range(3, 40))                 # 37 tokens: not a multiple of the page size
TURN2 = TURN1 + list(range(100, 120))      # starts with turn 1: a prefix hit
BATCH = [list(range(7, 12)), list(range(50, 120)), list(range(200, 233))]  # 5, 70 and 33 tokens at once
REQUESTS = [
    {"input_ids": TURN1, "sampling_params": GREEDY},
    {"input_ids": TURN2, "sampling_params": GREEDY},
    {"input_ids": BATCH, "sampling_params": GREEDY},
    {"flush": True},
    {"input_ids": TURN2, "sampling_params": GREEDY},  # recomputed from scratch
]


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("tiny_fp8") / "ckpt"
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe("fp8"), progress=False)
    results = {}
    for backend, env in (("breccia_triton", {"TRITON_INTERPRET": "1"}), ("breccia_torch", {})):
        spec = {
            "env": env,
            "engine": {"model_path": str(checkpoint), "device": "cpu", "dtype": "float32", "max_total_tokens": 1024,
                       "page_size": 16, "quantization": "breccia", "attention_backend": backend,
                       "skip_tokenizer_init": True, "log_level": "error"},
            "requests": REQUESTS,
        }
        results[backend] = run_engine(spec, tmp_path_factory.mktemp(backend))
        assert results[backend]["ok"], results[backend]
    return results


def _tokens(result) -> list:
    return [[r["output_ids"] for r in item] if isinstance(item, list) else item["output_ids"]
            for item in result["results"]]


def test_triton_backend_serves_the_same_tokens_as_the_torch_path(runs):
    triton_tokens, torch_tokens = _tokens(runs["breccia_triton"]), _tokens(runs["breccia_torch"])
    assert all(len(ids) == GREEDY["max_new_tokens"] for ids in triton_tokens[:2])
    assert triton_tokens == torch_tokens


def test_triton_backend_reuses_the_prefix_and_matches_a_recompute(runs):
    turn1, turn2, batch, recomputed = runs["breccia_triton"]["results"]
    assert turn1["cached_tokens"] == 0
    assert turn2["cached_tokens"] == len(TURN1) // 16 * 16 > 0  # page-aligned part of turn 1
    assert recomputed["cached_tokens"] == 0
    assert turn2["output_ids"] == recomputed["output_ids"]
    assert len(batch) == len(BATCH) and len({tuple(r["output_ids"]) for r in batch}) > 1
