"""The breccia-sglang cache: the demo model, its quantized copies and the benchmarks' checkpoints,
built once per machine and shared by every process that asks for them.

Two processes may ask for the same entry at once (the demo beside a benchmark, or two test
workers): ``cached_checkpoint`` lets one build it while the other waits on a lock file beside
the entry, then finds it built. Without the lock both would build, and the second to finish
would delete the first one's result while an engine read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from .. import names


def cache_dir() -> Path:
    """``$BRECCIA_SGLANG_CACHE``, else ``$XDG_CACHE_HOME/breccia-sglang`` (``~/.cache``)."""
    if os.environ.get(names.ENV_CACHE):
        return Path(os.environ[names.ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "breccia-sglang"


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def cached_checkpoint(entry: Path, build: Callable[[Path], object], *, log: Callable[[str], None] = print) -> Path:
    """``entry``, after ``build(entry)`` has made it a checkpoint if it was not one already.

    ``build`` must write ``entry`` atomically (``format.writer.atomic_output_dir``), so a build
    cut short leaves nothing a later call would take for a checkpoint.
    """
    entry = Path(entry)
    if is_checkpoint(entry):  # built whole (builds land by one rename): read it, lock or not
        return entry          # (a read-only cache holds no lock file)
    with _locked(entry, log):
        if not is_checkpoint(entry):
            build(entry)
    return entry


@contextlib.contextmanager
def _locked(entry: Path, log: Callable[[str], None]):
    """Hold ``entry``'s lock file for the block; the kernel drops it if the process dies."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process that is building {entry} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
