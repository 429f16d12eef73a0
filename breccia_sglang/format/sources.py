"""Which ``breccia-sglang convert --from`` reads a checkpoint, from its quantization config,
so that a checkpoint in another format is met with the command that brings it over."""

from __future__ import annotations

import json
from pathlib import Path

from .. import names

# Files that describe a source checkpoint's quantization beside (or instead of) config.json's
# ``quantization_config``: ModelOpt's, GPTQ's and AutoAWQ's. A converted checkpoint leaves them
# behind: config.json then says breccia, and a stale file would contradict it.
SOURCE_QUANT_CONFIG_FILES = ("hf_quant_config.json", "quantize_config.json", "quant_config.json")


def quantization_config_of(directory) -> dict:
    """config.json's ``quantization_config``; without one, ModelOpt's ``hf_quant_config.json``
    (its ``quantization`` section, as SGLang reads it). {} when neither says anything."""
    return described_quantization(directory)[0]


def described_quantization(directory) -> tuple[dict, Path]:
    """``quantization_config_of(directory)`` and the file it comes from (config.json if none)."""
    directory = Path(directory)
    config = json_object(directory / "config.json").get("quantization_config")
    if isinstance(config, dict) and config:
        return config, directory / "config.json"
    section = json_object(directory / "hf_quant_config.json").get("quantization")
    if isinstance(section, dict):
        return {"quant_method": "modelopt", **section}, directory / "hf_quant_config.json"
    return {}, directory / "config.json"


def source_format_of(quant_config: dict) -> str | None:
    """The ``--from`` for a checkpoint quantized as ``quant_config`` says, or None."""
    method = quant_config.get("quant_method")
    if method in ("awq", "gptq", "fp8"):
        return method
    if method == "compressed-tensors":
        forms = {group.get("format") or quant_config.get("format")
                 for group in (quant_config.get("config_groups") or {}).values()}
        return {"pack-quantized": "compressed-tensors-int4",
                "float-quantized": "compressed-tensors-fp8"}.get(forms.pop()) if len(forms) == 1 else None
    if method == "fbgemm_fp8":
        return "fbgemm-fp8"
    if method in ("modelopt", None) and quant_config.get("quant_algo") == "FP8":
        return "modelopt-fp8"
    return None


def how_to_get_breccia(directory, quant_config: dict) -> str:
    """The command to suggest for a checkpoint that holds no breccia tensors."""
    source = source_format_of(quant_config)
    if source is not None:
        said = (f"quant_method {quant_config['quant_method']!r}" if quant_config.get("quant_method") != "modelopt"
                else f"ModelOpt quant_algo {quant_config['quant_algo']!r}")
        return f"its quantization config says {said}: convert it with `breccia-sglang convert {directory} DST --from {source}`"
    return "e.g. `breccia-sglang quantize SRC DST --recipe fp8`"


def why_not_quantize(directory, quant_config: dict) -> str | None:
    """Why ``breccia-sglang quantize`` must not read this checkpoint (it is quantized already:
    its codes would be quantized again without their scales), with what to do; None if it may."""
    method = quant_config.get("quant_method") or ("modelopt" if quant_config.get("quant_algo") else None)
    if method is None:
        return None
    if method == "breccia":
        return f"it is a breccia checkpoint already: serve it with {names.FLAG}, or quantize its original"
    source = source_format_of(quant_config)
    if source is not None:
        return f"it is quantized already ({how_to_get_breccia(directory, quant_config)})"
    return (f"it is quantized already (quant_method {method!r}), and convert does not read that format: "
            "quantize its BF16 / FP16 original instead")


def json_object(path: Path) -> dict:
    """The JSON object in ``path``, or {} where the file is missing, not JSON or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or not JSON: it says nothing
        return {}
    return value if isinstance(value, dict) else {}
