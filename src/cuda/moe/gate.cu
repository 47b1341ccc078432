/* gate.cu — the router's logits (gate.cuh), on the CUDA cores in f32: two kernels by T, both split over H.
 *  - few tokens (T < 64): a warp per (expert, group of 8 tokens, slice of H); each lane streams its float4s of
 *    the gate row once and uses them for the 8 tokens;
 *  - many tokens: 64 x 64 output tiles, K in steps of 32 through shared memory, 4 x 4 outputs a thread.
 * The H slices are sized so that the grid fills the GPU even at T = 1, where the whole gate matrix
 * (E x H f32: 7 MB for DeepSeek-V3) must be read by many SMs at once. With more than one slice the slices' sums
 * are added in slice order, so the bits do not depend on timing: for one group of few tokens on sm_90 the
 * slices are one thread block cluster, each CTA adding a share of the outputs over the others' shared memory (no
 * third kernel, no partial sums in global memory); otherwise each slice writes its partial sums and
 * gate_reduce_kernel adds them. The shared-expert gate is handled as one more expert row, E. */
#include <cooperative_groups.h>

#include "cuda/common/cuda.cuh"
#include "cuda/moe/gate.cuh"
#include "moe/layer.h"
#include "route/route_math.h"

namespace cg = cooperative_groups;

namespace {

constexpr int kGroup = MOE_GATE_GROUP, kWarps = 4, kTile = MOE_GATE_TILE, kBK = 32, kThreads = 256,
              kSlice = MOE_GATE_SLICE;

struct gate_args {
    const __nv_bfloat16 *x;
    const float *gate, *gate_bias, *shared_gate;
    int64_t T;
    int H, E;
    float *logits, *shared_scale;
    float *partial;   /* (splits, T, E + 1) when splits > 1 and the splits are not a cluster */
    int slice;        /* columns of H a split covers (a multiple of kSlice) */
    int splits;

    __device__ const float *row(int e) const { return e < E ? gate + (int64_t)e * H : shared_gate; }
    __device__ void finish(int64_t t, int e, float acc) const {
        if (e < E) logits[t * E + e] = gate_bias ? acc + gate_bias[e] : acc;
        else shared_scale[t] = moe__sigmoidf(acc);
    }
    /* split z's sum for (t, e): final when there is one split */
    __device__ void store(int z, int64_t t, int e, float acc) const {
        if (splits == 1) finish(t, e, acc);
        else partial[((int64_t)z * T + t) * (E + 1) + e] = acc;
    }
};

/* The splits of a tile as one cluster (sm_90): each CTA holds its slice's sums of the tile's n outputs in `mine`;
 * output o is added over the CTAs in rank (slice) order, from 0.0f as gate_reduce_kernel adds, by CTA o % splits,
 * which hands it to done(o, sum). Called by every thread of the cluster. */
template <class Done> __device__ __forceinline__ void cluster_sum(float *mine, int n, Done &&done) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = (int)cluster.block_rank(), splits = (int)cluster.num_blocks();
    cluster.sync(); /* every CTA's sums written */
    for (int o = rank + splits * (int)threadIdx.x; o < n; o += splits * (int)blockDim.x) {
        float acc = 0.0f;
#pragma unroll 4
        for (int r = 0; r < splits; r++) acc += cluster.map_shared_rank(mine, r)[o];
        done(o, acc);
    }
    cluster.sync(); /* no CTA leaves while another reads its shared memory */
#endif
}

/* Few tokens: grid (split, group of kWarps experts, group of kGroup tokens), a warp an expert. kCluster: a tile's
 * splits are one cluster and add their sums (cluster_sum); else each split stores its own (gate_args::store). */
template <bool kCluster>
__global__ void __launch_bounds__(kWarps * 32) gate_few_kernel(const gate_args a) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ float sums[kCluster ? kWarps * kGroup : 1]; /* cluster: this slice's sums, (warp, token) */
    const int lane = threadIdx.x & 31, e = blockIdx.y * kWarps + (threadIdx.x >> 5), z = blockIdx.x;
    const int n_out = a.E + (a.shared_gate ? 1 : 0);
    if (!kCluster && e >= n_out) return; /* a cluster's threads all reach its barriers */
    const int64_t t0 = (int64_t)blockIdx.z * kGroup;
    const int nt = a.T - t0 < kGroup ? (int)(a.T - t0) : kGroup;
    const float *w = a.row(e < n_out ? e : 0);
    float acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; j++) acc[j] = 0.0f;
    const int h_end = e < n_out ? min(a.H, (z + 1) * a.slice) : 0;
#pragma unroll 4
    for (int h = z * a.slice + lane * 4; h < h_end; h += 128) {
        const float4 g = __ldg(reinterpret_cast<const float4 *>(w + h));
#pragma unroll
        for (int j = 0; j < kGroup; j++) {
            if (j >= nt) break;
            const uint2 raw = __ldg(reinterpret_cast<const uint2 *>(a.x + (t0 + j) * a.H + h));
            const float2 x01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.x));
            const float2 x23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.y));
            acc[j] = fmaf(x01.x, g.x, acc[j]);
            acc[j] = fmaf(x01.y, g.y, acc[j]);
            acc[j] = fmaf(x23.x, g.z, acc[j]);
            acc[j] = fmaf(x23.y, g.w, acc[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < kGroup; j++) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
        if (kCluster) {
            if (lane == j) sums[(threadIdx.x >> 5) * kGroup + j] = acc[j];
        } else if (lane == 0 && j < nt) {
            a.store(z, t0 + j, e, acc[j]);
        }
    }
    if (kCluster)
        cluster_sum(sums, kWarps * kGroup, [&](int o, float sum) {
            const int eo = blockIdx.y * kWarps + o / kGroup, j = o % kGroup;
            if (eo < n_out && j < nt) a.finish(t0 + j, eo, sum);
        });
}

/* Many tokens: grid (expert tile, token tile, split), each split storing its own sums (gate_args::store). */
__global__ void __launch_bounds__(kThreads) gate_many_kernel(const gate_args a) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ float xs[kBK][kTile + 4], gs[kBK][kTile + 4]; /* k-major: a thread reads 4 tokens / experts */
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int n_out = a.E + (a.shared_gate ? 1 : 0);
    const int e0 = blockIdx.x * kTile;
    const int64_t t0 = (int64_t)blockIdx.y * kTile;
    /* copy duty: row tid / 4 of the x and gate tiles, 8 columns at (tid % 4) * 8 */
    const int lr = tid / 4, lc = (tid % 4) * 8;
    const __nv_bfloat16 *xrow = t0 + lr < a.T ? a.x + (t0 + lr) * a.H : nullptr;
    const float *grow = e0 + lr < n_out ? a.row(e0 + lr) : nullptr;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    const int k_end = min(a.H, (blockIdx.z + 1) * a.slice);
    for (int k0 = blockIdx.z * a.slice; k0 < k_end; k0 += kBK) {
        const bool in = k0 + lc < k_end;
        float xv[8], gv[8];
        moe_load8(a.x, xrow ? (t0 + lr) * a.H + k0 + lc : 0, xrow && in ? 8 : 0, xrow && in, xv);
        if (grow && in) {
            const float4 g0 = __ldg(reinterpret_cast<const float4 *>(grow + k0 + lc));
            const float4 g1 = __ldg(reinterpret_cast<const float4 *>(grow + k0 + lc + 4));
            gv[0] = g0.x, gv[1] = g0.y, gv[2] = g0.z, gv[3] = g0.w, gv[4] = g1.x, gv[5] = g1.y, gv[6] = g1.z,
            gv[7] = g1.w;
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) gv[j] = 0.0f;
        }
        __syncthreads(); /* the previous step's reads are done */
#pragma unroll
        for (int j = 0; j < 8; j++) xs[lc + j][lr] = xv[j], gs[lc + j][lr] = gv[j];
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kBK; k++) {
            const float4 xa = *reinterpret_cast<const float4 *>(&xs[k][ty * 4]);
            const float4 ga = *reinterpret_cast<const float4 *>(&gs[k][tx * 4]);
            const float xr[4] = {xa.x, xa.y, xa.z, xa.w}, gr[4] = {ga.x, ga.y, ga.z, ga.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(xr[i], gr[j], acc[i][j]);
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t t = t0 + ty * 4 + i;
            const int e = e0 + tx * 4 + j;
            if (t < a.T && e < n_out) a.store(blockIdx.z, t, e, acc[i][j]);
        }
}

__global__ void gate_reduce_kernel(const gate_args a) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const int n_out = a.E + (a.shared_gate ? 1 : 0);
    const int64_t n = a.T * n_out;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / n_out;
        const int e = (int)(i - t * n_out);
        float acc = 0.0f;
        for (int z = 0; z < a.splits; z++) acc += a.partial[((int64_t)z * a.T + t) * (a.E + 1) + e];
        a.finish(t, e, acc);
    }
}

/* The most CTAs a cluster of the few kernel's splits may hold here (moe_cluster_limit), asked once. */
int cluster_limit() {
    static const int limit = moe_cluster_limit(gate_few_kernel<true>, kWarps * 32, 16);
    return limit;
}

} // namespace

moe_status moe__cuda_gate_logits(moe_ctx *ctx, const __nv_bfloat16 *x, const float *gate, const float *gate_bias,
                                 const float *shared_gate, int64_t T, int H, int E, float *logits,
                                 float *shared_scale, float *partial, bool alone, cudaStream_t stream) {
    gate_args a = {x, gate, gate_bias, shared_gate, T, H, gate ? E : 0, logits, shared_scale, partial, H, 1};
    const int n_out = a.E + (shared_gate ? 1 : 0);
    if (T == 0 || n_out == 0) return MOE_OK;
    /* split H until the grid has about `want` CTAs; moe__gate_partial_rows (layer.h) bounds splits x T for these
     * choices: want / ceil(T / 8) x T <= 8192 + T (few), want / ceil(T / 64) x T <= 16896 + T (many) */
    const bool few = T < kTile;
    const int64_t base = few ? (int64_t)((n_out + kWarps - 1) / kWarps) * ((T + kGroup - 1) / kGroup)
                             : (int64_t)((n_out + kTile - 1) / kTile) * ((T + kTile - 1) / kTile);
    const int64_t want = few ? MOE_GATE_WANT_FEW : MOE_GATE_WANT_MANY, max_splits = (H + kSlice - 1) / kSlice;
    int64_t splits = (want + base - 1) / base;
    splits = splits < 1 ? 1 : splits > max_splits ? max_splits : splits;
    auto split_into = [&](int64_t n) { /* n slices of whole kSlice columns at most: a.slice and a.splits */
        a.slice = (int)((H + n - 1) / n + kSlice - 1) / kSlice * kSlice;
        a.splits = (H + a.slice - 1) / a.slice;
    };
    split_into(splits);
    /* one group of tokens (T <= 8) with no other kernel beside it: the splits as one cluster, where the kernel runs
     * its sm_90 code and the GPU schedules a cluster of that many CTAs (16 on H100 / H200; else the portable 8, with
     * fewer, wider slices); else gate_reduce_kernel adds them. Measured on the H200 (docs/performance.md): at T = 1
     * the cluster saved 1-3 µs of a BF16 decode step; at T = 16, and wherever the shared experts or W8A8's x codes
     * ran beside it on the side stream, it cost 1-8 µs (a cluster's CTAs wait until one GPC has room for them all) */
    const bool pdl = moe__cuda_pdl(ctx);
    const int cluster = a.splits > 1 && T <= kGroup && alone ? cluster_limit() : 0;
    if (cluster && a.splits > cluster) split_into(cluster);
    const bool clustered = cluster && a.splits > 1;
    void (*kernel)(gate_args) = !few ? gate_many_kernel : clustered ? gate_few_kernel<true> : gate_few_kernel<false>;
    /* few: (split, expert group, token group), the split first so that a cluster holds a tile's splits; many:
     * (expert tile, token tile, split) */
    const unsigned e_tiles = (unsigned)((n_out + (few ? kWarps : kTile) - 1) / (few ? kWarps : kTile));
    const unsigned t_tiles = (unsigned)((T + (few ? kGroup : kTile) - 1) / (few ? kGroup : kTile));
    const dim3 grid = few ? dim3((unsigned)a.splits, e_tiles, t_tiles) : dim3(e_tiles, t_tiles, (unsigned)a.splits);
    MOE_CUDA_TRY(ctx, moe_launch_ex(pdl, clustered ? (unsigned)a.splits : 1u, kernel, grid,
                                    few ? kWarps * 32 : kThreads, 0, stream, a));
    if (a.splits > 1 && !clustered) {
        const unsigned blocks = moe__grid_for(ctx, T * n_out, 256);
        MOE_CUDA_TRY(ctx, moe_launch(pdl, gate_reduce_kernel, blocks, 256, 0, stream, a));
    }
    return MOE_OK;
}
