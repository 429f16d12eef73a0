"""A CPU platform for SGLang, so the real engine runs on machines with no accelerator.

SGLang's stock CPU path (``--device cpu`` without ``SGLANG_USE_CPU_ENGINE``) dies while
building the model: the rotary embedding falls back to ``vllm._custom_ops``. Declaring an
out-of-tree platform with the ``native`` dispatch key makes every fused op take its plain
torch ``forward_native`` instead, with the ``torch_native`` attention backend and eager
compilation. Nothing else about the engine changes.

The entry point (``sglang.srt.platforms``: ``breccia_cpu``) is asked by SGLang on every
machine; it answers None (stays inert) whenever a CUDA/ROCm device is visible, or when the
user opts out with ``BRECCIA_SGLANG_CPU_PLATFORM=0``. While active it also answers for the
device when none is given (``--device`` left out): ``cpu``, said in the log; and it turns
on SGLang's ``--sleep-on-idle``, said in the log too (why: ``apply_server_args_defaults``).
"""

from __future__ import annotations

import logging
import os

from .. import names

logger = logging.getLogger(__name__)


def activate() -> str | None:
    """SGLang platform entry point: the platform's dotted class path, or None to stay inert."""
    if os.environ.get(names.ENV_CPU_PLATFORM, "1") == "0":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    logger.info(
        "breccia-sglang: no CUDA device visible; activating the CPU platform "
        "(torch_native attention, native ops, eager). Set %s=0 to disable.",
        names.ENV_CPU_PLATFORM,
    )
    return names.PLATFORM_CLASS


def _build_platform_class():
    # Imported lazily: SGLang asks activate() on every machine, and a GPU host must not
    # pay for (or be broken by) importing the CPU platform module.
    from sglang.srt.platforms.cpu import CpuSRTPlatform
    from sglang.srt.platforms.device_mixin import PlatformEnum
    from sglang.srt.platforms.interface import PlatformCapabilities

    class BrecciaCpuPlatform(CpuSRTPlatform):
        """SGLang's CPU device operations, presented as an out-of-tree platform."""

        _enum = PlatformEnum.OOT
        capabilities = PlatformCapabilities()

        def get_default_attention_backend(self) -> str:
            return "torch_native"

        def get_dispatch_key_name(self) -> str:
            return "native"

        def get_compile_backend(self, mode: str | None = None) -> str:
            return "eager"

        def apply_server_args_defaults(self, server_args) -> None:
            # Between batches SGLang's scheduler polls its sockets in a busy loop, so an idle
            # server holds one core at 100%: one core of many on a GPU host, but half of a
            # 2-core CPU host, taken from the tokenizer, the HTTP server and whatever else runs
            # there (measured: 100% idle, 1.8% with the flag). SGLang's own --sleep-on-idle
            # blocks on those sockets instead, and a request still wakes it at once. It is a
            # store_true flag, so an explicit "off" cannot be told from the default: the CPU
            # platform always turns it on (BRECCIA_SGLANG_CPU_PLATFORM=0 opts out of it all).
            super().apply_server_args_defaults(server_args)
            if not server_args.sleep_on_idle:
                server_args.sleep_on_idle = True
                logger.info("breccia-sglang: the scheduler sleeps while idle on the CPU platform "
                            "(SGLang's --sleep-on-idle; polling would hold a whole core)")

        def get_device(self, device_id: int | None = 0) -> str:
            # SGLang asks the platform for the device when --device is left out, and then
            # splits the answer as a string ("cuda:0" -> "cuda"); SGLang's CPU platform answers
            # with a torch.device, which that split cannot take. torch accepts "cpu" wherever
            # it takes a device.
            logger.info("breccia-sglang: no --device given; serving on cpu (the breccia CPU platform)")
            return "cpu"

    return BrecciaCpuPlatform


def __getattr__(name: str):
    if name == "BrecciaCpuPlatform":
        cls = _build_platform_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
