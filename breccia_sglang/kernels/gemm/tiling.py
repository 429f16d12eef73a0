"""How our weight-only GEMM launches are cut into programs: output tiles, bands of tiles that
share weight tiles in L2, and K splits; and how a weight tile meets its scale groups.

At decode sizes (M <= 16) a GEMM is one pass over the weight, and its speed is how many loads
the GPU keeps in flight. One program per output tile is too few: N = 4096 in 32-wide tiles is
128 programs on a GPU of 132 SMs, each walking all of K alone. So the K loop is split until
there are enough programs (``split_k_for``); each split writes its fp32 partial sums, and one
small kernel adds them up in the output dtype (``sum_splits``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..launch import fp32_on_gpu, gpu_tiles

# Programs a launch aims at per SM: enough loads in flight to keep HBM busy at M <= 16.
PROGRAMS_PER_SM = 4
MAX_SPLIT_K = 16  # beyond this the partial sums cost more traffic than the split gains
# Splits are for launches that stream the weight once (memory-bound): at larger M the output
# tiles keep every SM busy with arithmetic, and fp32 partials of (M, N) would only add traffic.
MAX_SPLIT_M = 64
# Under the interpreter (and for GPU tile sizes run on CPU by the tests) there is no SM count:
# aim at a few programs, so CI runs the split and its reduction on small shapes too.
INTERPRETER_PROGRAMS = 8


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration: the output tile (block_m x block_n), the K step, the rows of
    programs that share weight tiles in L2 (group_m), warps and pipeline stages, and how many
    programs per SM the K split aims at (None: ``PROGRAMS_PER_SM``). The split itself follows
    from the launch's shape and the GPU's SM count (``split_k_for``)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    programs_per_sm: int | None = None

    @property
    def name(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}"

    def launch_args(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "GROUP_M": self.group_m, "num_warps": self.num_warps, "num_stages": self.num_stages}

    def why_not(self) -> str | None:
        """None if both weight-only kernels can launch this config on a GPU, else why not."""
        tiles = (self.block_m, self.block_n, self.block_k)
        if any(t < 16 or t & (t - 1) for t in tiles):
            return f"tiles of {self.name}: tl.dot needs powers of two of at least 16 in every dimension"
        if self.block_k < 32:
            return f"tiles of {self.name}: W4A16 dots each half of a K tile (16 wide at least)"
        if self.num_warps not in (1, 2, 4, 8, 16):
            return f"{self.num_warps} warps: Triton launches 1, 2, 4, 8 or 16"
        if self.group_m < 1 or self.num_stages < 1:
            return f"group_m {self.group_m} and num_stages {self.num_stages} must be at least 1"
        if self.programs_per_sm is not None and self.programs_per_sm < 1:
            return f"programs_per_sm {self.programs_per_sm} must be at least 1 (or absent: the default)"
        return None


def pick_config(m: int, x: torch.Tensor, by_m: list[tuple[int, TileConfig]], fp32: TileConfig,
                interpreter: TileConfig, tuned: list[tuple[int, TileConfig]] = ()) -> TileConfig:
    """The tile config of a launch over M rows of activations ``x``: ``by_m`` ((largest M,
    config), smallest M first) on a GPU, after the rows ``tuned`` on this GPU model (which
    cover the M they were measured up to); ``fp32`` for fp32 activations there (the exact dot
    on FMA units holds its tiles in registers: tensor-core tiles would spill), ``interpreter``
    under the interpreter (every program runs in Python: the smallest tiles tl.dot takes)."""
    if not gpu_tiles(x):
        return interpreter
    if fp32_on_gpu(x):
        return fp32
    return next(config for top, config in (*tuned, *by_m) if m <= top)


@dataclass(frozen=True)
class Split:
    """A launch's K split: ``splits`` programs along K, each over ``steps`` K tiles."""

    splits: int
    steps: int


def split_k_for(m: int, n: int, k: int, config: TileConfig, device: torch.device) -> Split:
    """How many ways to split K so that a launch has about ``config.programs_per_sm`` programs
    per SM.

    Only M <= ``MAX_SPLIT_M`` splits. Splits are whole K tiles, and none is empty: the last may
    be shorter.
    """
    steps = triton.cdiv(k, config.block_k)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n)
    wanted = programs_to_fill(device, config.programs_per_sm)
    if m > MAX_SPLIT_M or tiles >= wanted or steps <= 1:
        return Split(1, steps)
    per_split = triton.cdiv(steps, min(MAX_SPLIT_K, steps, triton.cdiv(wanted, tiles)))
    return Split(triton.cdiv(steps, per_split), per_split)


def programs_to_fill(device: torch.device, per_sm: int | None = None) -> int:
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return (per_sm or PROGRAMS_PER_SM) * _sm_count(index)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_output(x: torch.Tensor, n: int, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, where the kernel writes): the (M, N) output in x's dtype, and, for a split launch,
    the (splits, M, N) fp32 partial sums it writes first."""
    out = x.new_empty((x.shape[0], n))
    if split.splits == 1:
        return out, out
    return out, x.new_empty((split.splits, x.shape[0], n), dtype=torch.float32)


@triton.jit
def output_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid``: programs walk GROUP_M-row bands over M, so the weight
    tiles a band reads stay in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    band = GROUP_M * num_pid_n
    first_m = (pid // band) * GROUP_M
    band_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % band) % band_rows, (pid % band) // band_rows


@triton.jit
def split_k_range(K, steps_per_split, BLOCK_K: tl.constexpr):
    """(split, k_first, k_end) of this program: its split along K (grid axis 1) covers
    ``steps_per_split`` K tiles from k_first, the last split ending at K."""
    split = tl.program_id(1)
    k_first = split * steps_per_split * BLOCK_K
    return split, k_first, tl.minimum(K, k_first + steps_per_split * BLOCK_K)


def even_k(k: int, block_k: int) -> bool:
    """Whether K is a whole number of K tiles (the kernels' EVEN_K): then every tile, in every
    split, lies inside K."""
    return k % block_k == 0


@triton.jit
def k_tile_mask(rows_ok, positions, end, EVEN_K: tl.constexpr):
    """The mask of a tile of rows by K positions: the rows that exist and, unless K is a whole
    number of K tiles (``EVEN_K``), the positions before ``end``. Without the K term the mask
    is constant along K and Triton vectorizes the tile's loads along it: the decode-sized loops
    issue 11-14% fewer instructions for it in W4A16, 3-8% in W8A16 (sm_90, compile_kernels.py)."""
    if EVEN_K:
        return rows_ok[:, None]
    else:
        return rows_ok[:, None] & (positions < end)[None, :]


@triton.jit
def scaled_groups(values, scales, zero_points, ROWS: tl.constexpr, COLS: tl.constexpr, GROUP: tl.constexpr,
                  HAS_ZERO: tl.constexpr):
    """A (ROWS, COLS) weight tile's values scaled per group of GROUP columns: (values - z) * s,
    with (ROWS, COLS / GROUP) scales and zero points, each broadcast over its group. One scale
    load per group, not per element: a scale per element costs more pipelined scale bytes than
    weight bytes (135 KiB of shared memory for 16 x 64 x 128 FP8 with groups of 32)."""
    grouped = tl.reshape(values, (ROWS, COLS // GROUP, GROUP))
    if HAS_ZERO:
        grouped = grouped - zero_points[:, :, None]
    return tl.reshape(grouped * scales[:, :, None], (ROWS, COLS))


@triton.jit
def _sum_splits_kernel(partials_ptr, out_ptr, numel, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel
    total = tl.zeros((BLOCK,), tl.float32)
    for s in tl.static_range(SPLITS):  # in split order: the same sum on every run
        total += tl.load(partials_ptr + s * numel + offsets, mask=inside, other=0.0)
    tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=inside)


SUM_BLOCK = 1024


def sum_splits(partials: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out (M, N), contiguous = the sum over dimension 0 of partials (splits, M, N) fp32, rounded once."""
    if partials is not out:
        numel = out.numel()
        _sum_splits_kernel[(triton.cdiv(numel, SUM_BLOCK),)](partials, out, numel, SPLITS=partials.shape[0],
                                                              BLOCK=SUM_BLOCK)
    return out
