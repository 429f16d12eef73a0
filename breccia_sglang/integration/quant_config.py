"""``BrecciaConfig``: the SGLang QuantizationConfig behind ``--breccia-format``.

It is built from the checkpoint itself (``BrecciaCheckpoint``: every tensor's recipe and
layout from its own safetensors metadata), not from config.json, so a checkpoint with
mixed recipes or kept-high-precision layers is described exactly.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from sglang.srt.layers.quantization.base_config import QuantizationConfig

from .. import names
from ..errors import BrecciaCheckpointError
from ..format import BrecciaCheckpoint
from ..format.experts import expert_weights

logger = logging.getLogger(__name__)

# Load formats that read safetensors (or nothing): breccia checkpoints are safetensors, and a
# pickle (*.bin, *.pt: "pt", "npcache", ...) can run code when loaded, so it is never read.
SAFETENSORS_LOAD_FORMATS = ("auto", "safetensors", "fastsafetensors", "dummy")


@functools.cache
def standard_fusions() -> dict[str, list[str]]:
    """SGLang's standard merged layers (qkv_proj, gate_up_proj) and their shards, in order.

    Models such as Llama declare no packed_modules_mapping; their loaders use SGLang's
    STANDARD_STACKED_MAPPING, so we read the same table rather than restating it.
    """
    from sglang.srt.model_loader.auto_loader import STANDARD_STACKED_MAPPING

    fusions: dict[str, list[str]] = {}
    for fused, shard, _shard_id in STANDARD_STACKED_MAPPING.mappings:
        fusions.setdefault(fused, []).append(shard)
    return fusions


class BrecciaConfig(QuantizationConfig):
    def __init__(self, checkpoint: BrecciaCheckpoint):
        super().__init__()
        self.checkpoint = checkpoint
        self.claimed: set[str] = set()
        self.announced: set[tuple[str, str]] = set()  # (layer kind, kernel) already in the log

    @classmethod
    def from_checkpoint(cls, model_path: str, packed_modules_mapping=None) -> "BrecciaConfig":
        config = cls(BrecciaCheckpoint.open(model_path))
        if packed_modules_mapping:
            config.packed_modules_mapping = dict(packed_modules_mapping)
        return config

    # --- QuantizationConfig interface -------------------------------------------------

    def get_name(self) -> str:
        return names.QUANT_METHOD

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # the emulated kernel runs on any device; faster kernels check for themselves

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BrecciaConfig":
        # Reached when SGLang builds the config from config.json's quantization_config;
        # get_quant_config (below) routes both that and --breccia-format through
        # from_checkpoint, so this only serves direct callers that pass the hf_config along.
        hf_config = config.get("hf_config")
        path = getattr(hf_config, "_name_or_path", None) or config.get("model_path")
        if not path:
            raise BrecciaCheckpointError("breccia quantization config needs the checkpoint path")
        return cls.from_checkpoint(path, config.get("packed_modules_mapping"))

    def get_quant_method(self, layer, prefix: str):
        from sglang.srt.layers.linear import LinearBase
        from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
        from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

        if isinstance(layer, FusedMoE):
            return self.moe_method(prefix)
        if not isinstance(layer, LinearBase):
            return None
        entries = self.entries_for_module(prefix)
        if not entries:
            return UnquantizedLinearMethod()
        from .linear_method import BrecciaLinearMethod  # imports SGLang's linear layers

        self.claimed.update(e.name for e in entries)
        return BrecciaLinearMethod(prefix, entries, self.announced)

    def moe_method(self, prefix: str):
        """The method of FusedMoE layer ``prefix``: breccia experts, or None (SGLang's
        unquantized MoE) when the checkpoint keeps them high precision."""
        experts = expert_weights(self.checkpoint.entries, prefix)
        if experts is None:
            return None
        from .moe_method import BrecciaMoEMethod  # imports SGLang's MoE layers

        self.claimed.update(e.name for e in experts.all())
        return BrecciaMoEMethod(experts, self.announced)

    def can_fuse_shared_expert(self) -> bool:
        # DeepSeek / Qwen2-MoE models on GPUs fold the shared expert into the routed experts'
        # FusedMoE (E + 1 experts) when the quant config allows it. A breccia checkpoint stores
        # the shared expert as its own linears (``shared_experts.*``), which load through our
        # linear method, so the folding must not happen.
        return False

    def is_linear_unquantized(self, prefix: str) -> bool:
        return not self.entries_for_module(prefix)  # a query: claims nothing

    def get_scaled_act_names(self) -> list[str]:
        return []

    # --- breccia bookkeeping ------------------------------------------------------------

    def entries_for_module(self, prefix: str) -> list:
        """The breccia weights behind SGLang module ``prefix``, in shard order.

        A merged SGLang module (``qkv_proj``) is backed by its checkpoint shards
        (``q_proj``, ``k_proj``, ``v_proj``) through the model's packed_modules_mapping.
        Either all shards are breccia tensors with one recipe, or none is.
        """
        fused = self.checkpoint.entry_for_module(prefix)
        if fused is not None:
            return [fused]
        parent, _, leaf = prefix.rpartition(".")
        shard_names = self.packed_modules_mapping.get(leaf) or standard_fusions().get(leaf, [leaf])
        shard_prefixes = [f"{parent}.{s}" if parent else s for s in shard_names]
        found = [self.checkpoint.entry_for_module(p) for p in shard_prefixes]
        if all(e is None for e in found):
            return []
        if any(e is None for e in found):
            missing = [p for p, e in zip(shard_prefixes, found) if e is None]
            raise BrecciaCheckpointError(
                f"{prefix}: SGLang merges {shard_names} into one layer, but {missing} "
                "are not breccia tensors; quantize all of them or none"
            )
        labels = {e.label for e in found}
        if len(labels) > 1:
            raise BrecciaCheckpointError(
                f"{prefix}: merged shards use different recipes {sorted(labels)}; "
                "SGLang runs them as one GEMM, so they need one recipe"
            )
        return found

    def unclaimed(self) -> list[str]:
        """Breccia tensors of the checkpoint that no SGLang layer took."""
        return sorted(set(self.checkpoint.entries) - self.claimed)


# --- hooks (registered in plugin.py) --------------------------------------------------------


def register_quant_method(*_args, **_kwargs) -> None:
    """BEFORE ``ModelConfig._verify_quantization``: SGLang reads QUANTIZATION_METHODS live;
    adding ourselves just before the model config is checked keeps SGLang's heavy
    quantization import out of ``register()``."""
    from sglang.srt.layers.linear import WEIGHT_LOADER_V2_SUPPORTED
    from sglang.srt.layers.quantization import QUANTIZATION_METHODS

    QUANTIZATION_METHODS.setdefault(names.QUANT_METHOD, BrecciaConfig)
    if names.LINEAR_METHOD_CLASS not in WEIGHT_LOADER_V2_SUPPORTED:
        # SGLang gives the shard-aware v2 weight loaders only to methods named here.
        WEIGHT_LOADER_V2_SUPPORTED.append(names.LINEAR_METHOD_CLASS)


def get_quant_config(original, model_config, load_config, packed_modules_mapping, *args, **kwargs):
    """AROUND ``weight_utils.get_quant_config``: a breccia model's config comes from its
    checkpoint's own headers, and only from safetensors."""
    if model_config.quantization != names.QUANT_METHOD:
        return original(model_config, load_config, packed_modules_mapping, *args, **kwargs)
    load_format = getattr(load_config.load_format, "value", load_config.load_format)
    if load_format not in SAFETENSORS_LOAD_FORMATS:
        raise ValueError(
            f"breccia checkpoints are read from safetensors only; --load-format {load_format} is "
            f"refused for {model_config.model_path} (use one of {', '.join(SAFETENSORS_LOAD_FORMATS)})"
        )
    config = BrecciaConfig.from_checkpoint(model_config.model_path, packed_modules_mapping)
    logger.info("breccia-sglang: %d breccia tensors in %s", len(config.checkpoint.entries), model_config.model_path)
    return config
