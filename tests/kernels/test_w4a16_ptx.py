"""The inline PTX that decodes weight codes in the weight-only GEMMs on NVIDIA GPUs (INT4 / UINT4
nibbles, ``four_bit.nibbles_ptx``; FP4 E2M1 times E4M3 scales, ``four_bit.e2m1_ptx``; FP8 E4M3
codes to fp16 on sm_80-86, ``fp8_codec.e4m3_fp16_ptx``), run instruction by instruction here,
on every byte in every position of its 32-bit input.

The interpreter cannot run assembly (the kernel takes its elementwise decode there, which the
other W4A16 tests check), so without this the PTX would be checked only by ptxas
(``benchmarks/compile_kernels.py``) and by a GPU. The emulator knows just the instructions the
decode uses: a new one makes these tests fail until it is taught here too.
"""

from __future__ import annotations

import re

import pytest
import torch

from breccia_sglang.kernels.attention.fp8_codec import e4m3_fp16_ptx
from breccia_sglang.kernels.gemm.four_bit import E2M1_PRODUCT_SHIFT, e2m1_operand_factor, e2m1_ptx, nibbles_ptx
from breccia_sglang.weights.codes import decode_e2m1, decode_fp8

MASK = 0xFFFFFFFF


def half_to_float(bits: int, bf16: bool) -> float:
    signed = bits - 0x10000 if bits >= 0x8000 else bits  # the same 16 bits, as int16 holds them
    return torch.tensor([signed], dtype=torch.int16).view(torch.bfloat16 if bf16 else torch.float16).item()


def float_to_half(value: float, bf16: bool) -> int:
    # float64 -> 16 bits in one rounding: torch rounds float64 -> bf16 / fp16 to nearest even
    return torch.tensor([value], dtype=torch.float64).to(torch.bfloat16 if bf16 else torch.float16).view(
        torch.int16).item() & 0xFFFF


def lop3(a: int, b: int, c: int, lut: int) -> int:
    """Bit i of the result is bit (a_i << 2 | b_i << 1 | c_i) of ``lut`` (PTX ISA, lop3)."""
    out = 0
    for i in range(32):
        index = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1)
        out |= ((lut >> index) & 1) << i
    return out


def prmt(a: int, b: int, selector: int) -> int:
    """Default mode: byte i of the result is byte (selector nibble i & 7) of {b, a}; with bit 3
    of the nibble set, that byte's sign replicated instead."""
    pool = (a | b << 32).to_bytes(8, "little")
    out = 0
    for i in range(4):
        nibble = (selector >> (4 * i)) & 0xF
        byte = pool[nibble & 7]
        if nibble & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def fma_x2(a: int, b: int, c: int, bf16: bool) -> int:
    out = 0
    for shift in (0, 16):
        x, y, z = (half_to_float((v >> shift) & 0xFFFF, bf16) for v in (a, b, c))
        # The inputs have 8 / 11 significant bits (subnormals fewer): their product is exact in
        # float64, and so is the sum with the addends the decode uses (-0, or -M within 2^12
        # of the product), leaving the one rounding fma.rn makes. Subnormal inputs and results
        # are kept, as PTX's bf16x2 / f16x2 fma (without .ftz) keeps them.
        out |= float_to_half(x * y + z, bf16) << shift
    return out


def run_ptx(text: str, inputs: dict[str, int]) -> dict[str, int]:
    """Executes the decode's PTX on 32-bit operands: ``inputs`` names $-operands, e.g. {"$4": w}."""
    regs = dict(inputs)

    def value(operand: str) -> int:
        operand = operand.strip()
        if operand in regs:
            return regs[operand]
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", operand):
            return int(operand, 0) & MASK
        raise KeyError(f"operand {operand!r} read before it is written")

    body = text.strip()
    assert body.startswith("{") and body.endswith("}"), body
    for line in filter(None, (line.strip() for line in body[1:-1].split(";"))):
        op, _, rest = line.partition(" ")
        args = [a.strip() for a in rest.split(",")]
        if op == ".reg":
            continue
        dst = args[0]
        if op == "mov.b32":
            regs[dst] = value(args[1])
        elif op == "xor.b32":
            regs[dst] = value(args[1]) ^ value(args[2])
        elif op == "and.b32":
            regs[dst] = value(args[1]) & value(args[2])
        elif op == "or.b32":
            regs[dst] = value(args[1]) | value(args[2])
        elif op in ("shr.u32", "shr.b32"):  # logical: zeros come in
            regs[dst] = value(args[1]) >> value(args[2])
        elif op == "mul.lo.u32":  # the low 32 bits of the product
            regs[dst] = (value(args[1]) * value(args[2])) & MASK
        elif op == "shl.b32":
            regs[dst] = (value(args[1]) << value(args[2])) & MASK
        elif op == "prmt.b32":
            regs[dst] = prmt(value(args[1]), value(args[2]), value(args[3]))
        elif op == "lop3.b32":
            regs[dst] = lop3(value(args[1]), value(args[2]), value(args[3]), value(args[4]))
        elif op in ("fma.rn.bf16x2", "fma.rn.f16x2"):
            regs[dst] = fma_x2(value(args[1]), value(args[2]), value(args[3]), bf16=op.endswith("bf16x2"))
        else:
            raise NotImplementedError(f"the PTX emulator has no {op!r}: teach it before relying on the PTX")
    return regs


def nibble_value(nibble: int, signed: bool) -> int:
    return nibble - 16 if signed and nibble >= 8 else nibble


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16"])
@pytest.mark.parametrize("signed", [True, False], ids=["int4", "uint4"])
def test_nibbles_ptx_decodes_every_byte_in_every_position(signed, bf16):
    text = nibbles_ptx(signed=signed, bf16=bf16)
    for first in range(256):
        # Bytes first .. first + 3: every byte value passes through each of the four positions.
        codes = [(first + i) % 256 for i in range(4)]
        regs = run_ptx(text, {"$4": int.from_bytes(bytes(codes), "little")})
        # $0 / $1: low nibbles of elements 0, 1 / 2, 3 (element 0 in the low half); $2 / $3 high.
        halves = {}
        for reg, (low_element, high_element) in {"$0": (0, 1), "$1": (2, 3), "$2": (0, 1), "$3": (2, 3)}.items():
            for element, shift in ((low_element, 0), (high_element, 16)):
                halves[reg, element] = half_to_float((regs[reg] >> shift) & 0xFFFF, bf16)
        for element, code in enumerate(codes):
            low = halves["$0" if element < 2 else "$1", element]
            high = halves["$2" if element < 2 else "$3", element]
            assert (low, high) == (nibble_value(code & 15, signed), nibble_value(code >> 4, signed)), (codes, element)


# E4M3 scales: the subnormals (2^-9 ..), 1, values with every mantissa, and the largest, 448.
E4M3_SCALE_CODES = [0x01, 0x07, 0x08, 0x38, 0x3B, 0x55, 0x6F, 0x7E]


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16"])
def test_e2m1_ptx_decodes_and_scales_every_byte_in_every_position(bf16):
    text = e2m1_ptx(bf16=bf16)
    dtype = torch.bfloat16 if bf16 else torch.float16
    scales = torch.tensor(E4M3_SCALE_CODES, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    # the operands e2m1_scale_operand makes: the scale times 2^(126 - 8) or 2^(14 - 8), exact
    operands = (scales * e2m1_operand_factor(bf16=bf16)).to(dtype)
    assert torch.equal(operands.float(), scales * e2m1_operand_factor(bf16=bf16))
    operand_bits = [b & 0xFFFF for b in operands.view(torch.int16).tolist()]
    values = decode_e2m1(torch.arange(16, dtype=torch.uint8)).tolist()
    for first in range(256):
        codes = [(first + i) % 256 for i in range(4)]
        # a different scale for each element, so one read from the wrong element shows
        which = [(first + 3 * i) % len(operand_bits) for i in range(4)]
        s = [operand_bits[w] for w in which]
        regs = run_ptx(text, {"$4": int.from_bytes(bytes(codes), "little"),
                              "$5": s[0] | s[1] << 16, "$6": s[2] | s[3] << 16})
        for element, code in enumerate(codes):
            reg_low, reg_high = ("$0", "$2") if element < 2 else ("$1", "$3")
            shift = 16 * (element % 2)
            scale = scales[which[element]].item()
            got = [half_to_float((regs[reg] >> shift) & 0xFFFF, bf16) for reg in (reg_low, reg_high)]
            # exact: 6 significant bits at most, 2^-18 .. 10.5 after the 2^-8, in both formats
            want = [values[c] * scale / 2**E2M1_PRODUCT_SHIFT for c in (code & 15, code >> 4)]
            assert got == want, (codes, element, got, want)


def test_e4m3_fp16_ptx_moves_every_code_in_every_position_into_fp16():
    # Each fp16 reads as the code's value * 2^-8, exactly (subnormals and -0 included: the bits
    # are compared); the NaN codes 0x7F / 0xFF, which breccia never writes, read as +-480.
    text = e4m3_fp16_ptx()
    values = decode_fp8(torch.arange(256, dtype=torch.uint8), "E4M3").double()
    values[[0x7F, 0xFF]] = torch.tensor([480.0, -480.0], dtype=torch.float64)
    for first in range(256):
        codes = [(first + i) % 256 for i in range(4)]
        regs = run_ptx(text, {"$2": int.from_bytes(bytes(codes), "little")})
        for element, code in enumerate(codes):
            got = (regs["$0" if element < 2 else "$1"] >> (16 * (element % 2))) & 0xFFFF
            assert got == float_to_half(values[code].item() / 256, bf16=False), (codes, element, hex(got))


def test_emulator_refuses_what_it_does_not_know():
    with pytest.raises(NotImplementedError, match="cvt.rn.f32.f16"):
        run_ptx("{ cvt.rn.f32.f16 $0, $1; }", {"$1": 0})


def test_emulator_primitives_follow_the_ptx_manual():
    # mul.lo keeps the low 32 bits; (a | b) & c is LUT 0xa8
    assert run_ptx("{ mul.lo.u32 $0, $1, 0x1040; }", {"$1": 0x000F000F})["$0"] == 0x03C003C0 | 0xF000F000
    assert run_ptx("{ mul.lo.u32 $0, $1, 0x10; }", {"$1": 0xF0000001})["$0"] == 0x10
    assert lop3(0x0F0, 0xF00, 0x1F8, 0xA8) == 0x1F0
    # Marlin's LUT 0xea is (a & b) | c
    assert lop3(0x12345678, 0x000F000F, 0x64006400, 0xEA) == (0x12345678 & 0x000F000F) | 0x64006400
    # prmt 0x4140 spreads bytes 0 and 1 of a into the low bytes of the halves; b's bytes are 4-7
    assert prmt(0xDDCCBBAA, 0, 0x4140) == 0x00BB00AA
    assert prmt(0xDDCCBBAA, 0x44332211, 0x7654) == 0x44332211
    assert prmt(0x00000080, 0, 0x0008) == 0x808080FF  # byte 0's sign replicated, then byte 0 three times
    # 128 + 5 in bf16 minus 136 is -3; 1024 + 15 in fp16 minus 1024 is 15
    assert half_to_float(fma_x2(0x43054305, 0x3F803F80, 0xC308C308, bf16=True) & 0xFFFF, True) == -3.0
    assert half_to_float(fma_x2(0x640F640F, 0x3C003C00, 0xE400E400, bf16=False) >> 16, False) == 15.0
