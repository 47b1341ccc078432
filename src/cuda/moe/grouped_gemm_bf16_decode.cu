/* grouped_gemm_bf16_decode.cu — BF16 expert weights at decode (the SMALL tile: 16 rows an expert): the routed GEMMs
 * streaming the weights through mma.sync m16n8k16 bf16 (sm_80 and later). Contract in grouped_gemm.cuh
 * (moe__cuda_grouped_gemm_bf16_decode); the arithmetic is the other bf16 tiles': bf16 products summed in f32.
 *
 * The layout is the W8A8 decode kernel's, counted in bytes (gemm_decode.cuh): a CTA of 4 warps takes one 16-row tile
 * and 1, 2 or 4 column tiles of 16 weight rows (GLU: the gate and up rows of 8 output columns; plain: 16 columns), the
 * 4, 2 or 1 warps of a column tile splitting K by 64-wide blocks (128 bytes of a row, so a warp's block is the 2 KB of
 * weights a W8A8 block is, and the K split follows the same rule); their partial tiles are added in warp order
 * (deterministic). Routed GEMMs find their tile's expert as the other decode kernels do; dense ones (the shared
 * experts) take group blockIdx.z. Each lane copies the 16-byte pieces c = 0, 1 (K values 8q + 32c .. + 7 of the block,
 * q = lane % 4) of weight rows g and g + 8 and of its first-half token row g (g = lane / 4; the token's only when that
 * row is real) into its own slots of a per-warp cp.async ring (3 stages) and reads back only those, so no barrier is
 * needed; a second half's token rows (more than 8 rows in the tile, rare at decode) are read from global memory when
 * used (measured on the H200 against copying them through the ring too, 8 slots and 4 CTAs an SM: as fast or faster at
 * T = 1-128 but for Mixtral T = 128). Nothing is converted: a piece's bf16 pairs 0 and 1 are the A registers of one
 * mma (K slots 2q, 2q + 1 and 2q + 8, 2q + 9, rows g and g + 8) and pairs 2 and 3 those of a second; the token's pairs
 * at the same K fill the B registers (the order of a sum does not matter to an mma). */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/gemm_decode.cuh"
#include "cuda/moe/grouped_gemm.cuh"

namespace {

constexpr int kWarps = kDecodeWarps;
constexpr int kStages = 3;       /* K blocks a warp has in flight */
constexpr int kBK = 64;          /* K values a block */
constexpr int kBlockBytes = 128; /* of a row */
/* A warp's stage: 16-byte slots, slot i of lane l at (32 i + l) 16 bytes (no two lanes of a phase share a bank):
 * slots 0-3 the weights w[h][c] (slot 2h + c: row g + 8h, piece c), 4-5 the first half's token pieces a[c]. */
constexpr int kSlots = 6, kStageBytes = kSlots * 32 * 16;
/* 36 KB (the partial tiles' sum passes through it too), and the 1 KB a CTA the driver keeps: 6 CTAs an SM, at most
 * 80 registers (80 used, no spills). Measured on the H200 against 5 CTAs (two A/B runs, bf16 layer): Qwen3-30B-A3B
 * -2.8% at T = 1 and -1.1% at 16 and 128, GPT-OSS-120B -4.5% at T = 1, DeepSeek-V3 -1.6% at T = 16; Mixtral-8x7B
 * and OLMoE +0.8% at T = 1; other decode points within 0.5%. Warps of 2 or 4 column tiles against the same token
 * pieces (less token traffic, fewer CTAs an SM) were slower at every point (docs/performance.md). */
constexpr size_t kRing = (size_t)kWarps * kStages * kStageBytes;
constexpr int kCtasPerSm = 6;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
/* d += the products of one piece pair: weight rows g (w0) and g + 8 (w1) against a token's values x at the same K. */
__device__ __forceinline__ void piece_mma(float (&d)[4], const uint4 &w0, const uint4 &w1, const uint4 &x) {
    const uint32_t a0[4] = {w0.x, w1.x, w0.y, w1.y}, b0[2] = {x.x, x.y};
    const uint32_t a1[4] = {w0.z, w1.z, w0.w, w1.w}, b1[2] = {x.z, x.w};
    moe_mma_bf16_16816(d, a0, b0);
    moe_mma_bf16_16816(d, a1, b1);
}
#endif

template <bool kGlu>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm)
    gemm_bf16_decode_kernel(const moe_gemm_params p, int ksplit) {
    /* GEMM 2's wait for the previous grid comes after the first weights are on their way (below): before it, only
     * what was written before the previous grid started is read (the permutation, weights) */
    moe_decode_start<kGlu>();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    extern __shared__ uint4 smem_ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const char *stage0 = reinterpret_cast<const char *>(smem_ring) + warp * kStages * kStageBytes;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(stage0) + lane * 16; /* the lane's slot 0 */
    const int64_t row_bytes = 2 * (int64_t)p.k;
    const int kblocks = (p.k + kBK - 1) / kBK;
    /* the CTA's 4 warps: kWarps / ksplit column tiles of 16 B rows, each summed over K by ksplit warps */
    const moe_decode_warp wr = moe_decode_warp_of(warp, ksplit, kblocks);
    const int cper = wr.cper, ct = wr.ct, kw = wr.kw, nk = wr.nk; /* nk: this warp's blocks */
    moe_gemm_tile t; /* p.n_tiles counts groups of cper column tiles; t.tile_n is this warp's column tile */
    if (!moe_decode_locate(p, t, lane)) return; /* the same for the whole CTA */
    t.tile_n = t.tile_n * cper + ct;
    const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
    /* the lane's first pieces (bytes 16q .. 16q + 15 of the warp's first block, and + 64); block i of the warp is
     * i * ksplit blocks further */
    const uint8_t *bsrc[2];
    bool wfill[2]; /* a row past N: its weights read as zeros */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const __nv_bfloat16 *b = static_cast<const __nv_bfloat16 *>(p.b) + t.group * p.b_group_stride;
        bsrc[h] = reinterpret_cast<const uint8_t *>(b) + (brow[h] < 0 ? 0 : brow[h] * row_bytes) + kw * kBlockBytes +
                  16 * q;
        wfill[h] = brow[h] < 0;
    }
    const bool two = moe_decode_a_row<true>(p, t, 8) >= 0; /* rows fill a tile from its start: past 8 if 8 is real */
    const int64_t a0 = moe_decode_a_row<true>(p, t, g), a1 = two ? moe_decode_a_row<true>(p, t, g + 8) : -1;
    const uint8_t *abase = reinterpret_cast<const uint8_t *>(p.a + (p.offsets ? 0 : t.group * p.a_group_stride)) +
                           kw * kBlockBytes + 16 * q;
    const uint8_t *tok = abase + (a0 < 0 ? 0 : a0 * row_bytes);
    const uint8_t *tok1 = abase + (a1 < 0 ? 0 : a1 * row_bytes); /* second half: read when used */
    const int bstep = ksplit * kBlockBytes;
    int64_t rem = row_bytes - kw * kBlockBytes - 16 * q; /* bytes from the lane's piece 0 of its next block */
    int todo = nk;                                        /* blocks to issue */

    /* the warp's next block into the stage at smem offset wr; a group committed either way, so that the counts
     * match. A piece past K (K % 8 == 0: all in or all out) fills zeros and reads nothing; the pointers stop at
     * the last block with a piece inside K. */
    auto advance = [&]() { /* past a block issued */
        if (rem > bstep) {
#pragma unroll
            for (int h = 0; h < 2; h++) bsrc[h] += bstep;
            tok += bstep;
        }
        rem -= bstep, todo--;
    };
    auto issue = [&](uint32_t wr) {
        if (todo > 0) {
            moe_decode_copy_pieces(ring_s + wr, bsrc, wfill, tok, a0 >= 0, rem > 0, rem > 64);
            advance();
        }
        moe_cp_async_commit();
    };
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    /* the first kStages - 1 blocks: their weights, then the wait for the previous grid (GEMM 2 is launched as a
     * dependent of GEMM 1, so its first weights stream during GEMM 1's tail), then their tokens; block j's pieces
     * are complete with the group committed after its tokens (the loop's wait counts groups), and the pointers then
     * move on as issue() moves them */
    static_assert(kStages == 3, "the prologue below is written for two blocks ahead");
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) {
        const int64_t r = rem - (int64_t)j * bstep;
        if (j < todo)
            moe_decode_copy_weights(ring_s + j * kStageBytes, bsrc, wfill, r > 0, r > 64, j && rem > bstep ? bstep : 0);
    }
    moe_pdl_wait();
#pragma unroll
    for (int j = 0; j < kStages - 1; j++) {
        const int64_t r = rem - (int64_t)j * bstep;
        if (j < todo && a0 >= 0)
            moe_decode_copy_tokens(ring_s + j * kStageBytes, tok + (j && rem > bstep ? bstep : 0), r > 0, r > 64);
        moe_cp_async_commit();
    }
#pragma unroll
    for (int j = 0; j < kStages - 1; j++)
        if (todo > 0) advance();

    /* block i from the stage at rd (kTwo: the tile has a second half) */
    auto block = [&](int i, uint32_t rd, auto two_tag) {
        constexpr bool kTwo = decltype(two_tag)::value;
        const uint4 *slot = reinterpret_cast<const uint4 *>(stage0 + rd) + lane;
        const uint4 w[2][2] = {{slot[0], slot[32]}, {slot[64], slot[96]}};
#pragma unroll
        for (int c = 0; c < 2; c++)
            piece_mma(acc[0], w[0][c], w[1][c], a0 >= 0 ? slot[(4 + c) * 32] : make_uint4(0, 0, 0, 0));
        if (kTwo) { /* from global memory */
            const int64_t r = row_bytes - (int64_t)(kw + i * ksplit) * kBlockBytes - 16 * q;
#pragma unroll
            for (int c = 0; c < 2; c++)
                piece_mma(acc[1], w[0][c], w[1][c],
                          a1 >= 0 && r > 64 * c
                              ? __ldg(reinterpret_cast<const uint4 *>(tok1 + (int64_t)i * bstep + 64 * c))
                              : make_uint4(0, 0, 0, 0));
        }
    };
    /* the K loop, compiled apart for tiles with one half and with two, unrolled over the stages (moe_decode_k_loop) */
    auto k_loop = [&](auto two_tag) {
        moe_decode_k_loop<kStages, kStageBytes, false, false>(nk, issue,
                                                              [&](int i, uint32_t rd) { block(i, rd, two_tag); });
    };
    if (two) k_loop(moe_bool_tag<true>());
    else k_loop(moe_bool_tag<false>());
    moe_cp_async_wait<0>(); /* the empty groups past nk */

    if (moe_decode_reduce(acc, reinterpret_cast<char *>(smem_ring), kStages * kStageBytes, warp, kw, ksplit, lane))
        moe_decode_epilogue<kGlu, true>(p, t, acc, brow, g, q, 1.0f);
#endif
}

template <bool kGlu>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, int64_t m_tiles, int groups, cudaStream_t st) {
    moe_gemm_params q;
    int ksplit = 1;
    unsigned tiles = 0;
    MOE_TRY(moe_decode_grid(ctx, "BF16", p, kGlu, m_tiles, kBK, kCtasPerSm, true, q, ksplit, tiles));
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_bf16_decode_kernel<kGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)kRing));
    /* the routed GEMM 2 (plain) as a dependent launch of GEMM 1: see the kernel's prologue. Not the dense shared
     * experts' (beside the routed GEMMs on the side stream, their CTAs would hold SM slots while they wait) */
    MOE_CUDA_TRY(ctx, moe_launch(p.offsets && moe_decode_dependent(ctx, p, kGlu), gemm_bf16_decode_kernel<kGlu>,
                                 dim3(tiles, 1, groups), kWarps * 32, kRing, st, q, ksplit));
    return MOE_OK;
}

} // namespace

bool moe__cuda_gemm_bf16_decode_fits(const moe_gemm_params &p) {
    /* 16-byte pieces of weight and token rows (K a multiple of 8, aligned bases, each group's too) */
    return p.b_fmt == MOE_B_BF16 && p.k % 8 == 0 && (uintptr_t)p.b % 16 == 0 && p.b_group_stride % 8 == 0 &&
           (uintptr_t)p.a % 16 == 0 && (p.offsets || p.a_group_stride % 8 == 0);
}

moe_status moe__cuda_grouped_gemm_bf16_decode(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles,
                                              int groups, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    groups = p.offsets ? 1 : groups; /* dense: a group per grid.z */
    return glu ? launch<true>(ctx, p, m_tiles, groups, stream) : launch<false>(ctx, p, m_tiles, groups, stream);
}
