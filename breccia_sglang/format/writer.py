"""Writing checkpoints: ~2 GiB safetensors shards (breccia's and plain ones) with their index,
the files beside the weights, and an output directory that appears only when it is complete.

``quantize`` and ``convert`` write through these, so every checkpoint this package produces
is laid out the same way and an interrupted run never leaves a half-written one behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from breccia.bridges import save_safetensors
from safetensors.torch import save_file

from ..errors import BrecciaCheckpointError
from .reader import INDEX_FILE

SHARD_BYTES = 2 * 1024**3
# Shard files: model-breccia-00001.safetensors holds breccia tensors, model-plain-* the rest.
BRECCIA_SHARD, PLAIN_SHARD = "model-breccia", "model-plain"


def check_paths(src, dst, overwrite: bool) -> tuple[Path, Path]:
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise BrecciaCheckpointError(f"{src}: no config.json; expected a Hugging Face checkpoint")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise BrecciaCheckpointError(f"{dst}: exists and is not empty (pass --overwrite)")
    return src, dst


@contextlib.contextmanager
def atomic_output_dir(dst: Path):
    """A temporary directory beside ``dst`` that becomes ``dst`` only if the block succeeds."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ShardWriter:
    """Accumulates tensors and writes ~2 GiB shards: breccia shards and plain shards."""

    def __init__(self, out: Path, shard_bytes: int = SHARD_BYTES):
        self.out, self.shard_bytes = out, shard_bytes
        self.scaled: dict = {}
        self.plain: dict = {}
        self.scaled_bytes = self.plain_bytes = 0
        self.weight_map: dict[str, str] = {}
        self.files: list[Path] = []
        self.total = 0

    def add_scaled(self, name, scaled):
        self.scaled[name] = scaled
        self.scaled_bytes += sum(_nbytes(t) for t in (scaled.data, scaled.scale, scaled.zero_point))
        if self.scaled_bytes >= self.shard_bytes:
            self._flush_scaled()

    def add_plain(self, name, tensor):
        self.plain[name] = tensor.contiguous()
        self.plain_bytes += _nbytes(tensor)
        if self.plain_bytes >= self.shard_bytes:
            self._flush_plain()

    def _next_file(self, prefix: str) -> Path:
        path = self.out / f"{prefix}-{len(self.files) + 1:05d}.safetensors"
        self.files.append(path)
        return path

    def _flush_scaled(self):
        if not self.scaled:
            return
        path = self._next_file(BRECCIA_SHARD)
        save_safetensors(self.scaled, str(path))
        for name, st in self.scaled.items():
            for part in ("data", "scale") + (("zero_point",) if st.zero_point is not None else ()):
                self.weight_map[f"{name}.{part}"] = path.name
        self.total += self.scaled_bytes
        self.scaled, self.scaled_bytes = {}, 0

    def _flush_plain(self):
        if not self.plain:
            return
        path = self._next_file(PLAIN_SHARD)
        save_file(self.plain, str(path), metadata={"format": "pt"})
        for name in self.plain:
            self.weight_map[name] = path.name
        self.total += self.plain_bytes
        self.plain, self.plain_bytes = {}, 0

    def finish(self) -> int:
        self._flush_scaled()
        self._flush_plain()
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        return self.total


def _nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def write_metadata_files(src: Path, out: Path, quantization_config: dict | None, skip: tuple[str, ...] = ()) -> None:
    """Copy everything that is not weights (tokenizer, chat template, generation config, ...)
    but the files named in ``skip``, and write config.json with ``quantization_config``
    (removed when None)."""
    for path in src.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name not in (INDEX_FILE, *skip):
            shutil.copy2(path, out / path.name)
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2))
