"""Which attention backend reads a breccia FP8 KV pool, and their place in SGLang's registry.

Any backend but ours would read the FP8 bytes without their per-(token, head) scales, so a
breccia pool always gets one of the two: ``breccia_triton`` (the Triton kernels; default on
GPU) or ``breccia_torch`` (the plain-torch reference path; default on CPU). Both are
selectable with ``--attention-backend``.
"""

from __future__ import annotations

import logging
import os

from ... import names
from ..kv_pool import BrecciaFP8KVPool

logger = logging.getLogger(__name__)


def register_attention_backends() -> None:
    """Add breccia's backends to SGLang's attention registry (idempotent)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend

    if names.TRITON_BACKEND in ATTENTION_BACKENDS:
        return

    @register_attention_backend(names.TRITON_BACKEND)
    def create_breccia_triton_backend(runner):
        from .triton_backend import BrecciaTritonAttnBackend

        return BrecciaTritonAttnBackend(runner)

    @register_attention_backend(names.TORCH_BACKEND)
    def create_breccia_torch_backend(runner):
        from .torch_backend import BrecciaTorchAttnBackend

        if not isinstance(runner.token_to_kv_pool, BrecciaFP8KVPool):
            raise ValueError(f"{names.TORCH_BACKEND} reads the breccia FP8 KV cache, but the KV pool is "
                             f"{type(runner.token_to_kv_pool).__name__}")
        return BrecciaTorchAttnBackend(runner)


def choose_attention_backend(model_runner, requested: str) -> str:
    """The backend that reads a breccia FP8 pool: the Triton kernels on GPU, the torch path
    elsewhere unless BRECCIA_SGLANG_TRITON_ATTENTION=1 (e.g. under TRITON_INTERPRET=1).
    An explicit ``--attention-backend breccia_*`` wins."""
    if requested in names.ATTENTION_BACKENDS:
        return requested
    on_gpu = str(model_runner.device).startswith("cuda")
    triton = on_gpu or os.environ.get(names.ENV_TRITON_ON_CPU) == "1"
    chosen = names.TRITON_BACKEND if triton else names.TORCH_BACKEND
    logger.info("breccia-sglang: attention over the FP8 KV cache runs on %s (instead of %s)", chosen, requested)
    return chosen


def build_attention_backend(original, *, model_runner, backend_str, init_new_workspace):
    """AROUND SGLang's ``_build_full_attention_backend_from_str``."""
    register_attention_backends()
    if isinstance(getattr(model_runner, "token_to_kv_pool", None), BrecciaFP8KVPool):
        backend_str = choose_attention_backend(model_runner, backend_str)
    elif backend_str in names.ATTENTION_BACKENDS:
        raise ValueError(f"--attention-backend {backend_str} reads the breccia FP8 KV cache, which is on only "
                         f"for breccia checkpoints ({names.FLAG}) with --kv-cache-dtype auto "
                         f"and without {names.ENV_FP8_KV}=0")
    return original(model_runner=model_runner, backend_str=backend_str, init_new_workspace=init_new_workspace)
