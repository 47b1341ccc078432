/* grouped_gemm_rs_decode.cuh — the wgmma decode kernel's layout constants and register-level steps
 * (grouped_gemm_rs_decode_kernel.cuh, which alone includes it): the per-warp ring of each weight storage, the chunk of staged
 * tokens, the E2M1-to-E4M3 conversion and the shared-memory loads it pins. */
#ifndef MOE_CUDA_MOE_GROUPED_GEMM_RS_DECODE_CUH
#define MOE_CUDA_MOE_GROUPED_GEMM_RS_DECODE_CUH

#include <cuda_fp8.h>

#include "cuda/common/sm90.cuh"
#include "cuda/moe/grouped_gemm.cuh"

namespace {

constexpr int kStages = 4;              /* K blocks a warp has in flight, plus the one it reads */
constexpr int kTokenBudget = 32 * 1024; /* token code bytes of a chunk */
constexpr uint32_t kFastScaleMax = 235;   /* the largest E8M0 byte on the fast factors (big_scale) */
constexpr float kExactTokenScale = 0x1p22f; /* beside the exact factors 2^(e - 143): 2^6 x 2^16 */

/* A warpgroup's ring for weights stored as F: a stage holds 4 warps x 16 rows of a block's codes (64 bytes a row for
 * FP4, 128 for FP8), then the scale words (MXFP4: the 2 words a row that hold its block's 4 scales; NVFP4: the 3
 * that hold its 8, in 16 bytes; FP8: 2 words a warp, its 128-row blocks' scales). */
template <int F> struct ring_of {
    static constexpr bool kNv = F == MOE_B_E2M1_E4M3;
    static constexpr bool kFp4 = F == MOE_B_E2M1_E8M0 || kNv;
    static constexpr int kRowBytes = kFp4 ? 64 : 128;
    static constexpr int kWarpBytes = 16 * kRowBytes;
    static constexpr int kScaleOff = 4 * kWarpBytes;
    static constexpr int kScaleRow = kNv ? 16 : 8;                     /* a row's scale bytes (FP4) */
    static constexpr int kStageBytes = kScaleOff + 4 * 16 * kScaleRow; /* 4.5 KB (MX), 5 KB (NV), 8.5 KB (FP8) */
    static constexpr int kRingBytes = kStages * kStageBytes;           /* 18, 20, 34 KB */
};

/* Blocks of K a chunk of staged tokens holds for n B rows and ksplit warpgroups: what fits kTokenBudget, and at
 * least kStages a group, so that each group has a multiple of kStages blocks in a chunk (see the kernel's K loop):
 * 32 (N = 8) or 16 (N = 16); N = 32 8, or 16 (64 KB) for 4 groups. */
constexpr int chunk_blocks(int n, int ksplit) {
    return kTokenBudget / (n * 128) > kStages * ksplit ? kTokenBudget / (n * 128) : kStages * ksplit;
}

/* Shared memory of a CTA: the chunk's token codes (cb blocks of kN rows x 128 bytes), its scales (cb x kN f32),
 * then a ring a warpgroup. */
__host__ __device__ inline int token_bytes(int cb, int n) { return (cb * n * 132 + 127) / 128 * 128; }

#ifdef MOE_WGMMA
/* E2M1 codes 0, 2, 4, 6 (the low nibble of each byte) and 1, 3, 5, 7 (the high nibble) of the word w as E4M3
 * bytes, each the code's value times 2^-6, exactly (scripts/check_e2m1_e4m3.c checks all 2^32 words). */
__device__ __forceinline__ uint32_t e4m3_even(uint32_t w) {
    return (w & 0x07070707u) * 4u + (w & 0x08080808u) * 16u;
}
__device__ __forceinline__ uint32_t e4m3_odd(uint32_t w) {
    return ((w >> 2) & 0x1C1C1C1Cu) | (w & 0x80808080u);
}

/* x, held in a register from here on: the compiler otherwise rebuilds some per-lane addresses from the lane index
 * in every K step (register pressure heuristics), a dozen instructions a block. */
__device__ __forceinline__ uint32_t pinned(uint32_t x) {
    asm volatile("" : "+r"(x));
    return x;
}

__device__ __forceinline__ uint64_t pinned64(uint64_t x) {
    asm volatile("" : "+l"(x));
    return x;
}

__device__ __forceinline__ uint2 lds64(uint32_t addr) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
    return v;
}

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}

/* Whether some E8M0 byte of w passes kFastScaleMax (scale 2^108): up to there, a block's sum of products times its
 * fast factor 2^(e - 121) stays below 2^127 (|sum| < 4 * 32 * 6 * 2^-6 * 448 < 2^13), and (e + 6) << 23 is that
 * factor's f32 bits. For a byte b of 128 or more, (b & 0x7F) + 255 - kFastScaleMax carries into bit 7 exactly past
 * kFastScaleMax; no byte carries into the next. */
__device__ __forceinline__ bool big_scale(uint32_t w) {
    static_assert(kFastScaleMax >= 128 && kFastScaleMax < 255, "big_scale: a threshold in the top half of a byte");
    return ((((w & 0x7F7F7F7Fu) + (255 - kFastScaleMax) * 0x01010101u) & w) & 0x80808080u) != 0;
}

/* The exact factor 2^(e - 143) of an E8M0 byte (NaN for 0xFF), for blocks past the fast factors' range: with
 * kExactTokenScale on the token scale, a block's sum times it stays below 2^125, and it is a normal f32 down to
 * scales of 2^-110. */
__device__ __forceinline__ float exact_factor(uint32_t e) {
    return moe_decode((uint8_t)e, MOE_DTYPE_E8M0) * 0x1p-16f;
}

/* The E4M3 bytes 0 and 1 of v as f32, exactly (through f16, which holds every E4M3 value; NaN stays NaN). */
__device__ __forceinline__ float2 e4m3x2_float2(uint32_t v) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xFFFF), __NV_E4M3);
    return __half22float2(__half2(h));
}
#endif

} // namespace

#endif /* MOE_CUDA_MOE_GROUPED_GEMM_RS_DECODE_CUH */
