"""``--breccia-format`` and ``sgl.Engine(breccia_format=True)``: both become
``quantization="breccia"``, a ServerArgs field, so the choice reaches every scheduler process
with the pickled ServerArgs (hooks registered in ``plugin.py``)."""

from __future__ import annotations

from .. import names


def add_cli_flag(_result, parser) -> None:
    """AFTER ``ServerArgs.add_cli_args``: the flag on launch_server / `sglang serve`."""
    parser.add_argument(
        names.FLAG,
        action="store_true",
        default=False,
        help="Serve a breccia-format checkpoint (breccia-sglang): load every breccia "
        f"tensor into SGLang's quantized GEMM paths. Same as --quantization {names.QUANT_METHOD}.",
    )


def from_cli_args(original, cls, args):
    """AROUND ``ServerArgs.from_cli_args``: the flag sets the quantization method."""
    if getattr(args, names.ENGINE_KEYWORD, False):
        args.quantization = breccia_quantization(getattr(args, "quantization", None), names.FLAG)
    return original(cls, args)


def engine_init(original, self, *args, **kwargs):
    """AROUND ``Engine.__init__``: the keyword sets the quantization method.

    SGLang loads plugins inside ``Engine.__init__``, after Python bound the call's keywords,
    so this reaches only Engines built after plugins were loaded (``breccia_sglang.enable()``).
    """
    if kwargs.pop(names.ENGINE_KEYWORD, False):
        kwargs["quantization"] = breccia_quantization(kwargs.get("quantization"), f"{names.ENGINE_KEYWORD}=True")
    return original(self, *args, **kwargs)


def breccia_quantization(requested: str | None, spelled: str) -> str:
    if requested not in (None, names.QUANT_METHOD):
        raise ValueError(f"{spelled} serves breccia checkpoints and conflicts with quantization={requested!r}")
    return names.QUANT_METHOD
