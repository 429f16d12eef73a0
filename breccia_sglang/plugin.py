"""SGLang general plugin (entry point ``sglang.srt.plugins``: ``breccia``).

``register()`` only records hooks with SGLang's ``HookRegistry`` (applied by SGLang at the
end of ``load_plugins()``) and names the ``breccia`` quantization method; it imports
nothing heavy itself and is idempotent. What the hooks do:

- ``--breccia-format`` on ``launch_server`` / ``sglang serve``: added to the parser and
  turned into ``quantization="breccia"``, a ServerArgs field, so it reaches every
  scheduler process with the pickled ServerArgs.
- ``sgl.Engine(breccia_format=True)``: the same, for Engine keyword arguments (see
  ``engine_kwargs`` for the one case SGLang gives a plugin no way to handle).
- Model construction: ``--breccia-format`` and a config.json with
  ``quant_method: breccia`` both build ``BrecciaConfig`` from the checkpoint's headers.
- Weight loading: breccia tensor names are mapped onto SGLang's FP8 parameters.
- KV cache: a breccia model gets the scale-aware FP8 KV pool, its memory sizing and its
  attention backend (``paged/sglang_hooks.py``).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

FLAG = "--breccia-format"
QUANT_METHOD = "breccia"
ATTENTION_BACKENDS = ("breccia_triton", "breccia_torch")  # built in paged/sglang_hooks.py

_registered = False


def register() -> None:
    """Register breccia-sglang with SGLang. Safe to call any number of times."""
    global _registered
    if _registered:
        return
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, QUANTIZATION_CHOICES
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if QUANT_METHOD not in QUANTIZATION_CHOICES:
        QUANTIZATION_CHOICES.append(QUANT_METHOD)  # so `--quantization breccia` parses too
    for backend in ATTENTION_BACKENDS:  # `--attention-backend breccia_triton` parses
        if backend not in ATTENTION_BACKEND_CHOICES:
            ATTENTION_BACKEND_CHOICES.append(backend)
    for target, hook, kind in _HOOKS:
        HookRegistry.register(target, hook, HookType[kind])
    _registered = True


# --- command line -------------------------------------------------------------------------


def _add_cli_flag(_result, parser) -> None:
    parser.add_argument(
        FLAG,
        action="store_true",
        default=False,
        help="Serve a breccia-format checkpoint (breccia-sglang): load every breccia "
        "tensor into SGLang's quantized GEMM paths. Same as --quantization breccia.",
    )


def _from_cli_args(original, cls, args):
    if getattr(args, "breccia_format", False):
        args.quantization = _breccia_quantization(getattr(args, "quantization", None), FLAG)
    return original(cls, args)


def _engine_init(original, self, *args, **kwargs):
    if kwargs.pop("breccia_format", False):
        kwargs["quantization"] = _breccia_quantization(kwargs.get("quantization"), "breccia_format=True")
    return original(self, *args, **kwargs)


def _breccia_quantization(requested: str | None, spelled: str) -> str:
    if requested not in (None, QUANT_METHOD):
        raise ValueError(
            f"{spelled} serves breccia checkpoints and conflicts with quantization={requested!r}"
        )
    return QUANT_METHOD


# --- model construction and loading --------------------------------------------------------


def _ensure_quant_method_known(*_args, **_kwargs):
    # SGLang reads QUANTIZATION_METHODS live; adding ourselves just before the model
    # config is checked keeps the heavy quantization import out of register().
    from sglang.srt.layers.quantization import QUANTIZATION_METHODS
    from sglang.srt.layers.linear import WEIGHT_LOADER_V2_SUPPORTED

    from .weights.config import BrecciaConfig

    QUANTIZATION_METHODS.setdefault(QUANT_METHOD, BrecciaConfig)
    if "BrecciaLinearMethod" not in WEIGHT_LOADER_V2_SUPPORTED:
        # SGLang gives the shard-aware v2 weight loaders only to methods named here.
        WEIGHT_LOADER_V2_SUPPORTED.append("BrecciaLinearMethod")


# Load formats that read safetensors (or nothing): breccia checkpoints are safetensors, and a
# pickle (*.bin, *.pt: "pt", "npcache", ...) can run code when loaded, so it is never read.
SAFETENSORS_LOAD_FORMATS = ("auto", "safetensors", "fastsafetensors", "dummy")


def _get_quant_config(original, model_config, load_config, packed_modules_mapping, *args, **kwargs):
    if model_config.quantization != QUANT_METHOD:
        return original(model_config, load_config, packed_modules_mapping, *args, **kwargs)
    from .weights.config import BrecciaConfig

    load_format = getattr(load_config.load_format, "value", load_config.load_format)
    if load_format not in SAFETENSORS_LOAD_FORMATS:
        raise ValueError(
            f"breccia checkpoints are read from safetensors only; --load-format {load_format} is "
            f"refused for {model_config.model_path} (use one of {', '.join(SAFETENSORS_LOAD_FORMATS)})"
        )

    config = BrecciaConfig.from_checkpoint(model_config.model_path, packed_modules_mapping)
    logger.info(
        "breccia-sglang: %d breccia tensors in %s", len(config.checkpoint.entries), model_config.model_path
    )
    return config


def _load_weights_only(original, model, weights, target_device):
    from .weights.config import BrecciaConfig
    from .weights.loading import rename_breccia_tensors

    if isinstance(getattr(model, "quant_config", None), BrecciaConfig):
        weights = rename_breccia_tensors(weights, model.quant_config)
    return original(model, weights, target_device)


def _kv_hook(name):
    # The KV-cache hooks live in paged/sglang_hooks.py; imported when first called.
    def hook(*args, **kwargs):
        from .paged import sglang_hooks

        return getattr(sglang_hooks, name)(*args, **kwargs)

    hook.__name__ = name
    return hook


_HOOKS = (
    ("sglang.srt.server_args.ServerArgs.add_cli_args", _add_cli_flag, "AFTER"),
    ("sglang.srt.server_args.ServerArgs.from_cli_args", _from_cli_args, "AROUND"),
    ("sglang.srt.entrypoints.engine.Engine.__init__", _engine_init, "AROUND"),
    ("sglang.srt.configs.model_config.ModelConfig._verify_quantization", _ensure_quant_method_known, "BEFORE"),
    ("sglang.srt.model_loader.weight_utils.get_quant_config", _get_quant_config, "AROUND"),
    ("sglang.srt.model_loader.loader.DefaultModelLoader.load_weights_only", _load_weights_only, "AROUND"),
    ("sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._resolve_kv_pool_class",
     _kv_hook("resolve_kv_pool_class"), "AROUND"),
    ("sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size",
     _kv_hook("compute_cell_size"), "AFTER"),
    ("sglang.srt.model_executor.model_runner_components.attention_backend_setup."
     "_build_full_attention_backend_from_str", _kv_hook("build_attention_backend"), "AROUND"),
)
