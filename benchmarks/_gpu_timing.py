"""Timing GPU kernels as a server runs them: inside a CUDA graph, reading weights that are not
in L2.

SGLang captures its decode steps in CUDA graphs, so the host's launch overhead is not part of a
layer's cost there. Timed eagerly on the lent GPU machine's CPU, a Triton launch (20-40 args
through Python) takes longer than a 10 us decode GEMM: the first GPU run measured the host, not
the kernels (every FP8 kernel 0.1-0.4x BF16, an o_proj slower than the larger qkv). Replaying a
captured graph removes the host; its calls rotate over copies of the weight, together several
times the L2 (50 MB on H100, 60 MB on H200), so each call streams its weight from memory, as
a real model's layers do.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable

import torch

ROTATION_BYTES = 240 << 20  # the weight copies one replay reads: 4x an H200's L2


def copies_for(weight_bytes: int) -> int:
    """How many copies of a weight one replay rotates over."""
    return max(1, math.ceil(ROTATION_BYTES / max(1, weight_bytes)))


def graph_time_us(calls: list[Callable[[], object]], replays: int = 20) -> float:
    """Median time of one call, in microseconds, over ``replays`` replays of one CUDA graph that
    makes every call of ``calls`` once (each on its own weight copy)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and allocate outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    del graph
    return statistics.median(times)


def time_us(calls: list[Callable[[], object]]) -> tuple[float, str]:
    """(microseconds per call, how it was timed): replayed in a CUDA graph, or, for work that
    cannot be captured, eagerly (``triton.testing.do_bench``, launch overhead included) and said so."""
    try:
        return graph_time_us(calls), f"CUDA graph, {len(calls)} weight copies"
    except Exception as exc:  # noqa: BLE001 - said in the row
        import triton

        from _common import error_summary

        torch.cuda.synchronize()
        return (triton.testing.do_bench(calls[0], warmup=25, rep=100, return_mode="median") * 1e3,
                f"eager: graph capture failed ({error_summary(exc)})")
