/* gate.cu — the router's logits (gate.cuh), summed in f32: two kernels by T, both split over H, both for a gate
 * of f32 or bf16 weights (the template's W; a bf16 gate gives the bits its f32 copy gives, from half the bytes).
 *  - few tokens (T < 64), on the CUDA cores: a warp per (expert, group of 8 tokens, slice of H); each lane
 *    streams its four-weight pieces of the gate row once and uses them for the 8 tokens;
 *  - many tokens, on the bf16 tensor cores: each f32 gate weight as three bf16 terms (a bf16 weight is its own
 *    one), so that the products stay exact (gate_mma_kernel); 128 x 64 output tiles.
 * The H slices are sized so that the grid fills the GPU even at T = 1, where the whole gate matrix
 * (E x H f32: 7 MB for DeepSeek-V3) must be read by many SMs at once. With more than one slice the slices' sums
 * are added in slice order, so the bits do not depend on timing: for one group of few tokens on sm_90 the
 * slices are one thread block cluster, each CTA adding a share of the outputs over the others' shared memory (no
 * third kernel, no partial sums in global memory); otherwise each slice writes its partial sums and
 * gate_reduce_kernel adds them. The shared-expert gate is handled as one more expert row, E. The few kernel loads
 * its first gate columns before it waits for the previous grid (the gate is a weight, written before the forward),
 * so that their latency passes while that grid drains. */
#include <cooperative_groups.h>

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/act_quant.cuh"
#include "cuda/moe/gate.cuh"
#include "moe/layer.h"
#include "route/route_math.h"

namespace cg = cooperative_groups;

namespace {

constexpr int kGroup = MOE_GATE_GROUP, kWarps = 4, kSlice = MOE_GATE_SLICE;
/* The gate's bytes a lane of the few kernel loads before the previous grid ends (64: 512 f32 or 1024 bf16 columns
 * of a slice), and keeps in flight in its loop after them. */
constexpr int kPreBytes = 64;

struct gate_args {
    const __nv_bfloat16 *x;
    const void *gate, *shared_gate; /* W (the kernels' template argument) */
    const float *gate_bias;
    int64_t T;
    int H, E;
    float *logits, *shared_scale;
    float *partial;   /* (splits, T, E + 1) when splits > 1 and the splits are not a cluster */
    int slice;        /* columns of H a split covers (a multiple of kSlice) */
    int splits;
    moe_gate_x_codes xc; /* W8A8's x codes (few kernel), or codes NULL */

    template <class W> __device__ const W *row(int e) const {
        return e < E ? static_cast<const W *>(gate) + (int64_t)e * H : static_cast<const W *>(shared_gate);
    }
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

/* Four consecutive gate weights of type W (16-byte aligned rows, columns 4 apart): `raw` as loaded, which a
 * lane may hold across the wait for the previous grid, and their f32 values. */
template <class W> struct gate_w4;
template <> struct gate_w4<float> {
    using raw = float4;
    static __device__ raw load(const float *p) { return __ldg(reinterpret_cast<const float4 *>(p)); }
    static __device__ raw zero() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    static __device__ float4 f32(const raw &r) { return r; }
};
template <> struct gate_w4<__nv_bfloat16> {
    using raw = uint2;
    static __device__ raw load(const __nv_bfloat16 *p) { return __ldg(reinterpret_cast<const uint2 *>(p)); }
    static __device__ raw zero() { return make_uint2(0u, 0u); }
    static __device__ float4 f32(const raw &r) {
        return make_float4(__uint_as_float(r.x << 16), __uint_as_float(r.x & 0xFFFF0000u), __uint_as_float(r.y << 16),
                           __uint_as_float(r.y & 0xFFFF0000u));
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

/* W8A8's x codes of the CTA's nt tokens from t0 over split z's columns: its whole 1x128 groups (a slice is a
 * multiple of 128 columns), a (token, group) a warp in turn over the split's CTAs (blockIdx.y), so that at decode
 * each warp takes one group at most. Called by whole warps. */
__device__ __forceinline__ void gate_x_codes(const gate_args &a, int z, int64_t t0, int nt) {
    const int lane = threadIdx.x & 31, groups = (a.H + 127) / 128, g0 = z * a.slice / 128;
    const int ng = min(groups, (z + 1) * a.slice / 128) - g0;
    for (int i = blockIdx.y * kWarps + (threadIdx.x >> 5); i < nt * ng; i += gridDim.y * kWarps) {
        const int64_t t = t0 + i / ng;
        const int g = g0 + i % ng, c = g * 128 + 4 * lane;
        const bool in = c < a.H; /* H % 8 == 0: four columns are all in or all out */
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (in) moe_load4(a.x + t * a.H + c, v);
        float scale;
        const uint32_t q4 = moe_act_quant_group(v, a.xc.rule, a.xc.amax_floor, &scale);
        if (lane == 0) a.xc.scales[t * groups + g] = scale;
        if (in) *reinterpret_cast<uint32_t *>(a.xc.codes + t * a.H + c) = q4;
    }
}

/* Few tokens: grid (split, group of kWarps experts, group of kGroup tokens), a warp an expert. kCluster: a tile's
 * splits are one cluster and add their sums (cluster_sum); else each split stores its own (gate_args::store). */
template <class W, bool kCluster>
__global__ void __launch_bounds__(kWarps * 32) gate_few_kernel(const gate_args a) {
    using w4 = gate_w4<W>;
    constexpr int kPre = kPreBytes / sizeof(typename w4::raw); /* pieces of four weights */
    __shared__ float sums[kCluster ? kWarps * kGroup : 1]; /* cluster: this slice's sums, (warp, token) */
    const int lane = threadIdx.x & 31, e = blockIdx.y * kWarps + (threadIdx.x >> 5), z = blockIdx.x;
    const int n_out = a.E + (a.shared_gate ? 1 : 0);
    const int64_t t0 = (int64_t)blockIdx.z * kGroup;
    const int nt = a.T - t0 < kGroup ? (int)(a.T - t0) : kGroup;
    const W *w = a.row<W>(e < n_out ? e : 0);
    const int h_end = e < n_out ? min(a.H, (z + 1) * a.slice) : 0, h0 = z * a.slice + lane * 4;
    /* the gate is the layer's weight, written before any grid of the forward: its first kPre pieces a lane are
     * loaded before the wait for the previous grid (x's writer), so that their latency passes while it drains */
    typename w4::raw pre[kPre];
#pragma unroll
    for (int i = 0; i < kPre; i++) pre[i] = h0 + 128 * i < h_end ? w4::load(w + h0 + 128 * i) : w4::zero();
    moe_pdl_wait();
    moe_pdl_launch_next();
    if (a.xc.codes) gate_x_codes(a, z, t0, nt);
    if (!kCluster && e >= n_out) return; /* a cluster's threads all reach its barriers */
    float acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; j++) acc[j] = 0.0f;
    auto add = [&](int h, const float4 &g) { /* columns h .. h + 3 of every token */
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
    };
    const int pre_end = min(h_end, h0 + 128 * kPre); /* the columns loaded above, in order */
#pragma unroll
    for (int i = 0; i < kPre; i++)
        if (h0 + 128 * i < pre_end) add(h0 + 128 * i, w4::f32(pre[i]));
#pragma unroll kPre
    for (int h = pre_end; h < h_end; h += 128) add(h, w4::f32(w4::load(w + h)));
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

/* Many tokens, on the tensor cores: grid (expert tile + token tile x expert tiles, split), each split storing its
 * own sums (gate_args::store). x is bf16 and each gate weight g (f32) is the exact sum of three bf16 terms,
 * hi = bf16(g), mid = bf16(g - hi), lo = g - hi - mid (g's 24 significant bits in three pieces of 8: each difference
 * is exact, and lo needs no rounding, for |g| >= 2^-110, where lo's last bit is still a bf16 subnormal), so x . g is
 * three bf16 mma.sync whose products are exact, summed in f32 as the CUDA-core FMA chain sums its exact products
 * (docs/layer.md §1: only the order of the sum differs). A non-finite g is hi alone. A bf16 g is hi alone: its mid
 * and lo products would add zeros, so the sums are its f32 copy's bits, from one mma in three. A CTA: 128 tokens x 64
 * outputs, K in steps of 32 (two stages: x by cp.async, the gate through registers, split once a CTA when stored),
 * 8 warps of 32 x 32; the hi products in one set of accumulators, mid and lo in another, added at the end. Shared
 * rows are 64 bytes, their 16-byte chunks XOR-swizzled by row / 2 so that ldmatrix's 8 rows hit distinct banks. */
constexpr int kMmaM = MOE_GATE_MMA_M, kMmaN = 64, kMmaK = 32, kMmaThreads = 256;

__device__ __forceinline__ uint32_t swz(int row, int chunk) { /* byte offset of a 16-byte chunk */
    return (uint32_t)(row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4));
}

/* (g0, g1) as the bf16 pairs hi, mid, lo (low half g0) */
__device__ __forceinline__ void split3(float g0, float g1, uint32_t &hi, uint32_t &mid, uint32_t &lo) {
    auto pack = [](float a, float b) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
        return *reinterpret_cast<const uint32_t *>(&v);
    };
    auto lo_f = [](uint32_t v) { return __uint_as_float(v << 16); };
    auto hi_f = [](uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); };
    hi = pack(g0, g1);
    const float r0 = isfinite(g0) ? g0 - lo_f(hi) : 0.0f, r1 = isfinite(g1) ? g1 - hi_f(hi) : 0.0f;
    mid = pack(r0, r1);
    lo = pack(r0 - lo_f(mid), r1 - hi_f(mid));
}

template <class W> __global__ void __launch_bounds__(kMmaThreads, 2) gate_mma_kernel(const gate_args a) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using w4 = gate_w4<W>;
    constexpr int kPlanes = sizeof(W) == 4 ? 3 : 1; /* the bf16 terms of a weight */
    __shared__ __align__(128) unsigned char xs[2][kMmaM * 64], gs[2][kPlanes][kMmaN * 64]; /* [stage][hi, mid, lo] */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wm = warp & 3, wn = warp >> 2;
    const int n_out = a.E + (a.shared_gate ? 1 : 0);
    const int e_tiles = (n_out + kMmaN - 1) / kMmaN, z = blockIdx.y; /* blockIdx.x: expert tiles fastest */
    const int e0 = (int)(blockIdx.x % e_tiles) * kMmaN;
    const int64_t t0 = (int64_t)(blockIdx.x / e_tiles) * kMmaM;
    const int k_begin = z * a.slice, k_end = min(a.H, k_begin + a.slice);
    /* copy duty: x chunks tid and tid + 256 (row id / 4, chunk id % 4); gate pieces of four tid and tid + 256 (row
     * id / 8, columns 4 (id % 8)) */
    const __nv_bfloat16 *xrow[2];
    const W *grow[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const int id = tid + 256 * j;
        xrow[j] = t0 + (id >> 2) < a.T ? a.x + (t0 + (id >> 2)) * a.H + 8 * (id & 3) : nullptr;
        grow[j] = e0 + (id >> 3) < n_out ? a.row<W>(e0 + (id >> 3)) + 4 * (id & 7) : nullptr;
    }
    typename w4::raw gv[2];
    auto load = [&](int st, int k0) { /* x's step into stage st (cp.async), the gate's into gv */
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int id = tid + 256 * j;
            const bool xin = xrow[j] && k0 + 8 * (id & 3) < k_end;
            moe_cp_async16(xs[st] + swz(id >> 2, id & 3), xin ? xrow[j] + k0 : a.x, xin ? 16 : 0);
            const bool gin = grow[j] && k0 + 4 * (id & 7) < k_end;
            gv[j] = gin ? w4::load(grow[j] + k0) : w4::zero();
        }
        moe_cp_async_commit();
    };
    auto store_gate = [&](int st) { /* gv split into the three planes of stage st */
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int id = tid + 256 * j;
            const uint32_t off = swz(id >> 3, (id & 7) >> 1) + 8 * (id & 1);
            if constexpr (kPlanes == 1) {
                *reinterpret_cast<uint2 *>(gs[st][0] + off) = gv[j];
            } else {
                uint2 h, m, l;
                split3(gv[j].x, gv[j].y, h.x, m.x, l.x);
                split3(gv[j].z, gv[j].w, h.y, m.y, l.y);
                *reinterpret_cast<uint2 *>(gs[st][0] + off) = h;
                *reinterpret_cast<uint2 *>(gs[st][1] + off) = m;
                *reinterpret_cast<uint2 *>(gs[st][2] + off) = l;
            }
        }
    };
    float acc[2][2][4][4]; /* [hi, mid + lo][m16 tile][n8 tile] */
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) acc[s][i][j][r] = 0.0f;
    const int steps = k_end > k_begin ? (k_end - k_begin + kMmaK - 1) / kMmaK : 0;
    if (steps > 0) load(0, k_begin);
    for (int i = 0; i < steps; i++) {
        const int st = i & 1;
        store_gate(st); /* stage st was last read two steps ago, before the barrier that ended the last step */
        if (i + 1 < steps) {
            load(st ^ 1, k_begin + (i + 1) * kMmaK);
            moe_cp_async_wait<1>();
        } else {
            moe_cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 2; kk++) { /* k16 steps: chunks 2 kk, 2 kk + 1 */
            uint32_t af[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int r = wm * 32 + mt * 16 + (lane & 15);
                moe_ldmatrix_x4(af[mt], xs[st] + swz(r, 2 * kk + (lane >> 4)));
            }
#pragma unroll
            for (int pl = kPlanes - 1; pl >= 0; pl--) { /* lo, mid, then hi */
#pragma unroll
                for (int np = 0; np < 2; np++) { /* n8 tiles 2 np, 2 np + 1 */
                    uint32_t bf[4];
                    const int r = wn * 32 + np * 16 + ((lane >> 4) << 3) + (lane & 7);
                    moe_ldmatrix_x4(bf, gs[st][pl] + swz(r, 2 * kk + ((lane >> 3) & 1)));
                    const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        moe_mma_bf16_16816(acc[pl == 0 ? 0 : 1][mt][2 * np], af[mt], b0);
                        moe_mma_bf16_16816(acc[pl == 0 ? 0 : 1][mt][2 * np + 1], af[mt], b1);
                    }
                }
            }
        }
        __syncthreads(); /* the step's reads done before its stage is refilled */
    }
    /* acc[.][mt][nt][r]: token wm 32 + mt 16 + lane / 4 + 8 (r / 2), output wn 32 + nt 8 + 2 (lane % 4) + r % 2 */
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int64_t t = t0 + wm * 32 + mt * 16 + (lane >> 2) + 8 * (r >> 1);
                const int e = e0 + wn * 32 + nt * 8 + 2 * (lane & 3) + (r & 1);
                if (t < a.T && e < n_out) a.store(z, t, e, acc[0][mt][nt][r] + acc[1][mt][nt][r]);
            }
#endif
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
template <class W> int cluster_limit() {
    static const int limit = moe_cluster_limit(gate_few_kernel<W, true>, kWarps * 32, 16);
    return limit;
}

/* The kernel for a launch: many tokens (the tensor cores), else the CUDA cores with or without a cluster. */
template <class W> void (*gate_kernel(bool few, bool clustered))(gate_args) {
    return !few ? gate_mma_kernel<W> : clustered ? gate_few_kernel<W, true> : gate_few_kernel<W, false>;
}

} // namespace

extern "C" moe_status moe__cuda_gate_logits(moe_ctx *ctx, const void *xv, const void *gate, moe_dtype gate_dtype,
                                            const float *gate_bias, const void *shared_gate, int64_t T, int H, int E,
                                            float *logits, float *shared_scale, float *partial, bool alone,
                                            const moe_gate_x_codes *x_codes, void *sv) {
    const __nv_bfloat16 *x = static_cast<const __nv_bfloat16 *>(xv);
    const cudaStream_t stream = moe__cuda_enter(ctx, sv);
    if (gate_dtype != MOE_DTYPE_F32 && gate_dtype != MOE_DTYPE_BF16)
        return moe__error(ctx, MOE_ERR_INVALID_ARG, "gate logits: gate weights in %s (f32 or bf16)",
                          moe_dtype_name(gate_dtype));
    const bool bf16 = gate_dtype == MOE_DTYPE_BF16;
    gate_args a = {x, gate, shared_gate, gate_bias, T, H, gate ? E : 0, logits, shared_scale, partial, H, 1, {}};
    const int n_out = a.E + (shared_gate ? 1 : 0);
    if (x_codes && (T >= MOE_GATE_MANY_T || n_out == 0))
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "gate logits: x codes with %lld tokens and %d outputs (the few "
                          "kernel's, T < %d, at least one output)", (long long)T, n_out, MOE_GATE_MANY_T);
    if (x_codes) a.xc = *x_codes;
    if (T == 0 || n_out == 0) return MOE_OK;
    /* split H until the grid has about `want` CTAs; moe__gate_partial_rows (layer.h) bounds splits x T for these
     * choices: want / ceil(T / 8) x T <= 8192 + T (few), want / ceil(T / 128) x T <= 16896 + T (many) */
    const bool few = T < MOE_GATE_MANY_T;
    const int64_t base = few ? (int64_t)((n_out + kWarps - 1) / kWarps) * ((T + kGroup - 1) / kGroup)
                             : (int64_t)((n_out + kMmaN - 1) / kMmaN) * ((T + kMmaM - 1) / kMmaM);
    const int64_t want = few ? MOE_GATE_WANT_FEW : MOE_GATE_WANT_MANY, max_splits = (H + kSlice - 1) / kSlice;
    /* many: split only where that at least doubles the grid (a split's sum costs a kernel: measured on the H200,
     * Qwen3-30B-A3B T = 8192 75 -> 68 us, DeepSeek-V3 T = 1024 79 -> 69 us against rounding up) */
    int64_t splits = few ? (want + base - 1) / base : want / base;
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
    const int cluster = a.splits > 1 && T <= kGroup && alone ? bf16 ? cluster_limit<__nv_bfloat16>()
                                                                    : cluster_limit<float>()
                                                             : 0;
    if (cluster && a.splits > cluster) split_into(cluster);
    const bool clustered = cluster && a.splits > 1;
    void (*kernel)(gate_args) = bf16 ? gate_kernel<__nv_bfloat16>(few, clustered) : gate_kernel<float>(few, clustered);
    /* few: (split, expert group, token group), the split first so that a cluster holds a tile's splits; many:
     * (expert tile + token tile x expert tiles, split): consecutive CTAs share their token rows, and the grid's x
     * dimension (2^31 - 1) bounds T far past any workspace */
    const int64_t e_tiles = (n_out + (few ? kWarps : kMmaN) - 1) / (few ? kWarps : kMmaN);
    const int64_t t_tiles = (T + (few ? kGroup : kMmaM) - 1) / (few ? kGroup : kMmaM);
    if (!few && e_tiles * t_tiles > 0x7FFFFFFF)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "gate logits: %lld tokens exceed the grid", (long long)T);
    const dim3 grid = few ? dim3((unsigned)a.splits, (unsigned)e_tiles, (unsigned)t_tiles)
                          : dim3((unsigned)(e_tiles * t_tiles), (unsigned)a.splits);
    MOE_CUDA_TRY(ctx, moe_launch_ex(pdl, clustered ? (unsigned)a.splits : 1u, kernel, grid,
                                    few ? kWarps * 32 : kMmaThreads, 0, stream, a));
    if (a.splits > 1 && !clustered) {
        const unsigned blocks = moe__grid_for(ctx, T * n_out, 256);
        MOE_CUDA_TRY(ctx, moe_launch(pdl, gate_reduce_kernel, blocks, 256, 0, stream, a));
    }
    return MOE_OK;
}
