/* grouped_gemm_sm90.cu — the prefill (LARGE) tile of the grouped BF16 GEMM on Hopper: wgmma reading both
 * operands from shared memory (sm_90a). Same contract as grouped_gemm.cu (grouped_gemm.cuh), same tile order,
 * operand rows and epilogue (gemm_tile.cuh); only the main loop differs.
 *
 * A CTA computes 128 rows x BN B rows (128); two warpgroups each own 64 rows and issue wgmma.m64n128k16 for
 * each 128 B rows per K step of 16. Every thread also copies: K moves in steps of 64 bf16 = one 128-byte
 * row, through a 4-stage cp.async pipeline (zero fill for padding rows and the K tail) into the 128-byte swizzled
 * layout that wgmma's descriptors name: 16-byte chunk c of row r is stored at chunk c ^ (r % 8). The wgmma of a
 * stage stays in flight while the next stage is waited for and the one after is requested; a stage is refilled
 * only after both warpgroups' wgmma on it completed (wait_group 1, then a barrier).
 *
 * Quantised B (bquant.cuh): the codes take B's place in the cp.async pipeline; each step they are converted by
 * all threads into one of two bf16 B buffers, in the same swizzled layout, while the previous step's wgmma still
 * runs; a second barrier then hands the buffer to wgmma. */
#include <stdlib.h>

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90.cuh"
#include "cuda/moe/bquant.cuh"
#include "cuda/moe/gemm_tile.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "moe/layer.h"

namespace {

constexpr int kBM = 128, kBK = 64, kThreads = 256;
constexpr int kRow = kBK * 2;        /* bytes a row a stage: one swizzle atom */
constexpr int kStageA = kBM * kRow;  /* 16 KB */
static_assert(kBM == MOE_LAYER_MAX_TILE_M, "the LARGE tile is the permutation's largest");

/* BN B rows a tile (128 or 256: one or two wgmma.m64n128k16 a warpgroup a K step of 16), STAGES deep. */
template <int BN_, int STAGES_> struct sm90_tile {
    static constexpr int BN = BN_, STAGES = STAGES_, NH = BN_ / 128, STAGE_B = BN_ * kRow;
    static constexpr size_t SMEM = (size_t)STAGES * (kStageA + STAGE_B) + 1024; /* + room to align to 1024 */
    static_assert(NH == 1 || NH == 2, "128 or 256 B rows");
};

/* Shared memory of the tile for B format F: bf16 B stages, or two bf16 B buffers and the code stages. */
template <class C, int F> constexpr size_t sm90_smem() {
    return F == MOE_B_BF16 ? C::SMEM
                           : (size_t)C::STAGES * kStageA + 2 * (size_t)C::STAGE_B +
                                 (size_t)C::STAGES * bq_tile<C::BN, kBK, kThreads, F>::STAGE + 1024;
}

template <class C, bool kGlu, int F>
__global__ void __launch_bounds__(kThreads) gemm_sm90_kernel(const moe_gemm_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#ifdef MOE_WGMMA
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), base = (raw + 1023u) & ~1023u;
    unsigned char *smem = smem_raw + (base - raw); /* stage s: A at s * kStageA, B after all A stages */
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, warp = (tid >> 5) & 3;
    constexpr bool kQuant = F != MOE_B_BF16;
    typedef bq_tile<C::BN, kBK, kThreads, F> QT;
    /* quantised: the two bf16 B buffers where the bf16 B stages would be, then the code stages */
    unsigned char *codes = smem + C::STAGES * kStageA + 2 * C::STAGE_B;

    moe_gemm_tile t;
    if (!moe_gemm_locate(p, kBM, blockIdx.x, t)) return;
    QT qt;
    if (kQuant) bq_tile_init<QT, kGlu>(qt, p, t, tid);

    /* copy duty: chunk kc of rows tid / 8 + 32 i (4 of A, 8 of B) */
    const int kc = tid & 7;
    const __nv_bfloat16 *a_row[kBM / 32], *b_row[C::BN / 32];
#pragma unroll
    for (int i = 0; i < kBM / 32; i++) a_row[i] = moe_gemm_a_row(p, t, t.row0 + (tid >> 3) + 32 * i);
#pragma unroll
    for (int i = 0; i < C::BN / 32; i++)
        b_row[i] = kQuant ? nullptr : moe_gemm_b_row<kGlu>(p, t, C::BN, (tid >> 3) + 32 * i);
    const int k_tiles = (p.k + kBK - 1) / kBK;
    auto load = [&](int stage, int kt) {
        const int k0 = kt * kBK + kc * 8;
        const bool in_k = k0 < p.k; /* k is a multiple of 8: a chunk is all in or all out */
#pragma unroll
        for (int i = 0; i < kBM / 32; i++) {
            const int r = (tid >> 3) + 32 * i;
            moe_cp_async16(smem + stage * kStageA + r * kRow + ((kc ^ (r & 7)) << 4),
                           a_row[i] && in_k ? a_row[i] + k0 : p.a, a_row[i] && in_k ? 16 : 0);
        }
        if (kQuant) bq_copy_codes<QT, QT::ROW_BYTES>(qt, codes + stage * QT::STAGE, kt, p, tid);
        else
#pragma unroll
            for (int i = 0; i < C::BN / 32; i++) {
                const int r = (tid >> 3) + 32 * i;
                moe_cp_async16(smem + C::STAGES * kStageA + stage * C::STAGE_B + r * kRow + ((kc ^ (r & 7)) << 4),
                               b_row[i] && in_k ? b_row[i] + k0 : p.a, b_row[i] && in_k ? 16 : 0);
            }
    };

    float acc[C::NH][64];
#pragma unroll
    for (int h = 0; h < C::NH; h++)
#pragma unroll
        for (int i = 0; i < 64; i++) acc[h][i] = 0.0f;
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; s++) {
        if (s < k_tiles) load(s, s);
        moe_cp_async_commit();
    }
    if (kQuant) bq_tile_scales(qt, 0, p, tid, qt.next);
    for (int kt = 0; kt < k_tiles; kt++) {
        moe_cp_async_wait<C::STAGES - 2>();
        moe_fence_proxy_async(); /* cp.async writes -> wgmma reads */
        __syncthreads();
        const int st = kt % C::STAGES;
        const uint32_t a_addr = base + st * kStageA + wg * 64 * kRow;
        const uint32_t b_addr = base + C::STAGES * kStageA + (kQuant ? kt % 2 : st) * C::STAGE_B;
        if (kQuant) { /* codes -> B buffer kt % 2, last read by the wgmma of step kt - 2 (finished) */
#pragma unroll
            for (int i = 0; i < QT::PER; i++)
#pragma unroll
                for (int j = 0; j < QT::SUB; j++) qt.sc[i][j] = qt.next[i][j];
            if (kt + 1 < k_tiles) bq_tile_scales(qt, kt + 1, p, tid, qt.next);
            unsigned char *bq = smem + C::STAGES * kStageA + (kt % 2) * C::STAGE_B;
            bq_tile_convert(qt, codes + st * QT::STAGE, tid, [&](int r, int c) {
                return reinterpret_cast<uint4 *>(bq + r * kRow + ((c ^ (r & 7)) << 4));
            });
            moe_fence_proxy_async(); /* generic writes -> wgmma reads */
            __syncthreads();
        }
        moe_acc_fence<C::NH>(acc);
        moe_wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; kk++) { /* 16 bf16 = 32 bytes further into the swizzled rows */
            const uint64_t da = moe_smem_desc(a_addr + kk * 32);
#pragma unroll
            for (int h = 0; h < C::NH; h++)
                moe_wgmma_m64n128k16(acc[h], da, moe_smem_desc(b_addr + h * 128 * kRow + kk * 32));
        }
        moe_wgmma_commit();
        moe_acc_fence<C::NH>(acc);
        moe_wgmma_wait<1>(); /* this warpgroup's step kt - 1 is done */
        moe_acc_fence<C::NH>(acc);
        __syncthreads(); /* ... and the other's: stage (kt - 1) % C::STAGES may be refilled */
        const int next = kt + C::STAGES - 1;
        if (next < k_tiles) load(next % C::STAGES, next);
        moe_cp_async_commit();
    }
    moe_wgmma_wait<0>();
    moe_acc_fence<C::NH>(acc);
    moe_cp_async_wait<0>();

    /* epilogue: the accumulator layout of wgmma m64nN: registers 4j + {0, 1} hold row 16 warp + lane / 4,
     * columns 8j + 2 (lane % 4) + {0, 1}; 4j + {2, 3} the row 8 below */
    moe_gemm_by_act<kGlu>(p.act, [&](auto act) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int64_t r = t.row0 + wg * 64 + warp * 16 + (lane >> 2) + 8 * i;
            const moe_gemm_row_out ro = moe_gemm_row<kGlu>(p, t, r);
            if (ro.skip) continue;
#pragma unroll
            for (int h = 0; h < C::NH; h++)
#pragma unroll
                for (int j = 0; j < 16; j++)
                    moe_gemm_store<kGlu, decltype(act)::value>(p, t, C::BN, r, ro, h * 128 + j * 8 + 2 * (lane & 3),
                                                               acc[h][4 * j + 2 * i], acc[h][4 * j + 2 * i + 1]);
        }
    });
#endif
}

template <class C, bool kGlu, int F>
moe_status launch_one(moe_ctx *ctx, const moe_gemm_params &q, dim3 grid, cudaStream_t st) {
    constexpr size_t smem = sm90_smem<C, F>();
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_sm90_kernel<C, kGlu, F>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)smem));
    MOE_CUDA_TRY(ctx, moe_launch(false, gemm_sm90_kernel<C, kGlu, F>, grid, kThreads, smem, st, q));
    return MOE_OK;
}

template <class C, bool kGlu>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, int64_t m_tiles, int groups, cudaStream_t st) {
    moe_gemm_params q = p;
    q.m_tiles = m_tiles, q.n_tiles = (p.n + (kGlu ? C::BN / 2 : C::BN) - 1) / (kGlu ? C::BN / 2 : C::BN);
    if (q.m_tiles * q.n_tiles > INT32_MAX) /* a grid's limit, and the tile order's 32-bit arithmetic */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: %lld tiles exceed 2^31",
                          (long long)(q.m_tiles * q.n_tiles));
    const dim3 grid((unsigned)(q.m_tiles * q.n_tiles), 1, (unsigned)groups);
    return moe_gemm_by_bfmt(ctx, q.b_fmt,
                            [&](auto f) { return launch_one<C, kGlu, decltype(f)::value>(ctx, q, grid, st); });
}

/* 128 x 128 tiles, 3 stages: 97 KB of shared memory and 114 registers, so two CTAs share an SM and one's
 * barriers and epilogue hide behind the other's wgmma. Measured on the H200 (moe bench layer, T = 8192): 1.5-1.9x
 * faster than 128 x 256 tiles with 4 stages (one CTA an SM), and than 128 x 128 with 4 stages. */
using tile = sm90_tile<128, 3>;

} // namespace

bool moe__cuda_gemm_sm90_usable(moe_ctx *ctx) {
    if (getenv("MOE_GEMM_PORTABLE")) return false; /* tests: run the portable kernels on Hopper too */
    static int usable = -1; /* one GPU kind per process in practice; checked once */
    if (usable < 0) {
        cudaFuncAttributes a;
        int major = 0;
        usable = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx->cuda.device) == cudaSuccess &&
                 major == 9 && cudaFuncGetAttributes(&a, gemm_sm90_kernel<tile, true, MOE_B_BF16>) == cudaSuccess &&
                 a.ptxVersion >= 90;
        cudaGetLastError();
    }
    return usable == 1;
}

moe_status moe__cuda_grouped_gemm_sm90(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles, int groups,
                                       cudaStream_t stream) {
    return glu ? launch<tile, true>(ctx, p, m_tiles, groups, stream) : launch<tile, false>(ctx, p, m_tiles, groups, stream);
}
