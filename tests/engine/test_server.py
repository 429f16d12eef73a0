"""A real ``python -m sglang.launch_server --breccia-format`` on CPU, over HTTP."""

from __future__ import annotations

import time

import pytest

from breccia_sglang.harness.server import CPU_ARGS, SGLangServer

from ..helpers import CHAT, MAX_NEW_TOKENS, cpu_seconds, scheduler_pids

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def server(demo_fp8, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    # KV in the model's dtype, so the answer can be compared with HF transformers exactly.
    with SGLangServer(demo_fp8, "--breccia-format", *CPU_ARGS, "--enable-cache-report", log_path=log,
                      env={"BRECCIA_SGLANG_FP8_KV": "0"}) as srv:
        yield srv


def test_openai_chat_completions_answers_like_hf_transformers(server, demo_fp8, hf_fp8_reference_ids):
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(demo_fp8).decode(hf_fp8_reference_ids, skip_special_tokens=True)
    reply = server.chat(CHAT, max_tokens=MAX_NEW_TOKENS)
    assert reply["text"].strip() == expected.strip()
    assert "Paris" in reply["text"]


def test_repeated_chat_reports_cached_tokens(server):
    first = server.chat([{"role": "user", "content": "Name a primary colour."}], max_tokens=8)
    again = server.chat([{"role": "user", "content": "Name a primary colour."}], max_tokens=8)
    assert again["cached_tokens"] > 0
    assert again["cached_tokens"] <= again["prompt_tokens"] == first["prompt_tokens"]
    assert again["text"] == first["text"]


def test_server_reports_breccia_quantization(server):
    info = server.get("/server_info")
    assert info["quantization"] == "breccia"


def test_an_idle_server_leaves_the_cpu_alone(server):
    # The CPU platform turns on SGLang's --sleep-on-idle: a polling scheduler holds a whole core.
    assert server.get("/server_info")["sleep_on_idle"] is True
    assert "the scheduler sleeps while idle" in server.log_path.read_text(errors="replace")
    server.chat([{"role": "user", "content": "Hi"}], max_tokens=2)  # busy, then idle again
    (scheduler,) = scheduler_pids(server.proc.pid)
    used, started = cpu_seconds(scheduler), time.monotonic()
    time.sleep(3)
    share = (cpu_seconds(scheduler) - used) / (time.monotonic() - started)
    # A polling scheduler uses ~100% of a core here, a sleeping one ~2% (measured): the bound
    # sits far from both, so machine noise cannot flip it.
    assert share < 0.5, f"the idle scheduler used {share:.0%} of a core"


def test_breccia_format_on_a_checkpoint_without_breccia_tensors_fails_clearly(demo_model, tmp_path):
    srv = SGLangServer(demo_model, "--breccia-format", *CPU_ARGS, log_path=tmp_path / "bad.log",
                       startup_timeout=240)
    with pytest.raises(RuntimeError) as failure:
        srv.start()
    srv.stop()
    assert "no breccia tensors found" in str(failure.value)
    assert str(demo_model) in str(failure.value)
