"""breccia-sglang: serve breccia-format low-precision checkpoints in SGLang.

Folders in dependency order; each imports only the ones above it in this list:

- ``names.py``, ``errors.py``: the string contracts and the one user-facing error type.
- ``format/``: breccia checkpoints on disk (read, check, write, quantize, convert). No SGLang.
- ``kvcache/``: FP8 KV maths and ``PagedScaledTensor``, the view type over KV pages. No SGLang.
- ``weights/``: quantized-weight maths in torch (breccia's dequantize without NumPy, FP8
  activation quantization, the W8A8 reference). No SGLang.
- ``kernels/``: Triton kernels over those views, each with an fp32 reference. No SGLang.
- ``integration/``: everything that touches SGLang (plugin, hooks, quant method, KV pool,
  attention backends, CPU platform). The only folder an SGLang upgrade needs reviewed.
- ``harness/``: the engine and server processes the demo, tests and benchmarks share.
- ``cli.py``: the ``breccia-sglang`` command.

The package plugs into SGLang through entry points only; importing it imports neither SGLang
nor torch.
"""

__version__ = "0.1.0"
__all__ = ["PagedKV", "PagedScaledTensor", "enable"]


def enable() -> None:
    """Load SGLang's plugins now, so the first ``sgl.Engine(breccia_format=True)`` works.

    SGLang loads plugins inside ``Engine.__init__``, after Python has already bound the
    call's keywords, so a plugin cannot add a keyword to the first Engine of a process by
    itself. After ``enable()`` (or any earlier Engine) it can. ``quantization="breccia"``
    means the same and always works.
    """
    from .integration.plugin import load_sglang_plugins

    load_sglang_plugins()


def __getattr__(name: str):
    # Lazy, so SGLang's plugin discovery (which imports this package) stays cheap.
    if name in ("PagedScaledTensor", "PagedKV"):
        from . import kvcache

        return getattr(kvcache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
