"""Start and stop a real ``python -m sglang.launch_server`` process, and talk to it.

Used by the demo (``breccia-sglang demo``), the tests and the benchmarks, so they all
exercise SGLang's own server exactly as a user starts it. Like ``run_engine``, the server
gets a process group of its own, and stopping it ends the whole group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .engine_process import end_process_group

# A KV pool that fits a laptop: on CPU, SGLang would otherwise size it to most of the RAM.
# No --device: on a machine without a GPU the breccia CPU platform serves on cpu by itself.
CPU_ARGS = ("--max-total-tokens", "8192")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SGLangServer:
    """A launch_server subprocess on 127.0.0.1; a context manager that always cleans up."""

    def __init__(self, model_path, *extra_args: str, log_path: str | Path, port: int | None = None,
                 startup_timeout: float = 300.0, env: dict | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.cmd = [
            sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path),
            "--host", "127.0.0.1", "--port", str(self.port), *extra_args,
        ]
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "SGLangServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            # A new session, so stop() can end the server and every scheduler it spawned.
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()  # a scheduler may outlive the server process that failed
                raise RuntimeError(f"launch_server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/health", timeout=2) is not None:
                    return
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"launch_server not healthy after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            end_process_group(self.proc)  # the server and every scheduler it spawned

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body.strip().startswith(b"{") else body.decode()

    def post(self, path: str, payload: dict, timeout: float = 600):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"POST {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from None

    def chat(self, messages: list[dict], max_tokens: int = 64) -> dict:
        """One temperature-0 /v1/chat/completions call: {"text", "cached_tokens", "prompt_tokens"}."""
        out = self.post(
            "/v1/chat/completions",
            {"model": "default", "messages": messages, "temperature": 0, "max_tokens": max_tokens},
        )
        usage = out.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return {
            "text": out["choices"][0]["message"]["content"],
            "cached_tokens": details.get("cached_tokens", 0) or 0,
            "prompt_tokens": usage.get("prompt_tokens", 0),
        }
