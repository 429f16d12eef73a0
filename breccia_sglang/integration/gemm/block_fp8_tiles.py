"""Launch configurations of SGLang's Triton W8A8 block kernels for 1 x B weight scales.

Two SGLang kernels take our launches: ``_w8a8_block_fp8_matmul`` (any GPU) and
``_w8a8_block_fp8_matmul_hopper``, the same maths with two options that small M needs, where
too few programs stream the weight: ``SWAP_AB`` puts the weight tile on the MMA's wide side, and
``SPLIT_K`` splits the K loop over programs (fp32 partials, then SGLang's reduce kernel).

A config is chosen by M from a table: the table tuned on this GPU model when one ships in
``tuned/`` (written by ``benchmarks/tune_block_fp8.py``; ``BRECCIA_SGLANG_BLOCK_FP8_CONFIGS``
names another file), else ``TILE_CONFIGS``. Every config is checked before use: the kernels
step their scales once per ``B // BLOCK_SIZE_K`` tiles, so a tile K that does not divide B gives
silently wrong results (an error of 20.9 where 1e-6 is right, B=64, tile K 128).

A tuned file may also say up to which M the W8A8 FP8 layers run on our W8A16 kernel instead
(``"w8a16_up_to_m"``, measured by ``benchmarks/bench_gemm.py``: decode-sized batches skip the
activation quantization pass there); ``BRECCIA_SGLANG_W8A16_UP_TO_M`` overrides it. And from
which M the FP8 layers of each scale group run on the dequantized weight and the platform's
dense GEMM (``"dequantize_from_m"``: {"32": M, "64": M, "128": M, "per-tensor": M}; prefill-sized
batches, where fine scales cost a W8A8 kernel more than one pass that writes the weight in
bf16), and the 4-bit layers on our W4A16 kernel likewise ({"int4": M, "nvfp4": M}: its tiles
decode every weight once per tile of rows); ``BRECCIA_SGLANG_DEQUANTIZE_FROM_M`` overrides it
for every layer.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ... import names
from ...errors import BrecciaConfigError
from ...kernels.launch import tuned_path

TUNED_DIR = Path(__file__).parent / "tuned"


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of the block kernel (``block_k=None``: the scale block's B)."""

    block_m: int
    block_n: int
    block_k: int | None
    group_m: int
    num_warps: int
    num_stages: int
    swap_ab: bool = False  # the Hopper kernel's transposed MMA (weight rows on the MMA's M side)
    split_k: int = 1  # the Hopper kernel's K split (a power of two)

    @property
    def hopper(self) -> bool:
        """Whether this config needs ``_w8a8_block_fp8_matmul_hopper`` (its options)."""
        return self.swap_ab or self.split_k > 1

    def why_not(self, block: int) -> str | None:
        """None if this config computes 1 x ``block`` blocks correctly, else why not."""
        k = self.block_k or block
        if block % k:
            return f"tile K {k} does not divide the {block}-wide scale blocks (the kernel would mix blocks' scales)"
        if min(self.block_m, self.block_n, k) < 16:
            return f"tiles of {self.block_m}x{self.block_n}x{k}: tl.dot needs at least 16 in every dimension"
        if self.split_k < 1 or self.split_k & (self.split_k - 1):
            return f"split K {self.split_k} is not a power of two (SGLang's reduce kernel sums a power-of-two range)"
        return None

    def for_block(self, block: int) -> dict:
        """The kernels' meta-parameters; the Hopper options only where they are set."""
        launch = {"BLOCK_SIZE_M": self.block_m, "BLOCK_SIZE_N": self.block_n, "BLOCK_SIZE_K": self.block_k or block,
                  "GROUP_SIZE_M": self.group_m, "num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.hopper:
            launch |= {"SWAP_AB": self.swap_ab, "SPLIT_K": self.split_k}
        return launch

    @property
    def name(self) -> str:
        options = (" swap" if self.swap_ab else "") + (f" split{self.split_k}" if self.split_k > 1 else "")
        return (f"{self.block_m}x{self.block_n}x{self.block_k or 'B'} g{self.group_m} "
                f"w{self.num_warps} s{self.num_stages}{options}")


# (largest M, config), smallest M first; the first correct config for a launch's M is taken.
# Decode (M <= 16) wants many programs over N to stream the weight; large M wants big tiles
# that reuse it. The fallback for GPUs without a tuned table (tuned/ has the measured ones).
TILE_CONFIGS: list[tuple[int, TileConfig]] = [
    (16, TileConfig(16, 64, None, 1, 4, 4)),
    (64, TileConfig(32, 64, None, 8, 4, 3)),
    (256, TileConfig(64, 128, None, 8, 4, 3)),
    (1 << 62, TileConfig(128, 128, None, 8, 8, 3)),
]
# Under the interpreter every program runs in Python: the smallest tiles tl.dot takes.
INTERPRETER_CONFIG = TileConfig(16, 32, None, 1, 1, 1)


def tuned_file(device_name: str) -> Path:
    """Where the table tuned on GPU model ``device_name`` ships (SGLang's naming: spaces as _)."""
    return TUNED_DIR / f"block_fp8_{device_name.replace(' ', '_')}.json"


@functools.lru_cache(maxsize=None)
def _tuned_json(path: Path) -> dict:
    """A tuned file's contents, read once for its tables and its batch routes' bounds."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BrecciaConfigError(f"block FP8 tile configs {path}: unreadable ({exc})") from exc


@functools.lru_cache(maxsize=None)
def load_tables(path: Path) -> dict[int, list[tuple[int, TileConfig]]]:
    """block width -> [(largest M, config), ...] from a tuned file; every config checked."""
    raw = _tuned_json(path)
    try:
        tables = {int(block): [(int(top), TileConfig(**config)) for top, config in rows]
                  for block, rows in raw["blocks"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise BrecciaConfigError(f"block FP8 tile configs {path}: unreadable ({exc})") from exc
    for block, rows in tables.items():
        for top, config in rows:
            if why := config.why_not(block):
                raise BrecciaConfigError(f"block FP8 tile configs {path}: 1x{block} up to M={top}: {why}")
        if not rows or rows[-1][0] < 1 << 62 or [top for top, _ in rows] != sorted(top for top, _ in rows):
            raise BrecciaConfigError(f"block FP8 tile configs {path}: 1x{block} needs M ranges in increasing "
                                     f"order, the last one open ({1 << 62})")
    return tables


def table_for(block: int, device_name: str | None) -> list[tuple[int, TileConfig]]:
    """The M ranges and configs for 1 x ``block`` launches on ``device_name``."""
    return _tables(os.environ.get(names.ENV_BLOCK_FP8_CONFIGS) or None, device_name).get(block, TILE_CONFIGS)


@functools.lru_cache(maxsize=None)
def _tables(chosen: str | None, device_name: str | None) -> dict[int, list[tuple[int, TileConfig]]]:
    """The tables of the file the variable names, else of this GPU model's shipped file, else none:
    found once per (variable, GPU), not with a file lookup on every GEMM call."""
    path = tuned_path(chosen, device_name, tuned_file)
    return load_tables(path) if path else {}


def w8a16_up_to_m(device_name: str | None) -> int:
    """The largest M that W8A8 FP8 layers run on the W8A16 kernel on ``device_name`` (0: none):
    ``BRECCIA_SGLANG_W8A16_UP_TO_M``, else the tuned file's ``w8a16_up_to_m``, else 0."""
    chosen = rows_variable(names.ENV_W8A16_UP_TO_M)
    if chosen is not None:
        return chosen
    path = tuned_path(os.environ.get(names.ENV_BLOCK_FP8_CONFIGS) or None, device_name, tuned_file)
    return load_w8a16_bound(path) if path else 0


def load_w8a16_bound(path: Path) -> int:
    bound = _tuned_json(path).get("w8a16_up_to_m", 0)
    if not is_rows(bound):
        raise BrecciaConfigError(f"block FP8 tile configs {path}: w8a16_up_to_m must be a number of rows "
                                 f"(0: never), not {bound!r}")
    return bound


# The keys of a tuned file's "dequantize_from_m": an FP8 layer's scale group width, or one scale
# per row; or a 4-bit recipe on our W4A16 kernel (its groups cost the pass alike: it reads half a
# byte and writes two per weight whatever they are).
PER_TENSOR_KEY = "per-tensor"
FOUR_BIT_KEYS = ("int4", "nvfp4")
KEYS_SAID = f"\"32\", \"64\", \"128\", \"{PER_TENSOR_KEY}\", " + ", ".join(f'"{key}"' for key in FOUR_BIT_KEYS)


def file_key(layer: int | str | None) -> str:
    """The key of a layer in ``dequantize_from_m``: an FP8 layer's scale group width (None: one
    scale per row), or a 4-bit recipe's key (``FOUR_BIT_KEYS``) as it is."""
    return PER_TENSOR_KEY if layer is None else str(layer)


def dequantize_from_m(device_name: str | None, layer: int | str | None) -> int:
    """From which M the layers of ``file_key(layer)`` run on the dequantized weight on
    ``device_name`` (0: never): ``BRECCIA_SGLANG_DEQUANTIZE_FROM_M``, else the tuned file's
    ``dequantize_from_m`` for that key, else 0."""
    chosen = rows_variable(names.ENV_DEQUANTIZE_FROM_M)
    if chosen is not None:
        return chosen
    path = tuned_path(os.environ.get(names.ENV_BLOCK_FP8_CONFIGS) or None, device_name, tuned_file)
    return load_dequantize_bounds(path).get(file_key(layer), 0) if path else 0


def load_dequantize_bounds(path: Path) -> dict[str, int]:
    bounds = _tuned_json(path).get("dequantize_from_m", {})
    if not isinstance(bounds, dict):
        raise BrecciaConfigError(f"block FP8 tile configs {path}: dequantize_from_m must map layer keys ({KEYS_SAID}) "
                                 f"to numbers of rows, not {bounds!r}")
    for key, bound in bounds.items():
        if not (key == PER_TENSOR_KEY or key in FOUR_BIT_KEYS or key.isdigit()):
            raise BrecciaConfigError(f"block FP8 tile configs {path}: dequantize_from_m: {key!r} is no scale "
                                     f"group width or 4-bit recipe ({KEYS_SAID})")
        if not is_rows(bound):
            raise BrecciaConfigError(f"block FP8 tile configs {path}: dequantize_from_m[{key!r}] must be a number "
                                     f"of rows (0: never), not {bound!r}")
    return bounds


def rows_variable(variable: str) -> int | None:
    """The number of rows an environment variable sets (None: unset), refused naming it if it is not one."""
    chosen = os.environ.get(variable)
    if not chosen:
        return None
    if not chosen.isdigit():
        raise BrecciaConfigError(f"{variable}={chosen!r}: expected a number of rows (0: never)")
    return int(chosen)


def is_rows(value) -> bool:
    """Whether a tuned file's value is a number of rows (a non-negative JSON integer, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def choose_config(m: int, block: int, interpreted: bool, device_name: str | None = None) -> TileConfig:
    """The launch config for M rows of 1 x ``block`` blocks; never one that would be wrong."""
    candidates = [INTERPRETER_CONFIG] if interpreted else [c for top, c in table_for(block, device_name) if m <= top]
    for config in candidates:
        if config.why_not(block) is None:
            return config
    # Every listed config is wrong for this block: B itself as tile K is always right.
    return replace(candidates[-1], block_k=None)


# What a tuned file says besides its tables: the batch routes' bounds (and why they are what they
# are). A table tuned anew keeps them from the file it replaces (``routes_of``).
ROUTE_KEYS = ("w8a16_up_to_m", "dequantize_from_m", "dequantize_from_m_basis")


def routes_of(path: Path) -> dict:
    """The batch routes a tuned file sets ({} if there is no such file)."""
    return {key: value for key, value in _tuned_json(path).items() if key in ROUTE_KEYS} if path.exists() else {}


def write_tables(path: Path, tables: dict[int, list[tuple[int, TileConfig]]], **about) -> None:
    """A tuned file ``load_tables`` reads back (``about``: device, command, date...)."""
    blocks = {str(block): [[top, asdict(config)] for top, config in rows] for block, rows in tables.items()}
    path.write_text(json.dumps({**about, "blocks": blocks}, indent=1) + "\n")
