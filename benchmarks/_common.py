"""What every benchmark shares: the report header (what ran, when, where, with which
parameters), the machine it ran on, one-line error summaries, the shared workload text, and
the harness that runs engines and servers.

Benchmarks import this module (and the ``_*.py`` helpers beside it), never each other. It
imports neither SGLang nor a GPU library, so the kernel benchmarks run on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import math
import os
import platform
import shlex
import sys
import types
from pathlib import Path

from breccia_sglang.harness.engine_process import run_engine  # the one engine runner
from breccia_sglang.harness.server import SGLangServer  # the one server wrapper

__all__ = ["OUT_DIR", "PARIS_TEXT", "SGLangServer", "error_summary", "finite_or_none", "machine_info",
           "report_header", "run_engine", "sglang_kernel_module"]

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"  # git-ignored: every benchmark's JSON, logs and plots by default

# Real English about one subject, so a model's predictions and its attention are those of
# ordinary text: scored by bench_accuracy, and the demo model's K/V source in bench_kv_accuracy.
PARIS_TEXT = (
    "Paris began as a small settlement of the Parisii, a Celtic tribe that lived on an island in the "
    "river Seine more than two thousand years ago. The Romans conquered the area in 52 BC and built a "
    "town they called Lutetia, with a forum, baths and an amphitheatre on the left bank. In the late "
    "fifth century Clovis, king of the Franks, made the city his capital, and over the following "
    "centuries it grew into one of the largest cities in Europe. During the Middle Ages the cathedral "
    "of Notre-Dame was built on the Ile de la Cite, and the university on the left bank drew students "
    "from across the continent. King Philip Augustus surrounded the city with a wall and began the "
    "fortress of the Louvre, which later became a royal palace and, after the Revolution, a museum. "
    "The Revolution of 1789 started in Paris with the storming of the Bastille, and the city remained "
    "at the centre of French political life through the empires and republics that followed. In the "
    "middle of the nineteenth century Baron Haussmann, working for Napoleon III, tore down crowded "
    "medieval quarters and laid out the wide boulevards, parks and sewers that still shape the city. "
    "The Eiffel Tower was completed for the World's Fair of 1889 and, although many artists first "
    "called it ugly, it soon became the best known symbol of Paris. Occupied by German troops in 1940, "
    "the city was liberated in August 1944, and today it is a centre of art, fashion, science and "
    "government, visited by tens of millions of people every year."
)


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """The machine and the software versions a result was measured with."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else platform.processor()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpus": gpus, "torch": torch.__version__,
            **{name.replace("-", "_"): package_version(name)
               for name in ("triton", "sglang", "transformers", "breccia", "breccia-sglang")}}


def report_header(benchmark: str, args: argparse.Namespace, argv=None) -> dict:
    """What every benchmark's JSON starts with: what ran, when, where, with which parameters."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "machine": machine_info(),
        "parameters": {k: _json_value(v) for k, v in vars(args).items()},
    }


def _json_value(value):
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def sglang_kernel_module(name: str):
    """An SGLang kernel module (e.g. ``sglang.kernels.ops.gemm.fp8_kernel``), also where SGLang's
    serving stack is missing.

    On the lent GPU machine SGLang is carried as a wheel without its serving stack
    (``scripts/gpu_checks.sh``). ``import sglang`` runs the package's ``__init__``, which
    imports the whole runtime, so when that fails the kernel module is imported under an
    empty ``sglang`` package: the kernels' own imports are light.
    """
    imported_before = set(sys.modules)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        spec = importlib.util.find_spec("sglang")
        if spec is None:
            raise
        print(f"import {name} failed ({exc}); importing it under an empty sglang package")
        # Forget the half-done sglang modules (and ours that bound to them, e.g. the platform
        # plugin), so no class is defined twice; torch's and triton's modules stay.
        for module in set(sys.modules) - imported_before:
            if module.split(".")[0] in ("sglang", "breccia_sglang"):
                del sys.modules[module]
        package = types.ModuleType("sglang")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["sglang"] = package
        return importlib.import_module(name)


def error_summary(exc: Exception) -> str:
    """``Type: reason`` in one line. Triton's CompilationError puts the kernel source first
    and the reason last, so the last line that names an error or "not supported" is kept;
    other messages keep their first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if "not supported" in line or "Error" in line]
    reason = reasons[-1] if reasons else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {reason[:300]}"


def finite_or_none(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj
