"""Where the breccia FP8 KV cache enters SGLang (registered in ``plugin.py``).

The cache is on when the model is served as breccia (``--breccia-format``,
``quantization="breccia"`` or a breccia config.json) and ``--kv-cache-dtype`` is left at
``auto``. An explicit ``--kv-cache-dtype`` keeps SGLang's own KV cache, and
``BRECCIA_SGLANG_FP8_KV=0`` keeps SGLang's KV cache in the model's dtype (what you
compare against; the environment reaches every scheduler process).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

OPT_OUT_ENV = "BRECCIA_SGLANG_FP8_KV"


def breccia_kv_enabled(kvc) -> bool:
    """Whether SGLang's KV cache configurator ``kvc`` should build the breccia FP8 pool."""
    if getattr(kvc.model_config, "quantization", None) != "breccia":
        return False
    if os.environ.get(OPT_OUT_ENV, "1") == "0":
        return False
    if kvc.server_args.kv_cache_dtype not in (None, "auto"):
        return False
    if kvc.use_mla_backend or kvc.is_hybrid_swa:
        logger.warning("breccia-sglang: FP8 KV cache supports plain MHA models only; using SGLang's KV cache")
        return False
    return True


def resolve_kv_pool_class(original, self, *, kind, default):
    if kind == "mha" and breccia_kv_enabled(self):
        from .kv_pool import BrecciaFP8KVPool

        logger.info("breccia-sglang: FP8 KV cache with one scale per (token, kv head)")
        return BrecciaFP8KVPool
    return original(self, kind=kind, default=default)


def compute_cell_size(result, self, kvc, num_layers):
    """Count the scale bytes, so the token capacity SGLang reports is true."""
    if not breccia_kv_enabled(kvc):
        return result
    from sglang.srt.runtime_context import get_parallel

    from .kv_pool import breccia_cell_bytes

    mc = kvc.model_config
    heads = mc.get_num_kv_heads(get_parallel().attn_tp_size, get_parallel().attn_dcp_size)
    return breccia_cell_bytes(heads, mc.head_dim, mc.v_head_dim, num_layers)


def build_attention_backend(original, *, model_runner, backend_str, init_new_workspace):
    from .kv_pool import BrecciaFP8KVPool

    if not isinstance(getattr(model_runner, "token_to_kv_pool", None), BrecciaFP8KVPool):
        return original(model_runner=model_runner, backend_str=backend_str, init_new_workspace=init_new_workspace)
    from .attention import BACKEND_NAME, BrecciaTorchAttnBackend

    # Any other backend would read the FP8 bytes without their per-(token, head) scales.
    if backend_str != "torch_native":
        logger.warning("breccia-sglang: the FP8 KV cache needs its own attention; using %s instead of %s",
                       BACKEND_NAME, backend_str)
    model_runner.init_new_workspace = init_new_workspace
    return BrecciaTorchAttnBackend(model_runner)
