/* grouped_gemm.cu — the layer's grouped BF16 GEMM (grouped_gemm.cuh): ldmatrix + mma.sync m16n8k16 with f32
 * accumulators, tiles fed by a multi-stage cp.async pipeline, in three tile shapes.
 *
 * A CTA computes a BM x BN tile of A . B^T; its warps form a WARPS_M x WARPS_N grid over the tile and, in the
 * SMALL shape, also split each K step WARPS_K ways (their partial sums are added in warp order at the end, so the
 * result does not depend on timing). Shared memory rows are padded by 16 bytes (an odd number of 16-byte units a
 * row), so the 8 row addresses of an ldmatrix fall in 8 distinct bank groups: conflict-free. For GLU the BN
 * rows of B are BN / 2 pairs (gate, up) of w13 rows: the accumulator pair (c0, c1) of mma.sync, two adjacent
 * columns, is then one column's gate and up, and the activation needs no exchange between threads. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
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

/* Quantised B of format F in tile shape C: the codes of a K step (BK elements a row, 16-byte chunks) land in a
 * staging area of their own, STAGES deep; a single bf16 tile (BN x LDS, as the bf16 path's) holds the converted
 * step that the warps read. */
template <class C, int F> struct bquant_config {
    static constexpr bool FP4 = F == MOE_B_E2M1_E8M0 || F == MOE_B_E2M1_E4M3;
    static constexpr int ROW_BYTES = FP4 ? C::BK / 2 : C::BK;  /* codes of one row of a K step */
    static constexpr int CHUNKS = ROW_BYTES / 16, PER_CHUNK = FP4 ? 32 : 16; /* chunks a row, elements a chunk */
    static constexpr int PER = (C::BN * CHUNKS + C::THREADS - 1) / C::THREADS; /* chunks a thread (last: some idle) */
    static constexpr size_t SMEM = (size_t)C::STAGES * C::BM * C::LDS * 2 + (size_t)C::BN * C::LDS * 2 +
                                   (size_t)C::STAGES * C::BN * ROW_BYTES;
    static_assert(CHUNKS >= 1 && C::THREADS % CHUNKS == 0, "quantised copy");
};

/* One block scale as f32 (scale index i). */
template <int F> __device__ __forceinline__ float bscale_at(const moe_gemm_bscale &bs, const void *base, int64_t i) {
    if (F == MOE_B_E4M3_F32) return __ldg(reinterpret_cast<const float *>(base) + i);
    const uint8_t code = __ldg(reinterpret_cast<const uint8_t *>(base) + i);
    return moe_decode(code, F == MOE_B_E2M1_E4M3 ? MOE_DTYPE_E4M3 : MOE_DTYPE_E8M0);
}

/* 16 codes of one 16-byte chunk half (FP4: 8 bytes hold 16 codes; FP8: 16 bytes), times scale s, as 16 bf16 in
 * dst (32 bytes, 16-byte aligned). */
template <int F> __device__ __forceinline__ void bconvert16(const uint8_t *codes, float s, __nv_bfloat16 *dst) {
    __nv_bfloat162 o[8];
    if (F == MOE_B_E2M1_E8M0 || F == MOE_B_E2M1_E4M3) {
        const uint2 w = *reinterpret_cast<const uint2 *>(codes);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const uint32_t byte = ((j < 4 ? w.x : w.y) >> (8 * (j % 4))) & 0xFF;
            o[j] = __floats2bfloat162_rn(moe_e2m1_value(byte) * s, moe_e2m1_value(byte >> 4) * s);
        }
    } else {
        const uint4 w = *reinterpret_cast<const uint4 *>(codes);
        const uint32_t word[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2(
                (__nv_fp8x2_storage_t)((word[j / 2] >> (16 * (j % 2))) & 0xFFFF), __NV_E4M3));
            const float2 f = __half22float2(h);
            o[j] = __floats2bfloat162_rn(f.x * s, f.y * s);
        }
    }
    reinterpret_cast<uint4 *>(dst)[0] = *reinterpret_cast<const uint4 *>(&o[0]);
    reinterpret_cast<uint4 *>(dst)[1] = *reinterpret_cast<const uint4 *>(&o[4]);
}

using small_tile = tile_config<16, 32, 128, 1, 2, 4, 4>;
using medium_tile = tile_config<64, 128, 64, 2, 4, 1, 4>;
using large_tile = tile_config<128, 128, 32, 2, 4, 1, 4>;

template <class C, bool kGlu, int F>
__global__ void __launch_bounds__(C::THREADS) gemm_kernel(const moe_gemm_params p) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    typedef __nv_bfloat16 row_t[C::LDS];
    typedef bquant_config<C, F> Q;
    constexpr bool kQuant = F != MOE_B_BF16;
    row_t *sa = reinterpret_cast<row_t *>(smem_raw);              /* [STAGES][BM] */
    row_t *sb = sa + C::STAGES * C::BM;                           /* [STAGES][BN]; quantised: [BN] */
    uint8_t *sq = reinterpret_cast<uint8_t *>(sb + C::BN);        /* quantised: [STAGES][BN][ROW_BYTES] codes */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_k = warp / (C::WARPS_M * C::WARPS_N), warp_mn = warp % (C::WARPS_M * C::WARPS_N);
    const int warp_m = warp_mn / C::WARPS_N, warp_n = warp_mn % C::WARPS_N;

    moe_gemm_tile t;
    if (!moe_gemm_locate(p, C::BM, t)) return;

    /* the global rows this thread copies: 16-byte chunks at column kc of each K step */
    const int kc = (tid % C::CHUNKS_K) * 8;
    const __nv_bfloat16 *a_row[C::A_PER], *b_row[C::B_PER];
#pragma unroll
    for (int i = 0; i < C::A_PER; i++) a_row[i] = moe_gemm_a_row(p, t, t.row0 + (tid + i * C::THREADS) / C::CHUNKS_K);
#pragma unroll
    for (int i = 0; i < C::B_PER; i++)
        b_row[i] = kQuant ? nullptr : moe_gemm_b_row<kGlu>(p, t, C::BN, (tid + i * C::THREADS) / C::CHUNKS_K);
    /* quantised: the chunks this thread copies and converts, a chunk qc of B row (tid + i THREADS) / CHUNKS */
    const int qc = tid % Q::CHUNKS;
    int64_t q_row[Q::PER];
    const uint8_t *q_src[Q::PER];
    const void *q_scale = nullptr;
    if (kQuant) {
        const int64_t row_bytes = Q::FP4 ? p.k / 2 : p.k;
        const uint8_t *b = reinterpret_cast<const uint8_t *>(p.b) + t.group * (Q::FP4 ? p.b_group_stride / 2
                                                                                        : p.b_group_stride);
        q_scale = reinterpret_cast<const char *>(p.bs.scale) +
                  t.group * p.bs.group_stride * (F == MOE_B_E4M3_F32 ? 4 : 1);
#pragma unroll
        for (int i = 0; i < Q::PER; i++) {
            const int s_row = (tid + i * C::THREADS) / Q::CHUNKS;
            q_row[i] = s_row < C::BN ? moe_gemm_b_index<kGlu>(p, t, C::BN, s_row) : -1;
            q_src[i] = q_row[i] >= 0 ? b + q_row[i] * row_bytes + qc * 16 : nullptr;
        }
    }

    const int k_tiles = (p.k + C::BK - 1) / C::BK;
    auto load = [&](int stage, int kt) {
        const int k0 = kt * C::BK + kc;
        const bool in_k = k0 < p.k; /* k is a multiple of 8: a chunk is all in or all out */
#pragma unroll
        for (int i = 0; i < C::A_PER; i++)
            moe_cp_async16(&sa[stage * C::BM + (tid + i * C::THREADS) / C::CHUNKS_K][kc],
                           a_row[i] && in_k ? a_row[i] + k0 : p.a, a_row[i] && in_k ? 16 : 0);
        if (!kQuant) {
#pragma unroll
            for (int i = 0; i < C::B_PER; i++)
                moe_cp_async16(&sb[stage * C::BN + (tid + i * C::THREADS) / C::CHUNKS_K][kc],
                               b_row[i] && in_k ? b_row[i] + k0 : p.a, b_row[i] && in_k ? 16 : 0);
        } else {
            const int kq = kt * C::BK + qc * Q::PER_CHUNK; /* K is a multiple of 32: a chunk is all in or out */
#pragma unroll
            for (int i = 0; i < Q::PER; i++) {
                const int s_row = (tid + i * C::THREADS) / Q::CHUNKS;
                if (s_row >= C::BN) continue;
                const bool in = q_src[i] && kq < p.k;
                moe_cp_async16(sq + ((size_t)stage * C::BN + s_row) * Q::ROW_BYTES + qc * 16,
                               in ? (const void *)(q_src[i] + (int64_t)kt * Q::ROW_BYTES) : (const void *)p.a, in ? 16 : 0);
            }
        }
    };
    /* quantised: the codes of K step kt (in stage kt % STAGES) into the bf16 tile, code * block scale; rows past N
     * and columns past K are zeros */
    auto convert = [&](int kt) {
        const int kq = kt * C::BK + qc * Q::PER_CHUNK;
#pragma unroll
        for (int i = 0; i < Q::PER; i++) {
            const int s_row = (tid + i * C::THREADS) / Q::CHUNKS;
            if (s_row >= C::BN) continue;
            const uint8_t *codes = sq + ((size_t)(kt % C::STAGES) * C::BN + s_row) * Q::ROW_BYTES + qc * 16;
            __nv_bfloat16 *dst = &sb[s_row][qc * Q::PER_CHUNK];
#pragma unroll
            for (int h = 0; h < Q::PER_CHUNK / 16; h++) { /* 16 elements share a scale (blocks are 16 or more) */
                const int kk = kq + 16 * h;
                float sc = 0.0f;
                if (q_row[i] >= 0 && kk < p.k)
                    sc = bscale_at<F>(p.bs, q_scale,
                                      (q_row[i] >> p.bs.row_shift) * p.bs.cols + (kk >> p.bs.col_shift));
                bconvert16<F>(codes + h * 8 * (Q::FP4 ? 1 : 2), sc, dst + 16 * h);
            }
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
    const int wm0 = warp_m * C::MI * 16, wn0 = warp_n * C::NI * 8, wk0 = warp_k * C::KW;
    for (int kt = 0; kt < k_tiles; kt++) {
        moe_cp_async_wait<C::STAGES - 2>();
        __syncthreads();
        const int next = kt + C::STAGES - 1;
        if (next < k_tiles) load(next % C::STAGES, next);
        moe_cp_async_commit();
        if (kQuant) {
            convert(kt);
            __syncthreads();
        }
        const row_t *sa_st = sa + (kt % C::STAGES) * C::BM, *sb_st = kQuant ? sb : sb + (kt % C::STAGES) * C::BN;
#pragma unroll
        for (int kk = wk0; kk < wk0 + C::KW; kk += 16) {
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
        static_assert((size_t)(C::WARPS_K - 1) * C::WARPS_M * C::WARPS_N * 32 * PER * 4 <= Q::SMEM, "reduction");
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
#pragma unroll
    for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t r = t.row0 + wm0 + mi * 16 + (lane >> 2) + h * 8;
            const moe_gemm_row_out ro = moe_gemm_row<kGlu>(p, t, r);
            if (ro.skip) continue;
#pragma unroll
            for (int ni = 0; ni < C::NI; ni++)
                moe_gemm_store<kGlu>(p, t, C::BN, r, ro, wn0 + ni * 8 + 2 * (lane & 3), acc[mi][ni][2 * h],
                                     acc[mi][ni][2 * h + 1]);
        }
}

template <class C, bool kGlu, int F> moe_status launch_one(moe_ctx *ctx, const moe_gemm_params &q, dim3 grid,
                                                          cudaStream_t st) {
    const size_t smem = F == MOE_B_BF16 ? C::SMEM : bquant_config<C, F>::SMEM;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_kernel<C, kGlu, F>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)smem));
    gemm_kernel<C, kGlu, F><<<grid, C::THREADS, smem, st>>>(q);
    MOE_CUDA_LAUNCHED(ctx, "gemm_kernel");
    return MOE_OK;
}

template <class C, bool kGlu> moe_status launch_fmt(moe_ctx *ctx, const moe_gemm_params &q, dim3 grid, cudaStream_t st) {
    switch (q.b_fmt) {
    case MOE_B_BF16: return launch_one<C, kGlu, MOE_B_BF16>(ctx, q, grid, st);
    case MOE_B_E4M3_F32: return launch_one<C, kGlu, MOE_B_E4M3_F32>(ctx, q, grid, st);
    case MOE_B_E4M3_E8M0: return launch_one<C, kGlu, MOE_B_E4M3_E8M0>(ctx, q, grid, st);
    case MOE_B_E2M1_E8M0: return launch_one<C, kGlu, MOE_B_E2M1_E8M0>(ctx, q, grid, st);
    case MOE_B_E2M1_E4M3: return launch_one<C, kGlu, MOE_B_E2M1_E4M3>(ctx, q, grid, st);
    }
    return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: unknown weight storage %d", (int)q.b_fmt);
}

template <class C>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles, int groups, cudaStream_t st) {
    const int cols_per_tile = glu ? C::BN / 2 : C::BN;
    moe_gemm_params q = p;
    q.m_tiles = m_tiles, q.n_tiles = (p.n + cols_per_tile - 1) / cols_per_tile;
    const dim3 grid((unsigned)(q.m_tiles * q.n_tiles), 1, (unsigned)groups);
    return glu ? launch_fmt<C, true>(ctx, q, grid, st) : launch_fmt<C, false>(ctx, q, grid, st);
}

} // namespace

int moe__gemm_tile_m(moe_gemm_shape shape) {
    return shape == MOE_GEMM_SMALL ? small_tile::BM : shape == MOE_GEMM_MEDIUM ? medium_tile::BM : large_tile::BM;
}

moe_status moe__cuda_grouped_gemm(moe_ctx *ctx, const moe_gemm_params &p, bool glu, moe_gemm_shape shape,
                                  int64_t m_tiles, int groups, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    switch (shape) {
    case MOE_GEMM_SMALL: return launch<small_tile>(ctx, p, glu, m_tiles, groups, stream);
    case MOE_GEMM_MEDIUM: return launch<medium_tile>(ctx, p, glu, m_tiles, groups, stream);
    default:
        if (p.b_fmt == MOE_B_BF16 && moe__cuda_gemm_sm90_usable(ctx))
            return moe__cuda_grouped_gemm_sm90(ctx, p, glu, m_tiles, groups, stream);
        return launch<large_tile>(ctx, p, glu, m_tiles, groups, stream);
    }
}
