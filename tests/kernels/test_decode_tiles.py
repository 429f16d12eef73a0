"""The decode kernel's tile configs (``kernels/attention/decode_tiles.py``): every candidate that
``bench_decode.py --tune`` may ship gives the fp32 reference's attention, a tuned file is read for
its head_dim and reaches the launch, and a bad file or config is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from breccia_sglang import names
from breccia_sglang.errors import BrecciaConfigError
from breccia_sglang.kernels import launch
from breccia_sglang.kernels.attention import decode, decode_tiles, paged_decode_attention
from breccia_sglang.kernels.attention.decode_tiles import CANDIDATES, DEFAULT, FP32, DecodeTiles
from breccia_sglang.kernels.attention.reference import paged_decode_attention_reference

from .pool import KV_HEADS, PagedPool, assert_matches_reference, on_device

TUNED = DecodeTiles(16, 2, 2, max_registers=96)


@pytest.fixture(autouse=True)
def fresh_lookups():
    """The lookups are cached per (variable, GPU model) for the serving path; tests change both."""
    decode_tiles._tuned.cache_clear()
    decode_tiles.load_tiles.cache_clear()
    yield
    decode_tiles._tuned.cache_clear()
    decode_tiles.load_tiles.cache_clear()


def tuned_file(path, tiles: dict) -> str:
    path.write_text(json.dumps({"device": "Some GPU", "rows": [], "tiles": tiles}))
    return str(path)


@pytest.mark.parametrize("tiles", CANDIDATES, ids=lambda t: t.name)
def test_every_candidate_matches_the_fp32_reference(tiles, monkeypatch):
    # Contexts shorter than one tile, one past a 16-key tile and past two 128-key tiles; a GQA
    # group of 3 in the GPU's 16-row head tiles; fp16 queries (the interpreter's bf16 dot is
    # broken), 3 splits that cut the contexts off tile boundaries. assert_matches_reference's
    # fp16 tolerance: probabilities and outputs round to fp16 (2^-11) in every candidate.
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    gen = torch.Generator().manual_seed(tiles.block_n + tiles.num_warps)
    pool = PagedPool([5, 17, 259], 16, 64, gen)
    context = pool.contexts()
    q = on_device(torch.randn(3, KV_HEADS * 3, 64, generator=gen).to(torch.float16))
    splits = on_device(torch.tensor([1, 3, 3], dtype=torch.int32))
    out = paged_decode_attention(q, context, num_kv_splits=splits, max_kv_splits=3, tiles=tiles)
    assert_matches_reference(out, paged_decode_attention_reference(q, context), torch.float16)


def test_a_tuned_file_serves_its_head_dim_and_reaches_the_launch(tmp_path, monkeypatch):
    monkeypatch.setenv(names.ENV_DECODE_TILES, tuned_file(tmp_path / "decode.json", {"64": vars(TUNED)}))
    monkeypatch.setattr(launch, "FORCE_GPU_TILES", True)
    q = torch.zeros(1, 4, 64, dtype=torch.bfloat16)
    assert decode_tiles.decode_tiles(q, 64) == TUNED
    assert decode_tiles.decode_tiles(q, 128) == DEFAULT  # a head_dim the file does not tune
    assert decode_tiles.decode_tiles(q.float(), 64) == FP32  # fp32 keeps its FMA tiles

    launched = []
    real = decode._decode_split_kernel

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                launched.append(kwargs)
                return real[grid](*args, **kwargs)
            return run

    monkeypatch.setattr(decode, "_decode_split_kernel", Spy())
    gen = torch.Generator().manual_seed(3)
    pool = PagedPool([40, 7], 16, 64, gen)
    q = on_device(torch.randn(2, KV_HEADS * 2, 64, generator=gen).to(torch.float16))
    out = paged_decode_attention(q, pool.contexts())
    # The register cap is a launch option too (the interpreter ignores it; ptxas takes it on a GPU).
    assert [(k["BLOCK_N"], k["num_warps"], k["num_stages"], k.get("maxnreg")) for k in launched] == [(16, 2, 2, 96)]
    assert_matches_reference(out, paged_decode_attention_reference(q, pool.contexts()), torch.float16)


def test_a_gpu_models_shipped_file_is_found_by_its_name(tmp_path, monkeypatch):
    monkeypatch.delenv(names.ENV_DECODE_TILES, raising=False)
    monkeypatch.setattr(decode_tiles, "TUNED_DIR", tmp_path)
    tuned_file(decode_tiles.tuned_file("NVIDIA Some GPU"), {"128": vars(TUNED)})
    assert (tmp_path / "decode_NVIDIA_Some_GPU.json").exists()
    assert decode_tiles._tuned(None, "NVIDIA Some GPU") == {128: TUNED}
    assert decode_tiles._tuned(None, "NVIDIA Other GPU") == {}


def test_the_tiles_entry_reads_back_as_written(tmp_path):
    found = {64: TUNED, 128: DecodeTiles(32, 4, 2)}
    path = tmp_path / "decode.json"
    path.write_text(json.dumps({"tiles": decode_tiles.tiles_entry(found)}))
    assert decode_tiles.load_tiles(path) == found


def test_a_file_without_a_register_cap_launches_uncapped(tmp_path):
    path = tmp_path / "decode.json"  # as bench_decode --tune wrote them before the cap existed
    path.write_text(json.dumps({"tiles": {"128": {"block_n": 32, "num_warps": 4, "num_stages": 2}}}))
    tiles = decode_tiles.load_tiles(path)[128]
    assert tiles == DecodeTiles(32, 4, 2) and tiles.name == "32x4w2s"
    assert tiles.launch_options == {"num_warps": 4, "num_stages": 2}  # no maxnreg: ptxas decides
    assert TUNED.name == "16x2w2sr96"


@pytest.mark.parametrize("tiles,why", [
    ({"128": {"block_n": 48, "num_warps": 4, "num_stages": 2}}, "head_dim 128: block_n 48"),
    ({"64": {"block_n": 64, "num_warps": 3, "num_stages": 2}}, "head_dim 64: num_warps 3"),
    ({"64": {"block_n": 64, "num_warps": 4, "num_stages": 0}}, "head_dim 64: num_stages 0"),
    ({"64": {"block_n": 64, "num_warps": 4, "num_stages": 3, "max_registers": 100}}, "head_dim 64: max_registers 100"),
    ({"64": {"block_n": 64, "num_warps": 4}}, "unreadable"),
    ({"sixty-four": vars(TUNED)}, "unreadable"),
])
def test_a_bad_tuned_file_is_refused_with_the_file_named(tiles, why, tmp_path):
    path = tuned_file(tmp_path / "decode_Some_GPU.json", tiles)
    with pytest.raises(BrecciaConfigError, match=why) as raised:
        decode_tiles.load_tiles(tmp_path / "decode_Some_GPU.json")
    assert path in str(raised.value)


def test_a_file_without_tiles_is_refused(tmp_path):
    path = tmp_path / "decode.json"
    path.write_text(json.dumps({"rows": []}))  # e.g. a bench_decode report run without --tune
    with pytest.raises(BrecciaConfigError, match="unreadable.*tiles"):
        decode_tiles.load_tiles(path)


def test_the_launcher_refuses_tiles_it_cannot_take():
    pool = PagedPool([9], 16, 64, torch.Generator().manual_seed(0))
    q = on_device(torch.zeros(1, KV_HEADS, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="tiles 24x4w2s: block_n 24"):
        paged_decode_attention(q, pool.contexts(), tiles=DecodeTiles(24, 4, 2))
