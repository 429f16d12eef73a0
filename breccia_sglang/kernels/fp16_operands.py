"""fp16 / bf16 tiles as exact fp16 dot operands, in Triton.

FP8 E4M3 codes become fp16 in one hardware conversion per pair on sm_89+ (bf16 takes three
instructions per code there), and every E4M3 value is exact in fp16. So the kernels that read
FP8 in place (the W8A16 GEMM, paged attention) put the codes into fp16 dots and meet them with
their other operand in fp16 too. That operand is exact in fp16 once each row is divided by a
power of two, its unit: 1 unless the row holds 2^15 or more, which fp16 cannot (bf16 rows
only), then the least that brings it below. The dot's fp32 result is multiplied back by the
units. Only values under fp16's normal range (2^-14 * unit) lose bits, as fp16 subnormals.
"""

import triton
import triton.language as tl


@triton.jit
def fp16_operand(x):
    """A 2-D fp16 / bf16 tile as (x / unit in fp16, unit per row in fp32)."""
    if x.dtype == tl.float16:
        return x, tl.full((x.shape[0],), 1.0, tl.float32)
    else:
        wide = x.to(tl.float32)
        exponent = (tl.max(tl.abs(wide), axis=1).to(tl.int32, bitcast=True) >> 23) & 0xFF  # biased: 2^15 is 142
        big = exponent >= 142
        unit = tl.where(big, ((exponent - 14) << 23).to(tl.float32, bitcast=True), 1.0)
        inverse = tl.where(big, ((268 - exponent) << 23).to(tl.float32, bitcast=True), 1.0)  # exact, as unit is
        return (wide * inverse[:, None]).to(tl.float16), unit
