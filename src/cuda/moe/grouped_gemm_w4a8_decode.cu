/* grouped_gemm_w4a8_decode.cu — W4A8 at decode on Hopper: MXFP4 expert weights (E2M1 codes, an E8M0 scale a
 * 32-code block) against FP8 inputs (E4M3 codes, an f32 scale a 1x128 group: the layer's act_format), the SMALL
 * tile's GEMMs (16 rows an expert) on the FP8 tensor cores through wgmma with the weights as A in registers
 * (sm_90a). Contract in grouped_gemm.cuh (moe__cuda_grouped_gemm_w4a8_decode); the arithmetic is the CPU
 * reference's (each weight code * 2^(e - 127), each input code * its group's scale, products summed in f32), up to
 * the order of the sums and the tensor cores' own within a 32-code block.
 *
 * Why: the bf16 decode kernel (grouped_gemm_fp4_decode.cu) spends four operations a pair of codes turning them into
 * bf16 weights and is bound by them (docs/performance.md). An E2M1 code c is exactly the E4M3 byte
 * ((c & 8) << 4) | ((c & 7) << 2) times 2^6 (its exponent and mantissa bits land on E4M3's low exponent bits and
 * top mantissa bit, bias 7 instead of 1; the subnormal code 0.5 on E4M3's subnormal 2^-7 * 2^6), so a word of 8
 * codes becomes two words of E4M3 bytes with seven integer operations (e4m3_even, e4m3_odd), and the block scale
 * and the 2^6 leave the tensor core as one f32 factor a row and block.
 *
 * Layout. A CTA takes one 16-row tile and 64 B rows (4 column tiles of gemm_decode.cuh: GLU the gate and up rows of
 * 32 output columns, plain 64 columns), with ksplit warpgroups (1, 2 or 4) splitting its K blocks of 128 (group w
 * takes blocks w, w + ksplit, ...) and summed in shared memory in group order (deterministic). Warp w of a group
 * holds column tile 4 T + w, the A rows 16 w .. 16 w + 15 of the wgmma (m64nNk32, N = 8 token rows, or 16 where an
 * expert may have more than 8 rows: T > 8). Each warp streams its rows' codes and scale words through its own
 * 4-stage cp.async ring (so a __syncwarp orders it), a lane 32 bytes of one row and one scale word a block; ldmatrix
 * hands thread (g, q) word q of each 32-code block of rows g and g + 8 (the 16-byte chunks stored XOR-swizzled by
 * the row pair, free of bank conflicts), so wgmma j of a block covers exactly the block's 32-code group j: its
 * product leaves in f32 and is added times the rows' factors, then the block's sum times the tokens' scales.
 * The tokens' codes of a chunk of K (all of K where it fits 32 KB) are staged once a CTA in the wgmma's K-major
 * layout without swizzle, each 32-byte group permuted to the order the conversion gives the weights (even codes in
 * K slots 0-15, odd ones in 16-31: e4m3_even feeds a0 / a1, e4m3_odd a2 / a3), padding rows and K past the end as
 * zeros, with the group scales beside them.
 * Scales: the factor 2^(e - 121) is (e + 6) << 23 as f32 bits up to e = 248; a block where some lane's scale passes
 * that (a warp-uniform test) takes exact factors 2^(e - 127) (NaN for 0xFF, zero past K) and the 2^6 on its sum. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90.cuh"
#include "cuda/moe/gemm_decode.cuh"
#include "cuda/moe/grouped_gemm.cuh"

#include <string.h>

namespace {

constexpr int kStages = 4;                             /* K blocks a warp has in flight, plus the one it reads */
constexpr int kWarpBytes = 16 * 64;                    /* a warp's 16 rows of 64 code bytes a block */
constexpr int kScaleOff = 4 * kWarpBytes;              /* then 4 warps x 16 rows x 8 bytes of scale words */
constexpr int kStageBytes = kScaleOff + 4 * 16 * 8;    /* 4.5 KB */
constexpr int kRingBytes = kStages * kStageBytes;      /* 18 KB a warpgroup */
constexpr int kTokenBudget = 32 * 1024;                /* token code bytes of a chunk */

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

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* x, held in a register from here on: the compiler otherwise rebuilds some per-lane addresses from the lane index
 * in every K step (register pressure heuristics), a dozen instructions a block. */
__device__ __forceinline__ uint32_t pinned(uint32_t x) {
    asm volatile("" : "+r"(x));
    return x;
}

__device__ __forceinline__ uint2 lds64(uint32_t addr) {
    uint2 v;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
    return v;
}
#endif

template <bool kGlu, int kN, int kTp>
__global__ void __launch_bounds__(512, 1) gemm_w4a8_decode_kernel(const moe_gemm_params p, const moe_gemm_fp8 f,
                                                                   int ksplit, int cb) {
    /* the wait for the previous grid comes after the first codes are on their way: before it, only what was written
     * before the previous grid started is read (the permutation, weights, scales) */
    moe_pdl_launch_next();
#ifdef MOE_WGMMA
    extern __shared__ __align__(128) uint8_t smem[];
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2,
              q = lane & 3;
    const int K = p.k, kblocks = (K + 127) >> 7, shift = __ffs(ksplit) - 1;
    const int nk = wg < kblocks ? (kblocks - wg + ksplit - 1) >> shift : 0; /* this group's blocks */
    moe_gemm_tile t; /* p.n_tiles counts groups of 4 column tiles; t.tile_n becomes this warp's */
    if (!moe_gemm_locate_warp(p, kDecodeRows, blockIdx.x, t, lane)) return; /* the same for the whole CTA */
    t.tile_n = t.tile_n * 4 + warp;
    const uint32_t smem_s = (uint32_t)__cvta_generic_to_shared(smem);
    const uint32_t tok_s = smem_s;
    float *const xs = reinterpret_cast<float *>(smem + cb * kN * 128);
    const uint32_t ring = smem_s + token_bytes(cb, kN) + wg * kRingBytes;

    /* the lane's copies: 32 bytes (chunks 2h, 2h + 1) of row m = lane / 2 and word h of its scales, h = lane % 2 */
    const int cm = lane >> 1, ch = lane & 1, sw_m = (cm >> 1) & 3;
    const int64_t crow = moe_decode_b_row<kGlu>(p, t, cm);
    const uint8_t *const wrow = static_cast<const uint8_t *>(p.b) + t.group * (p.b_group_stride / 2) +
                                (crow < 0 ? 0 : crow) * (K / 2);
    const uint32_t wdst = ring + warp * kWarpBytes + cm * 64;
    const uint32_t wdst0 = pinned(wdst + (((2 * ch) ^ sw_m) << 4)), wdst1 = pinned(wdst + (((2 * ch + 1) ^ sw_m) << 4));
    const int cols = p.bs.cols; /* scale bytes a row: K / 32 */
    auto scale_row = [&](int64_t r) {
        return static_cast<const uint8_t *>(p.bs.scale) + t.group * p.bs.group_stride + (r < 0 ? 0 : r) * cols;
    };
    const uint8_t *const srow = scale_row(crow);
    const int soff = (int)((uintptr_t)srow & 3);
    const uint8_t *const sword = srow - soff + 4 * ch; /* word ch of the aligned pair holding block 0's scales */
    const uint32_t sdst = pinned(ring + kScaleOff + warp * 128 + cm * 8 + 4 * ch);

    /* the lane's next block to copy: its codes (the pointer stops on the lane's last block with codes inside K, so
     * that it stays valid) and scale word (every block's), and the K values from its first chunk (a row past N: far below zero,
     * so nothing is read). The scale words take the bytes up to the block's last scale and no further: all 4
     * scales (full), or the row's last block's (tail, on the group that has that block). */
    const uint8_t *wp = wrow + wg * 64 + 32 * ch, *sp = sword + 4 * wg;
    int kleft = crow < 0 ? -0x40000000 : K - 128 * wg - 64 * ch;
    const int tail_scales = cols - 4 * (kblocks - 1), tail_sum = soff + tail_scales;
    const int full = crow < 0 ? 0 : ch ? soff : 4; /* exact: the last row's bytes end the allocation */
    const int tail = crow < 0 || (wg != ((kblocks - 1) & (ksplit - 1))) ? full
                     : ch ? (tail_sum > 4 ? tail_sum - 4 : 0) : (tail_sum < 4 ? tail_sum : 4);
    const int wstep = (int)pinned(64u << shift), sstep = (int)pinned(4u << shift), kstep = (int)pinned(128u << shift);
    /* the group's next block into the stage at ring offset wr; a group committed either way, so that the counts
     * match. Chunks past K and rows past N fill zeros and read nothing. */
    int todo = nk; /* blocks to issue */
    auto issue = [&](uint32_t wr) {
        if (todo > 0) {
            moe_decode_copy16_cg_if(wdst0 + wr, wp, kleft <= 0);
            moe_decode_copy16_cg_if(wdst1 + wr, wp + 16, kleft <= 32);
            const int bytes = todo == 1 ? tail : full;
            moe_cp_async4(sdst + wr, bytes ? sp : srow - soff, bytes); /* none: an address inside the row */
            if (kleft > kstep) wp += wstep;
            sp += sstep, kleft -= kstep, todo--; /* every block has scales: a copy of none reads elsewhere */
        }
        moe_cp_async_commit();
    };
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) issue(j * kStageBytes);
    moe_pdl_wait(); /* the tokens and their scales are the previous grid's */

    /* what thread (g, q) reads: rows g and g + 8 through ldmatrix (lane l gives row l % 8 (+ 8) of matrix l / 8, the
     * block's 32-code group l / 8), their scale words and where their scales start in them */
    const int lr = lane & 7, lj = lane >> 3;
    const uint32_t lm0 = pinned(ring + warp * kWarpBytes + lr * 64 + ((lj ^ ((lr >> 1) & 3)) << 4)), lm1 = lm0 + 8 * 64;
    const uint32_t sr0 = pinned(ring + kScaleOff + warp * 128 + g * 8), sr1 = sr0 + 64;
    const int sh0 = 8 * (int)((uintptr_t)scale_row(moe_decode_b_row<kGlu>(p, t, g)) & 3);
    const int sh1 = 8 * (int)((uintptr_t)scale_row(moe_decode_b_row<kGlu>(p, t, g + 8)) & 3);

    /* kTp token rows a tile: kN of them (dense), or kN / 4 (diagonal: column c of wgmma j holds token c % kTp where
     * c / kTp = j, and zeros elsewhere, so that the 4 groups of a block sum into one accumulator, group j in its
     * own columns) */
    constexpr bool kDiag = kTp * 4 == kN;
    static_assert(kDiag || kTp == kN, "dense or diagonal tokens");
    /* the B row this thread stages (blockDim is a multiple of kN) and its token */
    const int tn = threadIdx.x & (kN - 1);
    const int64_t arow = moe_decode_a_row(p, t, tn & (kTp - 1));
    constexpr int kGroupBytes = kN * 32; /* a 32-code group's B: kN rows */
    /* the descriptor of the chunk's first group (K halves 128 bytes apart, 8-row blocks 256); a group's is its low
     * word plus the group's offset in 16 bytes (the chunk lies in the first 256 KB: no carry out of the field) */
    const uint64_t desc_hi = moe_smem_desc_plain(tok_s, 128, 256) & 0xFFFFFFFF00000000ull;
    const uint32_t desc_lo = (uint32_t)moe_smem_desc_plain(tok_s, 128, 256);

    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    /* Diagonal: the block's 4 wgmmas sum into d, whose register r is row g + 8 ((r >> 1) & 1) and column c =
     * 8 (r >> 2) + 2q + (r & 1): group c / kTp's products for token c % kTp. acc_d sums them times the row's factor
     * for that group and the token's scale; a thread's groups are gs[k] / 8 (k = r >> 2). */
    float acc_d[kN / 2];
#pragma unroll
    for (int r = 0; r < kN / 2; r++) acc_d[r] = 0.0f;
    int gs[kN / 8];
#pragma unroll
    for (int k = 0; k < kN / 8; k++) gs[k] = 8 * ((8 * k + 2 * q) / kTp);
    auto diag_block = [&](const uint32_t (&w0)[4], const uint32_t (&w1)[4], const uint32_t (&sw)[2], int kb,
                          uint32_t desc0, const float *xb) {
        float d[kN / 2];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t a[4] = {e4m3_even(w0[j]), e4m3_even(w1[j]), e4m3_odd(w0[j]), e4m3_odd(w1[j])};
            moe_wgmma_fence();
            moe_wgmma_m64nNk32_e4m3_ra<kN>(d, a, desc_hi | (desc0 + j * (kGroupBytes / 16)), j > 0);
        }
        moe_wgmma_commit();
        /* the factors of the thread's groups, while the wgmmas run */
        uint32_t e[2][kN / 8];
        bool big = false;
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int k = 0; k < kN / 8; k++) e[h][k] = (sw[h] >> gs[k]) & 0xFF, big |= e[h][k] > 248;
        float fac[2][kN / 8], comp = 1.0f;
        if (__any_sync(0xFFFFFFFFu, big)) { /* some scale past 2^121: exact factors, the 2^6 on the sum */
            const int groups = (K - 128 * kb) >> 5;
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int k = 0; k < kN / 8; k++)
                    fac[h][k] = gs[k] < 8 * groups ? moe_decode((uint8_t)e[h][k], MOE_DTYPE_E8M0) : 0.0f;
            comp = 64.0f;
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int k = 0; k < kN / 8; k++) fac[h][k] = __uint_as_float((e[h][k] + 6) << 23);
        }
        float x[2]; /* the scales of the thread's tokens 2q + u (mod kTp) */
#pragma unroll
        for (int u = 0; u < 2; u++) x[u] = xb[(2 * q + u) & (kTp - 1)] * comp;
        moe_wgmma_wait<0>();
        moe_acc_fence(d);
#pragma unroll
        for (int r = 0; r < kN / 2; r++)
            acc_d[r] = __fmaf_rn(d[r] * fac[(r >> 1) & 1][r >> 2], x[r & 1], acc_d[r]);
    };
    int i0 = 0; /* the group's blocks before the chunk */
    for (int kb0 = 0; kb0 < kblocks; kb0 += cb) {
        const int kb1 = kb0 + cb < kblocks ? kb0 + cb : kblocks;
        if (kb0) __syncthreads(); /* every group's wgmmas on the last chunk are done */
        /* the chunk's token codes: group gl of row tn, its even bytes at K slots 0-15 (core matrix 0 of the group's
         * row block) and its odd bytes at 16-31 (core matrix 1, 128 bytes on), 8-row blocks 256 bytes apart */
        for (int it = threadIdx.x; it < (kb1 - kb0) * 4 * kN; it += blockDim.x) {
            const int gl = it / kN, gk = kb0 * 4 + gl;
            uint4 e = make_uint4(0, 0, 0, 0), o = e;
            if (arow >= 0 && 32 * gk < K && (!kDiag || tn / kTp == (gl & 3))) {
                const uint4 *src = reinterpret_cast<const uint4 *>(f.a + arow * K + 32 * gk);
                const uint4 x0 = __ldg(src), x1 = __ldg(src + 1);
                e = make_uint4(prmt(x0.x, x0.y, 0x6420), prmt(x0.z, x0.w, 0x6420), prmt(x1.x, x1.y, 0x6420),
                               prmt(x1.z, x1.w, 0x6420));
                o = make_uint4(prmt(x0.x, x0.y, 0x7531), prmt(x0.z, x0.w, 0x7531), prmt(x1.x, x1.y, 0x7531),
                               prmt(x1.z, x1.w, 0x7531));
            }
            uint8_t *d = smem + gl * kGroupBytes + (tn >> 3) * 256 + (tn & 7) * 16;
            *reinterpret_cast<uint4 *>(d) = e;
            *reinterpret_cast<uint4 *>(d + 128) = o;
        }
        for (int it = threadIdx.x; it < (kb1 - kb0) * kTp; it += blockDim.x) { /* token it % kTp: this thread's */
            const int kb = kb0 + it / kTp;
            xs[it] = arow < 0 ? 0.0f : p.gather ? f.a_scale[arow * kblocks + kb] : f.a_scale[kb * f.a_scale_ld + arow];
        }
        moe_fence_proxy_async(); /* the codes are read by wgmma */
        __syncthreads();

        /* block i of the group from the stage at ring offset rd */
        auto block = [&](int i, uint32_t rd) {
            const int kb = wg + (i << shift), lb = kb - kb0;
            uint32_t w0[4], w1[4];
            ldmatrix_x4(w0, lm0 + rd);
            ldmatrix_x4(w1, lm1 + rd);
            const uint2 s0 = lds64(sr0 + rd), s1 = lds64(sr1 + rd);
            const uint32_t sw[2] = {__funnelshift_r(s0.x, s0.y, sh0), __funnelshift_r(s1.x, s1.y, sh1)};
            const uint32_t desc0 = desc_lo + lb * (4 * kGroupBytes / 16);
            if constexpr (kDiag) {
                diag_block(w0, w1, sw, kb, desc0, xs + lb * kTp);
                return;
            }
            /* the rows' factors for the block's 4 groups */
            float fac[2][4], comp = 1.0f;
            const uint32_t big = ((((sw[0] & 0x7F7F7F7Fu) + 0x07070707u) & sw[0]) |
                                  (((sw[1] & 0x7F7F7F7Fu) + 0x07070707u) & sw[1])) & 0x80808080u;
            if (__any_sync(0xFFFFFFFFu, big != 0)) { /* some scale past 2^121: exact factors, the 2^6 on the sum */
                const int groups = (K - 128 * kb) >> 5;
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        fac[h][j] = j < groups ? moe_decode((uint8_t)(sw[h] >> (8 * j)), MOE_DTYPE_E8M0) : 0.0f;
                comp = 64.0f;
            } else {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint32_t e6 = sw[h] + 0x06060606u; /* no byte passes 254: no carries */
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        fac[h][j] = __uint_as_float((j < 3 ? e6 << (23 - 8 * j) : e6 >> 1) & 0x7F800000u);
                }
            }
            /* group j: its product into part[j % 2] while group j - 1's is added */
            float part[2][kN / 2], sum[kN / 2];
            auto add = [&](int j) {
                moe_acc_fence(part[j & 1]);
#pragma unroll
                for (int e = 0; e < kN / 2; e++) {
                    const float v = part[j & 1][e], s = fac[(e >> 1) & 1][j];
                    sum[e] = j ? __fmaf_rn(v, s, sum[e]) : v * s;
                }
            };
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint32_t a[4] = {e4m3_even(w0[j]), e4m3_even(w1[j]), e4m3_odd(w0[j]), e4m3_odd(w1[j])};
                moe_wgmma_fence();
                moe_wgmma_m64nNk32_e4m3_ra<kN>(part[j & 1], a, desc_hi | (desc0 + j * (kGroupBytes / 16)), false);
                moe_wgmma_commit();
                if (j) {
                    moe_wgmma_wait<1>();
                    add(j - 1);
                }
            }
            moe_wgmma_wait<0>();
            add(3);
            /* the block's sum times the tokens' scales: columns 8n + 2q (+ 1) */
#pragma unroll
            for (int n = 0; n < kN / 8; n++) {
                const float2 x = *reinterpret_cast<const float2 *>(xs + lb * kN + 8 * n + 2 * q);
                const float x0 = x.x * comp, x1 = x.y * comp;
                acc[n][0] = __fmaf_rn(sum[4 * n + 0], x0, acc[n][0]);
                acc[n][1] = __fmaf_rn(sum[4 * n + 1], x1, acc[n][1]);
                acc[n][2] = __fmaf_rn(sum[4 * n + 2], x0, acc[n][2]);
                acc[n][3] = __fmaf_rn(sum[4 * n + 3], x1, acc[n][3]);
            }
        };
        /* the group's blocks in the chunk (a chunk other than the last holds a multiple of kStages of them, so that
         * the stages' offsets stay constants over the unrolled loop) */
        const int here = (kb1 > wg ? (kb1 - wg + ksplit - 1) >> shift : 0) - i0;
        moe_decode_k_loop<kStages, kStageBytes, true>(here, issue, [&](int j, uint32_t rd) { block(i0 + j, rd); });
        i0 += here;
    }
    moe_cp_async_wait<0>(); /* the empty groups past nk */
    if constexpr (kDiag) {
        /* acc_d to the epilogue's layout: each (row, token) summed over the thread's groups, then over the lanes of
         * the quad that hold the same tokens (all 4 for kTp 2, q and q ^ 2 for 4); lane q keeps tokens 2q, 2q + 1 */
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            v[e] = acc_d[e];
#pragma unroll
            for (int k = 1; k < kN / 8; k++) v[e] += acc_d[4 * k + e];
        }
#pragma unroll
        for (int m = kTp / 2; m < 4; m <<= 1)
#pragma unroll
            for (int e = 0; e < 4; e++) v[e] += __shfl_xor_sync(0xFFFFFFFFu, v[e], m);
#pragma unroll
        for (int e = 0; e < 4; e++) acc[0][e] = 2 * q < kTp ? v[e] : 0.0f;
    }

    /* groups 1.. hand their partial tiles to group 0 through their rings (a warp's first 1 KB: its own codes'
     * slots, which no lane reads any more), which adds them in group order */
    __syncwarp();
    if (wg > 0) {
        float *part = reinterpret_cast<float *>(smem + token_bytes(cb, kN) + wg * kRingBytes + warp * kWarpBytes);
#pragma unroll
        for (int k = 0; k < 8; k++) part[k * 32 + lane] = acc[k >> 2][k & 3];
    }
    __syncthreads();
    if (wg > 0) return;
    for (int w = 1; w < ksplit; w++) {
        const float *part =
            reinterpret_cast<const float *>(smem + token_bytes(cb, kN) + w * kRingBytes + warp * kWarpBytes);
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k >> 2][k & 3] += part[k * 32 + lane];
    }
    const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
    moe_decode_epilogue<kGlu>(p, t, acc, brow, g, q, 1.0f);
#endif
}

template <bool kGlu, int kN, int kTp>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q = p;
    if (p.top_k >= 1) moe_decode_top_k_magic(p.top_k, q.top_k_magic, q.top_k_shift);
    const int64_t col_tiles = kGlu ? (p.n + 7) / 8 : (p.n + 15) / 16;
    q.m_tiles = m_tiles, q.n_tiles = (col_tiles + 3) / 4;
    const int64_t ctas = q.m_tiles * q.n_tiles;
    if (ctas > 0x7FFFFFFF)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "W4A8 decode GEMM: %lld tiles exceed the grid", (long long)ctas);
    const int kblocks = (p.k + 127) / 128;
    /* blocks a chunk: 32 or 16, a multiple of kStages times any split (see the kernel's K loop) */
    const int cb = kblocks < kTokenBudget / (kN * 128) ? kblocks : kTokenBudget / (kN * 128);
    static_assert(kTokenBudget / (16 * 128) % (kStages * 4) == 0, "chunks of whole rounds of the stages");
    /* warpgroups a CTA: doubled while the grid's groups stay within half of what the GPU holds (about 4 an SM) and
     * each keeps 8 K blocks or more */
    const int64_t slots = (int64_t)ctx->cuda.sm_count * 4;
    int ksplit = 1;
    while (ksplit < 4 && ctas * ksplit * 2 <= slots && kblocks >= 16 * ksplit) ksplit *= 2;
    const int bytes = token_bytes(cb, kN) + ksplit * kRingBytes;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_w4a8_decode_kernel<kGlu, kN, kTp>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    /* GEMM 2 (plain) as a dependent launch of h's quantisation: see the kernel's prologue */
    MOE_CUDA_TRY(ctx, moe_launch(!kGlu && moe__cuda_pdl(ctx), gemm_w4a8_decode_kernel<kGlu, kN, kTp>, dim3((unsigned)ctas),
                                 128 * ksplit, bytes, st, q, f, ksplit, cb));
    return MOE_OK;
}

} // namespace

bool moe__cuda_gemm_w4a8_decode_fits(moe_ctx *ctx, const moe_gemm_params &p) {
    /* opt-in until it has run on a GPU (built and costed from its SASS only, docs/performance.md) */
    const char *on = getenv("MOE_GEMM_W4A8_DECODE");
    if (!on || strcmp(on, "1") != 0 || !moe__cuda_gemm_sm90_usable(ctx)) return false;
    if (p.b_fmt != MOE_B_E2M1_E8M0 || !p.offsets || p.k % 32 != 0) return false;
    if (p.bs.row_shift != 0 || p.bs.col_shift != 5) return false; /* a scale a row and 32 codes */
    /* 16-byte pieces of codes */
    return (uintptr_t)p.b % 16 == 0 && (p.b_group_stride / 2) % 16 == 0;
}

moe_status moe__cuda_grouped_gemm_w4a8_decode(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                              int64_t m_tiles, int64_t max_rows, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    if ((uintptr_t)f.a % 16 != 0)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "W4A8 decode GEMM: input codes not 16-byte aligned");
    /* up to 2 or 4 rows a tile: the diagonal tokens (kN = 4 kTp); up to 8 or 16: dense */
    if (max_rows <= 2) return glu ? launch<true, 8, 2>(ctx, p, f, m_tiles, stream) : launch<false, 8, 2>(ctx, p, f, m_tiles, stream);
    if (max_rows <= 4) return glu ? launch<true, 16, 4>(ctx, p, f, m_tiles, stream) : launch<false, 16, 4>(ctx, p, f, m_tiles, stream);
    if (max_rows <= 8) return glu ? launch<true, 8, 8>(ctx, p, f, m_tiles, stream) : launch<false, 8, 8>(ctx, p, f, m_tiles, stream);
    return glu ? launch<true, 16, 16>(ctx, p, f, m_tiles, stream) : launch<false, 16, 16>(ctx, p, f, m_tiles, stream);
}
