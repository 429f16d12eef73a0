"""FP8 E4M3 encode/decode inside Triton kernels.

Encoding is done with integer ops, not ``x.to(tl.float8e4nv)``: under ``TRITON_INTERPRET=1``
(how CI runs the kernels) the fp32 -> fp8 cast drops the rounding carry (1.968 becomes
-1.0), and on GPU the cast's saturation and NaN behaviour differ between Triton versions.
Encoding the bits ourselves gives the same bytes everywhere: round to nearest even, saturate
finite overflow and infinities to +-448, NaN -> 0x7F (what torch's ``float32 ->
float8_e4m3fn`` cast does). Decoding uses the hardware conversion where there is one and
bit moves where there is not; both give exactly torch's values. Where kernels may run inline
PTX (``launch.ptx_decode``), the bit moves into fp16 take 1.5 instructions a code
(``E4M3_FP16_PTX``).
"""

import triton
import triton.language as tl

E4M3_MAX = tl.constexpr(448.0)  # jit code may only read globals that are constexpr (compiled Triton)


@triton.jit
def e4m3_encode(v):
    """fp32 tensor -> uint8 E4M3 codes (round to nearest even, saturating)."""
    bits = v.to(tl.int32, bitcast=True)
    sign = ((bits >> 31) & 1) << 7
    mag = bits & 0x7FFFFFFF
    exponent = mag >> 23  # biased fp32 exponent

    # Normal E4M3 range (|v| >= 2^-6): keep 3 of fp32's 23 mantissa bits, rounding to
    # nearest even on the bits; a carry moves into the exponent by itself.
    rounded = (mag + 0x7FFFF + ((mag >> 20) & 1)) & 0x7FF00000
    normal_code = (((rounded >> 23) - 120) << 3) | ((rounded >> 20) & 7)  # E4M3 bias 7 = 127 - 120

    # Subnormal range (|v| < 2^-6): the code is |v| / 2^-9 rounded to nearest even; 8 (a
    # carry to 2^-6) is exactly the code of the smallest normal.
    mantissa = (mag & 0x7FFFFF) | tl.where(exponent > 0, 0x800000, 0)
    # |v| * 2^9 = mantissa >> shift; clamped so lanes that take the normal path shift sanely.
    shift = tl.minimum(tl.maximum(141 - exponent, 1), 31)
    quotient = mantissa >> shift
    remainder = mantissa - (quotient << shift)
    half = (1 << (shift - 1))
    round_up = (remainder > half) | ((remainder == half) & ((quotient & 1) == 1))
    subnormal_code = quotient + round_up.to(tl.int32)

    code = tl.where(exponent < 121, subnormal_code, tl.minimum(normal_code, 0x7E))  # 0x7E = 448
    code = tl.where(mag > 0x7F800000, 0x7F, code)  # NaN
    return (code | sign).to(tl.uint8)


@triton.jit
def e4m3_decode(codes, dtype: tl.constexpr, NATIVE: tl.constexpr, PTX: tl.constexpr = False):
    """uint8 E4M3 codes -> ``dtype`` (exact for fp16 / bf16 / fp32; 0x7F / 0xFF are NaN).

    ``NATIVE``: convert through Triton's float8e4nv type, one hardware conversion on NVIDIA
    sm_89+. Triton refuses that type at compile time on older GPUs (A100, A10, RTX 30xx), so
    there the bits are moved into an fp16 instead: E4M3's sign, 4 exponent and 3 mantissa bits
    land on fp16's sign, low exponent and top mantissa bits, which reads as the value / 2^8
    (fp16's exponent bias is 8 more than E4M3's). E4M3 subnormals become fp16 subnormals, which
    the fp16 -> fp32 conversion reads exactly, so a multiply by 2^8 restores every value.
    ``PTX``: those bit moves by inline PTX (``e4m3_fp16_ptx``: NaN codes then read +-480).
    """
    if NATIVE:
        return codes.to(tl.float8e4nv, bitcast=True).to(dtype)
    else:
        return (e4m3_as_fp16(codes, False, PTX).to(tl.float32) * 256.0).to(dtype)


def e4m3_fp16_ptx() -> str:
    """Inline PTX (sm_80+) that moves 4 E4M3 codes into 4 fp16s reading as their values * 2^-8
    (``e4m3_decode``'s bit moves), 3 instructions a pair of codes.

    ``prmt`` puts each code in the low byte of its half with the code's sign repeated over the
    high byte (selector nibbles 8-11 repeat the sign of bytes 0-3); a shift by 7 then lands the
    magnitude's 7 bits on fp16's low exponent and top mantissa bits and a copy of the sign on
    fp16's sign bit, and one mask clears the rest (the other copy of the sign at bit 14, and
    what the low half's high byte shifted into the high half). E4M3's NaN codes (0x7F / 0xFF,
    which breccia never writes) read as +-480 here, as in Triton's interpreter.

    For ``tl.inline_asm_elementwise(..., pack=4)`` with one fp16 output: $2 holds four code
    bytes, element i in byte i; $0 / $1 get elements 0, 1 / 2, 3, the first in the low half.
    ``tests/kernels/test_w4a16_ptx.py`` runs this text over all 256 codes in every position."""
    lines = ["{", ".reg .b32 pair;"]
    for out, selector in (("$0", "0x9180"), ("$1", "0xb3a2")):  # bytes 0, 1 / 2, 3, each sign after it
        lines += [f"prmt.b32 pair, $2, 0, {selector};", "shl.b32 pair, pair, 7;", f"and.b32 {out}, pair, 0xbf80bf80;"]
    return "\n".join(lines + ["}"])


E4M3_FP16_PTX = tl.constexpr(e4m3_fp16_ptx())


@triton.jit
def e4m3_as_fp16(codes, NATIVE: tl.constexpr, PTX: tl.constexpr = False):
    """uint8 E4M3 codes -> fp16, exactly, in the fewest instructions: the values themselves with
    ``NATIVE`` (one hardware conversion per pair of codes on sm_89+), else the values * 2^-8 (the
    bit moves of ``e4m3_decode`` without its rescale: fp16 holds E4M3's subnormals exactly there
    too), by inline PTX with ``PTX`` (``e4m3_fp16_ptx``: NaN codes then read +-480):
    ``e4m3_fp16_undo`` says which."""
    if NATIVE:
        return codes.to(tl.float8e4nv, bitcast=True).to(tl.float16)
    elif PTX:
        return tl.inline_asm_elementwise(E4M3_FP16_PTX, "=r,=r,r", [codes], dtype=tl.float16, is_pure=True, pack=4)
    else:
        bits = codes.to(tl.uint16)
        magnitude = bits & 0x7F
        as_fp16 = (((bits & 0x80) << 8) | (magnitude << 7)).to(tl.uint16).to(tl.float16, bitcast=True)
        return tl.where(magnitude == 0x7F, float("nan"), as_fp16)


@triton.jit
def e4m3_fp16_undo(NATIVE: tl.constexpr):
    """What ``e4m3_as_fp16``'s values are multiplied by to be the codes' values: 1 or 2^8."""
    if NATIVE:
        return 1.0
    else:
        return 256.0
