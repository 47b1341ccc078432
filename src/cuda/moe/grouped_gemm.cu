/* grouped_gemm.cu — the layer's grouped BF16 GEMM (grouped_gemm.cuh): ldmatrix + mma.sync m16n8k16 with f32
 * accumulators, tiles fed by a multi-stage cp.async pipeline, in three tile shapes.
 *
 * A CTA computes a BM x BN tile of A . B^T; its warps form a WARPS_M x WARPS_N grid over the tile and, in the
 * SMALL shape, also split each K step WARPS_K ways (their partial sums are added in warp order at the end, so the
 * result does not depend on timing). Shared memory rows are padded by 16 bytes (an odd number of 16-byte units a
 * row), so the 8 row addresses of an ldmatrix fall in 8 distinct bank groups: conflict-free. For GLU the BN
 * rows of B are BN / 2 pairs (gate, up) of w13 rows: the accumulator pair (c0, c1) of mma.sync, two adjacent
 * columns, is then one column's gate and up, and the activation needs no exchange between threads. */
#include <stdlib.h>

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/bquant.cuh"
#include "cuda/moe/gemm_tile.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "moe/layer.h"

namespace {

template <int BM_, int BN_, int BK_, int WM_, int WN_, int WK_, int STAGES_> struct tile_config {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WM_, WARPS_N = WN_, WARPS_K = WK_;
    static constexpr int STAGES = STAGES_, THREADS = 32 * WM_ * WN_ * WK_, LDS = BK_ + 8;
    static constexpr int MI = BM / WARPS_M / 16, NI = BN / WARPS_N / 8, KW = BK / WARPS_K; /* per warp */
    static constexpr int CHUNKS_K = BK / 8;                                              /* 16 B per chunk */
    static constexpr int A_PER = BM * CHUNKS_K / THREADS, B_PER = BN * CHUNKS_K / THREADS;
    static constexpr size_t SMEM = (size_t)STAGES * (BM + BN) * LDS * 2;
    static_assert(NI % 2 == 0 && KW % 16 == 0 && A_PER >= 1 && B_PER >= 1, "tile shape");
    static_assert(THREADS % CHUNKS_K == 0 && BM * CHUNKS_K % THREADS == 0 && BN * CHUNKS_K % THREADS == 0, "copy");
};

using small_tile = tile_config<16, 32, 128, 1, 2, 4, 4>;
/* SMALL over quantised B (bq_regs): 64 B rows, 2 warps over them by 4 splitting the K step, so that the fixed work
 * of a step (barrier, copies, scale loads) is spread over 2x the weights of the bf16 SMALL shape's warps: decode
 * over quantised weights is bound by instructions (code conversion), not by bytes (ncu on the H200). */
using small_q_tile = tile_config<16, 64, 128, 1, 2, 4, 4>;
using medium_tile = tile_config<64, 128, 64, 2, 4, 1, 4>;
using medium32_tile = tile_config<32, 128, 64, 2, 4, 1, 4>;
using large_tile = tile_config<128, 128, 32, 2, 4, 1, 4>;

/* How a tile shape reads quantised B: in registers when its warps share no B rows (SMALL: one warp row), else
 * converted once per CTA into a bf16 tile (bq_tile). */
template <class C> __host__ __device__ constexpr bool quant_in_registers() {
    return C::WARPS_M == 1;
}

template <class C, int F> __host__ __device__ constexpr size_t smem_bytes() {
    return F == MOE_B_BF16                ? C::SMEM
           : quant_in_registers<C>()      ? bq_regs<C, F>::SMEM
                                          : (size_t)C::STAGES * C::BM * C::LDS * 2 + (size_t)C::BN * C::LDS * 2 +
                                               (size_t)C::STAGES * bq_tile<C::BN, C::BK, C::THREADS, F>::STAGE;
}

template <class C, bool kGlu, int F>
__global__ void __launch_bounds__(C::THREADS) gemm_kernel(const moe_gemm_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    extern __shared__ __align__(128) unsigned char smem_raw[];
    typedef bq_regs<C, F> QR;
    typedef bq_tile<C::BN, C::BK, C::THREADS, F> QT;
    constexpr bool kQuant = F != MOE_B_BF16, kRegs = kQuant && quant_in_registers<C>(), kTile = kQuant && !kRegs;
    constexpr int LDA = kRegs ? QR::LDA : C::LDS; /* A row, elements */
    typedef __nv_bfloat16 arow_t[LDA];
    typedef __nv_bfloat16 brow_t[C::LDS];
    arow_t *sa = reinterpret_cast<arow_t *>(smem_raw);           /* [STAGES][BM] */
    brow_t *sb = reinterpret_cast<brow_t *>(sa + C::STAGES * C::BM); /* bf16: [STAGES][BN]; kTile: [BN] */
    uint8_t *sq = reinterpret_cast<uint8_t *>(sb);               /* kRegs: [STAGES][BN][QR::STRIDE] codes */
    uint8_t *st_codes = reinterpret_cast<uint8_t *>(sb + C::BN); /* kTile: [STAGES][QT::STAGE] codes */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_k = warp / (C::WARPS_M * C::WARPS_N), warp_mn = warp % (C::WARPS_M * C::WARPS_N);
    const int warp_m = warp_mn / C::WARPS_N, warp_n = warp_mn % C::WARPS_N;
    const int wm0 = warp_m * C::MI * 16, wn0 = warp_n * C::NI * 8, wk0 = warp_k * C::KW;

    moe_gemm_tile t;
    if (!moe_gemm_locate(p, C::BM, blockIdx.x, t)) return;

    /* the global rows this thread copies: 16-byte chunks at column kc of each K step */
    const int kc = (tid % C::CHUNKS_K) * 8;
    const __nv_bfloat16 *a_row[C::A_PER], *b_row[C::B_PER];
#pragma unroll
    for (int i = 0; i < C::A_PER; i++) a_row[i] = moe_gemm_a_row(p, t, t.row0 + (tid + i * C::THREADS) / C::CHUNKS_K);
#pragma unroll
    for (int i = 0; i < C::B_PER; i++)
        b_row[i] = kQuant ? nullptr : moe_gemm_b_row<kGlu>(p, t, C::BN, (tid + i * C::THREADS) / C::CHUNKS_K);
    QR qr; /* quantised B: the code chunks this thread copies, its scales */
    QT qt;
    if (kRegs) bq_regs_init<QR, kGlu>(qr, p, t, tid, lane, wn0);
    if (kTile) bq_tile_init<QT, kGlu>(qt, p, t, tid);

    const int k_tiles = (p.k + C::BK - 1) / C::BK;
    auto load = [&](int stage, int kt) {
        const int k0 = kt * C::BK + kc;
        const bool in_k = k0 < p.k; /* k is a multiple of 8: a chunk is all in or all out */
#pragma unroll
        for (int i = 0; i < C::A_PER; i++)
            moe_cp_async16(&sa[stage * C::BM + (tid + i * C::THREADS) / C::CHUNKS_K][kc],
                           a_row[i] && in_k ? a_row[i] + k0 : p.a, a_row[i] && in_k ? 16 : 0);
        if (kRegs) {
            bq_copy_codes<QR, QR::STRIDE>(qr, sq + (size_t)stage * C::BN * QR::STRIDE, kt, p, tid);
        } else if (kTile) {
            bq_copy_codes<QT, QT::ROW_BYTES>(qt, st_codes + stage * QT::STAGE, kt, p, tid);
        } else {
#pragma unroll
            for (int i = 0; i < C::B_PER; i++)
                moe_cp_async16(&sb[stage * C::BN + (tid + i * C::THREADS) / C::CHUNKS_K][kc],
                               b_row[i] && in_k ? b_row[i] + k0 : p.a, b_row[i] && in_k ? 16 : 0);
        }
    };

    float acc[C::MI][C::NI][4];
#pragma unroll
    for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
        for (int ni = 0; ni < C::NI; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[mi][ni][q] = 0.0f;

#pragma unroll
    for (int s = 0; s < C::STAGES - 1; s++) {
        if (s < k_tiles) load(s, s);
        moe_cp_async_commit();
    }
    if (kRegs) bq_regs_scales(qr, 0, p, lane, wk0, qr.next);
    if (kTile) bq_tile_scales(qt, 0, p, tid, qt.next);
    for (int kt = 0; kt < k_tiles; kt++) {
        moe_cp_async_wait<C::STAGES - 2>();
        __syncthreads();
        const int next = kt + C::STAGES - 1;
        if (next < k_tiles) load(next % C::STAGES, next);
        moe_cp_async_commit();
        const arow_t *sa_st = sa + (kt % C::STAGES) * C::BM;
        if (kRegs) { /* this step's scales (loaded a step ago), the next step's on their way; then the step */
#pragma unroll
            for (int ni = 0; ni < C::NI; ni++)
#pragma unroll
                for (int c = 0; c < QR::KS; c++) qr.sc[ni][c] = qr.next[ni][c];
            if (kt + 1 < k_tiles) bq_regs_scales(qr, kt + 1, p, lane, wk0, qr.next);
            bq_regs_step<QR, C::MI>(qr, &sa_st[0][0], sq + (size_t)(kt % C::STAGES) * C::BN * QR::STRIDE, lane, wm0,
                                    wn0, wk0, acc);
            continue;
        }
        if (kTile) { /* the step's codes into the bf16 tile (its readers passed this step's first barrier) */
#pragma unroll
            for (int i = 0; i < QT::PER; i++)
#pragma unroll
                for (int j = 0; j < QT::SUB; j++) qt.sc[i][j] = qt.next[i][j];
            if (kt + 1 < k_tiles) bq_tile_scales(qt, kt + 1, p, tid, qt.next);
            bq_tile_convert(qt, st_codes + (kt % C::STAGES) * QT::STAGE, tid,
                            [&](int s, int c) { return reinterpret_cast<uint4 *>(&sb[s][8 * c]); });
            __syncthreads();
        }
        const brow_t *sb_st = sb + (kTile ? 0 : (kt % C::STAGES) * C::BN);
#pragma unroll
        for (int j = 0; j < C::KW / 16; j++) {
            const int kk = wk0 + 16 * j;
            uint32_t af[C::MI][4], bf[C::NI][2];
#pragma unroll
            for (int mi = 0; mi < C::MI; mi++)
                moe_ldmatrix_x4(af[mi], &sa_st[wm0 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
            for (int nj = 0; nj < C::NI / 2; nj++) {
                uint32_t r[4];
                moe_ldmatrix_x4(r, &sb_st[wn0 + nj * 16 + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8]);
                bf[2 * nj][0] = r[0], bf[2 * nj][1] = r[1], bf[2 * nj + 1][0] = r[2], bf[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
                for (int ni = 0; ni < C::NI; ni++) moe_mma_bf16_16816(acc[mi][ni], af[mi], bf[ni]);
        }
    }
    moe_cp_async_wait<0>();

    if (C::WARPS_K > 1) { /* add the K-split partial sums, in warp order, through the (now idle) pipeline smem */
        constexpr int PER = C::MI * C::NI * 4;
        float *red = reinterpret_cast<float *>(smem_raw);
        static_assert((int64_t)(C::WARPS_K - 1) * C::WARPS_M * C::WARPS_N * 32 * PER * 4 <=
                          (int64_t)smem_bytes<C, F>(),
                      "reduction");
        __syncthreads();
        if (warp_k > 0) {
            float *dst = red + (((warp_k - 1) * C::WARPS_M * C::WARPS_N + warp_mn) * 32 + lane) * PER;
#pragma unroll
            for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
                for (int ni = 0; ni < C::NI; ni++)
#pragma unroll
                    for (int q = 0; q < 4; q++) dst[(mi * C::NI + ni) * 4 + q] = acc[mi][ni][q];
        }
        __syncthreads();
        if (warp_k > 0) return;
        for (int w = 1; w < C::WARPS_K; w++) {
            const float *src = red + (((w - 1) * C::WARPS_M * C::WARPS_N + warp_mn) * 32 + lane) * PER;
#pragma unroll
            for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
                for (int ni = 0; ni < C::NI; ni++)
#pragma unroll
                    for (int q = 0; q < 4; q++) acc[mi][ni][q] += src[(mi * C::NI + ni) * 4 + q];
        }
    }

    /* epilogue: (c0, c1) of row lane/4 and (c2, c3) of row lane/4 + 8, columns 2 (lane % 4) + {0, 1} */
    moe_gemm_by_act<kGlu>(p.act, [&](auto act) {
#pragma unroll
        for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t r = t.row0 + wm0 + mi * 16 + (lane >> 2) + h * 8;
                const moe_gemm_row_out ro = moe_gemm_row<kGlu>(p, t, r);
                if (ro.skip) continue;
#pragma unroll
                for (int ni = 0; ni < C::NI; ni++)
                    moe_gemm_store<kGlu, decltype(act)::value>(p, t, C::BN, r, ro, wn0 + ni * 8 + 2 * (lane & 3),
                                                               acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
            }
    });
}

template <class C, bool kGlu, int F> moe_status launch_one(moe_ctx *ctx, const moe_gemm_params &q, dim3 grid,
                                                          cudaStream_t st) {
    constexpr size_t smem = smem_bytes<C, F>();
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_kernel<C, kGlu, F>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)smem));
    MOE_CUDA_TRY(ctx, moe_launch(false, gemm_kernel<C, kGlu, F>, grid, C::THREADS, smem, st, q));
    return MOE_OK;
}

template <class C>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles, int groups, cudaStream_t st) {
    const int cols_per_tile = glu ? C::BN / 2 : C::BN;
    moe_gemm_params q = p;
    q.m_tiles = m_tiles, q.n_tiles = (p.n + cols_per_tile - 1) / cols_per_tile;
    if (q.m_tiles * q.n_tiles > INT32_MAX) /* a grid's limit, and the tile order's 32-bit arithmetic */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: %lld tiles exceed 2^31",
                          (long long)(q.m_tiles * q.n_tiles));
    const dim3 grid((unsigned)(q.m_tiles * q.n_tiles), 1, (unsigned)groups);
    return moe_gemm_by_bfmt(ctx, q.b_fmt, [&](auto f) {
        return glu ? launch_one<C, true, decltype(f)::value>(ctx, q, grid, st)
                   : launch_one<C, false, decltype(f)::value>(ctx, q, grid, st);
    });
}

} // namespace

int moe__gemm_tile_m(moe_gemm_shape shape) {
    return shape == MOE_GEMM_SMALL      ? small_tile::BM
           : shape == MOE_GEMM_MEDIUM32 ? medium32_tile::BM
           : shape == MOE_GEMM_MEDIUM   ? medium_tile::BM
                                        : large_tile::BM;
}

moe_status moe__cuda_grouped_gemm(moe_ctx *ctx, const moe_gemm_params &p, bool glu, moe_gemm_shape shape,
                                  int64_t m_tiles, int groups, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    if (p.a_kperm || p.c_kperm) { /* only the FP4 wgmma tile reads or writes that K order */
        if (!p.a_kperm || !moe__cuda_gemm_fp4_rs_takes(ctx, p, shape))
            return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: operands in the FP4 wgmma tile's K order need "
                                                        "that tile (MEDIUM or LARGE, FP4 weights, sm_90a)");
        return moe__cuda_grouped_gemm_fp4_rs(ctx, p, glu, shape, m_tiles, groups, stream);
    }
    switch (shape) {
    case MOE_GEMM_SMALL:
        if (moe__cuda_gemm_fp4_decode_fits(p) && !getenv("MOE_GEMM_NO_FP4_DECODE"))
            return moe__cuda_grouped_gemm_fp4_decode(ctx, p, glu, m_tiles, stream);
        if (moe__cuda_gemm_bf16_decode_fits(p) && !getenv("MOE_GEMM_NO_BF16_DECODE"))
            return moe__cuda_grouped_gemm_bf16_decode(ctx, p, glu, m_tiles, groups, stream);
        return p.b_fmt == MOE_B_BF16 ? launch<small_tile>(ctx, p, glu, m_tiles, groups, stream)
                                     : launch<small_q_tile>(ctx, p, glu, m_tiles, groups, stream);
    case MOE_GEMM_MEDIUM:
        if (moe__cuda_gemm_sm90_usable(ctx)) {
            moe_status st;
            if (moe__cuda_grouped_gemm_sm90_tma(ctx, p, glu, medium_tile::BM, m_tiles, groups, stream, &st)) return st;
        }
        return launch<medium_tile>(ctx, p, glu, m_tiles, groups, stream);
    case MOE_GEMM_MEDIUM32: return launch<medium32_tile>(ctx, p, glu, m_tiles, groups, stream);
    default:
        if (moe__cuda_gemm_sm90_usable(ctx)) {
            moe_status st;
            if (moe__cuda_grouped_gemm_sm90_tma(ctx, p, glu, large_tile::BM, m_tiles, groups, stream, &st)) return st;
            return moe__cuda_grouped_gemm_sm90(ctx, p, glu, m_tiles, groups, stream);
        }
        return launch<large_tile>(ctx, p, glu, m_tiles, groups, stream);
    }
}
