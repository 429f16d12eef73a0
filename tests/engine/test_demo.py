"""The README's main job (`breccia-sglang demo`): multi-turn chat with prefix-cache reuse."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.engine


def test_demo_chat_reuses_its_prefix_every_turn(demo_fp8):
    from breccia_sglang.harness.demo import TURNS, run_demo

    lines = []
    results = run_demo("fp8", max_tokens=16, log=lines.append)
    assert len(results) == len(TURNS)
    assert "Paris" in results[0]["text"]
    assert results[0]["cached_tokens"] < results[0]["prompt_tokens"]
    for earlier, later in zip(results, results[1:]):
        # Each turn's prompt extends the previous one, so at least the previous prompt's
        # page-aligned prefix comes from the radix cache.
        assert later["prompt_tokens"] > earlier["prompt_tokens"]
        assert later["cached_tokens"] >= earlier["prompt_tokens"] - 1 > 0
    printed = "\n".join(lines)
    assert "[turn 2] prefix cache:" in printed and "prompt tokens served from SGLang's radix prefix cache" in printed
