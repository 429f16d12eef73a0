"""scripts/gpu_checks.sh and fetch_gpu_wheels.sh run only on a lent GPU machine, so CI checks
what can rot here: the wheels the fetch script pins are the versions this venv resolved (the
kernel the GPU benchmarks as SGLang's is the one the tests ran), and both scripts parse."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def pinned_wheels() -> dict[str, str]:
    text = (SCRIPTS / "fetch_gpu_wheels.sh").read_text()
    block = re.search(r"^WHEELS=\((.*?)^\)", text, re.S | re.M).group(1)
    return dict(pin.split("==") for pin in block.split())


def test_the_carried_wheels_are_the_versions_installed_here():
    pins = pinned_wheels()
    assert {"breccia", "sglang"} <= set(pins)
    assert {name: version(name) for name in pins} == pins


def test_the_gpu_scripts_parse():
    for script in ("gpu_checks.sh", "fetch_gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
