"""Tile configs of the paged decode kernel, tuned per GPU model.

A decode step streams each request's K/V once, so its speed is how many cache bytes the GPU keeps
in flight and how few instructions it issues per byte. Both trade against each other through
the tile: more keys a step (``block_n``) or fewer warps issue fewer instructions per byte but
hold more registers, so fewer programs share an SM to hide latency; deeper pipelines hold more
shared memory. Compiled for sm_90 at head_dim 128 (bf16 queries), the default 64 keys over 4
warps take 134 registers and 4.6 loop instructions per cache byte; 32 keys take 96 and 5.5;
128 keys 140 and 3.6 (``benchmarks/compile_kernels.py``). A register cap (``max_registers``,
ptxas's ``maxnreg``) trades the other way: capped at 128, the default tiles fit 4 programs of 4
warps on an SM instead of 3, for 1-2% more instructions and no spills. Which wins is a measurement:
``benchmarks/bench_decode.py --tune`` times every candidate on the GPU at hand and its JSON
report carries the winner per head_dim under ``"tiles"``. That file, copied to ``tuned/`` as
``decode_<GPU model>.json`` (named as SGLang names its tuned configs, spaces as ``_``), is
taken on every GPU of that model; ``BRECCIA_SGLANG_DECODE_TILES`` names another file (on any
device, the interpreter included, so tests run a tuned launch on CPU). fp32 queries keep their
own small tiles: their exact dot runs on FMA units and keeps its tiles in registers.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ... import names
from ...errors import BrecciaConfigError
from ..launch import fp32_on_gpu, gpu_model, tuned_path

TUNED_DIR = Path(__file__).parent / "tuned"


@dataclass(frozen=True)
class DecodeTiles:
    block_n: int  # keys (cache rows) per step of a program's loop
    num_warps: int
    num_stages: int  # tiles loaded ahead by Triton's software pipeline, plus the one in use
    max_registers: int | None = None  # per thread, if capped below what ptxas would take

    @property
    def name(self) -> str:
        cap = f"r{self.max_registers}" if self.max_registers else ""
        return f"{self.block_n}x{self.num_warps}w{self.num_stages}s{cap}"

    @property
    def launch_options(self) -> dict:
        """The Triton launch options these tiles set (the cap only when there is one)."""
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.max_registers:
            options["maxnreg"] = self.max_registers
        return options

    def why_not(self) -> str | None:
        """Why a launch cannot take these tiles, or None."""
        if self.block_n not in (16, 32, 64, 128):
            return f"block_n {self.block_n}: tl.dot takes 16, 32, 64 or 128 keys a step here"
        if self.num_warps not in (1, 2, 4, 8):
            return f"num_warps {self.num_warps}: 1, 2, 4 or 8"
        if not 1 <= self.num_stages <= 5:
            return f"num_stages {self.num_stages}: 1 to 5"
        if self.max_registers is not None and not (64 <= self.max_registers <= 255 and self.max_registers % 8 == 0):
            return f"max_registers {self.max_registers}: a multiple of 8 from 64 to 255, or none"
        return None


DEFAULT = DecodeTiles(64, 4, 3)  # fp16 / bf16 queries where nothing is tuned
FP32 = DecodeTiles(32, 8, 3)  # fp32 queries on a GPU (launch.fp32_on_gpu says why)
# What bench_decode --tune measures: each compiles without spills for sm_80 / 89 / 90 at head_dim
# 64 and 128 (tests/test_compile_kernels.py), and spans registers against instructions per byte.
# The capped one is the default's tiles at 4 programs an SM where head_dim 128 would fit 3.
CANDIDATES = (
    DEFAULT,
    DecodeTiles(64, 4, 2),
    DecodeTiles(32, 4, 2),
    DecodeTiles(32, 2, 2),
    DecodeTiles(16, 2, 2),
    DecodeTiles(64, 8, 2),
    DecodeTiles(128, 4, 2),
    DecodeTiles(128, 8, 2),
    DecodeTiles(64, 4, 3, max_registers=128),
)


def decode_tiles(q: torch.Tensor, head_dim: int) -> DecodeTiles:
    """The tiles a decode launch over queries ``q`` takes: fp32's own, else the tuned ones for
    this head_dim (the file ``BRECCIA_SGLANG_DECODE_TILES`` names, else this GPU model's shipped
    one), else ``DEFAULT``."""
    if fp32_on_gpu(q):
        return FP32
    return _tuned(os.environ.get(names.ENV_DECODE_TILES) or None, gpu_model(q)).get(head_dim, DEFAULT)


def tuned_file(device_name: str) -> Path:
    """Where the tiles tuned on GPU model ``device_name`` ship."""
    return TUNED_DIR / f"decode_{device_name.replace(' ', '_')}.json"


@functools.lru_cache(maxsize=None)
def _tuned(chosen: str | None, device_name: str | None) -> dict[int, DecodeTiles]:
    """Found once per (variable, GPU model): a decode step inside a CUDA graph reads no file."""
    path = tuned_path(chosen, device_name, tuned_file)
    return load_tiles(path) if path else {}


@functools.lru_cache(maxsize=None)
def load_tiles(path: Path) -> dict[int, DecodeTiles]:
    """head_dim -> tiles from a tuned file (its ``"tiles"``: {"128": {"block_n": ...}}); every
    entry checked, a bad one refused with the file and the head_dim named."""
    try:
        raw = json.loads(path.read_text())["tiles"]
        found = {int(head_dim): DecodeTiles(**tiles) for head_dim, tiles in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BrecciaConfigError(f"decode tile configs {path}: unreadable ({exc})") from exc
    for head_dim, tiles in found.items():
        if why := tiles.why_not():
            raise BrecciaConfigError(f"decode tile configs {path}: head_dim {head_dim}: {why}")
    return found


def tiles_entry(found: dict[int, DecodeTiles]) -> dict:
    """The ``"tiles"`` entry of a tuned file that ``load_tiles`` reads back."""
    return {str(head_dim): asdict(tiles) for head_dim, tiles in sorted(found.items())}
