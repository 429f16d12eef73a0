"""bench_soak's client against scripted SGLang stream chunks: the cases a real server produces
only by timing (a lagging client gets several tokens in one chunk). The real server soak is in
test_server_load.py."""

from __future__ import annotations

import asyncio

import pytest


import bench_soak

OUTPUT_LEN = 8


def scripted_stream(tokens_per_chunk: list[int]):
    """SGLang's default (cumulative) chunks, ``tokens_per_chunk`` new tokens each; the last
    chunk carries finish_reason "length"."""

    def stream_fn(session, url):
        async def stream(input_ids, sampling_params, extra=None):
            ids = []
            for i, n in enumerate(tokens_per_chunk):
                ids = ids + list(range(len(ids), len(ids) + n))
                last = i == len(tokens_per_chunk) - 1
                yield {"output_ids": ids, "meta_info": {
                    "completion_tokens": len(ids), "prompt_tokens": 5,
                    "output_token_logprobs": [[-0.1, t, None] for t in ids],
                    "finish_reason": {"type": "length", "length": OUTPUT_LEN} if last else None}}

        return stream

    return stream_fn


def run(plan: str, cut_after: int, tokens_per_chunk: list[int], monkeypatch) -> bench_soak.SoakRequest:
    assert sum(tokens_per_chunk) == OUTPUT_LEN
    monkeypatch.setattr(bench_soak.worker, "http_stream_fn", scripted_stream(tokens_per_chunk))
    request = bench_soak.SoakRequest(number=0, client=0, conversation=0, turn=1, plan=plan,
                                     cut_after=cut_after, input_ids=[1, 2, 3, 4, 5])
    asyncio.run(bench_soak.run_request(None, "http://unused", request, OUTPUT_LEN))
    return request


def test_disconnect_cuts_at_the_first_chunk_that_reaches_cut_after(monkeypatch):
    request = run("disconnect", 3, [1, 1, 2, 2, 2], monkeypatch)
    assert request.outcome == "aborted" and request.error is None
    assert request.output_ids == [0, 1, 2, 3]  # chunk 3 brought tokens 3 and 4 together


@pytest.mark.parametrize("plan", ["disconnect", "abort_request"])
def test_a_chunk_that_reaches_cut_after_and_finishes_is_a_completed_request(plan, monkeypatch):
    # Tokens 7 and 8 in one chunk with finish_reason "length": there was nothing left to cut
    # (an /abort_request would not even be sent, so the session is never touched).
    request = run(plan, 7, [1, 1, 1, 1, 1, 1, 2], monkeypatch)
    assert request.outcome == "complete" and request.error is None
    assert request.output_ids == list(range(OUTPUT_LEN))
    assert len(request.output_logprobs) == OUTPUT_LEN


def test_a_planned_completion_reads_every_chunk(monkeypatch):
    request = run("complete", 0, [3, 3, 2], monkeypatch)
    assert request.outcome == "complete" and request.output_ids == list(range(OUTPUT_LEN))
