"""Where the breccia FP8 KV cache enters SGLang (registered in ``plugin.py``).

The cache is on when the model is served as breccia (``--breccia-format``,
``quantization="breccia"`` or a breccia config.json) and ``--kv-cache-dtype`` is left at
``auto``. An explicit ``--kv-cache-dtype`` keeps SGLang's own KV cache, and
``BRECCIA_SGLANG_FP8_KV=0`` keeps SGLang's KV cache in the model's dtype (what you
compare against; the environment reaches every scheduler process).

Attention over the pool: ``breccia_triton`` (the Triton kernels; default on GPU) or
``breccia_torch`` (the plain-torch reference path; default on CPU), both in SGLang's
attention registry and selectable with ``--attention-backend``.
"""

from __future__ import annotations

import logging
import os

from ..plugin import ATTENTION_BACKENDS as BRECCIA_BACKENDS  # the backends that read this pool
from .kv_pool import BrecciaFP8KVPool

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


TRITON_ON_CPU_ENV = "BRECCIA_SGLANG_TRITON_ATTENTION"


def register_attention_backends() -> None:
    """Add breccia's backends to SGLang's attention registry (idempotent)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend

    if "breccia_triton" in ATTENTION_BACKENDS:
        return

    @register_attention_backend("breccia_triton")
    def create_breccia_triton_backend(runner):
        from ..kernels.backend import BrecciaTritonAttnBackend

        return BrecciaTritonAttnBackend(runner)

    @register_attention_backend("breccia_torch")
    def create_breccia_torch_backend(runner):
        from .attention import BrecciaTorchAttnBackend

        if not isinstance(runner.token_to_kv_pool, BrecciaFP8KVPool):
            raise ValueError("breccia_torch reads the breccia FP8 KV cache, but the KV pool is "
                             f"{type(runner.token_to_kv_pool).__name__}")
        return BrecciaTorchAttnBackend(runner)


def choose_attention_backend(model_runner, requested: str) -> str:
    """The backend that reads a breccia FP8 pool: the Triton kernels on GPU, the torch path
    elsewhere unless BRECCIA_SGLANG_TRITON_ATTENTION=1 (e.g. under TRITON_INTERPRET=1).
    An explicit ``--attention-backend breccia_*`` wins."""
    if requested in BRECCIA_BACKENDS:
        return requested
    on_gpu = str(model_runner.device).startswith("cuda")
    chosen = "breccia_triton" if on_gpu or os.environ.get(TRITON_ON_CPU_ENV) == "1" else "breccia_torch"
    # Any other backend would read the FP8 bytes without their per-(token, head) scales.
    logger.info("breccia-sglang: attention over the FP8 KV cache runs on %s (instead of %s)", chosen, requested)
    return chosen


def build_attention_backend(original, *, model_runner, backend_str, init_new_workspace):
    register_attention_backends()
    if isinstance(getattr(model_runner, "token_to_kv_pool", None), BrecciaFP8KVPool):
        backend_str = choose_attention_backend(model_runner, backend_str)
    elif backend_str in BRECCIA_BACKENDS:
        raise ValueError(f"--attention-backend {backend_str} reads the breccia FP8 KV cache, which is on only "
                         "for breccia checkpoints (--breccia-format) with --kv-cache-dtype auto "
                         f"and without {OPT_OUT_ENV}=0")
    return original(model_runner=model_runner, backend_str=backend_str, init_new_workspace=init_new_workspace)
