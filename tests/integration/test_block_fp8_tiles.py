"""The block FP8 kernel's tile tables: the one tuned on a GPU model ships and is taken on that
model only, a table file is checked before any of it is used (a wrong tile K would be silently
wrong), and BRECCIA_SGLANG_BLOCK_FP8_CONFIGS points the kernel at another file."""

from __future__ import annotations

import json

import pytest

from breccia_sglang import names
from breccia_sglang.errors import BrecciaConfigError
from breccia_sglang.integration.gemm import block_fp8_tiles as tiles

OPEN = 1 << 62


def test_the_h200_table_ships_and_only_an_h200_takes_it(monkeypatch):
    monkeypatch.delenv(names.ENV_BLOCK_FP8_CONFIGS, raising=False)
    shipped = tiles.load_tables(tiles.tuned_file("NVIDIA H200"))
    assert set(shipped) == {32, 64, 128}
    for block, table in shipped.items():
        assert table[-1][0] == OPEN
        for m in (1, 8, 100, 4096):
            chosen = tiles.choose_config(m, block, interpreted=False, device_name="NVIDIA H200")
            assert chosen == next(c for top, c in table if m <= top)
    # Decode on Hopper takes SGLang's Hopper variant (swap AB, split K), as measured.
    assert tiles.choose_config(1, 128, False, "NVIDIA H200").hopper
    # Another GPU, and no GPU, keep the default table; the interpreter its own config.
    for device in ("NVIDIA H100 80GB HBM3", None):
        assert tiles.choose_config(1, 128, False, device) == tiles.TILE_CONFIGS[0][1]
    assert tiles.choose_config(1, 128, True, "NVIDIA H200") == tiles.INTERPRETER_CONFIG


def write(path, blocks: dict) -> None:
    path.write_text(json.dumps({"device": "test", "blocks": blocks}))


def config(**overrides) -> dict:
    return {"block_m": 16, "block_n": 64, "block_k": None, "group_m": 1, "num_warps": 4, "num_stages": 3,
            **overrides}


def test_the_variable_points_the_kernel_at_another_table(tmp_path, monkeypatch):
    path = tmp_path / "mine.json"
    tables = {128: [(16, tiles.TileConfig(16, 128, None, 1, 4, 3, swap_ab=True, split_k=4)),
                    (OPEN, tiles.TileConfig(64, 128, None, 8, 4, 3))]}
    tiles.write_tables(path, tables, device="test")
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(path))
    assert tiles.choose_config(3, 128, False, None) == tables[128][0][1]
    assert tiles.choose_config(300, 128, False, "NVIDIA H200") == tables[128][1][1]
    # A block width the file does not cover keeps the default table.
    assert tiles.choose_config(3, 64, False, None) == tiles.TILE_CONFIGS[0][1]


@pytest.mark.parametrize("blocks,complaint", [
    ({"64": [[OPEN, config(block_k=128)]]}, "1x64 up to M=4611686018427387904: tile K 128 does not divide"),
    ({"128": [[OPEN, config(split_k=3)]]}, "split K 3 is not a power of two"),
    ({"128": [[16, config()]]}, "the last one open"),
    ({"128": [[OPEN, config()], [16, config()]]}, "increasing order"),
    ({"128": [[OPEN, {"block_m": 16}]]}, "unreadable"),
])
def test_a_table_that_would_be_wrong_is_refused_by_file_and_entry(tmp_path, monkeypatch, blocks, complaint):
    path = tmp_path / "bad.json"
    write(path, blocks)
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(path))
    with pytest.raises(BrecciaConfigError, match="block FP8 tile configs") as refused:
        tiles.choose_config(1, 128 if "128" in blocks else 64, False, None)
    assert str(path) in str(refused.value) and complaint in str(refused.value)


def test_a_missing_file_named_by_the_variable_is_an_error_not_a_silent_default(tmp_path, monkeypatch):
    monkeypatch.setenv(names.ENV_BLOCK_FP8_CONFIGS, str(tmp_path / "absent.json"))
    with pytest.raises(BrecciaConfigError, match="absent.json: unreadable"):
        tiles.choose_config(1, 128, False, None)
