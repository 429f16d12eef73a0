"""The cache builds each entry once, however many processes ask for it at the same time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from breccia_sglang.harness.cache import cached_checkpoint, is_checkpoint

# A process that asks for ENTRY: it notes in ASKED that it is about to ask, and each build it
# runs in BUILDS, and prints what cached_checkpoint logged and returned. Its build holds on until
# both processes have asked (however long their imports took), then a little longer, so the
# other one meets the lock, whichever process builds.
ASK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from breccia_sglang.format.writer import atomic_output_dir
    from breccia_sglang.harness.cache import cached_checkpoint

    entry, builds, asked = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def build(dst):
        with builds.open("a") as f:
            f.write("build\\n")
        deadline = time.monotonic() + 60
        while len(asked.read_text().split()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # from the other's note to its lock call is a few milliseconds
        with atomic_output_dir(dst) as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(b"")

    with asked.open("a") as f:
        f.write("asked\\n")
    print(cached_checkpoint(entry, build, log=lambda m: print("LOG", m)))
""")


def _write_checkpoint(dst: Path) -> None:
    dst.mkdir(parents=True)
    (dst / "config.json").write_text("{}")
    (dst / "model.safetensors").write_bytes(b"")


def test_two_processes_asking_at_once_build_the_entry_once(tmp_path):
    entry, builds, asked = tmp_path / "cache" / "model-fp8", tmp_path / "builds.txt", tmp_path / "asked.txt"
    asked.write_text("")
    askers = [subprocess.Popen([sys.executable, "-c", ASK, str(entry), str(builds), str(asked)],
                               stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = [asker.communicate(timeout=120)[0] for asker in askers]
    assert [asker.returncode for asker in askers] == [0, 0], outputs
    assert builds.read_text().splitlines() == ["build"], outputs  # the second found it built
    assert all(out.strip().endswith(str(entry)) for out in outputs), outputs
    assert sum("waiting for another process that is building" in out for out in outputs) == 1, outputs
    assert is_checkpoint(entry)


def test_a_built_entry_is_read_without_building_or_locking(tmp_path):
    entry = tmp_path / "cache" / "model-fp8"
    _write_checkpoint(entry)
    calls = []
    assert cached_checkpoint(entry, calls.append) == entry
    assert calls == []
    # No lock file: a shared, read-only cache of prebuilt checkpoints serves as it is.
    assert list(entry.parent.iterdir()) == [entry]


def test_a_failed_build_leaves_no_entry_and_the_next_call_builds_it(tmp_path):
    entry = tmp_path / "model-fp8"

    def failing(dst):
        raise RuntimeError("download failed")

    with pytest.raises(RuntimeError, match="download failed"):
        cached_checkpoint(entry, failing)
    assert not entry.exists()
    assert cached_checkpoint(entry, _write_checkpoint) == entry  # the lock was let go
    assert is_checkpoint(entry)
