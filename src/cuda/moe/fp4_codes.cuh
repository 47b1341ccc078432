/* fp4_codes.cuh — E2M1 codes as bf16 with three integer operations a pair, and their block factors: what the FP4
 * decode kernel (grouped_gemm_fp4_decode.cu) and the FP4 wgmma tile (grouped_gemm_fp4_rs.cu) share. A code enters
 * the tensor core as its value times 2^-126 (its bits placed into a bf16, the subnormal code 0.5 included), times
 * the factor s * 2^118 of its block scale s (exact: E8M0 scales up to 2^9 and every E4M3 scale times 2^118 are
 * normal bf16), so the weight is s * value * 2^-8 and the epilogue multiplies by kFp4Undo = 2^8 (exact). E8M0 scales
 * above 2^9 take a multiply by 2^126 first and the factor fp4_factor_big. Device code, sm_80 and later. */
#ifndef MOE_CUDA_MOE_FP4_CODES_CUH
#define MOE_CUDA_MOE_FP4_CODES_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "cuda/moe/fp4_scale_words.h" /* the wgmma tile's scale words: fp4_mx_wide4, fp4_nv_odd4, fp4_factor_plain */

constexpr float kFp4Undo = 256.0f; /* the weights enter the tensor core times 2^-8 */
constexpr uint32_t kFp4Big = 0x7E807E80u; /* bf16 pair (2^126, 2^126) */

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
    const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a),
                                     *reinterpret_cast<const __nv_bfloat162 *>(&b));
    return *reinterpret_cast<const uint32_t *>(&r);
}

/* Codes (3 - t, 7 - t) of word w (code i in bits 4i .. 4i + 3) as a bf16 pair (the first in the low half), each its
 * value times 2^-126; w8 = w >> 8 holds codes 3 and 7 (t = 0) at 1 and 5, codes 2 and 6 (t = 1) at 0 and 4. For
 * codes n and n + 4 (n = 0, 1 of the word, or of w8 for n = 2, 3): c = the word masked to those two codes, times
 * 2^(12 - 4n) + 2^(6 - 4n) (two shifted copies of c whose bits do not overlap, so the product is their OR), masked to
 * 0x81C081C0, keeps the first copy's sign bits (15, 31) and the second's exponent and mantissa bits (6-8, 22-24).
 * scripts/check_fp4_pair.c checks it on every word. */
__device__ __forceinline__ uint32_t fp4_pair(uint32_t w, uint32_t w8, int t) {
    const uint32_t c = (t < 2 ? w8 : w) & ((t & 1) ? 0x000F000Fu : 0x00F000F0u); /* codes n, n + 4: n = 1 - (t & 1) */
    return (c * ((t & 1) ? 4160u : 260u)) & 0x81C081C0u;                        /* 2^12 + 2^6, 2^8 + 2^2 */
}

/* The factor pair (f, f), f = s * 2^118, of one raw block scale: MXFP4 (kMx) an E8M0 code e, 2^(e - 9) up to
 * e = 136, above which *big is set (the factor is then fp4_factor_big's); NVFP4 an E4M3 code, exact in bf16. */
template <bool kMx> __device__ __forceinline__ uint32_t fp4_factor(uint32_t raw, bool *big) {
    if (kMx) {
        *big = raw > 136;
        return (((raw > 136 ? 136 : raw) + 118) << 7) * 0x10001u;
    }
    *big = false;
    const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)raw, __NV_E4M3);
    const __nv_bfloat16 b = __float2bfloat16_rn(__half2float(__half(h)) * 0x1p118f);
    const uint32_t u = *reinterpret_cast<const uint16_t *>(&b);
    return u * 0x10001u;
}

/* The factor of an E8M0 code e > 136, for codes already times 2^126: 2^(e - 135), or NaN for 0xFF. */
__device__ __forceinline__ uint32_t fp4_factor_big(uint32_t word) {
    const uint32_t e = word & 0xFF, b = e == 0xFF ? 0x7FC0u : (e - 8) << 7;
    return b * 0x10001u;
}

#endif /* MOE_CUDA_MOE_FP4_CODES_CUH */
