"""A scheduler that dies mid-decode: requests end at once, the server exits and says why, and a
restarted server on the same checkpoint answers exactly as before.

The plugin keeps no state outside the server's processes (its KV pages, scales and weights
live and die with the scheduler), so "consistent after a crash" means a clean exit and a
clean restart. Cancelling a request mid-decode is covered under load by test_server_load.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request

import pytest

from breccia_sglang.harness.server import CPU_ARGS, SGLangServer

from ..helpers import scheduler_pids

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "Name a primary colour."}]


class LongStream(threading.Thread):
    """A streaming /generate of 2000 tokens; records how many chunks arrived and how it ended."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.chunks, self.ending = url, 0, None
        self.first_chunk = threading.Event()

    def run(self):
        payload = {"text": "Tell me a very long story about the sea.", "stream": True,
                   "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}}
        request = urllib.request.Request(self.url + "/generate", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                for line in response:
                    if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                        self.chunks += 1
                        self.first_chunk.set()
                    elif line.strip() == b"data: [DONE]":
                        self.ending = "done"
            self.ending = self.ending or "closed"
        except Exception as exc:  # noqa: BLE001 - how it ended is what the test checks
            self.ending = f"{type(exc).__name__}: {exc}"
        finally:
            self.first_chunk.set()


def test_scheduler_killed_mid_decode(demo_fp8, tmp_path):
    args = ("--breccia-format", *CPU_ARGS)
    with SGLangServer(demo_fp8, *args, log_path=tmp_path / "crash.log") as server:
        before = server.chat(QUESTION, max_tokens=8)
        stream = LongStream(server.url)
        stream.start()
        assert stream.first_chunk.wait(120) and stream.chunks > 0, stream.ending
        (scheduler,) = scheduler_pids(server.proc.pid)
        os.kill(scheduler, signal.SIGKILL)
        killed = time.monotonic()

        # The in-flight request ends (no hang) without its 2000 tokens, and the server exits.
        stream.join(timeout=120)
        assert not stream.is_alive(), "the request hung after its scheduler died"
        assert stream.ending != "done" and stream.chunks < 2000
        exit_code = server.proc.wait(timeout=120)
        assert time.monotonic() - killed < 120
        assert exit_code != 0
        log = server.log_path.read_text(errors="replace")
        assert f"scheduler_0 (pid={scheduler}) crashed" in log

    with SGLangServer(demo_fp8, *args, log_path=tmp_path / "restart.log") as server:
        assert server.chat(QUESTION, max_tokens=8) == before
