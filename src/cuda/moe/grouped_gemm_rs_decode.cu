/* grouped_gemm_rs_decode.cu — W8A8's decode GEMMs on Hopper's FP8 tensor cores through wgmma with the weights as A
 * in registers (MXFP4, NVFP4 and FP8 128x128 weights): the launch, its instance for the tile's rows and the K split.
 * The kernel and its design: grouped_gemm_rs_decode_kernel.cuh; contract in grouped_gemm.cuh
 * (moe__cuda_grouped_gemm_rs_decode). */
#include "cuda/moe/grouped_gemm_rs_decode_kernel.cuh"

#include <string.h>

namespace {

template <int F, bool kGlu, int kN, int kTp, bool kPipe>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q = p;
    if (p.top_k >= 1) moe_decode_top_k_magic(p.top_k, q.top_k_magic, q.top_k_shift);
    const int64_t col_tiles = kGlu ? (p.n + 7) / 8 : (p.n + 15) / 16;
    q.m_tiles = m_tiles, q.n_tiles = (col_tiles + 3) / 4;
    const int64_t ctas = q.m_tiles * q.n_tiles;
    if (ctas > 0x7FFFFFFF)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "wgmma decode GEMM: %lld tiles exceed the grid", (long long)ctas);
    const int kblocks = (p.k + 127) / 128;
    /* blocks a chunk for ksplit groups: all of K, or chunk_blocks, a multiple of kStages a group */
    auto chunk = [&](int ksplit) { return kblocks < chunk_blocks(kN, ksplit) ? kblocks : chunk_blocks(kN, ksplit); };
    static_assert(chunk_blocks(kN, 4) % (kStages * 4) == 0 && chunk_blocks(kN, 2) % (kStages * 2) == 0,
                  "chunks of whole rounds of the stages");
    /* warpgroups a CTA: doubled while the grid's groups stay within half of the groups the GPU holds (a group a CTA:
     * its registers and shared memory, a token chunk and a ring, bound them) and each keeps 8 K blocks or more */
    auto kernel = gemm_rs_decode_kernel<F, kGlu, kN, kTp, kPipe>;
    const int most = token_bytes(chunk(4), kN) + 4 * ring_of<F>::kRingBytes;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most));
    /* the CTAs the GPU holds at once with ks groups a CTA */
    auto slots = [&](int ks, int64_t *n) {
        int per_sm = 0;
        const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &per_sm, kernel, 128 * ks, token_bytes(chunk(ks), kN) + ks * ring_of<F>::kRingBytes);
        *n = (int64_t)ctx->cuda.sm_count * (per_sm > 0 ? per_sm : 1);
        return e;
    };
    int64_t one = 0;
    MOE_CUDA_TRY(ctx, slots(1, &one));
    int ksplit = 1;
    while (ksplit < 4 && ctas * ksplit * 2 <= one && kblocks >= 16 * ksplit) ksplit *= 2;
    /* knobs for retuning this rule on a GPU (scripts/gpu_rs_decode.sh ksplit): 1, 2 or 4 forces the split; "wave"
     * takes the largest split whose grid still fits one wave at that split's occupancy, each group 8 blocks or more */
    if (const char *v = getenv("MOE_GEMM_RS_KSPLIT")) {
        if (!strcmp(v, "1") || !strcmp(v, "2") || !strcmp(v, "4")) ksplit = v[0] - '0';
        if (!strcmp(v, "wave"))
            for (ksplit = 4; ksplit > 1; ksplit /= 2) {
                int64_t n = 0;
                MOE_CUDA_TRY(ctx, slots(ksplit, &n));
                if (ctas <= n && kblocks >= 8 * ksplit) break;
            }
    }
    const int cb = chunk(ksplit), bytes = token_bytes(cb, kN) + ksplit * ring_of<F>::kRingBytes;
    /* GEMM 2 (plain) as a dependent launch of h's quantisation: see the kernel's prologue */
    MOE_CUDA_TRY(ctx, moe_launch(!kGlu && moe__cuda_pdl(ctx), kernel, dim3((unsigned)ctas), 128 * ksplit, bytes, st, q,
                                 f, ksplit, cb));
    return MOE_OK;
}

/* The instance <kN, kTp> of GEMM 1 (glu) or GEMM 2; with kPipeable, the pipelined one when pipe. */
template <int F, int kN, int kTp, bool kPipeable = false>
moe_status launch_glu(bool glu, moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, int64_t m_tiles,
                      cudaStream_t st, bool pipe = false) {
    if (kPipeable && pipe)
        return glu ? launch<F, true, kN, kTp, kPipeable>(ctx, p, f, m_tiles, st)
                   : launch<F, false, kN, kTp, kPipeable>(ctx, p, f, m_tiles, st);
    return glu ? launch<F, true, kN, kTp, false>(ctx, p, f, m_tiles, st)
               : launch<F, false, kN, kTp, false>(ctx, p, f, m_tiles, st);
}

/* The instance for B's storage F and up to max_rows rows a tile: diagonal tokens for MXFP4 at up to 2 or 4 rows
 * (kN = 4 kTp), dense at 8 or 16; NVFP4 diagonal at 1, 2 or 4 rows (kN = 8 kTp), dense (two halves, kN = 2 kTp) at 8
 * or 16; FP8 dense at 8 or 16. */
template <int F>
moe_status launch_rows(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu, int64_t m_tiles,
                       int64_t max_rows, cudaStream_t st, bool pipe) {
    if constexpr (F == MOE_B_E2M1_E4M3) {
        if (max_rows <= 1) return launch_glu<F, 8, 1>(glu, ctx, p, f, m_tiles, st);
        if (max_rows <= 2) return launch_glu<F, 16, 2>(glu, ctx, p, f, m_tiles, st);
        if (max_rows <= 4) return launch_glu<F, 32, 4>(glu, ctx, p, f, m_tiles, st);
        if (max_rows <= 8) return launch_glu<F, 16, 8>(glu, ctx, p, f, m_tiles, st);
        return launch_glu<F, 32, 16>(glu, ctx, p, f, m_tiles, st);
    } else {
        if constexpr (F == MOE_B_E2M1_E8M0) {
            if (max_rows <= 2) return launch_glu<F, 8, 2, true>(glu, ctx, p, f, m_tiles, st, pipe);
            if (max_rows <= 4) return launch_glu<F, 16, 4>(glu, ctx, p, f, m_tiles, st); /* (pipelined: spills) */
        }
        constexpr bool kFp8 = F == MOE_B_E4M3_F32 || F == MOE_B_E4M3_E8M0; /* (MXFP4 dense: not pipelined) */
        if (max_rows <= 8) return launch_glu<F, 8, 8, kFp8>(glu, ctx, p, f, m_tiles, st, pipe);
        return launch_glu<F, 16, 16, kFp8>(glu, ctx, p, f, m_tiles, st, pipe);
    }
}

/* Whether the environment variable `name` is "1". */
bool opted_in(const char *name) {
    const char *v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

} // namespace

bool moe__cuda_gemm_rs_decode_fits(moe_ctx *ctx, const moe_gemm_params &p) {
    if (!p.offsets || (uintptr_t)p.b % 16 != 0 || !moe__cuda_gemm_sm90_usable(ctx)) return false;
    /* opt-in until each has run on a GPU (built and costed from their SASS only, docs/performance.md) */
    if (p.b_fmt == MOE_B_E2M1_E8M0) /* MXFP4: a scale a row and 32 codes, 16-byte pieces of codes */
        return opted_in("MOE_GEMM_W4A8_DECODE") && p.k % 32 == 0 && p.bs.row_shift == 0 && p.bs.col_shift == 5 &&
               (p.b_group_stride / 2) % 16 == 0;
    if (p.b_fmt == MOE_B_E2M1_E4M3) /* NVFP4: a scale a row and 16 codes */
        return opted_in("MOE_GEMM_W4A8_DECODE") && p.k % 32 == 0 && p.bs.row_shift == 0 && p.bs.col_shift == 4 &&
               (p.b_group_stride / 2) % 16 == 0;
    if (p.b_fmt == MOE_B_E4M3_F32 || p.b_fmt == MOE_B_E4M3_E8M0) /* FP8 in 128x128 blocks, 16-byte pieces */
        return opted_in("MOE_GEMM_W8A8_RS_DECODE") && p.k % 16 == 0 && p.bs.row_shift == 7 && p.bs.col_shift == 7 &&
               p.b_group_stride % 16 == 0;
    return false;
}

moe_status moe__cuda_grouped_gemm_rs_decode(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                            int64_t m_tiles, int64_t max_rows, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    if ((uintptr_t)f.a % 16 != 0)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "wgmma decode GEMM: input codes not 16-byte aligned");
    const bool pipe = opted_in("MOE_GEMM_RS_PIPE"); /* an experiment: MXFP4 diagonal and FP8 blocks pipelined */
    switch (p.b_fmt) {
    case MOE_B_E2M1_E8M0: return launch_rows<MOE_B_E2M1_E8M0>(ctx, p, f, glu, m_tiles, max_rows, stream, pipe);
    case MOE_B_E2M1_E4M3: return launch_rows<MOE_B_E2M1_E4M3>(ctx, p, f, glu, m_tiles, max_rows, stream, pipe);
    case MOE_B_E4M3_F32: return launch_rows<MOE_B_E4M3_F32>(ctx, p, f, glu, m_tiles, max_rows, stream, pipe);
    case MOE_B_E4M3_E8M0: return launch_rows<MOE_B_E4M3_E8M0>(ctx, p, f, glu, m_tiles, max_rows, stream, pipe);
    default: return moe__error(ctx, MOE_ERR_UNSUPPORTED, "wgmma decode GEMM: weight storage %d", (int)p.b_fmt);
    }
}
