"""The harness's engine process: a run that times out mid-start leaves no SGLang process behind."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from breccia_sglang.harness.engine_process import run_engine

pytestmark = pytest.mark.engine

TIMEOUT_S = 45  # the scheduler is loading weights after ~15 s on 2 cores
STRAY_CHILD = Path(__file__).resolve().parent / "stray_child"


def processes_marked(marker: str) -> list[psutil.Process]:
    """Running processes whose environment carries ``marker`` (the engine process and all it spawned)."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("BRECCIA_TEST_MARKER") == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_a_run_that_times_out_mid_start_leaves_no_scheduler_running(tiny_llama, tmp_path):
    # A checkpoint whose weights file is a FIFO no one writes: SGLang's scheduler process blocks
    # reading it ("Load weight begin" is its last log line), so the engine is caught mid-start,
    # its scheduler up, when the timeout hits. Every process the engine spawned carries the
    # marker in its environment (the engine process sets it before SGLang starts anything).
    # SGLang's processes also die with their parent; the stray helper each of them starts
    # (tests/engine/stray_child) does not, so only ending the whole group leaves nothing.
    model = tmp_path / "stuck"
    shutil.copytree(tiny_llama, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
        os.mkfifo(weights)
    marker = uuid.uuid4().hex
    stray = os.pathsep.join(p for p in (str(STRAY_CHILD), os.environ.get("PYTHONPATH", "")) if p)
    spec = {"env": {"BRECCIA_TEST_MARKER": marker, "BRECCIA_TEST_STRAY_CHILD": "1", "PYTHONPATH": stray},
            "engine": {"model_path": str(model), "device": "cpu", "max_total_tokens": 1024,
                       "skip_tokenizer_init": True, "log_level": "info"}}
    outcome = {}

    def run():
        try:
            outcome["result"] = run_engine(spec, tmp_path / "run", timeout=TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the test looks at which one
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    spawned_seen = {}
    while runner.is_alive():
        for p in processes_marked(marker):
            try:
                spawned_seen[p.pid] = p.name()
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.5)
    runner.join()
    assert isinstance(outcome.get("error"), TimeoutError), outcome
    message = str(outcome["error"])
    assert f"after {TIMEOUT_S}s" in message and "Load weight begin" in message  # caught mid-start
    assert "sleep" in spawned_seen.values() and "python" in spawned_seen.values(), spawned_seen
    deadline = time.monotonic() + 10
    while processes_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [(p.pid, p.name()) for p in processes_marked(marker)]
    assert left == [], f"processes left running after the timeout: {left}"
