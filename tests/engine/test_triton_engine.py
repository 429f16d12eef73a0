"""The Triton attention backend (``breccia_triton``) inside a real ``sgl.Engine`` on CPU.

The kernels run under TRITON_INTERPRET=1, so the model is tiny (2 layers, 4 query heads over
2 kv heads); it is served in fp32 because the interpreter's bf16 is broken. Its tokens must
equal those of the plain-torch reference path (``breccia_torch``) on the same checkpoint, at
page sizes 1 and 16, and both backends must read the pool through ``PagedScaledTensor`` views
(counted in the scheduler process by ``tests/engine/view_spy``).
"""

from __future__ import annotations

import pytest

from breccia_sglang.format import make_recipe
from breccia_sglang.format.quantize import quantize_checkpoint

from ..helpers import run_engine, view_spy_counts, view_spy_env

pytestmark = pytest.mark.engine

GREEDY = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}  # each step runs the interpreted kernels
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


# (backend, page size): the Triton kernels at both page sizes against the torch path. The
# torch path at page size 1 runs in test_kv_engine.py, on the demo model.
RUNS = (("breccia_triton", 16), ("breccia_torch", 16), ("breccia_triton", 1))


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("tiny_fp8") / "ckpt"
    quantize_checkpoint(tiny_llama, checkpoint, make_recipe("fp8"), progress=False)
    results = {}
    for backend, page_size in RUNS:
        spy = tmp_path_factory.mktemp(f"spy-{backend}-{page_size}")
        env = {"TRITON_INTERPRET": "1"} if backend == "breccia_triton" else {}
        spec = {
            "env": {**env, **view_spy_env(spy)},
            "engine": {"model_path": str(checkpoint), "device": "cpu", "dtype": "float32", "max_total_tokens": 1024,
                       "page_size": page_size, "quantization": "breccia", "attention_backend": backend,
                       "skip_tokenizer_init": True, "log_level": "error"},
            "requests": REQUESTS,
        }
        result = run_engine(spec, tmp_path_factory.mktemp(f"{backend}-{page_size}"))
        assert result["ok"], result
        results[backend, page_size] = {**result, "spy": view_spy_counts(spy)}
    return results


def _tokens(result) -> list:
    return [[r["output_ids"] for r in item] if isinstance(item, list) else item["output_ids"]
            for item in result["results"]]


def test_triton_backend_serves_the_same_tokens_as_the_torch_path(runs):
    triton_tokens, torch_tokens = _tokens(runs["breccia_triton", 16]), _tokens(runs["breccia_torch", 16])
    assert all(len(ids) == GREEDY["max_new_tokens"] for ids in triton_tokens[:2])
    assert triton_tokens == torch_tokens
    # Pages change where K/V sit in the pool, never what a request attends to.
    assert _tokens(runs["breccia_triton", 1]) == torch_tokens


@pytest.mark.parametrize("page_size", [16, 1])
def test_triton_backend_reuses_the_prefix_and_matches_a_recompute(runs, page_size):
    turn1, turn2, batch, recomputed = runs["breccia_triton", page_size]["results"]
    assert turn1["cached_tokens"] == 0
    assert turn2["cached_tokens"] == len(TURN1) // page_size * page_size > 0  # page-aligned part of turn 1
    assert recomputed["cached_tokens"] == 0
    assert turn2["output_ids"] == recomputed["output_ids"]
    assert len(batch) == len(BATCH) and len({tuple(r["output_ids"]) for r in batch}) > 1


def test_both_backends_read_the_pool_through_views(runs):
    # The Triton backend hands its kernels batch views built from SGLang's kv_indptr /
    # kv_indices (decode, and extend's cached prefix) and qo_indptr / out_cache_loc (extend's
    # new tokens), counted in the scheduler process: per layer, at least one per decode step
    # and two per prefill. The torch path dequantizes one-sequence views instead: a K and a V
    # per request, layer and forward pass.
    layers, steps = 2, GREEDY["max_new_tokens"] - 1
    prompts = sum(len(r) if isinstance(r, list) else 1 for r in runs["breccia_torch", 16]["results"])
    for page_size in (16, 1):
        triton = runs["breccia_triton", page_size]["spy"]
        assert triton["batch_views"] >= 2 * layers * steps * 2, triton  # K and V views, >= 2 decode batches
        assert triton["dequantize_calls"] == 0, triton  # the kernels read FP8 in place
    torch_path = runs["breccia_torch", 16]["spy"]
    assert torch_path["dequantize_calls"] >= 2 * layers * prompts * (steps + 1), torch_path
    assert torch_path["batch_views"] == 0, torch_path
