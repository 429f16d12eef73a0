"""scripts/gpu_checks.sh and fetch_gpu_wheels.sh run only on a lent GPU machine, so CI checks
what can rot here: the wheels the fetch script pins are the versions this venv resolved (the
kernel the GPU benchmarks as SGLang's is the one the tests ran), and both scripts parse."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PASSED_FLAGS = {"--smoke", "--out", "--out-dir", "--jobs", "--budget-s", "--tune"}  # those gpu_checks.sh gives benchmarks


def pinned_wheels() -> dict[str, str]:
    text = (SCRIPTS / "fetch_gpu_wheels.sh").read_text()
    block = re.search(r"^WHEELS=\((.*?)^\)", text, re.S | re.M).group(1)
    return dict(pin.split("==") for pin in block.split())


def test_the_carried_wheels_are_the_versions_installed_here():
    # breccia and SGLang exactly: their code is what the GPU benchmarks. The rest are light
    # packages that SGLang's kernel modules import, which sglang==0.5.23 does not pin: PyPI moves
    # them (ipython 9.18.1 -> 9.19.1 between two fresh venvs, 2026-12-04 -> 06), so this venv
    # must hold each of them, at whatever version it resolved.
    pins, exact = pinned_wheels(), ("breccia", "sglang")
    assert {name: version(name) for name in exact} == {name: pins.get(name) for name in exact}
    for name in pins:
        assert version(name), name  # raises PackageNotFoundError where this venv lacks it


def test_the_gpu_scripts_parse():
    for script in ("gpu_checks.sh", "fetch_gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_every_script_gpu_checks_runs_is_here_and_takes_its_flags():
    # A renamed benchmark or flag would only show on a lent GPU, minutes into a short lease.
    text = (SCRIPTS / "gpu_checks.sh").read_text()
    scripts = set(re.findall(r"benchmarks/(\w+\.py)", text))
    assert {"tune_block_fp8.py", "bench_gemm.py", "tune_weight_only.py", "bench_moe.py", "bench_decode.py"} <= scripts
    for script in scripts:
        path = SCRIPTS.parent / "benchmarks" / script
        assert path.exists(), script
        command = re.findall(rf"^[^#\n]*benchmarks/{re.escape(script)}[^\n]*", text, re.M)[0]  # not a comment
        flags = set(command.split()) & PASSED_FLAGS
        source = path.read_text()
        assert all(f'"{flag}"' in source for flag in flags), (script, flags)
    assert "tests/kernels" in text and "tests/integration/test_gemm_blockscale.py" in text
