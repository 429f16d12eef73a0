"""SGLang general plugin (entry point ``sglang.srt.plugins``: ``breccia``): the one table of
every place breccia-sglang enters SGLang.

``register()`` records the hooks below with SGLang's ``HookRegistry`` (applied by SGLang at
the end of ``load_plugins()``) and adds our names to the CLI's choice lists. It imports no
module of ours that touches SGLang's layers: each hook imports its module on first call. It
is idempotent. An SGLang upgrade is reviewed here first: every dotted path SGLang must still
have is in ``HOOKS``.
"""

from __future__ import annotations

import importlib

from .. import names

_registered = False


def register() -> None:
    """Register breccia-sglang with SGLang. Safe to call any number of times."""
    global _registered
    if _registered:
        return
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES, QUANTIZATION_CHOICES
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if names.QUANT_METHOD not in QUANTIZATION_CHOICES:
        QUANTIZATION_CHOICES.append(names.QUANT_METHOD)  # so `--quantization breccia` parses too
    for backend in names.ATTENTION_BACKENDS:  # so `--attention-backend breccia_triton` parses
        if backend not in ATTENTION_BACKEND_CHOICES:
            ATTENTION_BACKEND_CHOICES.append(backend)
    for target, kind, hook in HOOKS:
        HookRegistry.register(target, _lazy(hook), HookType[kind])
    _registered = True


def load_sglang_plugins() -> None:
    """SGLang's own plugin loading, which calls ``register()`` (``breccia_sglang.enable()``)."""
    from sglang.srt.plugins import load_plugins

    load_plugins()


def _lazy(hook: str):
    """``module:function`` of this package, imported when SGLang first calls the hook."""
    module_name, _, function_name = hook.partition(":")

    def call(*args, **kwargs):
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, function_name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = function_name
    return call


# (SGLang target, hook type, our module:function). AROUND hooks get SGLang's original first.
HOOKS = (
    # --breccia-format and breccia_format=True become quantization="breccia" (args.py).
    ("sglang.srt.server_args.ServerArgs.add_cli_args", "AFTER", "args:add_cli_flag"),
    ("sglang.srt.server_args.ServerArgs.from_cli_args", "AROUND", "args:from_cli_args"),
    ("sglang.srt.entrypoints.engine.Engine.__init__", "AROUND", "args:engine_init"),
    # The quantization method and its config, built from the checkpoint (quant_config.py).
    ("sglang.srt.configs.model_config.ModelConfig._verify_quantization", "BEFORE",
     "quant_config:register_quant_method"),
    ("sglang.srt.model_loader.weight_utils.get_quant_config", "AROUND", "quant_config:get_quant_config"),
    # Checkpoint tensor names -> SGLang's parameters (weight_loading.py).
    ("sglang.srt.model_loader.loader.DefaultModelLoader.load_weights_only", "AROUND",
     "weight_loading:load_weights_only"),
    # What the quantized layers hold once loaded, in the log (resident_bytes.py).
    ("sglang.srt.model_loader.loader.DefaultModelLoader.postprocess_weights", "AFTER",
     "resident_bytes:report_resident_bytes"),
    # The FP8 KV pool and its true size (kv_config.py).
    ("sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._resolve_kv_pool_class", "AROUND",
     "kv_config:resolve_kv_pool_class"),
    ("sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size", "AFTER",
     "kv_config:compute_cell_size"),
    # The attention backends that read it (attention/choice.py).
    ("sglang.srt.model_executor.model_runner_components.attention_backend_setup."
     "_build_full_attention_backend_from_str", "AROUND", "attention.choice:build_attention_backend"),
)
