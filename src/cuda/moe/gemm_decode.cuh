/* gemm_decode.cuh — what the decode kernels (grouped_gemm_fp8_decode.cu: W8A8; grouped_gemm_fp4_decode.cu: FP4
 * weights, bf16 activations; grouped_gemm_bf16_decode.cu: BF16) share. All three stream the weights of 16-row tiles
 * (the SMALL shape's permutation, or a dense GEMM's rows) with the weights as the M operand of mma.sync (16 B rows
 * a column tile) and the tokens as its N operand (8 rows a half tile), a CTA of kDecodeWarps warps taking 1, 2 or 4
 * column tiles whose K is split over 4, 2 or 1 warps.
 * Here: the tile, the B rows of a column tile, the piece copies, the K loop, the K split and the grid, the partial
 * tiles' sum and the epilogue. */
#ifndef MOE_CUDA_MOE_GEMM_DECODE_CUH
#define MOE_CUDA_MOE_GEMM_DECODE_CUH

#include "cuda/common/cuda.cuh" /* moe_decode */
#include "cuda/common/mma.cuh"
#include "cuda/moe/gemm_tile.cuh"

constexpr int kDecodeWarps = 4; /* a CTA's warps: column tiles times K splits */
constexpr int kDecodeRows = 16; /* rows of a tile: the permutation's SMALL tile */

/* The start of a decode kernel. GEMM 2 (plain) is a programmatic dependent launch of the kernel before it and waits
 * for it later, after its first weights are on their way (those, the B scales and the permutation were written
 * before that kernel started). GEMM 1 (GLU) finds its tile in the permutation the kernel before it wrote, so it waits
 * first; launched as a dependent too (p.early: the routing of a short decode step), its CTAs are then resident
 * when the routing ends. Either lets the next kernel be scheduled only after that wait (GEMM 1) or at once (GEMM 2:
 * the next kernel reads nothing of it before its own wait). */
template <bool kGlu> __device__ __forceinline__ void moe_decode_start() {
    if (kGlu) moe_pdl_wait();
    moe_pdl_launch_next();
}
/* Whether a decode GEMM is launched as a programmatic dependent of the kernel before it (moe_decode_start). */
inline bool moe_decode_dependent(moe_ctx *ctx, const moe_gemm_params &p, bool glu) {
    return (!glu || p.early) && moe__cuda_pdl(ctx);
}

/* 16 bytes global -> shared, L2 only (weights: read once), or through L1 (tokens: every CTA reads them); bytes 0
 * writes zeros. */
__device__ __forceinline__ void moe_decode_copy16_cg(uint32_t smem, const void *gmem, int bytes) {
    moe_cp_async16_to(smem, gmem, bytes);
}
__device__ __forceinline__ void moe_decode_copy16_ca(uint32_t smem, const void *gmem, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes));
}

/* The same with a predicate: `fill` writes zeros and reads nothing (no size arithmetic in the loop). */
__device__ __forceinline__ void moe_decode_copy16_cg_if(uint32_t smem, const void *gmem, bool fill) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n"
                 ::"r"(smem), "l"(gmem), "r"((int)fill));
}
__device__ __forceinline__ void moe_decode_copy16_ca_if(uint32_t smem, const void *gmem, bool fill) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n cp.async.ca.shared.global [%0], [%1], 16, p;\n}\n"
                 ::"r"(smem), "l"(gmem), "r"((int)fill));
}

/* A lane's 16-byte pieces of a block in the kernels that stream bytes (W8A8, BF16): pieces 0 and 1 (at + 0 and + 64
 * bytes, + off) of weight rows g and g + 8 into slots 2h and 2h + 1 of the stage at dst (zeros past N: wfill), and
 * of its first-half token row into slots 4 and 5 (copy_pieces: when the row is real); in0 / in1: piece 0 / 1 lies
 * inside K (else zeros, nothing read). Slot i of the lane at dst + 512 i (32 lanes of 16 bytes a slot). */
__device__ __forceinline__ void moe_decode_copy_weights(uint32_t dst, const uint8_t *const (&bsrc)[2],
                                                        const bool (&wfill)[2], bool in0, bool in1, int64_t off = 0) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        moe_decode_copy16_cg_if(dst + 2 * h * 512, bsrc[h] + off, !in0 || wfill[h]);
        moe_decode_copy16_cg_if(dst + (2 * h + 1) * 512, bsrc[h] + off + 64, !in1 || wfill[h]);
    }
}
__device__ __forceinline__ void moe_decode_copy_tokens(uint32_t dst, const uint8_t *tok, bool in0, bool in1) {
    moe_decode_copy16_ca_if(dst + 4 * 512, tok, !in0);
    moe_decode_copy16_ca_if(dst + 5 * 512, tok + 64, !in1);
}
__device__ __forceinline__ void moe_decode_copy_pieces(uint32_t dst, const uint8_t *const (&bsrc)[2],
                                                       const bool (&wfill)[2], const uint8_t *tok, bool tok_real,
                                                       bool in0, bool in1) {
    moe_decode_copy_weights(dst, bsrc, wfill, in0, in1);
    if (tok_real) moe_decode_copy_tokens(dst, tok, in0, in1);
}

/* The K loop of a decode kernel over its nk blocks: before block i, issue(offset) refills the stage block i - 1 was
 * read from, then the wait leaves block i's copies done, then block(i, offset of block i's stage). kSync: a
 * __syncwarp before the refill and after the wait, for stages whose words lanes read from each other (the W8A8
 * kernel's scales). kRolled: one copy of the block's code, the stages' offsets in registers; else the loop is
 * unrolled over the kStages stages, so that the offsets are constants. Rolled suits blocks of many instructions:
 * the FP4 kernel's loop, unrolled, spanned some 25 KB of code (MXFP4's wide-scale block beside each stage's), and
 * rolled its layer ran up to 9% faster at T = 1-4 on the H100 and the H200 (W8A8 up to 3% at T = 1; BF16 level or
 * up to 1% slower: docs/performance.md, "Since 5b2ccb6"). */
template <int kStages, int kStageBytes, bool kSync, bool kRolled, class Issue, class Block>
__device__ __forceinline__ void moe_decode_k_loop(int nk, Issue &&issue, Block &&block) {
    if constexpr (kRolled) {
        uint32_t rd = 0, wr = (kStages - 1) * kStageBytes; /* block i's stage; the one block i - 1 was read from */
#pragma unroll 1
        for (int i = 0; i < nk; i++) {
            if (kSync) __syncwarp();
            issue(wr);
            moe_cp_async_wait<kStages - 1>();
            if (kSync) __syncwarp();
            block(i, rd);
            wr = rd;
            rd = rd == (kStages - 1) * kStageBytes ? 0 : rd + kStageBytes;
        }
    } else {
        for (int i0 = 0; i0 < nk; i0 += kStages)
#pragma unroll
            for (int s = 0; s < kStages; s++) {
                const int i = i0 + s;
                if (i >= nk) break;
                if (kSync) __syncwarp();
                issue(((s + kStages - 1) % kStages) * kStageBytes);
                moe_cp_async_wait<kStages - 1>();
                if (kSync) __syncwarp();
                block(i, s * kStageBytes);
            }
    }
}

/* A decode warp's place in its CTA for a K split of ksplit warps (1, 2 or 4: a power of two, so shifts and masks
 * where divisions would cost some twenty instructions each): cper column tiles a CTA, the warp's column tile ct
 * and K warp kw, and its nk of the kblocks K blocks (kw, kw + ksplit, ...); shift for the caller's own counts. */
struct moe_decode_warp {
    int cper, ct, kw, nk;
    int shift; /* log2 ksplit */
};
__device__ __forceinline__ moe_decode_warp moe_decode_warp_of(int warp, int ksplit, int kblocks) {
    const int s = __ffs(ksplit) - 1;
    moe_decode_warp w;
    w.cper = kDecodeWarps >> s, w.ct = warp >> s, w.kw = warp & (ksplit - 1), w.shift = s;
    w.nk = w.kw < kblocks ? (kblocks - w.kw + ksplit - 1) >> s : 0;
    return w;
}

/* B row of the mma's M row m (0..15) in column tile t.tile_n: -1 past N. GLU: M rows 0-7 the gate rows and 8-15
 * the up rows of the 8 output columns from 8 tile_n; plain: 16 rows from 16 tile_n. */
template <bool kGlu>
__device__ __forceinline__ int64_t moe_decode_b_row(const moe_gemm_params &p, const moe_gemm_tile &t, int m) {
    if (kGlu) {
        const int64_t col = t.tile_n * 8 + (m & 7);
        return col >= p.n ? -1 : p.interleaved ? 2 * col + (m >> 3) : (m >> 3) * p.n + col;
    }
    const int64_t row = t.tile_n * 16 + m;
    return row < p.n ? row : -1;
}

/* A row (token with gather, else permuted row; kDense: also the group's row of a dense GEMM) of tile row n, -1 for
 * padding and past the end. */
template <bool kDense = false>
__device__ __forceinline__ int64_t moe_decode_a_row(const moe_gemm_params &p, const moe_gemm_tile &t, int n) {
    const int64_t r = t.row0 + n;
    if (r >= t.row_end) return -1;
    if (kDense && !p.offsets) return r;
    const int32_t src = p.row_src[r];
    /* src / top_k by moe_decode_top_k_magic's multiply: a division would cost some thirty instructions a row */
    return src < 0 ? -1 : p.gather ? (int64_t)(__umulhi((uint32_t)src << 1, p.top_k_magic) >> p.top_k_shift) : r;
}

/* An FP8 128x128 weight block's scale from the aligned word v that holds it: its f32 bits, or (kE8m0) the E8M0 byte
 * (first + kb) % 4 of v, where first is the row block's first scale's byte in its word and kb the block column. */
template <bool kE8m0> __device__ __forceinline__ float moe_decode_block_scale(uint32_t v, int first, int kb) {
    return kE8m0 ? moe_decode((uint8_t)(v >> (8 * ((first + kb) & 3))), MOE_DTYPE_E8M0) : __uint_as_float(v);
}

/* The tile of a decode CTA (moe_gemm_locate_warp for routed GEMMs; dense: group blockIdx.z, rows 0 .. p.m), called
 * by a whole warp; false when it holds no row. */
__device__ __forceinline__ bool moe_decode_locate(const moe_gemm_params &p, moe_gemm_tile &t, int lane) {
    if (p.offsets) return moe_gemm_locate_warp(p, kDecodeRows, blockIdx.x, t, lane);
    moe_gemm_tile_at(p, kDecodeRows, blockIdx.x, t);
    t.row_end = p.m, t.group = blockIdx.z;
    return t.row0 < t.row_end;
}

/* K split over 4 warps where a warp still gets 8 K blocks or more, else over 2 or 1 with 2 or 4 column tiles a
 * CTA: a warp's stream of blocks stays long enough to pay for the tile's start (measured on the H200: DeepSeek-V3's
 * W8A8 GEMM 2, K = 2048, ran at 53% of the DRAM peak with 4 blocks a warp). */
static inline int moe_decode_ksplit(int kblocks) {
    return kblocks >= 32 ? 4 : kblocks >= 16 ? 2 : 1;
}

/* The K split once the grid is known (routed GEMMs; slots: the CTAs the GPU holds at once, 0 to keep ksplit). A
 * grid under half a wave leaves most SMs one or two CTAs, too few loads in flight: twice the split. A grid whose
 * second wave is under a quarter full leaves those few CTAs streaming alone at the end: with `halve`, half the split,
 * where that fits in one wave (not for the FP4 kernel, whose warps convert every weight: fewer, longer warps were
 * slower there). Measured on the H200 at T = 1 (docs/performance.md): twice the split for Qwen3-30B-A3B's and
 * OLMoE's GEMM 2 (256 CTAs), half for Qwen3-30B-A3B's BF16 GEMM 1 (768 CTAs of 660) and GPT-OSS-120B's (720).
 * With `longer`, a grid of two waves or more takes half the split where its waves, each then twice as long less
 * the eighth that longer warps save (fewer tile starts and partial sums for the same bytes), take no more time:
 * 7 * waves(halved) <= 4 * waves(now). Measured for the MXFP4 kernel on the H200 (docs/performance.md): 5-13% faster
 * at T = 16-128 and DeepSeek-V3 T = 1; without the waves test Qwen3-235B-A22B at T = 1 (1536 CTAs to 768 of 660
 * slots) was 2% slower. The NVFP4 kernel was up to 12% slower with it (GPT-OSS-120B) and keeps the rule above. */
static inline int moe_decode_ksplit_for_grid(int ksplit, int64_t m_tiles, int64_t col_tiles, int64_t slots,
                                             bool halve, bool longer = false) {
    if (slots <= 0) return ksplit;
    auto ctas = [&](int ks) { return m_tiles * ((col_tiles + kDecodeWarps / ks - 1) / (kDecodeWarps / ks)); };
    auto waves = [&](int64_t c) { return (c + slots - 1) / slots; };
    const int64_t n = ctas(ksplit);
    if (longer && ksplit > 1 && n >= 2 * slots && 7 * waves(ctas(ksplit / 2)) <= 4 * waves(n)) return ksplit / 2;
    if (halve && ksplit > 1 && n > slots && 4 * n < 5 * slots && ctas(ksplit / 2) <= slots) return ksplit / 2;
    if (ksplit < kDecodeWarps && 2 * n < slots) return ksplit * 2;
    return ksplit;
}

/* n / d for 0 <= n < 2^31 as umulhi(2n, magic) >> shift (host code; d >= 1): shift = ceil(log2 d) and magic =
 * ceil(2^(31 + shift) / d), which fits 32 bits. Exact: with magic d = 2^(31 + shift) + e, 0 <= e < d, and n = q d + r,
 * n magic / 2^(31 + shift) = q + (r + n e / 2^(31 + shift)) / d, where n e / 2^(31 + shift) < d / 2^shift <= 1, so
 * the fraction stays under 1 (the same argument as Granlund and Montgomery's). */
inline void moe_decode_top_k_magic(int d, uint32_t &magic, int &shift) {
    shift = 0;
    while ((1LL << shift) < d) shift++;
    magic = (uint32_t)(((1ULL << (31 + shift)) + (uint64_t)d - 1) / (uint64_t)d);
}

/* The grid of a decode GEMM (host code): q is p with m_tiles and n_tiles set (n_tiles counts groups of kDecodeWarps /
 * ksplit column tiles), ksplit for K blocks of kbk values and, for routed GEMMs, for the grid of a kernel that holds
 * ctas_per_sm CTAs an SM (moe_decode_ksplit_for_grid; halve and longer as there), a CTA a tile; an error naming
 * `what` when the tiles pass the grid's limit. The dense shared experts keep the K rule: they share the GPU with the
 * routed GEMMs. */
inline moe_status moe_decode_grid(moe_ctx *ctx, const char *what, const moe_gemm_params &p, bool glu, int64_t m_tiles,
                                  int kbk, int ctas_per_sm, bool halve, moe_gemm_params &q, int &ksplit,
                                  unsigned &tiles, bool longer = false) {
    q = p;
    if (p.top_k >= 1) moe_decode_top_k_magic(p.top_k, q.top_k_magic, q.top_k_shift);
    const int64_t col_tiles = glu ? (p.n + 7) / 8 : (p.n + 15) / 16;
    const int64_t slots = p.offsets ? (int64_t)ctx->cuda.sm_count * ctas_per_sm : 0;
    ksplit = moe_decode_ksplit_for_grid(moe_decode_ksplit((p.k + kbk - 1) / kbk), m_tiles, col_tiles, slots, halve,
                                        longer);
    const int cper = kDecodeWarps / ksplit;
    q.m_tiles = m_tiles, q.n_tiles = (col_tiles + cper - 1) / cper;
    const int64_t n = q.m_tiles * q.n_tiles;
    if (n > 0x7FFFFFFF)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "%s decode GEMM: %lld tiles exceed the grid", what, (long long)n);
    tiles = (unsigned)n;
    return MOE_OK;
}

/* The K warps 1.. of a column tile hand their partial tiles (acc[n][e]: 2 halves x 4) to its K warp 0 through their
 * own rings (ring: the CTA's dynamic shared memory, ring_bytes a warp; 1 KB a warp, free once the warp's copies are
 * done, as the caller's moe_cp_async_wait<0> makes them, and its lanes are past reading it), which adds them in warp
 * order (deterministic). No static buffer, so that the ring is all a CTA holds. Returns whether this warp holds the
 * sum (K warp 0). Ends with all the CTA's warps past a barrier. */
__device__ __forceinline__ bool moe_decode_reduce(float (&acc)[2][4], char *ring, int ring_bytes, int warp, int kw,
                                                  int ksplit, int lane) {
    __syncwarp(); /* a lane's partials land on other lanes' slots */
    if (kw > 0) {
        float *const part = reinterpret_cast<float *>(ring + warp * ring_bytes);
#pragma unroll
        for (int i = 0; i < 8; i++) part[i * 32 + lane] = acc[i >> 2][i & 3];
    }
    __syncthreads();
    if (kw > 0) return false;
    for (int w = 1; w < ksplit; w++) {
        const float *const part = reinterpret_cast<const float *>(ring + (warp + w) * ring_bytes);
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i >> 2][i & 3] += part[i * 32 + lane];
    }
    return true;
}

/* Epilogue of a column tile: acc[n][e] is tile row 2q + e + 8n at M row g, acc[n][2 + e] at M row g + 8 (q = lane
 * % 4, g = lane / 4), times ro.g * factor (factor: a power of two the kernel's weights were scaled by, or 1), then
 * as moe_gemm_store. Every row of a GLU tile is written (padding rows too: a quantiser of h may read them); GLU
 * writes h to p.c32 when set (routed only), else bf16 to p.c; plain writes bf16 to p.c (columns brow); with kDense,
 * dense GEMMs write group t.group's rows at p.c + t.group * p.c_group_stride. */
template <bool kGlu, bool kDense = false>
__device__ __forceinline__ void moe_decode_epilogue(const moe_gemm_params &p, const moe_gemm_tile &t,
                                                    const float (&acc)[2][4], const int64_t (&brow)[2], int g, int q,
                                                    float factor) {
    __nv_bfloat16 *c = p.c + (kDense && !p.offsets ? t.group * p.c_group_stride : 0); /* dense: the group's rows */
    moe_gemm_by_act<kGlu>(p.act, [&](auto act) {
        constexpr int A = decltype(act)::value;
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int64_t r = t.row0 + 2 * q + e + 8 * n;
                const moe_gemm_row_out ro = moe_gemm_row<kGlu>(p, t, r);
                if (ro.skip) continue;
                const float s = ro.g * factor;
                if (kGlu) {
                    const int64_t col = t.tile_n * 8 + g;
                    if (col >= p.n) continue;
                    float gate = acc[n][e] * s, up = acc[n][2 + e] * s;
                    gate *= ro.w, up *= ro.w;
                    if (p.bias) {
                        const float *bias = p.bias + t.group * p.bias_group_stride;
                        gate += bias[p.interleaved ? 2 * col : col];
                        up += bias[p.interleaved ? 2 * col + 1 : p.n + col];
                    }
                    const float h = moe_glu<A>(gate, up, p.alpha, p.limit);
                    if (p.c32) p.c32[r * p.n + col] = h;
                    else c[r * p.n + col] = __float2bfloat16_rn(h);
                } else {
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int64_t col = brow[h];
                        if (col < 0) continue;
                        const float v = acc[n][2 * h + e] * s +
                                        (p.bias ? p.bias[t.group * p.bias_group_stride + col] : 0.0f);
                        c[r * p.n + col] = __float2bfloat16_rn(v);
                    }
                }
            }
    });
}

#endif /* MOE_CUDA_MOE_GEMM_DECODE_CUH */
