"""breccia's code formats, decoded to fp32 in torch: the values breccia's lookup tables give.

Every table here is checked against breccia's own for all codes (``tests/weights``).
"""

from __future__ import annotations

import torch

FP8_DTYPES = {"E4M3": torch.float8_e4m3fn, "E5M2": torch.float8_e5m2}

# FP4 E2M1, indexed by the low nibble: sign bit 3, then 2 exponent and 1 mantissa bit.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def decode_fp8(codes: torch.Tensor, fp8_format: str = "E4M3") -> torch.Tensor:
    """FP8 codes (uint8 bytes or float8 values) -> fp32. torch's conversion is exact."""
    return codes.view(FP8_DTYPES[fp8_format]).to(torch.float32)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """FP4 E2M1 codes, one per byte (low nibble) -> fp32."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    return table[(codes & 0x0F).to(torch.int32)]


def decode_e8m0(exponents: torch.Tensor) -> torch.Tensor:
    """E8M0 scale bytes -> fp32 2^(e - 127), exactly: the bits are the exponent field itself,
    except e = 0 (2^-127, an fp32 subnormal: mantissa bit 22). e = 255 gives inf, as breccia's
    ``2.0 ** 128`` does in fp32."""
    e = exponents.to(torch.int32)
    bits = torch.where(e == 0, torch.full_like(e, 1 << 22), e << 23)
    return bits.view(torch.float32)


def decode_int4(codes: torch.Tensor, signed: bool) -> torch.Tensor:
    """INT4 codes, one per byte (low nibble) -> fp32: two's complement when ``signed``."""
    low = (codes & 0x0F).to(torch.int16)
    if signed:
        low = low - ((low >> 3) << 4)  # bit 3 set: -16
    return low.to(torch.float32)


# E4M3 codes into the bits of a wider float in place: sign to the top bit, exponent and mantissa
# just below it, so the bits read as the code's value times 2^-120 (the gap between E4M3's and
# the wider type's exponent bias), which one exact multiply removes. E4M3 subnormals land on the
# wider type's subnormals, exactly. Every E4M3 value is exact in bf16 and fp32, whose exponent
# range also holds any matmul of them. (integer type, shift left, arithmetic shift right, mask)
_E4M3_INTO = {
    torch.bfloat16: (torch.int16, 8, 4, 0x87FF),
    torch.float32: (torch.int32, 24, 4, 0x87FFFFFF),
}
DECODES_INTO = tuple(_E4M3_INTO)


def decode_e4m3_into(codes: torch.Tensor, dtype: torch.dtype, workspace: torch.Tensor | None = None) -> torch.Tensor:
    """E4M3 codes -> their exact values in ``dtype`` (bf16 or fp32), by integer bit moves:
    a few in-place passes at memory speed, where torch's FP8 conversion runs per element on a CPU.
    The NaN codes (0x7F, 0xFF) do not come out NaN: callers check a weight for them once.
    ``workspace``: reuse this buffer (of ``dtype``'s integer width, at least ``codes.numel()``)."""
    int_type, left, right, mask = _E4M3_INTO[dtype]
    if workspace is None:
        bits = codes.view(torch.uint8).to(int_type)
    else:
        bits = workspace.view(int_type)[: codes.numel()].view(codes.shape)
        bits.copy_(codes.view(torch.uint8))
    bits.bitwise_left_shift_(left).bitwise_right_shift_(right).bitwise_and_(mask)
    return bits.view(dtype).mul_(2.0**120)
