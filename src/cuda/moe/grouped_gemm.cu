/* grouped_gemm.cu — the layer's grouped BF16 GEMM (grouped_gemm.cuh): a 64 x 128 tile per CTA, 8 warps of
 * 32 x 32, K in steps of 32 through a 3-stage cp.async pipeline, ldmatrix + mma.sync m16n8k16.
 *
 * Shared memory rows are padded to 40 bf16 (80 bytes): the 8 row addresses of an ldmatrix then start on 8
 * distinct 16-byte bank groups, so the loads are conflict-free. For GLU the 128 B rows of a tile are 64 pairs
 * (gate, up) of w13 rows: the accumulator pair (c0, c1) of mma.sync, two adjacent columns, is then a column's
 * gate and up, and the activation needs no exchange between threads. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "moe/layer.h"
#include "route/route_math.h"

namespace {

constexpr int kBM = MOE_LAYER_TILE_M, kBN = 128, kBK = 32, kStages = 3, kThreads = 256, kLds = kBK + 8;

/* The activations of docs/layer.md, in the same form as the CPU reference. */
__device__ __forceinline__ float glu(moe_activation act, float g, float u, float alpha, float limit) {
    switch (act) {
    case MOE_ACT_GELU_GLU: return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)) * u;
    case MOE_ACT_GELU_TANH_GLU:
        return 0.5f * g * (1.0f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g))) * u;
    case MOE_ACT_GPTOSS_GLU: {
        const float gc = g < limit ? g : limit;
        const float uc = u < -limit ? -limit : u > limit ? limit : u;
        return gc * moe__sigmoidf(alpha * gc) * (uc + 1.0f);
    }
    default: return g * moe__sigmoidf(g) * u;
    }
}

template <bool kGlu> __global__ void __launch_bounds__(kThreads) gemm_kernel(const moe_gemm_params p) {
    __shared__ __align__(128) __nv_bfloat16 sa[kStages][kBM][kLds];
    __shared__ __align__(128) __nv_bfloat16 sb[kStages][kBN][kLds];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warp_m = warp >> 2, warp_n = warp & 3;

    /* the tile's rows and group */
    const int64_t row0 = (int64_t)blockIdx.x * kBM;
    int64_t row_end;
    int group;
    if (p.offsets) {
        row_end = p.offsets[p.n_groups];
        if (row0 >= row_end) return;
        int lo = 0, hi = p.n_groups - 1; /* the last group starting at or before row0: it is never empty */
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (p.offsets[mid] <= row0) lo = mid;
            else hi = mid - 1;
        }
        group = lo;
    } else {
        row_end = p.m;
        group = blockIdx.z;
        if (row0 >= row_end) return;
    }

    /* the global row each thread copies: one 16-byte chunk of A and two of B per K step */
    const int kc = (tid & 3) * 8;
    const __nv_bfloat16 *a_row = nullptr;
    {
        const int64_t r = row0 + (tid >> 2);
        if (r < row_end) {
            if (!p.offsets) {
                a_row = p.a + group * p.a_group_stride + r * p.k;
            } else if (!p.gather) {
                a_row = p.a + r * p.k;
            } else {
                const int32_t src = p.row_src[r];
                if (src >= 0) a_row = p.a + (int64_t)(src / p.top_k) * p.k;
            }
        }
    }
    const __nv_bfloat16 *b_row[2];
    const __nv_bfloat16 *b = p.b + group * p.b_group_stride;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int s = (tid + i * kThreads) >> 2;
        int64_t brow = -1;
        if (kGlu) {
            const int col = blockIdx.y * (kBN / 2) + (s >> 1);
            if (col < p.n) brow = p.interleaved ? 2 * col + (s & 1) : (s & 1) * p.n + col;
        } else {
            const int col = blockIdx.y * kBN + s;
            if (col < p.n) brow = col;
        }
        b_row[i] = brow >= 0 ? b + brow * p.k : nullptr;
    }

    const int k_tiles = (p.k + kBK - 1) / kBK;
    auto load = [&](int stage, int kt) {
        const int k0 = kt * kBK + kc;
        const bool in_k = k0 < p.k;
        moe_cp_async16(&sa[stage][tid >> 2][kc], a_row && in_k ? a_row + k0 : p.a, a_row && in_k ? 16 : 0);
#pragma unroll
        for (int i = 0; i < 2; i++)
            moe_cp_async16(&sb[stage][(tid + i * kThreads) >> 2][kc], b_row[i] && in_k ? b_row[i] + k0 : p.b,
                           b_row[i] && in_k ? 16 : 0);
    };

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[mi][ni][q] = 0.0f;

#pragma unroll
    for (int s = 0; s < kStages - 1; s++) {
        if (s < k_tiles) load(s, s);
        moe_cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        moe_cp_async_wait<kStages - 2>();
        __syncthreads();
        const int next = kt + kStages - 1;
        if (next < k_tiles) load(next % kStages, next);
        moe_cp_async_commit();
        const int st = kt % kStages;
#pragma unroll
        for (int kk = 0; kk < kBK; kk += 16) {
            uint32_t af[2][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                moe_ldmatrix_x4(af[mi], &sa[st][warp_m * 32 + mi * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
            for (int nj = 0; nj < 2; nj++) {
                uint32_t r[4];
                moe_ldmatrix_x4(r, &sb[st][warp_n * 32 + nj * 16 + (lane & 7) + (lane >> 4) * 8]
                                      [kk + ((lane >> 3) & 1) * 8]);
                bf[2 * nj][0] = r[0], bf[2 * nj][1] = r[1], bf[2 * nj + 1][0] = r[2], bf[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) moe_mma_bf16_16816(acc[mi][ni], af[mi], bf[ni]);
        }
    }
    moe_cp_async_wait<0>();

    /* epilogue: (c0, c1) of row lane/4 and (c2, c3) of row lane/4 + 8, columns 2 (lane % 4) + {0, 1} */
    const float *bias = p.bias ? p.bias + group * p.bias_group_stride : nullptr;
    __nv_bfloat16 *c = p.c + (p.offsets ? 0 : group * p.c_group_stride);
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t r = row0 + warp_m * 32 + mi * 16 + (lane >> 2) + h * 8;
            if (r >= row_end) continue;
            const int32_t src = p.offsets ? p.row_src[r] : 0;
            if (!kGlu && src < 0) continue; /* padding rows of the routed output are never read */
            const float w = kGlu && p.row_weight ? (src >= 0 ? p.row_weight[src] : 0.0f) : 1.0f;
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const int sloc = warp_n * 32 + ni * 8 + 2 * (lane & 3);
                float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
                if (kGlu) {
                    const int col = blockIdx.y * (kBN / 2) + (sloc >> 1);
                    if (col >= p.n) continue;
                    v0 *= w, v1 *= w;
                    if (bias) {
                        v0 += bias[p.interleaved ? 2 * col : col];
                        v1 += bias[p.interleaved ? 2 * col + 1 : p.n + col];
                    }
                    c[r * p.n + col] = __float2bfloat16_rn(glu(p.act, v0, v1, p.alpha, p.limit));
                } else {
                    const int col = blockIdx.y * kBN + sloc;
                    if (col >= p.n) continue;
                    if (bias) v0 += bias[col], v1 += bias[col + 1];
                    *reinterpret_cast<__nv_bfloat162 *>(c + r * p.n + col) = __floats2bfloat162_rn(v0, v1);
                }
            }
        }
}

} // namespace

moe_status moe__cuda_grouped_gemm(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles, int groups,
                                  cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    const int cols_per_tile = glu ? kBN / 2 : kBN;
    const dim3 grid((unsigned)m_tiles, (unsigned)((p.n + cols_per_tile - 1) / cols_per_tile), (unsigned)groups);
    if (glu) gemm_kernel<true><<<grid, kThreads, 0, stream>>>(p);
    else gemm_kernel<false><<<grid, kThreads, 0, stream>>>(p);
    MOE_CUDA_LAUNCHED(ctx, "gemm_kernel");
    return MOE_OK;
}
