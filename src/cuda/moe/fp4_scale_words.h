/* fp4_scale_words.h — integer work on a word of four raw FP4 block scales (byte b the b-th), for the FP4 wgmma tile
 * (grouped_gemm_fp4_rs.cu, through fp4_codes.cuh): which words need the exact factor path, and the two-operation
 * factor of the others. C11 and CUDA, so that scripts/check_fp4_factor.c checks these very functions on every
 * 32-bit word against the CPU's E8M0 and E4M3 decoding. */
#ifndef MOE_CUDA_MOE_FP4_SCALE_WORDS_H
#define MOE_CUDA_MOE_FP4_SCALE_WORDS_H

#include <stdint.h>

#include "core/internal.h" /* MOE_HD */

/* Nonzero when some MXFP4 (E8M0) code is past 136, whose factor is fp4_factor_big's; for NVFP4 (E4M3), when some
 * code is not a positive normal number (0x08 .. 0x7E: zero, subnormals, negatives and NaN take fp4_factor).
 * Bytewise sums: a carry out of a byte only comes from a byte that is flagged itself. */
static inline MOE_HD uint32_t fp4_mx_wide4(uint32_t w) {
    return w & ((w & 0x7F7F7F7Fu) + 0x77777777u) & 0x80808080u; /* bit 7 set, and bits 0-6 at least 9 */
}
static inline MOE_HD uint32_t fp4_nv_odd4(uint32_t w) {
    return (~(w + 0x78787878u) | (w + 0x01010101u) | w) & 0x80808080u; /* under 8, 0x7F, or bit 7 set */
}

/* __byte_perm(a, b, sel) for selectors 0-7 (no sign replication) */
static inline MOE_HD uint32_t fp4_byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
    return __byte_perm(a, b, sel);
#else
    const uint64_t x = (uint64_t)b << 32 | a;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) r |= (uint32_t)((x >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
#endif
}

/* fp4_factor of byte b of w where fp4_mx_wide4 (mx) or fp4_nv_odd4 is zero: the byte e twice, as the exponent field
 * e + 118 (E8M0: 2^(e - 127) * 2^118), or for E4M3 (exponent E, 3 mantissa bits, bias 7) its 7 bits shifted into
 * place under exponent field E + 238: two integer operations. */
static inline MOE_HD uint32_t fp4_factor_plain(int mx, uint32_t w, int b) {
    const uint32_t x = fp4_byte_perm(w, 0, 0x4040u | 0x0101u * (uint32_t)b); /* (e, e) in the halves' low bytes */
    return mx ? x * 0x80u + 0x3B003B00u : x * 0x10u + 0x77007700u;
}

#endif
