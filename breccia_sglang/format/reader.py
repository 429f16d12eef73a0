"""What a breccia checkpoint holds, read from safetensors headers only.

A breccia tensor ``NAME`` is stored (by ``breccia.bridges.save_safetensors``) as the
tensors ``NAME.data``, ``NAME.scale`` and optionally ``NAME.zero_point``, plus the
metadata entry ``NAME.config`` (recipe and layout JSON). Every other tensor in the
checkpoint is an ordinary high-precision tensor.

``BrecciaCheckpoint.open`` lists all of them without reading any tensor data, and checks
each breccia tensor the way breccia does on construction (``layout.validate``), so a bad
checkpoint is refused before SGLang allocates or loads anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .. import names
from ..errors import BrecciaCheckpointError
from .recipe_json import describe, parse_config
from .sources import how_to_get_breccia, quantization_config_of
from .values import check_part_values

INDEX_FILE = "model.safetensors.index.json"
PARTS = ("data", "scale", "zero_point")


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the safetensors header describes it (no data read)."""

    name: str
    file: str  # file name inside the checkpoint directory
    dtype: str  # safetensors dtype string, e.g. "F8_E4M3", "U8", "F32"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * _DTYPE_BYTES.get(self.dtype, 1)


@dataclass(frozen=True)
class BrecciaEntry:
    """One breccia ScaledTensor of the checkpoint.

    ``data`` has the logical shape (breccia stores FP4/INT4 codes one per byte);
    ``scale`` has the shape ``layout`` demands; ``zero_point`` matches ``scale``.
    """

    name: str  # e.g. "model.layers.0.mlp.down_proj.weight"
    recipe: object  # a breccia.recipes.ScalingRecipe
    layout: object  # a breccia.layouts.Layout
    data: StoredTensor
    scale: StoredTensor
    zero_point: StoredTensor | None

    @property
    def label(self) -> str:
        return describe(self.recipe, self.layout)

    @property
    def nbytes(self) -> int:
        zp = self.zero_point.nbytes if self.zero_point else 0
        return self.data.nbytes + self.scale.nbytes + zp


class BrecciaCheckpoint:
    """The breccia and plain tensors of one checkpoint directory.

    Attributes
    ----------
    directory : Path
    entries : dict[str, BrecciaEntry]
        Breccia tensors by name (``NAME``, without ``.data``/``.scale``).
    plain : dict[str, StoredTensor]
        Every other tensor by its stored name.
    """

    def __init__(self, directory: Path, entries: dict, plain: dict, files: list[str]):
        self.directory = directory
        self.entries = entries
        self.plain = plain
        self.files = files

    @classmethod
    def open(cls, path: str | os.PathLike, *, require_breccia: bool = True) -> "BrecciaCheckpoint":
        directory = Path(path)
        if not directory.is_dir():
            raise BrecciaCheckpointError(f"{directory}: not a checkpoint directory")
        files = weight_files(directory)
        stored: dict[str, StoredTensor] = {}
        configs: dict[str, tuple[str, str]] = {}  # breccia name -> (json, file)
        for file in files:
            for tensor in _read_header(directory / file, stored, configs):
                stored[tensor.name] = tensor
        entries = _assemble_entries(stored, configs)
        consumed = {f"{name}.{part}" for name in entries for part in PARTS}
        plain = {n: t for n, t in stored.items() if n not in consumed}
        _refuse_orphan_parts(plain)
        if require_breccia and not entries:
            raise BrecciaCheckpointError(
                f"{directory}: no breccia tensors found (no '<name>.config' metadata in "
                f"{len(files)} safetensors file(s)); {names.FLAG} needs a checkpoint "
                f"written by breccia; {how_to_get_breccia(directory, quantization_config_of(directory))}"
            )
        _refuse_foreign_fp8(plain)
        return cls(directory, entries, plain, files)

    def entry_for_module(self, prefix: str) -> BrecciaEntry | None:
        """The breccia weight of the linear module at ``prefix``, if it has one."""
        return self.entries.get(f"{prefix}.weight")

    def check_scale_values(self) -> None:
        """Read every scale and zero point (small next to the weights) and check their values
        as loading does (``check_part_values``); ``open`` only reads headers."""
        by_file: dict[str, list[tuple[BrecciaEntry, StoredTensor]]] = {}
        for entry in self.entries.values():
            for part in (entry.scale, entry.zero_point):
                if part is not None:
                    by_file.setdefault(part.file, []).append((entry, part))
        for file, parts in sorted(by_file.items()):
            with safe_open(str(self.directory / file), framework="pt") as f:
                for entry, part in parts:
                    check_part_values(entry, part.name, f.get_tensor(part.name), str(self.directory / file))


def weight_files(directory: Path) -> list[str]:
    """The checkpoint's safetensors files (from its index when it has one), by name."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise BrecciaCheckpointError(f"{index}: malformed index ({exc})") from None
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise BrecciaCheckpointError(f"{index}: lists missing file(s) {missing}")
        return files
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise BrecciaCheckpointError(
                f"{directory} holds {', '.join(pickles)} (a pickle, which can run code when loaded: "
                "never loaded) and no *.safetensors files; breccia checkpoints are safetensors"
            )
        raise BrecciaCheckpointError(f"{directory}: no *.safetensors files")
    return files


# Weight files that torch.load unpickles. They are named, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _read_header(path: Path, stored: dict, configs: dict):
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise BrecciaCheckpointError(f"{path}: unreadable safetensors header ({exc})") from None
    with handle as f:
        metadata = f.metadata() or {}
        for key, value in metadata.items():
            if key.endswith(".config"):
                configs[key[: -len(".config")]] = (value, path.name)
        for name in f.keys():
            if name in stored:
                raise BrecciaCheckpointError(
                    f"{path}: tensor {name!r} also stored in {stored[name].file}"
                )
            sl = f.get_slice(name)
            yield StoredTensor(name, path.name, sl.get_dtype(), tuple(sl.get_shape()))


def _assemble_entries(stored: dict, configs: dict) -> dict:
    entries = {}
    for name, (config_json, file) in configs.items():
        where = f"{file}: breccia tensor {name!r}"
        recipe, layout = parse_config(config_json, where)
        parts = {part: stored.get(f"{name}.{part}") for part in PARTS}
        for required in ("data", "scale"):
            if parts[required] is None:
                raise BrecciaCheckpointError(
                    f"{where}: missing tensor '{name}.{required}' (its config names it a "
                    f"breccia tensor, so '{name}.data' and '{name}.scale' must both exist)"
                )
        entry = BrecciaEntry(name, recipe, layout, parts["data"], parts["scale"], parts["zero_point"])
        _validate_servable(entry, where)
        _validate_shapes(entry, where)
        entries[name] = entry
    return entries


FP8_STORAGE = {"F8_E4M3", "U8"}  # native e4m3, or its bytes as uint8 codes

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8, "I8": torch.int8,
}


def _validate_servable(entry: BrecciaEntry, where: str) -> None:
    if not entry.name.endswith(".weight") or len(entry.data.shape) != 2:
        raise BrecciaCheckpointError(
            f"{where}: only 2-D linear weights ('<module>.weight') can be breccia tensors in "
            f"SGLang; got data shape {list(entry.data.shape)}"
        )
    fp8 = hasattr(entry.recipe, "fp8_format")
    if entry.data.dtype not in (FP8_STORAGE if fp8 else {"U8"}):
        stored = "FP8 codes as F8_E4M3 (or their bytes as U8)" if fp8 else "one 4-bit code per U8 byte"
        raise BrecciaCheckpointError(
            f"{where}: '{entry.name}.data' is {entry.data.dtype}; recipe {entry.recipe.name!r} stores {stored}"
        )
    for part in (entry.scale, entry.zero_point):
        if part is not None and part.dtype not in TORCH_DTYPES:
            raise BrecciaCheckpointError(f"{where}: '{part.name}' has unsupported dtype {part.dtype}")


def _validate_shapes(entry: BrecciaEntry, where: str) -> None:
    # breccia's layouts validate shapes on construction; meta tensors let us run the very
    # same check from header shapes alone, without reading or allocating any data.
    data = torch.empty(entry.data.shape, device="meta")
    scale = torch.empty(entry.scale.shape, device="meta")
    try:
        entry.layout.validate(data, scale)
    except ValueError as exc:
        raise BrecciaCheckpointError(
            f"{where}: '{entry.name}.scale' has shape {list(entry.scale.shape)}, which breaks "
            f"layout {entry.layout.name} for data shape {list(entry.data.shape)} ({exc})"
        ) from None
    zp = entry.zero_point
    if zp is not None and zp.shape != entry.scale.shape:
        raise BrecciaCheckpointError(
            f"{where}: '{entry.name}.zero_point' shape {list(zp.shape)} != scale shape "
            f"{list(entry.scale.shape)}"
        )


def _refuse_orphan_parts(plain: dict) -> None:
    # breccia's own loader silently skips a '.data' tensor with no '.config'; serving the
    # model without that weight would be silently wrong, so refuse it here.
    for name, tensor in plain.items():
        if name.endswith(".data"):
            base = name[: -len(".data")]
            raise BrecciaCheckpointError(
                f"{tensor.file}: tensor {name!r} looks like breccia data but the metadata has "
                f"no '{base}.config' (recipe/layout); the checkpoint is incomplete"
            )


def _refuse_foreign_fp8(plain: dict) -> None:
    # SGLang would copy FP8 codes into a high-precision parameter as values, without their
    # scale: a model that loads and is wrong. Such a tensor belongs to another format.
    for name, tensor in plain.items():
        if tensor.dtype in ("F8_E4M3", "F8_E5M2"):
            raise BrecciaCheckpointError(
                f"{tensor.file}: {name!r} is {tensor.dtype} but not a breccia tensor (no recipe in the "
                "metadata), so its codes would load without their scales; a checkpoint in another FP8 "
                "format converts whole (breccia-sglang convert --help), it does not mix with breccia"
            )


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
