/* grouped_gemm_fp4_decode.cu — FP4 expert weights (MXFP4: E2M1 codes, an E8M0 scale a 32-code block; NVFP4: an
 * E4M3 scale a 16-code block and the group's f32 global scale) at decode, bf16 activations: the SMALL tile's GEMMs
 * (16 rows an expert) on the bf16 tensor cores through mma.sync m16n8k16 (sm_80 and later). Contract in
 * grouped_gemm.cuh (moe__cuda_grouped_gemm_fp4_decode); the arithmetic is the other tiles' (bquant.cuh): each
 * weight is bf16(code * block scale), exactly, and the products are summed in f32.
 *
 * The layout is the W8A8 decode kernel's (gemm_decode.cuh): a CTA of 4 warps takes one 16-row tile and 1, 2 or 4
 * column tiles of 16 B rows, the warps of a column tile splitting K by 128-wide blocks; the weights are the mma's M
 * operand and the tokens its N operand (8 rows a half tile; the second half's tokens, rare at decode, are read from
 * global memory when a tile has more than 8 rows). Each lane copies its own pieces into its own slots of a
 * per-warp cp.async ring (3 stages) and reads back only those, so no barrier is needed: 16 bytes of codes of
 * weight rows g and g + 8 (K values 32q .. 32q + 31 of the block, q = lane % 4), the matching 64 bytes of its
 * first-half token row g (copied only when that row is real), and the 4-byte words holding the two rows' scales
 * of those values.
 *
 * Codes become bf16 with three logic operations a pair: code i of a 32-bit word sits in bits 4i .. 4i + 3, so
 * (x & 0x80008000) | ((x & 0x70007000) >> 6) with x the word shifted left by 4t puts codes 3 - t and 7 - t into a
 * bf16 pair whose sign is the code's and whose exponent and top mantissa bits are its exponent and mantissa bits:
 * the code's value times 2^-126 exactly, subnormal code (0.5) included. One bf16 multiply by the block's factor
 * s * 2^118 (exact: E4M3 and E8M0 scales times 2^118 are normal bf16) makes the weight s * value * 2^-8, which the
 * epilogue undoes with its factor 256 (a power of two: exact). E8M0 scales above 2^9, whose factor would overflow,
 * take a multiply by 2^126 first (warp-uniformly skipped where no lane has one). The mma's K slots of a lane get
 * codes 3 and 7, 2 and 6 (first mma) and 1 and 5, 0 and 4 (second) of each word; the token's bf16 values are
 * paired the same way with byte permutes, and the order of a sum does not matter to an mma. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/gemm_decode.cuh"
#include "cuda/moe/grouped_gemm.cuh"

#include <cuda_fp8.h>

namespace {

constexpr int kWarps = kDecodeWarps;
constexpr int kStages = 3; /* K blocks a warp has in flight */
constexpr int kBK = 128;   /* K values a block: 64 bytes of a weight row */
/* A warp's stage: 16-byte slots, slot i of lane l at (32 i + l) 16 bytes: 0-1 the codes of rows g and g + 8,
 * 2-5 the token's values 8j .. 8j + 7 of the lane's 32; then 8 bytes a lane: the rows' scale words. */
constexpr int kSlots = 6, kStageBytes = kSlots * 32 * 16 + 32 * 8;
/* 39 KB, and part: 5 CTAs an SM */
constexpr size_t kRing = (size_t)kWarps * kStages * kStageBytes;
constexpr int kCtasPerSm = 5;
constexpr float kUndo = 256.0f; /* the weights enter the mma times 2^-8 */

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
    const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&a),
                                     *reinterpret_cast<const __nv_bfloat162 *>(&b));
    return *reinterpret_cast<const uint32_t *>(&r);
}

/* Codes (3 - t, 7 - t) of word w as a bf16 pair, each its value times 2^-126 (see the head of the file). */
__device__ __forceinline__ uint32_t fp4_pair(uint32_t w, int t) {
    const uint32_t x = w << (4 * t);
    return (x & 0x80008000u) | ((x & 0x70007000u) >> 6);
}

/* A block's factor as the bf16 pair (f, f), f = s * 2^118 for the scale s whose code is `code`: E8M0 2^(e - 127)
 * gives 2^(e - 9) up to e = 136, NaN for 0xFF, and 2^(e - 135) above 136 (*big: the codes take 2^126 first). */
template <bool kMx> __device__ __forceinline__ uint32_t fp4_factor(uint32_t code, bool *big) {
    uint32_t b;
    if (kMx) {
        *big = code > 136 && code < 255;
        b = code == 255 ? 0x7FC0u : code <= 136 ? (code + 118) << 7 : (code - 8) << 7;
    } else {
        const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)code, __NV_E4M3);
        const __nv_bfloat16 v = __float2bfloat16_rn(__half2float(__half(h)) * 0x1p118f);
        b = *reinterpret_cast<const uint16_t *>(&v);
        *big = false;
    }
    return b | b << 16;
}

/* d += a * b over the 16 K slots of one mma: a0 / a2 row g, a1 / a3 row g + 8. */
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
    const uint32_t a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
    moe_mma_bf16_16816(d, a, b);
}

/* One 8-value word j of the lane's K piece: rows g (w0) and g + 8 (w1), already scaled, times the token values x
 * (bf16, K order) into d. */
__device__ __forceinline__ void fp4_word_mma(float (&d)[4], const uint32_t (&w0)[4], const uint32_t (&w1)[4],
                                             const uint4 &x) {
    /* (x3, x7), (x2, x6), (x1, x5), (x0, x4): the codes' pairs */
    mma(d, w0[0], w1[0], w0[1], w1[1], prmt(x.y, x.w, 0x7632), prmt(x.y, x.w, 0x5410));
    mma(d, w0[2], w1[2], w0[3], w1[3], prmt(x.x, x.z, 0x7632), prmt(x.x, x.z, 0x5410));
}
#endif

template <bool kGlu, int F>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm)
    gemm_fp4_decode_kernel(const moe_gemm_params p, int ksplit) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr bool kMx = F == MOE_B_E2M1_E8M0;
    constexpr int kScaleBytes = kMx ? 1 : 2; /* a lane's scales a row and block: its 32 values */
    extern __shared__ uint4 smem_ring[];
    __shared__ float part[kWarps - 1][8][32]; /* by warp - 1: warp 0 always adds */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int cper = kWarps / ksplit, ct = warp / ksplit, kw = warp - ct * ksplit;
    const char *stage0 = reinterpret_cast<const char *>(smem_ring) + warp * kStages * kStageBytes;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(stage0) + lane * 16;
    const uint32_t scale_s = (uint32_t)__cvta_generic_to_shared(stage0) + kSlots * 512 + lane * 8;
    const int64_t K = p.k;
    const int kblocks = (int)((K + kBK - 1) / kBK);
    const int nk = kw < kblocks ? (kblocks - kw + ksplit - 1) / ksplit : 0; /* this warp's blocks */
    for (int64_t tile = blockIdx.x; tile < p.m_tiles * p.n_tiles; tile += gridDim.x) {
        moe_gemm_tile t; /* p.n_tiles counts groups of cper column tiles; t.tile_n is this warp's column tile */
        if (!moe_gemm_locate(p, kDecodeRows, tile, t)) continue; /* the same for the whole CTA */
        t.tile_n = t.tile_n * cper + ct;
        const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
        const uint8_t *bsrc[2], *ssrc[2];
        int soff[2]; /* the byte of the lane's first scale in its aligned word: the same for every block */
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t r = brow[h] < 0 ? 0 : brow[h];
            bsrc[h] = static_cast<const uint8_t *>(p.b) + t.group * (p.b_group_stride / 2) + r * (K / 2) + 16 * q;
            const uint8_t *s = static_cast<const uint8_t *>(p.bs.scale) + t.group * p.bs.group_stride +
                               r * p.bs.cols + ((32 * q) >> p.bs.col_shift);
            soff[h] = (int)((uintptr_t)s & 3);
            ssrc[h] = s - soff[h];
        }
        const bool two = moe_decode_a_row(p, t, 8) >= 0; /* rows fill a tile from its start */
        const int64_t a0 = moe_decode_a_row(p, t, g), a1 = two ? moe_decode_a_row(p, t, g + 8) : -1;
        const __nv_bfloat16 *asrc[2] = {p.a + (a0 < 0 ? 0 : a0 * K) + 32 * q, p.a + (a1 < 0 ? 0 : a1 * K) + 32 * q};

        /* this warp's i-th block into stage i % kStages; a group committed either way, so that the counts match */
        auto issue = [&](int i) {
            if (i < nk) {
                const int kb = kw + i * ksplit;
                const uint32_t st = ring_s + (uint32_t)((i % kStages) * kStageBytes);
                const bool in = (int64_t)kb * kBK + 32 * q < K; /* K % 32 == 0: the lane's 32 values all in or out */
                const int64_t kv = in ? (int64_t)kb * kBK : 0;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    moe_decode_copy16_cg(st + h * 512, bsrc[h] + kv / 2, in && brow[h] >= 0 ? 16 : 0);
                    moe_cp_async4(scale_s + (uint32_t)((i % kStages) * kStageBytes) + 4 * h,
                                  ssrc[h] + (kv >> p.bs.col_shift), in && brow[h] >= 0 ? soff[h] + kScaleBytes : 0);
                }
                if (a0 >= 0)
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        moe_decode_copy16_ca(st + (2 + j) * 512, asrc[0] + kv + 8 * j, in ? 16 : 0);
            }
            moe_cp_async_commit();
        };
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int i = 0; i < kStages - 1; i++) issue(i);
        __syncthreads(); /* ends the previous tile: warp 0's reads of part */
        for (int i = 0; i < nk; i++) {
            issue(i + kStages - 1); /* into the stage read at i - 1 (by this lane, already in registers) */
            moe_cp_async_wait<kStages - 1>();
            const int kb = kw + i * ksplit;
            const char *st = stage0 + (i % kStages) * kStageBytes;
            const uint4 *slot = reinterpret_cast<const uint4 *>(st) + lane;
            const uint4 codes[2] = {slot[0], slot[32]};
            const uint2 sw = *reinterpret_cast<const uint2 *>(st + kSlots * 512 + lane * 8);
            /* the rows' factors: MX one for the lane's 32 values, NV one for each 16 */
            uint32_t fac[2][2];
            bool big[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint32_t word = (h ? sw.y : sw.x) >> (8 * soff[h]);
                fac[h][0] = fp4_factor<kMx>(word & 0xFF, &big[h]);
                fac[h][1] = kMx ? fac[h][0] : fp4_factor<kMx>((word >> 8) & 0xFF, &big[h]);
            }
            const bool any_big = kMx && __any_sync(0xFFFFFFFFu, big[0] || big[1]);
            const bool in2 = two && a1 >= 0 && (int64_t)kb * kBK + 32 * q < K; /* the second half's token, real */
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t w[2][4];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint32_t cw = (&codes[h].x)[j], f = fac[h][j >> 1];
#pragma unroll
                    for (int t2 = 0; t2 < 4; t2++) {
                        uint32_t v = fp4_pair(cw, t2);
                        if (any_big && big[h]) v = bf16x2_mul(v, 0x7E807E80u); /* 2^126 */
                        w[h][t2] = bf16x2_mul(v, f);
                    }
                }
                const uint4 x = a0 >= 0 ? slot[(2 + j) * 32] : make_uint4(0, 0, 0, 0);
                fp4_word_mma(acc[0], w[0], w[1], x);
                if (two) /* from global memory */
                    fp4_word_mma(acc[1], w[0], w[1],
                                 in2 ? __ldg(reinterpret_cast<const uint4 *>(asrc[1] + kb * kBK + 8 * j))
                                     : make_uint4(0, 0, 0, 0));
            }
        }
        moe_cp_async_wait<0>(); /* the empty groups past nk */
        if (moe_decode_reduce(acc, part, warp, kw, ksplit, lane))
            moe_decode_epilogue<kGlu>(p, t, acc, brow, g, q, kUndo);
    }
#endif
}

template <bool kGlu, int F>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q = p;
    const int ksplit = moe_decode_ksplit((p.k + kBK - 1) / kBK), cper = kWarps / ksplit;
    const int64_t col_tiles = kGlu ? (p.n + 7) / 8 : (p.n + 15) / 16;
    q.m_tiles = m_tiles, q.n_tiles = (col_tiles + cper - 1) / cper; /* groups of cper column tiles */
    const int64_t tiles = q.m_tiles * q.n_tiles, cap = (int64_t)1 << 30; /* a grid-stride loop past that */
    const dim3 grid((unsigned)(tiles < cap ? tiles : cap));
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_fp4_decode_kernel<kGlu, F>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kRing));
    MOE_CUDA_TRY(ctx, moe_launch(false, gemm_fp4_decode_kernel<kGlu, F>, grid, kWarps * 32, kRing, st, q, ksplit));
    return MOE_OK;
}

} // namespace

bool moe__cuda_gemm_fp4_decode_fits(const moe_gemm_params &p) {
    const bool mx = p.b_fmt == MOE_B_E2M1_E8M0, nv = p.b_fmt == MOE_B_E2M1_E4M3;
    if ((!mx && !nv) || !p.offsets || p.k % 32 != 0) return false;
    /* per-row scales of 32 (MX) or 16 (NV) values; NV's two scales of a lane in one aligned word */
    if (p.bs.row_shift != 0 || p.bs.col_shift != (mx ? 5 : 4)) return false;
    if (nv && ((uintptr_t)p.bs.scale % 2 != 0 || p.bs.cols % 2 != 0 || p.bs.group_stride % 2 != 0)) return false;
    /* 16-byte pieces of codes and of bf16 activations */
    return (uintptr_t)p.b % 16 == 0 && (p.b_group_stride / 2) % 16 == 0 && (uintptr_t)p.a % 16 == 0;
}

moe_status moe__cuda_grouped_gemm_fp4_decode(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles,
                                             cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    const bool mx = p.b_fmt == MOE_B_E2M1_E8M0;
    if (glu) return mx ? launch<true, MOE_B_E2M1_E8M0>(ctx, p, m_tiles, stream)
                       : launch<true, MOE_B_E2M1_E4M3>(ctx, p, m_tiles, stream);
    return mx ? launch<false, MOE_B_E2M1_E8M0>(ctx, p, m_tiles, stream)
              : launch<false, MOE_B_E2M1_E4M3>(ctx, p, m_tiles, stream);
}
