/* grouped_gemm_fp4_decode.cu — FP4 expert weights (MXFP4: E2M1 codes, an E8M0 scale a 32-code block; NVFP4: an
 * E4M3 scale a 16-code block and the group's f32 global scale) at decode, bf16 activations: the SMALL tile's GEMMs
 * (16 rows an expert) on the bf16 tensor cores through mma.sync m16n8k16 (sm_80 and later). Contract in
 * grouped_gemm.cuh (moe__cuda_grouped_gemm_fp4_decode); the arithmetic is the other tiles' (bquant.cuh): each
 * weight is bf16(code * block scale), exactly, and the products are summed in f32.
 *
 * The layout is the W8A8 decode kernel's (gemm_decode.cuh): a CTA of 4 warps takes one 16-row tile and 1, 2 or 4
 * column tiles of 16 B rows, the warps of a column tile splitting K by 128-wide blocks; the weights are the mma's M
 * operand and the tokens its N operand (8 rows a half tile; the second half's tokens, rare at decode, are read from
 * global memory when a tile has more than 8 rows). A tile a CTA. Each lane copies its own pieces into its own slots
 * of a per-warp cp.async ring (3 stages) and reads back only those, so no barrier is needed: 16 bytes of codes of
 * weight rows g and g + 8 (K values 32q .. 32q + 31 of the block, q = lane % 4), the matching 64 bytes of its
 * first-half token row g (copied only when that row is real), and the 4-byte words holding the two rows' scales
 * of those values. Or (kTile: MXFP4 with K split over 2 or 4 warps) the scales come once a tile: the column tile's
 * K warps copy its rows' scales, two runs of consecutive rows' bytes, into the CTA's shared memory after the rings
 * (a barrier before the K loop), and each lane reads its word from there a block. The per-block copies ask for a
 * 32-byte sector from each of 16 rows a block, which slowed a bare stream of DeepSeek-V3's GEMM 1 by 15%
 * (bench/micro/decode_stream_fp4.cu); the runs come as whole lines.
 *
 * Codes become bf16 with three integer operations a pair, times 2^-126, and one bf16 multiply by the block's
 * factor s * 2^118 (fp4_codes.cuh; measured on the H200 against two shifts and two masks a pair: 1-5% faster
 * layers), so the weight enters the mma as s * value * 2^-8, which the epilogue undoes with its factor 256. E8M0
 * scales above 2^9, whose factor would overflow, take a multiply by 2^126 first (warp-uniformly skipped where no
 * lane has one). The mma's K slots of a lane get
 * codes 3 and 7, 2 and 6 (first mma) and 1 and 5, 0 and 4 (second) of each word; the token's bf16 values are
 * paired the same way with byte permutes, and the order of a sum does not matter to an mma. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/fp4_codes.cuh"
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
/* 39 KB (the partial tiles' sum passes through it too): 5 CTAs an SM (at most 96 registers) */
constexpr size_t kRing = (size_t)kWarps * kStages * kStageBytes;
constexpr int kCtasPerSm = 5;
/* With the tile's scales (kTile): a stage without the scale words, and after the warps' rings the scales of the
 * CTA's column tiles, each in two runs of B rows (fp4_tile_runs) of at most fp4_run_bytes(cols) bytes; at most
 * kTileScaleBytes in all, so that 5 CTAs still fit an SM (228 KB less 1 KB a CTA). */
constexpr int kTileStageBytes = kSlots * 32 * 16;
constexpr size_t kTileRing = (size_t)kWarps * kStages * kTileStageBytes;
constexpr int kTileScaleBytes = 8704;
static_assert(kCtasPerSm * (kTileRing + kTileScaleBytes + 1024) <= 228 * 1024, "5 CTAs an SM with the tile's scales");
/* bytes a run of 8 rows' scales takes in shared memory: the rows' cols bytes each, copied as whole aligned words (up
 * to 3 bytes more at each end), rounded to 16 */
__host__ __device__ constexpr int64_t fp4_run_bytes(int64_t cols) { return (8 * cols + 8 + 15) / 16 * 16; }
/* A column tile's two runs: the shared memory a column tile's scales take */
__host__ __device__ constexpr int64_t fp4_tile_scale_bytes(int64_t cols) { return 2 * fp4_run_bytes(cols); }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
/* A row's block factors f = s * 2^118 for the scales s of the lane's 32 values, as bf16 pairs (f, f): `word` holds
 * the scale codes from its low byte. MX: one E8M0 scale 2^(e - 127), factor 2^(e - 9) up to e = 136; above, *big
 * and the factor is fp4_factor_big's. NV: two E4M3 scales (values 0-15, 16-31), exact in bf16 times 2^118. */
template <bool kMx> __device__ __forceinline__ void fp4_factors(uint32_t word, uint32_t (&f)[2], bool *big) {
    if (kMx) {
        f[0] = f[1] = fp4_factor<true>(word & 0xFF, big);
    } else {
        const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(word & 0xFFFF), __NV_E4M3);
        const float2 v = __half22float2(__half2(h));
        const __nv_bfloat162 b = __floats2bfloat162_rn(v.x * 0x1p118f, v.y * 0x1p118f);
        const uint32_t u = *reinterpret_cast<const uint32_t *>(&b);
        f[0] = moe_prmt(u, u, 0x1010), f[1] = moe_prmt(u, u, 0x3232);
        *big = false;
    }
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
    mma(d, w0[0], w1[0], w0[1], w1[1], moe_prmt(x.y, x.w, 0x7632), moe_prmt(x.y, x.w, 0x5410));
    mma(d, w0[2], w1[2], w0[3], w1[3], moe_prmt(x.x, x.z, 0x7632), moe_prmt(x.x, x.z, 0x5410));
}
#endif

/* The B rows whose scales a column tile reads, as two runs [first, first + rows) of consecutive rows: run h holds
 * the rows of M rows 8h .. 8h + 7 (plain: 8 rows from 16 tile_n + 8h; GLU: the gate's 8 rows, then the up's), or,
 * for GPT-OSS's interleaved w13, run 0 all 16 (gate and up rows alternate) and run 1 none. Rows past N left out. */
struct fp4_tile_runs {
    int64_t first[2];
    int rows[2];
};
template <bool kGlu>
__device__ __forceinline__ fp4_tile_runs fp4_tile_runs_of(const moe_gemm_params &p, const moe_gemm_tile &t) {
    fp4_tile_runs r;
    if (!kGlu) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            r.first[h] = t.tile_n * 16 + 8 * h;
            const int64_t left = p.n - r.first[h];
            r.rows[h] = left <= 0 ? 0 : left < 8 ? (int)left : 8;
        }
        return r;
    }
    const int64_t col0 = t.tile_n * 8, left = p.n - col0;
    const int cols = left <= 0 ? 0 : left < 8 ? (int)left : 8;
    if (p.interleaved) {
        r.first[0] = 2 * col0, r.rows[0] = 2 * cols, r.first[1] = 0, r.rows[1] = 0;
    } else {
        r.first[0] = col0, r.first[1] = p.n + col0, r.rows[0] = r.rows[1] = cols;
    }
    return r;
}

template <bool kGlu, int F, bool kTile>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm)
    gemm_fp4_decode_kernel(const moe_gemm_params p, int ksplit) {
    /* GEMM 2's wait for the previous grid comes after the first codes are on their way (below): before it, only
     * what was written before the previous grid started is read (the permutation, weights, scales) */
    moe_decode_start<kGlu>();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr bool kMx = F == MOE_B_E2M1_E8M0;
    constexpr int kScaleBytes = kMx ? 1 : 2;   /* a lane's scales a row and block: its 32 values */
    constexpr int kGroupShift = kMx ? 5 : 4;   /* values a scale: 32 or 16 */
    constexpr int kStageBytes = kTile ? kTileStageBytes : ::kStageBytes;
    extern __shared__ uint4 smem_ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const char *stage0 = reinterpret_cast<const char *>(smem_ring) + warp * kStages * kStageBytes;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(stage0) + lane * 16; /* the lane's slot 0 */
    const uint32_t scale_s = (uint32_t)__cvta_generic_to_shared(stage0) + kSlots * 512 + lane * 8;
    const int64_t K = p.k;
    const int kblocks = (int)((K + kBK - 1) / kBK);
    const moe_decode_warp wr = moe_decode_warp_of(warp, ksplit, kblocks);
    const int cper = wr.cper, ct = wr.ct, kw = wr.kw, nk = wr.nk; /* nk: this warp's blocks */
    int shift[2]; /* a row's scales: bits into their aligned word */
    moe_gemm_tile t; /* p.n_tiles counts groups of cper column tiles; t.tile_n is this warp's column tile */
    if (!moe_gemm_locate_warp(p, kDecodeRows, blockIdx.x, t, lane)) return; /* the same for the whole CTA */
    t.tile_n = t.tile_n * cper + ct;
    const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
    /* the lane's pieces of this warp's first block; block i of the warp is i * ksplit blocks further */
    const uint8_t *bsrc[2], *ssrc[2], *brow0[2], *srow0[2]; /* and the rows' first pieces */
    bool wfill[2]; /* a row past N: its codes read as zeros */
    int sbytes[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t r = brow[h] < 0 ? 0 : brow[h];
        brow0[h] = static_cast<const uint8_t *>(p.b) + t.group * (p.b_group_stride / 2) + r * (K / 2);
        bsrc[h] = brow0[h] + kw * (kBK / 2) + 16 * q;
        const uint8_t *s0 = static_cast<const uint8_t *>(p.bs.scale) + t.group * p.bs.group_stride + r * p.bs.cols;
        const uint8_t *sc = s0 + ((kw * kBK + 32 * q) >> kGroupShift);
        const int soff = (int)((uintptr_t)sc & 3); /* the lane's first scale in its aligned word: every block */
        ssrc[h] = sc - soff;
        srow0[h] = s0 - ((uintptr_t)s0 & 3);
        wfill[h] = brow[h] < 0;
        sbytes[h] = brow[h] < 0 ? 0 : soff + kScaleBytes;
        shift[h] = 8 * soff;
    }
    /* kTile: the column tile's scale rows, copied once (below, by its K warps) to the CTA's shared memory after the
     * rings; toff[h]: the aligned word there of the lane's scales of row h in its first block */
    const char *tile_scales = reinterpret_cast<const char *>(smem_ring) + kWarps * kStages * kStageBytes +
                              ct * fp4_tile_scale_bytes(p.bs.cols);
    int toff[2] = {0, 0};
    if (kTile) {
        const fp4_tile_runs runs = fp4_tile_runs_of<kGlu>(p, t);
        const uint8_t *sg = static_cast<const uint8_t *>(p.bs.scale) + t.group * p.bs.group_stride;
        const uint32_t dst = (uint32_t)__cvta_generic_to_shared(tile_scales);
        int lead[2]; /* each run's first byte in its word: the run keeps its bytes' offsets in words */
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint8_t *from = sg + runs.first[h] * p.bs.cols;
            lead[h] = (int)((uintptr_t)from & 3);
            const int words = runs.rows[h] ? (lead[h] + runs.rows[h] * (int)p.bs.cols + 3) >> 2 : 0;
            for (int w = kw * 32 + lane; w < words; w += ksplit * 32)
                moe_cp_async4(dst + h * fp4_run_bytes(p.bs.cols) + 4 * w, from - lead[h] + 4 * w, 4);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) { /* the lane's row h: in run h, or in run 0 for interleaved rows */
            const int hr = kGlu && p.interleaved ? 0 : h;
            const int64_t at = hr * fp4_run_bytes(p.bs.cols) + lead[hr] + (brow[h] - runs.first[hr]) * p.bs.cols +
                               ((kw * kBK + 32 * q) >> kGroupShift);
            toff[h] = brow[h] < 0 ? 0 : (int)(at & ~(int64_t)3);
            shift[h] = 8 * (int)(at & 3);
        }
        moe_cp_async_commit();
    }
    const bool two = moe_decode_a_row(p, t, 8) >= 0; /* rows fill a tile from its start */
    const int64_t a0 = moe_decode_a_row(p, t, g), a1 = two ? moe_decode_a_row(p, t, g + 8) : -1;
    const __nv_bfloat16 *asrc[2] = {p.a + (a0 < 0 ? 0 : a0 * K) + kw * kBK + 32 * q,
                                    p.a + (a1 < 0 ? 0 : a1 * K) + kw * kBK + 32 * q};
    /* the lane's 32 values lie inside K for its first nin blocks (K % 32 == 0: all in or all out) */
    const int kin = (int)((K - 32 * q + kBK - 1) / kBK) - kw; /* K >= 32: the sum is positive */
    const int nin = kin <= 0 ? 0 : (kin + ksplit - 1) >> wr.shift;
    const uint32_t wstep = ksplit * (kBK / 2), sstep = ksplit * (kBK >> kGroupShift), astep = ksplit * kBK;
    const __nv_bfloat16 *tok = asrc[0];
    if (nin == 0) { /* no piece inside K: point at the rows' first pieces, never read (zero fill) */
#pragma unroll
        for (int h = 0; h < 2; h++) bsrc[h] = brow0[h], ssrc[h] = srow0[h];
        tok = p.a;
    }
    int left = nin, todo = nk; /* blocks of the lane inside K, blocks to issue */

    /* the warp's next block into the stage at smem offset wr; a group committed either way, so that the counts
     * match. Past K the pointers stay on the lane's last block inside K and the copies fill zeros. */
    auto advance = [&]() { /* past a block issued */
        if (left > 1) {
#pragma unroll
            for (int h = 0; h < 2; h++) bsrc[h] += wstep, ssrc[h] += sstep;
            tok += astep;
        }
        left--, todo--;
    };
    auto issue = [&](uint32_t wr) {
        if (todo > 0) {
            const bool out = left <= 0;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                moe_decode_copy16_cg_if(ring_s + wr + h * 512, bsrc[h], out || wfill[h]);
                if (!kTile) moe_cp_async4(scale_s + wr + 4 * h, ssrc[h], out ? 0 : sbytes[h]);
            }
            if (a0 >= 0)
#pragma unroll
                for (int j = 0; j < 4; j++) moe_decode_copy16_ca_if(ring_s + wr + (2 + j) * 512, tok + 8 * j, out);
            advance();
        }
        moe_cp_async_commit();
    };
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    /* the first kStages - 1 blocks as issue() would copy them: codes and scales, the wait for the previous grid
     * (the routed GEMM 2 is a dependent launch of GEMM 1), then the tokens, a group committed after each block's;
     * then the pointers move on as issue() moves them */
    static_assert(kStages == 3, "the prologue below is written for two blocks ahead");
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) {
        const bool out = left - j <= 0, on = j && left > 1; /* block j's pieces: past K; one step further */
        if (j < todo)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                moe_decode_copy16_cg_if(ring_s + j * kStageBytes + h * 512, bsrc[h] + (on ? wstep : 0),
                                        out || wfill[h]);
                if (!kTile)
                    moe_cp_async4(scale_s + j * kStageBytes + 4 * h, ssrc[h] + (on ? sstep : 0), out ? 0 : sbytes[h]);
            }
    }
    moe_pdl_wait();
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) {
        const bool out = left - j <= 0, on = j && left > 1;
        if (j < todo && a0 >= 0)
#pragma unroll
            for (int c = 0; c < 4; c++)
                moe_decode_copy16_ca_if(ring_s + j * kStageBytes + (2 + c) * 512, tok + (on ? astep : 0) + 8 * c, out);
        moe_cp_async_commit();
    }
#pragma unroll
    for (int j = 0; j < kStages - 1; j++)
        if (todo > 0) advance();
    if (kTile) { /* the tile's scales (the oldest group) in, from every K warp */
        moe_cp_async_wait<kStages - 1>();
        __syncthreads();
    }

    /* block i from stage rd, whose scale words sw the K loop has read (kBig: some lane's MX scale needs the 2^126
     * path; kTwo: the tile has a second half) */
    auto block = [&](int i, uint32_t rd, uint2 sw, auto big_tag, auto two_tag) {
        constexpr bool kBig = decltype(big_tag)::value, kTwo = decltype(two_tag)::value;
        const char *st = stage0 + rd;
        const uint4 *slot = reinterpret_cast<const uint4 *>(st) + lane;
        const uint4 codes[2] = {slot[0], slot[32]};
        /* the rows' factors: MX one for the lane's 32 values, NV one for each 16 */
        uint32_t fac[2][2];
        bool big[2];
        fp4_factors<kMx>(sw.x >> shift[0], fac[0], &big[0]);
        fp4_factors<kMx>(sw.y >> shift[1], fac[1], &big[1]);
        if (kBig)
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (big[h]) fac[h][0] = fac[h][1] = fp4_factor_big((h ? sw.y : sw.x) >> shift[h]);
        const bool in2 = kTwo && a1 >= 0 && i < nin; /* the second half's token: real, inside K */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t w[2][4];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint32_t cw = (&codes[h].x)[j], f = fac[h][j >> 1], cw8 = cw >> 8;
#pragma unroll
                for (int t2 = 0; t2 < 4; t2++) {
                    uint32_t v = fp4_pair(cw, cw8, t2);
                    if (kBig && big[h]) v = bf16x2_mul(v, kFp4Big); /* 2^126 */
                    w[h][t2] = bf16x2_mul(v, f);
                }
            }
            const uint4 x = a0 >= 0 ? slot[(2 + j) * 32] : make_uint4(0, 0, 0, 0);
            fp4_word_mma(acc[0], w[0], w[1], x);
            if (kTwo) /* from global memory */
                fp4_word_mma(acc[1], w[0], w[1],
                             in2 ? __ldg(reinterpret_cast<const uint4 *>(asrc[1] + i * astep + 8 * j))
                                 : make_uint4(0, 0, 0, 0));
        }
    };
    /* the K loop, compiled apart for tiles with one half and with two, rolled (one copy of the block's code: see
     * moe_decode_k_loop); blocks whose MX scales pass 2^9 (a warp-uniform test) take the 2^126 path */
    auto k_loop = [&](auto two_tag) {
        moe_decode_k_loop<kStages, kStageBytes, false, true>(nk, issue, [&](int i, uint32_t rd) {
            uint2 sw;
            if (kTile) { /* zeros past K and for rows past N, as the copies fill them */
                const int step = i * (int)sstep;
                sw.x = brow[0] >= 0 && i < nin ? *reinterpret_cast<const uint32_t *>(tile_scales + toff[0] + step) : 0;
                sw.y = brow[1] >= 0 && i < nin ? *reinterpret_cast<const uint32_t *>(tile_scales + toff[1] + step) : 0;
            } else {
                sw = *reinterpret_cast<const uint2 *>(stage0 + rd + kSlots * 512 + lane * 8);
            }
            bool big = false;
            if (kMx) big = ((sw.x >> shift[0]) & 0xFF) > 136 || ((sw.y >> shift[1]) & 0xFF) > 136;
            if (kMx && __any_sync(0xFFFFFFFFu, big)) block(i, rd, sw, moe_bool_tag<true>(), two_tag);
            else block(i, rd, sw, moe_bool_tag<false>(), two_tag);
        });
    };
    if (two) k_loop(moe_bool_tag<true>());
    else k_loop(moe_bool_tag<false>());
    moe_cp_async_wait<0>(); /* the empty groups past nk */
    if (moe_decode_reduce(acc, reinterpret_cast<char *>(smem_ring), kStages * kStageBytes, warp, kw, ksplit, lane))
        moe_decode_epilogue<kGlu>(p, t, acc, brow, g, q, kFp4Undo);
#endif
}

template <bool kGlu, int F, bool kTile>
moe_status launch_as(moe_ctx *ctx, const moe_gemm_params &q, int ksplit, unsigned tiles, size_t smem, cudaStream_t st) {
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_fp4_decode_kernel<kGlu, F, kTile>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    /* the routed GEMM 2 (plain) as a dependent launch of GEMM 1, GEMM 1 of the routing where q.early: see the
     * kernel's prologue and moe_decode_start */
    MOE_CUDA_TRY(ctx, moe_launch(moe_decode_dependent(ctx, q, kGlu), gemm_fp4_decode_kernel<kGlu, F, kTile>,
                                 dim3(tiles), kWarps * 32, smem, st, q, ksplit));
    return MOE_OK;
}

template <bool kGlu, int F>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q;
    int ksplit = 1;
    unsigned tiles = 0;
    /* MXFP4: a grid of several waves takes longer warps (moe_decode_ksplit_for_grid); NVFP4 was slower so */
    const bool longer = F == MOE_B_E2M1_E8M0;
    MOE_TRY(moe_decode_grid(ctx, "FP4", p, kGlu, m_tiles, kBK, kCtasPerSm, false, q, ksplit, tiles, longer));
    /* MXFP4 with the K split over 2 or 4 warps: the tile's scales in shared memory, where the CTA's column tiles'
     * runs fit (measured on the H100, docs/performance.md "Since 1877b75": up to 12% faster; NVFP4 level to 2%
     * slower, and with one K warp a column tile, whose barrier then waits on the others, up to 7% slower) */
    if constexpr (F == MOE_B_E2M1_E8M0) {
        const int64_t scale_bytes = (int64_t)(kWarps / ksplit) * fp4_tile_scale_bytes(p.bs.cols);
        if (ksplit >= 2 && scale_bytes <= kTileScaleBytes)
            return launch_as<kGlu, F, true>(ctx, q, ksplit, tiles, kTileRing + (size_t)scale_bytes, st);
    }
    return launch_as<kGlu, F, false>(ctx, q, ksplit, tiles, kRing, st);
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
