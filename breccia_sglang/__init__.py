"""breccia-sglang: serve breccia-format low-precision checkpoints in SGLang.

The package plugs into SGLang through entry points only (see ``plugin.py`` and
``platform.py``); importing it does not import SGLang.
"""

__version__ = "0.1.0"


def enable() -> None:
    """Load SGLang's plugins now, so the first ``sgl.Engine(breccia_format=True)`` works.

    SGLang loads plugins inside ``Engine.__init__``, after Python has already bound the
    call's keywords, so a plugin cannot add a keyword to the first Engine of a process by
    itself. After ``enable()`` (or any earlier Engine) it can. ``quantization="breccia"``
    means the same and always works.
    """
    from sglang.srt.plugins import load_plugins

    load_plugins()
