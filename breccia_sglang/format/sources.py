"""Which ``breccia-sglang convert --from`` reads a checkpoint, from its ``quantization_config``,
so that a checkpoint in another format is met with the command that brings it over."""

from __future__ import annotations


def source_format_of(quant_config: dict) -> str | None:
    """The ``--from`` for a checkpoint quantized as ``quant_config`` says, or None."""
    method = quant_config.get("quant_method")
    if method in ("awq", "gptq"):
        return method
    if method == "compressed-tensors":
        forms = {group.get("format") or quant_config.get("format")
                 for group in (quant_config.get("config_groups") or {}).values()}
        return {"pack-quantized": "compressed-tensors-int4",
                "float-quantized": "compressed-tensors-fp8"}.get(forms.pop()) if len(forms) == 1 else None
    if method == "fp8" and quant_config.get("weight_block_size"):
        return "deepseek-fp8"
    return None


def how_to_get_breccia(directory, quant_config: dict) -> str:
    """The command to suggest for a checkpoint that holds no breccia tensors."""
    source = source_format_of(quant_config)
    if source is not None:
        return (f"its config.json says quant_method {quant_config['quant_method']!r}: convert it with "
                f"`breccia-sglang convert {directory} DST --from {source}`")
    return "e.g. `breccia-sglang quantize SRC DST --recipe fp8`"
