/* grouped_gemm_fp8_decode.cu — W8A8's routed GEMMs at decode (the SMALL tile: 16 rows an expert) on the tensor cores
 * through mma.sync (sm_89 and later; built into the sm_90a code). Contract in grouped_gemm.cuh (moe_gemm_fp8,
 * moe__cuda_grouped_gemm_fp8_decode); the arithmetic is the W8A8 tile's (grouped_gemm_sm90_fp8.cu): each 128-wide K
 * block's products summed on the tensor cores, then added to f32 accumulators times a_scale(row) * b_scale(block).
 *
 * At decode an expert has a few rows, so the GEMM streams weights: a CTA of 4 warps takes one 16-row tile and 1, 2
 * or 4 column tiles of 16 B rows each (GLU: the gate and up rows of 8 output columns; plain: 16 columns), the 4, 2
 * or 1 warps of a column tile splitting K by 128-wide blocks (warp w of s takes blocks w, w + s, ...), and sums
 * their partial tiles in shared memory in warp order (deterministic). The weights are the mma's A operand
 * (M = 16 B rows) and the tokens its B operand (N = 8 rows a half tile; the second half runs only when the tile
 * has more than 8 rows): each lane copies 16 bytes of two weight rows and of its first half's token row into its
 * own slots of a per-warp ring in shared memory (cp.async, 3 stages) and reads back only those; a second half's
 * token rows (rare at decode) are read from global memory when used. Lanes 0-17 also copy the block's scales into
 * the stage, which every lane reads (hence a __syncwarp before a stage is read and before it is refilled), so that
 * no block waits on a scale load and a tile needs no prologue.
 * Hopper has no E4M3 mma.sync of its own (the compiler turns one into f16 conversions, two HMMA and f32 adds), so
 * the codes are converted to f16 pairs here (exact) and a block's products chain through m16n8k16 f16. The
 * reduction order inside a K block does not matter to an mma, so a lane's 16 contiguous bytes (k = 64c + 16q ..
 * + 15 of the block, q = lane % 4) fill K slots of its own: word j's codes 0-1 slots 2q, 2q + 1 and codes 2-3 slots
 * 2q + 8, 2q + 9 of mma (c, j), in A and B alike.
 * GEMM 1 writes h in f32 (p.c32); moe__cuda_act_quant turns it into GEMM 2's codes. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/formats/qformat.cuh"
#include "cuda/moe/gemm_decode.cuh"
#include "cuda/moe/grouped_gemm.cuh"

#include <cuda_fp8.h>

namespace {

constexpr int kWarps = kDecodeWarps;
constexpr int kStages = 3; /* K blocks a warp has in flight */
constexpr int kBK = 128;   /* a scale block of K */
/* A warp's stage: 16-byte slots, slot i of lane l at (32 i + l) 16 bytes (each lane reads back only what it copied,
 * and no two lanes of a phase share a bank): slots 0-3 the weights w[h][c] (slot 2h + c),
 * 4-5 the first half's tokens a[c]; then a 4-byte word a lane: lanes 0-15 the A scale of tile row `lane`, lanes 16
 * and 17 the B scales of the column tile's two halves (an E8M0 scale as the aligned word that holds it). */
constexpr int kSlots = 6, kScaleOff = kSlots * 32 * 16, kStageBytes = kScaleOff + 32 * 4;
/* 37.5 KB (the partial tiles' sum passes through it too): 5 CTAs an SM (registers bounded to allow 5; measured on
 * the H200 faster than 8 slots and 4 CTAs: DeepSeek-V3 W8A8 at T = 16, 1155 against 1206 us a layer) */
constexpr size_t kRing = (size_t)kWarps * kStages * kStageBytes;
constexpr int kCtasPerSm = 5;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
/* d += a (16 x 16, row) * b (16 x 8, col), f16 inputs, f32 accumulators. a0 / a2: row g, a1 / a3: row g + 8. */
__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Codes 2h and 2h + 1 of the word w as an f16 pair (exact: every E4M3 value is an f16). */
__device__ __forceinline__ uint32_t e4m3_pair(uint32_t w, int h) {
    uint32_t d;
    if (h) asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;\n}" : "=r"(d) : "r"(w));
    else asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}" : "=r"(d) : "r"(w));
    return d;
}

/* tmp += the products of one 16-byte piece: weight rows g (w0) and g + 8 (w1) against token column g's codes x at
 * the same K positions (word j's codes 0-1 fill the mma's K slots 2q, 2q + 1 and codes 2-3 its slots 2q + 8, + 9;
 * the order of a sum does not matter to an mma) */
__device__ __forceinline__ void piece_mma(float (&tmp)[4], const uint4 &w0, const uint4 &w1, const uint4 &x) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint32_t a = (&w0.x)[j], b = (&w1.x)[j], c = (&x.x)[j];
        mma_f16(tmp, e4m3_pair(a, 0), e4m3_pair(b, 0), e4m3_pair(a, 1), e4m3_pair(b, 1), e4m3_pair(c, 0),
                e4m3_pair(c, 1));
    }
}
#endif

template <bool kGlu, int F>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm)
    gemm_fp8_decode_kernel(const moe_gemm_params p, const moe_gemm_fp8 f, int ksplit) {
    /* GEMM 2's wait for the previous grid comes after the first weights are on their way (below): before it, only
     * what was written before the previous grid started is read (the permutation, weights, B scales) */
    moe_decode_start<kGlu>();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    constexpr bool kE8m0 = F == MOE_B_E4M3_E8M0;
    extern __shared__ uint4 smem_ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const char *stage0 = reinterpret_cast<const char *>(smem_ring) + warp * kStages * kStageBytes;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(stage0) + lane * 16; /* the lane's slot 0 */
    const uint32_t scale_s = (uint32_t)__cvta_generic_to_shared(stage0) + kScaleOff + lane * 4;
    const int64_t K = p.k;
    const int kblocks = (int)((K + kBK - 1) / kBK);
    /* the CTA's 4 warps: kWarps / ksplit column tiles of 16 B rows, each summed over K by ksplit warps */
    const moe_decode_warp wr = moe_decode_warp_of(warp, ksplit, kblocks);
    const int cper = wr.cper, ct = wr.ct, kw = wr.kw, nk = wr.nk; /* nk: this warp's blocks */
    moe_gemm_tile t; /* p.n_tiles counts groups of cper column tiles; t.tile_n is this warp's column tile */
    if (!moe_gemm_locate_warp(p, kDecodeRows, blockIdx.x, t, lane)) return; /* the same for the whole CTA */
    t.tile_n = t.tile_n * cper + ct;
    const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
    /* the lane's first pieces (bytes 16q .. 16q + 15 of the warp's first block, and + 64); block i of the warp is
     * i * ksplit blocks further */
    const uint8_t *bsrc[2];
    bool wfill[2]; /* a row past N: its weights read as zeros */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        bsrc[h] = static_cast<const uint8_t *>(p.b) + t.group * p.b_group_stride + (brow[h] < 0 ? 0 : brow[h] * K) +
                  kw * kBK + 16 * q;
        wfill[h] = brow[h] < 0;
    }
    const bool two = moe_decode_a_row(p, t, 8) >= 0; /* rows fill a tile from its start: past 8 only if 8 is real */
    const int64_t a0 = moe_decode_a_row(p, t, g), a1 = two ? moe_decode_a_row(p, t, g + 8) : -1;
    const uint8_t *tok = f.a + (a0 < 0 ? 0 : a0 * K) + kw * kBK + 16 * q;
    const uint8_t *tok1 = f.a + (a1 < 0 ? 0 : a1 * K) + kw * kBK + 16 * q; /* second half: read when used */
    /* the lane's scale word a block: lanes 0-15 A's of tile row `lane` (zeros for padding), 16-17 B's of the half
     * (zeros past N); B's index is its row block's start + kb (one block column when K <= 128: kb is then 0) */
    const char *ssrc = reinterpret_cast<const char *>(f.a_scale);
    int64_t sstep = 0;
    int sbytes = 0;
    int sb_lo[2] = {0, 0}; /* E8M0: the B scale's byte in its aligned word, at kb = 0 */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t r = moe_decode_b_row<kGlu>(p, t, 8 * h);
        const int64_t i = t.group * p.bs.group_stride + (r < 0 ? 0 : r >> 7) * p.bs.cols;
        const char *s = static_cast<const char *>(p.bs.scale) + i * (kE8m0 ? 1 : 4);
        sb_lo[h] = (int)((uintptr_t)s & 3);
        if (lane == 16 + h && r >= 0)
            ssrc = s + kw * (kE8m0 ? 1 : 4), sstep = ksplit * (kE8m0 ? 1 : 4), sbytes = 4;
    }
    if (lane < 16) {
        const int64_t a = moe_decode_a_row(p, t, lane);
        if (a >= 0) {
            ssrc = reinterpret_cast<const char *>(p.gather ? f.a_scale + a * kblocks + kw
                                                           : f.a_scale + kw * f.a_scale_ld + a);
            sstep = 4 * (p.gather ? (int64_t)ksplit : ksplit * f.a_scale_ld), sbytes = 4;
        }
    }
    const int bstep = ksplit * kBK;
    int rem = p.k - kw * kBK - 16 * q; /* K bytes from the lane's piece 0 of its next block: piece c in if > 64c */
    int todo = nk;                       /* blocks to issue */

    /* the warp's next block into the stage at smem offset wr; a group committed either way, so that the counts
     * match. A piece past K (K % 16 == 0: all in or all out) fills zeros and reads nothing; the pointers stop at
     * the last block with a piece inside K. */
    auto advance = [&]() { /* past a block issued */
        if (rem > bstep) {
#pragma unroll
            for (int h = 0; h < 2; h++) bsrc[h] += bstep;
            tok += bstep;
        }
        ssrc += sstep, rem -= bstep, todo--;
    };
    auto issue = [&](uint32_t wr) {
        if (todo > 0) {
            moe_decode_copy_pieces(ring_s + wr, bsrc, wfill, tok, a0 >= 0, rem > 0, rem > 64);
            if (lane < 18)
                moe_cp_async4(scale_s + wr, reinterpret_cast<const void *>((uintptr_t)ssrc & ~(uintptr_t)3), sbytes);
            advance();
        }
        moe_cp_async_commit();
    };
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    /* the first kStages - 1 blocks as issue() would copy them: weights and B scales, the wait for the previous grid
     * (GEMM 2 is a dependent launch of h's quantisation), then the tokens and A scales, a group committed after each
     * block's; then the pointers move on as issue() moves them */
    static_assert(kStages == 3, "the prologue below is written for two blocks ahead");
    auto scale_word = [&](int j) { /* block j's scale word of the lane */
        moe_cp_async4(scale_s + j * kStageBytes,
                      reinterpret_cast<const void *>((uintptr_t)(ssrc + j * sstep) & ~(uintptr_t)3), sbytes);
    };
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) {
        const int r = rem - j * bstep;
        if (j < todo) {
            moe_decode_copy_weights(ring_s + j * kStageBytes, bsrc, wfill, r > 0, r > 64, j && rem > bstep ? bstep : 0);
            if (lane == 16 || lane == 17) scale_word(j);
        }
    }
    moe_pdl_wait();
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) {
        const int r = rem - j * bstep;
        if (j < todo) {
            if (a0 >= 0)
                moe_decode_copy_tokens(ring_s + j * kStageBytes, tok + (j && rem > bstep ? bstep : 0), r > 0, r > 64);
            if (lane < 16) scale_word(j);
        }
        moe_cp_async_commit();
    }
#pragma unroll
    for (int j = 0; j < kStages - 1; j++)
        if (todo > 0) advance();

    /* block i from the stage at rd (kTwo: the tile has a second half) */
    auto block = [&](int i, uint32_t rd, auto two_tag) {
        constexpr bool kTwo = decltype(two_tag)::value;
        const char *st = stage0 + rd;
        const uint4 *slot = reinterpret_cast<const uint4 *>(st) + lane;
        const uint4 w[2][2] = {{slot[0], slot[32]}, {slot[64], slot[96]}};
        const int kb = kw + i * ksplit;
        const uint2 sbw = *reinterpret_cast<const uint2 *>(st + kScaleOff + 64);
        float sb[2];
#pragma unroll
        for (int h = 0; h < 2; h++) sb[h] = moe_decode_block_scale<kE8m0>(h ? sbw.y : sbw.x, sb_lo[h], kb);
#pragma unroll
        for (int n = 0; n < (kTwo ? 2 : 1); n++) {
            uint4 a[2];
            if (n == 0) {
#pragma unroll
                for (int c = 0; c < 2; c++) a[c] = a0 >= 0 ? slot[(4 + c) * 32] : make_uint4(0, 0, 0, 0);
            } else { /* from global memory */
                const int r = p.k - kb * kBK - 16 * q;
#pragma unroll
                for (int c = 0; c < 2; c++)
                    a[c] = a1 >= 0 && r > 64 * c
                               ? __ldg(reinterpret_cast<const uint4 *>(tok1 + (int64_t)i * bstep + 64 * c))
                               : make_uint4(0, 0, 0, 0);
            }
            float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int c = 0; c < 2; c++) piece_mma(tmp, w[0][c], w[1][c], a[c]);
            const float2 sa = *reinterpret_cast<const float2 *>(st + kScaleOff + 32 * n + 8 * q); /* rows 2q, + 1 */
            acc[n][0] = __fmaf_rn(tmp[0], sa.x * sb[0], acc[n][0]);
            acc[n][1] = __fmaf_rn(tmp[1], sa.y * sb[0], acc[n][1]);
            acc[n][2] = __fmaf_rn(tmp[2], sa.x * sb[1], acc[n][2]);
            acc[n][3] = __fmaf_rn(tmp[3], sa.y * sb[1], acc[n][3]);
        }
    };
    /* the K loop, compiled apart for tiles with one half and with two; __syncwarp before a refill (every lane has
     * read block i - 1's scale words) and after the wait (block i's, copied by lanes 0-17, are visible to all) */
    auto k_loop = [&](auto two_tag) {
        moe_decode_k_loop<kStages, kStageBytes, true, true>(nk, issue,
                                                            [&](int i, uint32_t rd) { block(i, rd, two_tag); });
    };
    if (two) k_loop(moe_bool_tag<true>());
    else k_loop(moe_bool_tag<false>());
    moe_cp_async_wait<0>(); /* the empty groups past nk */

    if (moe_decode_reduce(acc, reinterpret_cast<char *>(smem_ring), kStages * kStageBytes, warp, kw, ksplit, lane))
        moe_decode_epilogue<kGlu>(p, t, acc, brow, g, q, 1.0f);
#endif
}

template <bool kGlu, int F>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q;
    int ksplit = 1;
    unsigned tiles = 0;
    MOE_TRY(moe_decode_grid(ctx, "W8A8", p, kGlu, m_tiles, kBK, kCtasPerSm, true, q, ksplit, tiles));
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_fp8_decode_kernel<kGlu, F>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kRing));
    /* GEMM 2 (plain) as a dependent launch of h's quantisation, GEMM 1 of the routing where p.early: see the
     * kernel's prologue and moe_decode_start */
    MOE_CUDA_TRY(ctx, moe_launch(moe_decode_dependent(ctx, p, kGlu), gemm_fp8_decode_kernel<kGlu, F>, dim3(tiles),
                                 kWarps * 32, kRing, st, q, f, ksplit));
    return MOE_OK;
}

} // namespace

moe_status moe__cuda_grouped_gemm_fp8_decode(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                             int64_t m_tiles, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    const bool f32 = p.b_fmt == MOE_B_E4M3_F32;
    if (glu) return f32 ? launch<true, MOE_B_E4M3_F32>(ctx, p, f, m_tiles, stream)
                        : launch<true, MOE_B_E4M3_E8M0>(ctx, p, f, m_tiles, stream);
    return f32 ? launch<false, MOE_B_E4M3_F32>(ctx, p, f, m_tiles, stream)
               : launch<false, MOE_B_E4M3_E8M0>(ctx, p, f, m_tiles, stream);
}
