"""The one way the demo, the tests and the benchmarks run a real ``sgl.Engine``: in a process
of its own (``engine_worker.py``), because a failing engine start kills its parent process.

The process starts its own process group, and whatever way ``run_engine`` ends (the result,
an exception, the timeout, Ctrl-C) the whole group is ended, so no scheduler process SGLang
spawned is ever left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

WORKER_MODULE = "breccia_sglang.harness.engine_worker"
STOP_GRACE_S = 20.0  # SIGTERM first (SGLang's schedulers exit on it), SIGKILL after this


def run_engine(spec: dict, workdir: str | Path, timeout: float = 900, *, log_path: str | Path | None = None,
               stdout: str | Callable[[str], None] = "log") -> dict:
    """Run ``spec`` (see ``engine_worker.py``) in a fresh Python process; return its OUT dict
    plus ``returncode`` and ``stderr`` (the engine process's whole log).

    ``log_path``: where the process's stderr (SGLang's log) goes, default ``workdir/engine.log``.
    ``stdout``: ``"log"`` (into the same file), ``"inherit"`` (ours, e.g. for a progress bar),
    or a function called with each line as it comes.

    Raises ``TimeoutError`` after ``timeout`` seconds, and ``RuntimeError`` when the process
    ended without writing a result; both carry the end of the log.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spec.json", workdir / "out.json"
    log_path = Path(log_path) if log_path else workdir / "engine.log"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)  # a result left from an earlier run must not be read as this one's
    by_line = callable(stdout)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(spec_path), str(out_path)],
            stdout=subprocess.PIPE if by_line else (None if stdout == "inherit" else log),
            stderr=log, text=True, start_new_session=True)
        timed_out = threading.Event()

        def on_timeout():
            timed_out.set()
            end_process_group(proc)

        watchdog = threading.Timer(timeout, on_timeout)
        watchdog.start()
        try:
            if by_line:
                for line in proc.stdout:
                    stdout(line)
            proc.wait()
        finally:
            watchdog.cancel()
            end_process_group(proc)
    text = log_path.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-60:])
    if timed_out.is_set() and not out_path.exists():
        raise TimeoutError(f"engine process still running after {timeout:.0f}s; ended it. Log {log_path}:\n{tail}")
    if not out_path.exists():
        raise RuntimeError(f"engine process ended (exit {proc.returncode}) without a result. Log {log_path}:\n{tail}")
    result = json.loads(out_path.read_text())
    result.update(returncode=proc.returncode, stderr=text)
    return result


def end_process_group(proc: subprocess.Popen) -> None:
    """End ``proc`` and every process in its group (SGLang's schedulers and detokenizer),
    also when ``proc`` itself has already exited: SIGTERM, then SIGKILL for what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # nothing of the group is left
        if _wait_group_gone(proc, STOP_GRACE_S):
            break
    if proc.poll() is None:
        proc.wait()


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies have exited: they only wait for a
    parent to reap them, which may be a container's init that never does)."""
    import psutil

    members = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def _wait_group_gone(proc: subprocess.Popen, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        proc.poll()  # reap our own child, so it does not linger as a zombie of the group
        if not live_group_members(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
