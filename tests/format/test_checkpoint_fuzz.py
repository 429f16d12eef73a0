"""Fuzzing the checkpoint reader with hostile safetensors files (hypothesis).

Every generated file is a breccia checkpoint with something wrong or odd in it: a header
length that lies, a header that is not JSON, offsets past the end of the file or
overlapping, dtypes that do not exist, shapes that disagree with their bytes or claim
petabytes, recipe JSON that is truncated, mistyped or out of range. Opening it must end in
a checkpoint or in ``BrecciaCheckpointError`` (one message naming the file or tensor),
quickly and without allocating what a header claims: nothing else may escape. Only
safetensors is ever read, so no case can execute code.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from breccia_sglang.format.reader import BrecciaCheckpoint
from breccia_sglang.errors import BrecciaCheckpointError

import breccia

from breccia.bridges._huggingface import _config_to_json  # what breccia itself writes

# What breccia itself writes for an FP8 1 x 32 block tensor.
GOOD_CONFIG = json.loads(_config_to_json(breccia.Float8BlockScaling(block_k=32), breccia.PerBlockK(32)))


def good_checkpoint(directory: Path) -> Path:
    """A small valid breccia FP8 checkpoint (one linear layer), written with safetensors."""
    tensors = {
        "model.layers.0.mlp.up_proj.weight.data": torch.zeros(16, 64, dtype=torch.uint8),
        "model.layers.0.mlp.up_proj.weight.scale": torch.ones(16, 2),
        "model.norm.weight": torch.ones(64),
    }
    path = directory / "model.safetensors"
    save_file(tensors, str(path), metadata={"model.layers.0.mlp.up_proj.weight.config": json.dumps(GOOD_CONFIG)})
    return path


def split(raw: bytes) -> tuple[dict, bytes]:
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def join(header: dict | bytes, body: bytes, claimed_size: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if claimed_size is None else claimed_size) + text + body


# --- what hypothesis varies ----------------------------------------------------------------

TENSORS = ["model.layers.0.mlp.up_proj.weight.data", "model.layers.0.mlp.up_proj.weight.scale", "model.norm.weight"]
ODD_INTS = st.one_of(st.integers(-3, 200), st.sampled_from([0, 2**31, 2**40, 2**62, 2**64 - 1]))
ODD_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), ODD_INTS, st.floats(allow_nan=True), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)


@st.composite
def tensor_mutation(draw):
    name = draw(st.sampled_from(TENSORS))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "extra"]))
    if field == "dtype":
        value = draw(st.one_of(st.sampled_from(["F32", "F16", "BF16", "U8", "I8", "F8_E4M3", "F8_E5M2", "I64",
                                                "BOOL", "F4", "??", ""]), ODD_JSON))
    elif field == "shape":
        value = draw(st.one_of(st.lists(ODD_INTS, max_size=4), ODD_JSON))
    elif field == "data_offsets":
        value = draw(st.one_of(st.lists(ODD_INTS, min_size=2, max_size=2), ODD_JSON))
    else:
        value = None
    return ("tensor", name, field, value)


@st.composite
def config_mutation(draw):
    kind = draw(st.sampled_from(["text", "json", "recipe_field", "layout_field", "recipe_name"]))
    if kind == "text":
        value = draw(st.text(max_size=40))
    elif kind == "json":
        value = draw(ODD_JSON)
    elif kind == "recipe_field":
        value = (draw(st.sampled_from(["block_k", "fp8_format", "nonsense"])), draw(ODD_JSON))
    elif kind == "layout_field":
        value = (draw(st.sampled_from(["block_size", "nonsense"])), draw(ODD_JSON))
    else:
        value = draw(st.sampled_from(["current", "delayed", "mxfp8", "nvfp4", "int4", "Nope"]))
    return ("config", kind, value)


@st.composite
def framing_mutation(draw):
    kind = draw(st.sampled_from(["claimed_size", "truncate", "append", "garbage_header"]))
    value = {"claimed_size": draw(ODD_INTS), "truncate": draw(st.integers(0, 400)),
             "append": draw(st.binary(max_size=64)), "garbage_header": draw(st.binary(max_size=64))}[kind]
    return ("framing", kind, value)


def apply(raw: bytes, mutations) -> bytes:
    header, body = split(raw)
    claimed, garbage, truncate, append = None, None, None, b""
    for mutation in mutations:
        if mutation[0] == "tensor":
            _, name, field, value = mutation
            if field == "drop":
                header.pop(name, None)
            elif field == "extra":
                header[name + "_copy"] = dict(header.get(name, {}))
            elif name in header:
                header[name][field] = value
        elif mutation[0] == "config":
            _, kind, value = mutation
            config = json.loads(json.dumps(GOOD_CONFIG))
            if kind == "text":
                text = value
            elif kind == "json":
                text = json.dumps(value)
            else:
                if kind == "recipe_field":
                    config["recipe"]["fields"][value[0]] = value[1]
                elif kind == "layout_field":
                    config["layout"]["fields"][value[0]] = value[1]
                else:
                    config["recipe"]["name"] = value
                text = json.dumps(config)
            header["__metadata__"]["model.layers.0.mlp.up_proj.weight.config"] = text
        else:
            _, kind, value = mutation
            if kind == "claimed_size":
                claimed = value
            elif kind == "truncate":
                truncate = value
            elif kind == "append":
                append = value
            else:
                garbage = value
    # The length prefix is a u64: out-of-range draws are taken modulo 2^64 (-1 -> 2^64 - 1).
    out = join(garbage if garbage is not None else header, body + append,
               None if claimed is None else claimed % 2**64)
    return out[:truncate] if truncate is not None else out


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory) -> bytes:
    return good_checkpoint(tmp_path_factory.mktemp("good")).read_bytes()


def test_the_unmutated_checkpoint_opens(tmp_path, good_bytes):
    (tmp_path / "model.safetensors").write_bytes(good_bytes)
    checkpoint = BrecciaCheckpoint.open(tmp_path)
    assert list(checkpoint.entries) == ["model.layers.0.mlp.up_proj.weight"]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.one_of(tensor_mutation(), config_mutation(), framing_mutation()), min_size=1, max_size=4))
def test_hostile_files_end_in_a_checkpoint_or_one_named_error(tmp_path, good_bytes, mutations):
    path = tmp_path / "model.safetensors"
    path.write_bytes(apply(good_bytes, mutations))
    try:
        checkpoint = BrecciaCheckpoint.open(path.parent)
    except BrecciaCheckpointError as exc:
        message = str(exc)
        assert "\n" not in message.strip()
        assert "model.safetensors" in message or "up_proj" in message or str(tmp_path) in message
        return
    # Opened: then what it describes must agree with the file (no lying header got through).
    size = path.stat().st_size
    for entry in checkpoint.entries.values():
        for part in (entry.data, entry.scale):
            assert 0 <= part.nbytes <= size
