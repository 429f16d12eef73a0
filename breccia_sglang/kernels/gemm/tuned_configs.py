"""Decode tile configs of the weight-only GEMMs, tuned per GPU model.

The tables in ``w8a16.py`` / ``w4a16.py`` (``TILE_CONFIGS``) are a guess for every GPU. At
decode sizes a GEMM is one pass over its weight, and which tile, pipeline depth and K split keep
the most loads in flight differs between GPU models, so ``benchmarks/tune_weight_only.py``
measures them and writes ``weight_only_<GPU model>.json``. Shipped in ``tuned/`` next to this
file, it is taken on every GPU of that model (named as SGLang names its tuned files: "NVIDIA
H200" -> ``weight_only_NVIDIA_H200.json``); ``BRECCIA_SGLANG_WEIGHT_ONLY_CONFIGS`` names another
file. A tuned table covers the M it was measured up to: larger batches keep the built-in rows.

The file, per table (``TABLES``), lists (largest M, config) rows, smallest M first; every config
is checked when the file is read, and a bad one is refused with the file and the row named.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ... import names
from ...errors import BrecciaConfigError
from ..launch import gpu_model, tuned_path
from .tiling import TileConfig

TUNED_DIR = Path(__file__).parent / "tuned"
# table -> the launches it configures (each compiles its own kernel, so each is tuned apart)
TABLES = {
    "w8a16": "W8A16 over FP8 E4M3 codes (per-tensor, 1 x B blocks, MXFP8)",
    "w4a16-int4": "W4A16 over INT4 / UINT4 codes",
    "w4a16-nvfp4": "W4A16 over NVFP4's E2M1 codes with E4M3 scales",
}

Rows = list[tuple[int, TileConfig]]


def tuned_file(device_name: str) -> Path:
    """Where the tables tuned on GPU model ``device_name`` ship."""
    return TUNED_DIR / f"weight_only_{device_name.replace(' ', '_')}.json"


def tuned_rows(table: str, x: torch.Tensor) -> Rows:
    """The tuned rows of ``table`` for a launch over activations ``x``: from the file that
    ``BRECCIA_SGLANG_WEIGHT_ONLY_CONFIGS`` names, else from this GPU model's shipped file, else none."""
    return _tables(os.environ.get(names.ENV_WEIGHT_ONLY_CONFIGS) or None, gpu_model(x)).get(table, [])


@functools.lru_cache(maxsize=None)
def _tables(chosen: str | None, device_name: str | None) -> dict[str, Rows]:
    """Found once per (variable, GPU model), not with a file lookup on every launch."""
    path = tuned_path(chosen, device_name, tuned_file)
    return load_tables(path) if path else {}


@functools.lru_cache(maxsize=None)
def load_tables(path: Path) -> dict[str, Rows]:
    """table -> [(largest M, config), ...] from a tuned file; every row checked."""
    try:
        raw = json.loads(path.read_text())["tables"]
        tables = {table: [(int(top), TileConfig(**config)) for top, config in rows] for table, rows in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BrecciaConfigError(f"weight-only tile configs {path}: unreadable ({exc})") from exc
    for table, rows in tables.items():
        if table not in TABLES:
            raise BrecciaConfigError(f"weight-only tile configs {path}: unknown table {table!r} "
                                     f"(known: {', '.join(TABLES)})")
        tops = [top for top, _ in rows]
        if not rows or tops[0] < 1 or any(a >= b for a, b in zip(tops, tops[1:])):
            raise BrecciaConfigError(f"weight-only tile configs {path}: {table} needs rows of increasing M "
                                     f"from 1 up, got {tops}")
        for top, config in rows:
            if why := config.why_not():
                raise BrecciaConfigError(f"weight-only tile configs {path}: {table} up to M={top}: {why}")
    return tables


def write_tables(path: Path, tables: dict[str, Rows], **about) -> None:
    """A tuned file that ``load_tables`` reads back (``about``: device, command, date...)."""
    rows = {table: [[top, asdict(config)] for top, config in table_rows] for table, table_rows in tables.items()}
    path.write_text(json.dumps({**about, "tables": rows}, indent=1) + "\n")
