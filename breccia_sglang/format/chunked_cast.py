"""``breccia.cast`` of one weight, a few rows at a time, on every CPU core.

breccia 0.1.3 casts MXFP8 and NVFP4 in NumPy, encoding each element by a search over every code
of its format: (elements x codes) fp32 temporaries, 1 KiB an element for MXFP8's 256 E4M3
codes. Every recipe but per-tensor FP8 scales each row on its own, so casting a few rows at a
time is the same breccia cast, bit for bit (tested), and:
- rows in chunks small enough that those temporaries stay in cache: MXFP8 took 460 ns an
  element in chunks of 2^13 elements against 2,300-5,600 in chunks of 2^18 (2 CPU cores,
  2026-12-07); the other recipes cast in torch or in a few NumPy passes, fastest near 2^18;
- chunks of the code-searching recipes spread over worker processes, each running
  ``breccia.cast`` itself on NumPy rows (the path breccia's torch entry takes for them anyway):
  at ~460 ns an element a core, an 8B model takes about an hour to MXFP8 on one core, and should
  take minutes on a many-core machine (measured on 2 cores only: 1.6-1.75x with 2 workers,
  ``benchmarks/bench_quantize.py``).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import repeat
from typing import NamedTuple

import breccia
import torch
from breccia.recipes import MXFP8BlockScaling, NVFP4BlockScaling

from .recipes import PER_TENSOR_FP8

SEARCHED_CODES = (MXFP8BlockScaling, NVFP4BlockScaling)  # recipes whose cast searches every code
CAST_CHUNK_ELEMENTS = 2**18
SEARCH_CHUNK_ELEMENTS = 2**13
CHUNKS_PER_TASK = 16  # chunks a worker takes per round trip at most: ~50 ms of MXFP8 work, ~1 ms of pickling
TASKS_PER_WORKER = 4  # at least, per weight where it has the chunks: no worker idles while others finish


class CastWorkers(NamedTuple):
    """The worker processes ``cast_workers`` started, and how many there are."""

    pool: ProcessPoolExecutor
    count: int


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def cast_workers(jobs: int, recipes):
    """``jobs`` worker processes for ``chunked_cast`` of weights in ``recipes``; None where none
    of those searches codes, for ``jobs`` <= 1, or where processes cannot fork.

    Forked, not spawned: a spawned worker first re-runs the parent's main module (a script
    without a ``__main__`` guard would fail; ``python -m breccia_sglang.cli`` would import torch
    again in each). They fork here, before the caller reads a tensor or starts a progress bar,
    and run breccia's NumPy cast only, never torch, whose thread pools a forked child must not
    touch."""
    searched = any(isinstance(recipe, SEARCHED_CODES) for recipe in recipes)
    if not searched or jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"))
    try:
        pool.submit(os.getpid).result()  # a fork context starts every worker at the first task: now
        yield CastWorkers(pool, jobs)
    finally:  # on an error or Ctrl-C, the chunks still queued are dropped, not cast
        pool.shutdown(wait=True, cancel_futures=True)


def chunked_cast(x: torch.Tensor, recipe, workers: CastWorkers | None = None) -> breccia.ScaledTensor:
    """``breccia.cast(x, recipe)`` of a 2-D fp32 CPU tensor, bit for bit, cast a few rows at a
    time, on ``workers`` (``cast_workers``) for the code-searching recipes."""
    searched = isinstance(recipe, SEARCHED_CODES)
    rows = max(1, (SEARCH_CHUNK_ELEMENTS if searched else CAST_CHUNK_ELEMENTS) // max(1, x.shape[-1]))
    if isinstance(recipe, PER_TENSOR_FP8) or x.shape[0] <= rows:  # one scale over all rows, or one chunk
        return breccia.cast(x, recipe)
    chunks = torch.split(x, rows)
    if searched and workers is not None:
        # Each weight is cast whole before the next is read, so a small one (an MoE expert:
        # ~200 chunks) must still spread over every worker: smaller tasks rather than idle workers.
        per_task = max(1, min(CHUNKS_PER_TASK, len(chunks) // (TASKS_PER_WORKER * workers.count)))
        parts = [_as_torch(p) for p in workers.pool.map(breccia.cast, [c.numpy() for c in chunks], repeat(recipe),
                                                        chunksize=per_task)]
    else:
        parts = [breccia.cast(chunk, recipe) for chunk in chunks]
    zero_point = None if parts[0].zero_point is None else torch.cat([p.zero_point for p in parts])
    return breccia.from_buffer(
        torch.cat([p.data for p in parts]), torch.cat([p.scale for p in parts]), recipe, parts[0].layout, zero_point
    )


def _as_torch(scaled: breccia.ScaledTensor) -> breccia.ScaledTensor:
    """A worker's NumPy result as torch tensors, as breccia's torch entry converts its own."""
    zero_point = None if scaled.zero_point is None else torch.as_tensor(scaled.zero_point)
    return breccia.ScaledTensor(data=torch.as_tensor(scaled.data), scale=torch.as_tensor(scaled.scale),
                                recipe=scaled.recipe, layout=scaled.layout, zero_point=zero_point)
