/* grouped_gemm_sm90_fp8.cu — the routed GEMMs of a W8A8 layer on Hopper's FP8 tensor cores (sm_90a): A in FP8
 * E4M3 with 1x128 f32 scales, B in FP8 E4M3 with 128x128 block scales (DeepSeek-V3's recipe), f32 accumulation
 * with the per-block promotion DeepGEMM does. Contract in grouped_gemm.cuh (moe_gemm_fp8); same tile order, rows
 * and epilogue pieces (gemm_tile.cuh) as the bf16 TMA tile (grouped_gemm_sm90_tma.cu), whose structure this
 * follows:
 *
 * A CTA computes 128 rows x 256 B rows, K in blocks of 128 codes (one 128-byte swizzle row, one scale block)
 * through 3 stages of shared memory (A 16 KB, B 32 KB, A's 128 scales, B's 2). Three warpgroups,
 * persistent CTAs over the tiles of the rows written (moe_gemm_order): each starts at tile blockIdx.x, then takes
 * the next tile nobody has taken from a counter (p.tile_counter: gemm_tile.cuh's walk, moe_tile_ask), so that the
 * tiles start in the order's sequence whatever each one took.
 * The producer finds each tile and hands its descriptor to the consumers beside the tile's first stage, and after
 * the last one a descriptor that ends them:
 *  - the producer (warpgroup 0): per stage, one thread starts the two TMA boxes of B (128 rows x 128 codes each);
 *    all 128 threads cp.async the 128 A rows (gathered tokens for GEMM 1, zeros for padding and past K) and one
 *    A scale each, two of them also B's block scales; the stage is full when the TMA bytes landed and every
 *    producer thread's copies completed. kATile (GEMM 2, whose A rows are the tile's rows of h): the same thread
 *    starts one TMA box of the tile's A rows instead (padding rows read as h holds them: only their own outputs,
 *    never stored, see them), so the consumers need no proxy fence a block for cp.async-written A;
 *  - two consumers of 64 rows each: per K block and per half of B, four wgmma.m64n128k32 into a temporary
 *    (the first one overwrites it), wait, then acc += tmp * (a_scale(row) * b_scale(half)) in f32. The
 *    temporaries of both halves would not fit beside the 128 accumulators, so the halves take turns; each
 *    consumer's promotion overlaps the other consumer's wgmma. A consumer whose 64 rows are all padding in an
 *    expert's only row tile (64 rows or fewer: moe_gemm_rows_idle) issues no wgmma and stores nothing.
 * Epilogues: GEMM 2 (plain) stages the tile's bf16 outputs in shared memory and writes each row's run by a bulk
 * store (TMA), which completes while the next tile runs. GEMM 1 (GLU) stages the (gate, up) pairs of its
 * 128 columns (the tile's 128 gate and 128 up rows) in shared memory, then 8 lanes a row compute h, the row's
 * amax and FP8 codes and one scale per row: the tile's columns are one 1x128 group of h, so GEMM 2 reads h exactly
 * as it was written. A's loads keep their lines in L2 (evict_last: the row tile's other column tiles read them
 * again while B streams through), and the outputs give theirs up first (evict_first: nothing reads them soon).
 * The MEDIUM shape runs the same kernel on 64-row tiles (BM 64: half the padding of experts of 16 to 64 rows, where
 * the 128-row tile spends most of its tensor-core time on zeros): both consumers take the tile's 64 rows, each the
 * rows [64 c, 64 c + 64) of each box of B (wgmma.m64n64k32, same block scales), so in GLU's epilogue warp w of each
 * consumer stages its half of the same rows' 128 columns in one buffer, and after a barrier of the pair each
 * quantises 4 of the 8 rows. 3 stages (BM 128) or 4. */
#include <cuda.h>
#include <stdlib.h>

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90.cuh"
#include "cuda/formats/qformat.cuh"
#include "cuda/moe/gemm_tile.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "moe/layer.h"

namespace {

constexpr int kBN = 256, kBK = 128, kThreads = 384;
constexpr int kStageB = kBN * kBK;
constexpr int kBoxRows = 128;
/* GEMM 1's epilogue goes through shared memory, 8 rows of (gate, up) pairs a consumer warp at a time, which
 * leaves room for 3 stages. Rows of kEpiLd floats: 128 pairs and 16 bytes of padding, so that row r starts at bank
 * 4r mod 32 and both the staging (a 16-byte store per lane, 8 rows x 4 lanes) and the reading (16 bytes per lane,
 * 4 rows x 8 lanes) take the fewest shared-memory wavefronts. */
constexpr int kEpiLd = 2 * 128 + 4, kEpiWarp = 8 * kEpiLd * 4;
/* The tile of BM rows: a stage is A (BM x 128 codes), B 32 KB, then A's BM scales and the words holding B's two
 * block scales; the B rows of a box each consumer multiplies (all, or its half); the epilogue's buffers (GLU: a
 * consumer warp each, or a pair of warps each for BM 64; plain: the tile's rows), which leave room for 3 or 4
 * stages. */
template <int BM, bool kGlu> struct fp8_tile {
    static constexpr int stage_a = BM * kBK, stage_s = BM * 4 + 16, wn = BM == 128 ? 128 : 64;
    static constexpr int stages = BM == 128 ? 3 : 4;
    static constexpr size_t epi = kGlu ? (BM == 128 ? 8 : 4) * kEpiWarp : (size_t)BM * kGemmStagedLd;
    /* + barriers and the tiles' descriptors (a 32-byte slot a stage) */
    static constexpr size_t smem =
        (size_t)stages * (stage_a + kStageB + stage_s) + epi + 2 * stages * 8 + stages * 32 + 1024;
};
static_assert(MOE_LAYER_MAX_TILE_M == 128, "the W8A8 tile is the permutation's largest");
static_assert(fp8_tile<64, true>::wn == 64 && fp8_tile<64, false>::wn == 64 && fp8_tile<128, true>::wn == 128 &&
                  fp8_tile<128, false>::wn == 128,
              "a consumer's B rows of a box");

#ifdef MOE_WGMMA
constexpr uint32_t kNoRow = 0xFFFFFFFFu; /* an A row that reads as zeros */

/* The block scales of B rows [row, row + 128) (row a multiple of 128) of group g, from K block 0; consecutive K
 * blocks' scales are consecutive (128x128 blocks, row-major). nullptr past the rows, whose B reads as zeros. */
template <int F>
__device__ __forceinline__ const uint8_t *b_scale_row(const moe_gemm_params &p, int g, int64_t row, int64_t rows) {
    if (row >= rows) return nullptr;
    const int64_t i = g * p.bs.group_stride + (row >> 7) * p.bs.cols;
    return static_cast<const uint8_t *>(p.bs.scale) + i * (F == MOE_B_E4M3_F32 ? 4 : 1);
}
/* The aligned word holding K block kb's scale (E8M0: a byte of it, at bit 8 ((row + kb) % 4)). */
template <int F> __device__ __forceinline__ const void *b_scale_word(const uint8_t *row, int kb) {
    if (F == MOE_B_E4M3_F32) return row + 4 * kb;
    return reinterpret_cast<const void *>((uintptr_t)(row + kb) & ~(uintptr_t)3);
}

#endif

template <int kBM, bool kGlu, int F, bool kATile>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_fp8_kernel(const moe_gemm_params p, const moe_gemm_fp8 f, const __grid_constant__ CUtensorMap tmap_b,
                    const __grid_constant__ CUtensorMap tmap_a) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#ifdef MOE_WGMMA
    using tile_t = fp8_tile<kBM, kGlu>;
    constexpr int kStages = tile_t::stages, kStageA = tile_t::stage_a, kStageS = tile_t::stage_s, kWN = tile_t::wn;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), base = (raw + 1023u) & ~1023u;
    /* A stages, B stages, A scales, GEMM 1's epilogue rows, full[kStages], empty[kStages] */
    unsigned char *smem = smem_raw + (base - raw);
    const uint32_t a_smem = base, b_smem = base + kStages * kStageA, s_smem = b_smem + kStages * kStageB;
    const uint32_t e_smem = s_smem + kStages * kStageS, bars = e_smem + (uint32_t)tile_t::epi;
    moe_gemm_tile *stage_tile = reinterpret_cast<moe_gemm_tile *>(smem + (bars - base) + 2 * kStages * 8);
    static_assert(sizeof(moe_gemm_tile) <= 32, "a tile's descriptor in its slot");
    const float *sa = reinterpret_cast<const float *>(smem + (s_smem - base));
    const moe_pipe pipe = {bars, kStages};
    __shared__ uint32_t next_tile[2]; /* the producer's next tile, from its thread 0, in turns (moe_tile_next) */
    auto full = [&](int s) { return pipe.full(s); };
    auto empty = [&](int s) { return pipe.empty(s); };
    const int tid = threadIdx.x, wg = tid >> 7;
    /* full: 128 cp.async arrivals + the TMA thread's expect_tx arrival; empty: every consumer thread, once its reads
     * of the stage (its scales; the wgmma's) are done. One arrival a warp after a __syncwarp orders the same on the
     * hardware, but the compiler drops that __syncwarp (the warp is converged), and compute-sanitizer racecheck then
     * reported the other lanes' scale reads against the producer's refill (24 hazards, gpu_layer_w8a8) */
    pipe.init(128 + 1, 2 * 128);
    const int k_tiles = (p.k + kBK - 1) / kBK;
    const moe_gemm_order order = moe_gemm_order_of(p, kBM); /* the tiles with rows */
    const int64_t b_rows = kGlu ? 2 * (int64_t)p.n : p.n;

    if (wg == 0) { /* producer */
        moe_regs_dec<40>();
        const int kc = tid & 7; /* 16-byte chunk kc of rows tid / 8 + 16 i */
        const uint32_t k16 = (uint32_t)(p.k / 16);
        int s = 0;          /* the stage of the next K block, over the tiles */
        uint32_t phase = 1; /* the parity of its empty barrier's phase to wait for (a fresh one: at once) */
        uint32_t *const counter = p.tile_counter;
        /* A's rows stay in L2 ahead of other lines: the row tile's other column tiles read them again, a tile's time
         * later, while B streams through (DeepSeek-V3 at T = 2048 and 8192: -4.0% and -2.4% in the layer;
         * docs/performance.md) */
        const uint64_t keep_a = moe_l2_evict_last();
        for (int64_t tile = blockIdx.x, turn = 0; tile < order.tiles; turn ^= 1) {
            const uint32_t next = moe_tile_ask(counter, tid); /* the next tile's answer comes under this K loop */
            moe_gemm_tile t;
            if (!moe_gemm_locate_order(p, kBM, order, tile, t)) moe_gemm_tile_none(t);
            /* A row offsets in 16-byte units (kNoRow: zeros), and row tid's scale: base + kt * step */
            auto row_of = [&](int64_t r) -> int64_t { /* token or row index of A row r, or -1 */
                if (r >= t.row_end) return -1;
                if (!p.gather) return r;
                const int32_t src = p.row_src[r];
                return src >= 0 ? src / p.top_k : -1;
            };
            uint32_t a_off[kBM / 16];
#pragma unroll
            for (int i = 0; i < kBM / 16; i++) {
                const int64_t a = row_of(t.row0 + (tid >> 3) + 16 * i);
                a_off[i] = a < 0 ? kNoRow : (uint32_t)a * k16;
            }
            const int64_t srow = tid < kBM ? row_of(t.row0 + tid) : -1; /* BM 64: threads 64-127 copy no scale */
            const float *s_src = srow < 0 ? f.a_scale : p.gather ? f.a_scale + srow * k_tiles : f.a_scale + srow;
            const int64_t s_step = p.gather ? 1 : f.a_scale_ld;
            int b0, b1;
            if (kGlu && !p.interleaved) b0 = (int)t.tile_n * kBoxRows, b1 = p.n + b0;
            else b0 = (int)t.tile_n * kBN, b1 = b0 + kBoxRows;
            /* threads 0 and 1 copy the block scales of B's halves (nothing past the rows: the stage's word reads 0,
             * multiplying zeros) */
            const uint8_t *sb_row =
                tid < 2 && t.group >= 0 ? b_scale_row<F>(p, t.group, tid ? b1 : b0, b_rows) : nullptr;
            for (int kt = 0; kt < k_tiles; kt++) {
                moe_mbar_wait(empty(s), phase);
                if (tid == 0) {
                    if (kt == 0) stage_tile[s] = t; /* seen by the consumers through the arrival below */
                    moe_mbar_arrive_expect_tx(full(s), kATile ? kStageB + kStageA : kStageB);
                    moe_tma_load_3d(b_smem + s * kStageB, &tmap_b, full(s), kt * kBK, b0, t.group);
                    moe_tma_load_3d(b_smem + s * kStageB + kBoxRows * kBK, &tmap_b, full(s), kt * kBK, b1, t.group);
                    /* rows past the expert's are its padding rows (or the next tiles'), read but never stored */
                    if (kATile)
                        moe_tma_load_3d_hint(a_smem + s * kStageA, &tmap_a, full(s), kt * kBK, (int)t.row0, 0, keep_a);
                }
                const uint32_t c16 = (uint32_t)(kt * (kBK / 16) + kc);
                const bool in_k = c16 < k16;
                if (!kATile) {
#pragma unroll
                    for (int i = 0; i < kBM / 16; i++) {
                        const int r = (tid >> 3) + 16 * i;
                        const bool ok = a_off[i] != kNoRow && in_k;
                        moe_cp_async16_hint(a_smem + s * kStageA + r * kBK + ((kc ^ (r & 7)) << 4),
                                            ok ? f.a + 16 * (int64_t)(a_off[i] + c16) : f.a, ok ? 16 : 0, keep_a);
                    }
                }
                if (tid < kBM)
                    moe_cp_async4(s_smem + s * kStageS + 4 * tid, srow < 0 ? f.a_scale : s_src + kt * s_step,
                                  srow < 0 ? 0 : 4);
                if (tid < 2)
                    moe_cp_async4(s_smem + s * kStageS + 4 * (kBM + tid),
                                  sb_row ? b_scale_word<F>(sb_row, kt) : f.a_scale, sb_row ? 4 : 0);
                moe_mbar_arrive_cp_async(full(s));
                if (++s == kStages) s = 0, phase ^= 1;
            }
            tile = moe_tile_next(counter, tile, next, &next_tile[turn], tid);
        }
        /* the end: a stage holding only a descriptor that ends the consumers; the CTA done last resets the counters */
        moe_mbar_wait(empty(s), phase);
        if (tid == 0) {
            moe_gemm_tile_end(stage_tile[s]);
            moe_mbar_arrive_expect_tx(full(s), 0);
            moe_tile_done(counter);
        }
        moe_mbar_arrive_cp_async(full(s));
        moe_cp_async_wait<0>();
        return;
    }

    /* consumers */
    moe_regs_inc<232>();
    const int cw = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31;
    /* BM 128: this consumer's 64 rows, all of each box; BM 64: the tile's 64 rows, B rows [c0, c0 + 64) of each box */
    const int r0 = kBM == 128 ? cw * 64 : 0, c0 = kBM == 128 ? 0 : cw * 64;
    const int arow = r0 + warp * 16 + (lane >> 2); /* this thread's rows in the tile: arow, arow + 8 */
    /* the descriptors' low words at stage 0 (this consumer's A rows; its part of B's first half): a stage, a half
     * and a 32-byte K step further are 32-bit additions (moe_smem_desc_of), which keeps the loop's per-block work
     * close to the wgmma and the promotion */
    const uint32_t da0 = (uint32_t)moe_smem_desc(a_smem + r0 * kBK), db0 = (uint32_t)moe_smem_desc(b_smem + c0 * kBK);
    int s = 0;          /* the stage of the next K block, over the tiles */
    uint32_t phase = 0; /* the parity its full barrier completes with */
    const bool lone = moe_gemm_lone_tiles(p, kBM, order);
    for (;;) {
        moe_mbar_wait(full(s), phase); /* the tile's first stage, and its descriptor */
        const moe_gemm_tile t = stage_tile[s];
        if (t.group == kGemmTileEnd) break;
        if (t.group < 0 || (lone && moe_gemm_rows_idle(p, t, kBM, t.row0 + r0))) {
            /* this consumer's 64 rows are all padding in an expert's only row tile (or the tile has none): it
             * releases each stage unread, once full (so that its arrivals stay one a use of the stage), and stores
             * nothing */
            for (int kt = 0; kt < k_tiles; kt++) {
                moe_mbar_wait(full(s), phase);
                moe_mbar_arrive(empty(s));
                if (++s == kStages) s = 0, phase ^= 1;
            }
            continue;
        }
        int64_t b0, b1;
        if (kGlu && !p.interleaved) b0 = t.tile_n * kBoxRows, b1 = p.n + b0;
        else b0 = t.tile_n * kBN, b1 = b0 + kBoxRows;
        /* E8M0 B scales: the bit offset of block 0's byte in its word, for each half */
        const uint32_t sb_lo[2] = {(uint32_t)(uintptr_t)b_scale_row<F>(p, t.group, b0, b_rows),
                                   (uint32_t)(uintptr_t)b_scale_row<F>(p, t.group, b1, b_rows)};
        float acc[2][kWN / 2], tmp[kWN / 2];
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < kWN / 2; i++) acc[h][i] = 0.0f;
        for (int kt = 0; kt < k_tiles; kt++) {
            /* no global load may be in flight here: the proxy fence below waits for this thread's memory accesses,
             * and a block scale read from global memory at each K block made every block wait for it */
            moe_mbar_wait(full(s), phase);
            if (!kATile) moe_fence_proxy_async(); /* the producers' cp.async writes of A -> this warpgroup's wgmma */
            const float *ss = sa + s * (kStageS / 4);
            const float sa0 = ss[arow], sa1 = ss[arow + 8];
            float sb[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint32_t w = reinterpret_cast<const uint32_t *>(ss)[kBM + h];
                sb[h] = F == MOE_B_E4M3_F32
                            ? __uint_as_float(w)
                            : moe_decode((uint8_t)(w >> (8 * ((sb_lo[h] + kt) & 3))), MOE_DTYPE_E8M0);
            }
            const uint32_t da = da0 + s * (kStageA >> 4), db = db0 + s * (kStageB >> 4);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                moe_acc_fence(tmp);
                moe_wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < kBK / 32; kk++) /* 32 codes = 32 bytes further into the swizzled rows */
                    moe_wgmma_e4m3<kWN>(tmp, moe_smem_desc_of(da + 2 * kk),
                                        moe_smem_desc_of(db + h * (kBoxRows * kBK >> 4) + 2 * kk), kk > 0);
                moe_wgmma_commit();
                moe_wgmma_wait<0>();
                moe_acc_fence(tmp);
                const float s0 = sa0 * sb[h], s1 = sa1 * sb[h];
#pragma unroll
                for (int j = 0; j < kWN / 8; j++) {
                    acc[h][4 * j] = __fmaf_rn(tmp[4 * j], s0, acc[h][4 * j]);
                    acc[h][4 * j + 1] = __fmaf_rn(tmp[4 * j + 1], s0, acc[h][4 * j + 1]);
                    acc[h][4 * j + 2] = __fmaf_rn(tmp[4 * j + 2], s1, acc[h][4 * j + 2]);
                    acc[h][4 * j + 3] = __fmaf_rn(tmp[4 * j + 3], s1, acc[h][4 * j + 3]);
                }
            }
            moe_mbar_arrive(empty(s)); /* both halves' wgmma have read the stage, and this thread its scales */
            if (++s == kStages) s = 0, phase ^= 1;
        }

        /* epilogue: registers 4j + {0, 1} of half h hold row arow, B rows h * 128 + c0 + 8j + 2 (lane % 4) + {0, 1};
         * 4j + {2, 3} row arow + 8. Meanwhile the producer fills the stages for the next tile. */
        if (!kGlu) { /* staged in shared memory, bulk stores */
            moe_gemm_store_staged<kBM, kWN>(p, t, acc, smem + (e_smem - base), e_smem, r0, c0, warp, lane,
                                            moe_l2_evict_first());
            continue;
        }
        /* GLU: each warp stages the (gate, up) pairs of 8 of its rows at a time in shared memory, by output column
         * (concatenated: half 0 gate, half 1 up, two columns' pairs in one 16-byte store; interleaved: pairs in
         * registers q, q + 1 of both halves), then 8 lanes take a row, 16 columns each (4 runs of 4 spaced 32
         * apart), so that the row's work (its weight, scale and divider) is done by 8 lanes, not 32, and the amax
         * by 3 shuffles: the warp does 4 rows at a time with 16 independent values a lane. Short code: an
         * epilogue unrolled over all 64 values, with the activation inlined in each, ran out of the instruction
         * cache, and so did 32 values a loop (bench/results/2026-12-07-w8a8-k-loop-and-tile-counter-*). BM 64:
         * warp w of both consumers stage their halves of the same rows' columns in one buffer; after the pair's
         * barrier each takes 4 of the 8 rows. */
        const int buf = kBM == 128 ? cw * 4 + warp : warp;
        float *epi = reinterpret_cast<float *>(smem + (e_smem - base) + buf * kEpiWarp);
        const float *bias = p.bias ? p.bias + t.group * p.bias_group_stride : nullptr;
        const uint64_t drop = moe_l2_evict_first(); /* the policy of h's code stores */
        moe_qparams q;
        q.rule = f.rule, q.elem_max = 448.0f, q.elem_emax = 8;
        const int part = lane & 7; /* this lane's share of its row: columns 32 m + 4 part + {0..3}, m < 4 */
#pragma unroll
        for (int i = 0; i < 2; i++) {
#pragma unroll
            for (int j = 0; j < kWN / 8; j++) {
                const int qi = 4 * j + 2 * i;
                if (!p.interleaved) { /* columns c, c + 1: (gate, up) pairs side by side */
                    const int c = c0 + j * 8 + 2 * (lane & 3);
                    *reinterpret_cast<float4 *>(epi + (lane >> 2) * kEpiLd + 2 * c) =
                        make_float4(acc[0][qi], acc[1][qi], acc[0][qi + 1], acc[1][qi + 1]);
                } else {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int c = e * 64 + c0 / 2 + j * 4 + (lane & 3);
                        *reinterpret_cast<float2 *>(epi + (lane >> 2) * kEpiLd + 2 * c) =
                            make_float2(acc[e][qi], acc[e][qi + 1]);
                    }
                }
            }
            if (kBM == 128) __syncwarp();
            else moe_bar_sync_pair(warp);
            moe_gemm_by_act<true>(p.act, [&](auto act) {
                constexpr int A = decltype(act)::value;
#pragma unroll 1
                for (int it = kBM == 128 ? 0 : cw; it < (kBM == 128 ? 2 : cw + 1); it++) {
                    const int rr = 4 * it + (lane >> 3);
                    const int64_t r = t.row0 + r0 + warp * 16 + 8 * i + rr;
                    const moe_gemm_row_out ro = moe_gemm_row<true>(p, t, r); /* the same for the row's 8 lanes */
                    const int64_t col0 = t.tile_n * kBoxRows + 4 * part;
                    float h[16], m = 0.0f;
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        const float4 a = *reinterpret_cast<const float4 *>(epi + rr * kEpiLd + 64 * k + 8 * part);
                        const float4 b = *reinterpret_cast<const float4 *>(epi + rr * kEpiLd + 64 * k + 8 * part + 4);
                        const float g[4] = {a.x, a.z, b.x, b.z}, u[4] = {a.y, a.w, b.y, b.w};
                        const bool in = col0 + 32 * k < p.n; /* n % 8 == 0: the 4 columns are all in or all out */
#pragma unroll
                        for (int c = 0; c < 4; c++) {
                            const int64_t col = col0 + 32 * k + c;
                            float gc = g[c] * ro.w, uc = u[c] * ro.w;
                            if (bias && in) {
                                gc += bias[p.interleaved ? 2 * col : col];
                                uc += bias[p.interleaved ? 2 * col + 1 : p.n + col];
                            }
                            h[4 * k + c] = in ? moe_glu<A>(gc, uc, p.alpha, p.limit) : 0.0f;
                            m = fmaxf(m, fabsf(h[4 * k + c])); /* fmaxf drops NaN */
                        }
                    }
#pragma unroll
                    for (int o = 4; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
                    const moe_block_scale sc = moe_scale_from_amax(q, moe_finish_amax(m, f.amax_floor));
                    const moe_divider d = moe_make_divider(sc.value, m);
                    if (sc.divide) moe_scale_values<true>(h, sc, d);
                    else moe_scale_values<false>(h, sc, d);
                    if (ro.skip) continue;
#pragma unroll
                    for (int k = 0; k < 4; k += 2) { /* the codes of runs k and k + 1 */
                        const uint2 w = moe_encode8(reinterpret_cast<const float(&)[8]>(h[4 * k]), MOE_DTYPE_E4M3);
                        /* GEMM 2 reads h after GEMM 1 has ended: L2 gives it up first */
                        if (col0 + 32 * k < p.n) moe_store_u32_hint(f.c + r * p.n + col0 + 32 * k, w.x, drop);
                        if (col0 + 32 * (k + 1) < p.n)
                            moe_store_u32_hint(f.c + r * p.n + col0 + 32 * (k + 1), w.y, drop);
                    }
                    if (part == 0) f.c_scale[t.tile_n * f.c_scale_ld + r] = sc.value;
                }
            });
            if (kBM == 128) __syncwarp();
            else moe_bar_sync_pair(warp); /* both have read the buffer before either refills it */
        }
    }
    if (!kGlu) moe_bulk_wait_all(); /* the last tile's stores have read the buffer before the CTA ends */
#endif
}

template <int kBM, bool kGlu, int F, bool kATile>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, const CUtensorMap *m,
                  int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q = p;
    q.m_tiles = m_tiles, q.n_tiles = (p.n + (kGlu ? kBN / 2 : kBN) - 1) / (kGlu ? kBN / 2 : kBN);
    const int64_t tiles = q.m_tiles * q.n_tiles, sms = ctx->cuda.sm_count;
    if (tiles > INT32_MAX) /* the tile order's 32-bit arithmetic (gemm_tile.cuh) */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "W8A8 grouped GEMM: %lld tiles exceed 2^31", (long long)tiles);
    const dim3 grid((unsigned)(tiles < sms ? tiles : sms)); /* persistent: one CTA an SM */
    if (getenv("MOE_GEMM_STATIC_WALK")) q.tile_counter = nullptr;
    constexpr size_t smem = fp8_tile<kBM, kGlu>::smem;
    auto kernel = gemm_fp8_kernel<kBM, kGlu, F, kATile>;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    MOE_CUDA_TRY(ctx, moe_launch(false, kernel, grid, kThreads, smem, st, q, f, m[0], m[1]));
    return MOE_OK;
}

} // namespace

bool moe__cuda_gemm_fp8_fits(moe_ctx *ctx, const moe_gemm_params &p, bool glu) {
    if (!moe__cuda_gemm_sm90_usable(ctx) || getenv("MOE_GEMM_NO_FP8_MMA")) return false;
    if (p.b_fmt != MOE_B_E4M3_F32 && p.b_fmt != MOE_B_E4M3_E8M0) return false;
    /* 128x128 blocks (a matrix 128 columns wide or less has one block column: the layer calls it a whole row) */
    if (p.bs.row_shift != 7 || !(p.bs.col_shift == 7 || (p.bs.col_shift == 31 && p.k <= 128)) || p.bs.global)
        return false;
    if ((uintptr_t)p.b % 16 || p.k % 16 || p.b_group_stride % 16 || p.n_groups < 1 || !p.offsets) return false;
    return glu ? p.interleaved || p.n % 128 == 0 : p.n % 8 == 0; /* plain: moe_gemm_store_staged's whole runs */
}

template <int kBM>
moe_status launch_bm(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu, const CUtensorMap *m,
                     bool a_tile, int64_t m_tiles, cudaStream_t stream) {
    const bool f32 = p.b_fmt == MOE_B_E4M3_F32;
    if (glu) return f32 ? launch<kBM, true, MOE_B_E4M3_F32, false>(ctx, p, f, m, m_tiles, stream)
                        : launch<kBM, true, MOE_B_E4M3_E8M0, false>(ctx, p, f, m, m_tiles, stream);
    if (a_tile) return f32 ? launch<kBM, false, MOE_B_E4M3_F32, true>(ctx, p, f, m, m_tiles, stream)
                           : launch<kBM, false, MOE_B_E4M3_E8M0, true>(ctx, p, f, m, m_tiles, stream);
    return f32 ? launch<kBM, false, MOE_B_E4M3_F32, false>(ctx, p, f, m, m_tiles, stream)
               : launch<kBM, false, MOE_B_E4M3_E8M0, false>(ctx, p, f, m, m_tiles, stream);
}

moe_status moe__cuda_grouped_gemm_fp8(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                      int tile_m, int64_t m_tiles, cudaStream_t stream) {
    if (!glu && (uintptr_t)p.c % 16) /* the output rows' bulk stores (moe_gemm_store_staged) */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "W8A8 grouped GEMM: its bf16 output is not 16-byte aligned");
    CUtensorMap m[2]; /* B; A where GEMM 2 reads it by TMA */
    if (!moe__cuda_tmap_3d(&m[0], CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.b, p.k, glu ? 2 * (int64_t)p.n : p.n,
                           p.n_groups, p.b_group_stride, kBK, kBoxRows))
        return moe__error(ctx, MOE_ERR_CUDA, "W8A8 grouped GEMM: the driver refused the weights' TMA descriptor");
    /* GEMM 2's A (h, its rows in the tile's order) by TMA, a box of the tile's rows a stage, where TMA can address it
     * and the environment does not set MOE_GEMM_FP8_A_CPASYNC (the tests' way to run the cp.async path); GEMM 1's
     * gathered token rows by cp.async (a TMA box a row measured 35% slower:
     * bench/results/2026-12-07-w8a8-a-by-tma-experiments-h100.txt) */
    const bool a_tile = !glu && !p.gather && !getenv("MOE_GEMM_FP8_A_CPASYNC") && (uintptr_t)f.a % 16 == 0 &&
                        moe__cuda_tmap_3d(&m[1], CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, f.a, p.k, f.a_rows, 1,
                                          f.a_rows * p.k, kBK, tile_m);
    if (!a_tile) m[1] = m[0]; /* unread */
    return tile_m == 64 ? launch_bm<64>(ctx, p, f, glu, m, a_tile, m_tiles, stream)
                        : launch_bm<128>(ctx, p, f, glu, m, a_tile, m_tiles, stream);
}
