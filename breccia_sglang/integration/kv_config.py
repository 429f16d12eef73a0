"""When SGLang builds the breccia FP8 KV pool instead of its own, and how big SGLang thinks a
token is (hooks registered in ``plugin.py``).

The cache is on when the model is served as breccia (``--breccia-format``,
``quantization="breccia"`` or a breccia config.json) and ``--kv-cache-dtype`` is left at
``auto``. An explicit ``--kv-cache-dtype`` keeps SGLang's own KV cache, and
``BRECCIA_SGLANG_FP8_KV=0`` keeps SGLang's KV cache in the model's dtype (what you
compare against; the environment reaches every scheduler process).
"""

from __future__ import annotations

import logging
import os

from .. import names
from ..kvcache import cell_bytes
from .kv_pool import BrecciaFP8KVPool

logger = logging.getLogger(__name__)


def breccia_kv_enabled(kvc) -> bool:
    """Whether SGLang's KV cache configurator ``kvc`` should build the breccia FP8 pool."""
    if getattr(kvc.model_config, "quantization", None) != names.QUANT_METHOD:
        return False
    if os.environ.get(names.ENV_FP8_KV, "1") == "0":
        return False
    if kvc.server_args.kv_cache_dtype not in (None, "auto"):
        return False
    if kvc.use_mla_backend or kvc.is_hybrid_swa:
        logger.warning("breccia-sglang: FP8 KV cache supports plain MHA models only; using SGLang's KV cache")
        return False
    return True


def resolve_kv_pool_class(original, self, *, kind, default):
    """AROUND ``KVCacheConfigurator._resolve_kv_pool_class``: the breccia pool for MHA models."""
    if kind == "mha" and breccia_kv_enabled(self):
        logger.info("breccia-sglang: FP8 KV cache with one scale per (token, kv head)")
        return BrecciaFP8KVPool
    return original(self, kind=kind, default=default)


def compute_cell_size(result, self, kvc, num_layers):
    """AFTER ``DefaultPoolConfigurator._compute_cell_size``: count the scale bytes, so the
    token capacity SGLang reports is true."""
    if not breccia_kv_enabled(kvc):
        return result
    from sglang.srt.runtime_context import get_parallel

    mc = kvc.model_config
    heads = mc.get_num_kv_heads(get_parallel().attn_tp_size, get_parallel().attn_dcp_size)
    return cell_bytes(heads, mc.head_dim, mc.v_head_dim, num_layers)
