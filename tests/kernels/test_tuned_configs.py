"""Weight-only tile configs tuned per GPU model (``kernels/gemm/tuned_configs.py``): a tuned file
is read back as written, a bad one is refused with the file and row named, its rows come before
the built-in table for the M they cover (each kernel and code kind its own table). A launch
with a tuned config is checked against the kernel's reference in test_w8a16.py."""

from __future__ import annotations

import json

import pytest
import torch

from breccia_sglang import names
from breccia_sglang.errors import BrecciaConfigError
from breccia_sglang.kernels import launch
from breccia_sglang.kernels.gemm import tuned_configs, w4a16, w8a16
from breccia_sglang.kernels.gemm.tiling import TileConfig

M1 = TileConfig(16, 64, 256, 1, 4, 3, programs_per_sm=8)
M16 = TileConfig(16, 128, 128, 1, 4, 4, programs_per_sm=2)
NVFP4 = TileConfig(16, 32, 128, 1, 2, 3)


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """A tuned file named by the variable, as a user who tuned their own GPU would set it."""
    path = tmp_path / "weight_only_Some_GPU.json"
    tuned_configs.write_tables(path, {"w8a16": [(1, M1), (16, M16)], "w4a16-nvfp4": [(8, NVFP4)]},
                               device="Some GPU", capability=90)
    monkeypatch.setenv(names.ENV_WEIGHT_ONLY_CONFIGS, str(path))
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)  # the GPU's choice of config, here
    return path


def test_a_tuned_file_reads_back_as_written(tuned):
    assert tuned_configs.load_tables(tuned) == {"w8a16": [(1, M1), (16, M16)], "w4a16-nvfp4": [(8, NVFP4)]}


def test_tuned_rows_come_first_for_the_m_they_cover_each_kernel_its_own(tuned):
    x = torch.zeros(1, 64, dtype=torch.float16)
    assert w8a16.choose_config(1, x) == M1
    assert w8a16.choose_config(2, x) == w8a16.choose_config(16, x) == M16
    assert w8a16.choose_config(17, x) == next(c for top, c in w8a16.TILE_CONFIGS if 17 <= top)  # built-in
    assert w4a16.choose_config(8, x, "e2m1") == NVFP4
    assert w4a16.choose_config(8, x, "int4") == w4a16.TILE_CONFIGS[0][1]  # no INT4 table in the file
    # fp32 activations keep their own config: tuned tiles are tensor-core tiles.
    assert w8a16.choose_config(1, x.float()) == w8a16.FP32_CONFIG


def test_without_a_tuned_file_the_built_in_table_serves(monkeypatch):
    monkeypatch.delenv(names.ENV_WEIGHT_ONLY_CONFIGS, raising=False)
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    assert w8a16.choose_config(1, torch.zeros(1, 64, dtype=torch.float16)) == w8a16.TILE_CONFIGS[0][1]


@pytest.mark.parametrize("tables,why", [
    ({"w8a16": [[1, {"block_m": 16, "block_n": 24, "block_k": 128, "group_m": 1, "num_warps": 4,
                     "num_stages": 3}]]}, "w8a16 up to M=1: tiles of 16x24x128"),
    ({"w8a16": [[1, {"block_m": 16, "block_n": 64, "block_k": 128, "group_m": 1, "num_warps": 3,
                     "num_stages": 3}]]}, "w8a16 up to M=1: 3 warps"),
    ({"w8a16": [[1, {"block_m": 16, "block_n": 64, "block_k": 128, "group_m": 1, "num_warps": 4,
                     "num_stages": 3, "programs_per_sm": 0}]]}, "programs_per_sm 0"),
    ({"w8a16": [[16, M16.__dict__], [1, M1.__dict__]]}, "w8a16 needs rows of increasing M from 1 up, got [16, 1]"),
    ({"w4a16-fp4": [[1, M1.__dict__]]}, "unknown table 'w4a16-fp4'"),
    ({"w8a16": [[1, {"block_m": 16}]]}, "unreadable"),
])
def test_a_bad_tuned_file_is_refused_naming_the_file_and_row(tmp_path, tables, why):
    path = tmp_path / "weight_only_bad.json"
    path.write_text(json.dumps({"tables": tables}))
    with pytest.raises(BrecciaConfigError, match="weight-only tile configs") as raised:
        tuned_configs.load_tables(path)
    assert str(path) in str(raised.value) and why in str(raised.value)


def test_a_missing_file_named_by_the_variable_is_refused_when_a_launch_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv(names.ENV_WEIGHT_ONLY_CONFIGS, str(tmp_path / "nowhere.json"))
    with pytest.raises(BrecciaConfigError, match="nowhere.json: unreadable"):
        tuned_configs.tuned_rows("w8a16", torch.zeros(1, 64))
