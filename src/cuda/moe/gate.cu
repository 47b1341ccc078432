/* gate.cu — the router's logits (gate.cuh), on the CUDA cores in f32: two kernels by T.
 *  - few tokens (T < 64): a warp per (expert, group of 8 tokens); each lane streams its quarter-rows of the gate
 *    weight once and uses them for the 8 tokens; CTAs spread over the experts, so at decode the whole gate matrix
 *    is read by many SMs at once.
 *  - many tokens: 64 x 64 output tiles, K in steps of 32 through shared memory, 4 x 4 outputs a thread.
 * The shared-expert gate is handled as one more expert row, E. */
#include "cuda/common/cuda.cuh"
#include "cuda/moe/gate.cuh"
#include "route/route_math.h"

namespace {

constexpr int kGroup = 8, kWarps = 4, kTile = 64, kBK = 32, kThreads = 256;

struct gate_args {
    const __nv_bfloat16 *x;
    const float *gate, *gate_bias, *shared_gate;
    int64_t T;
    int H, E;
    float *logits, *shared_scale;

    __device__ const float *row(int e) const { return e < E ? gate + (int64_t)e * H : shared_gate; }
    __device__ void store(int64_t t, int e, float acc) const {
        if (e < E) logits[t * E + e] = gate_bias ? acc + gate_bias[e] : acc;
        else shared_scale[t] = moe__sigmoidf(acc);
    }
};

__global__ void __launch_bounds__(kWarps * 32) gate_few_kernel(const gate_args a) {
    const int lane = threadIdx.x & 31, e = blockIdx.x * kWarps + (threadIdx.x >> 5);
    const int n_out = a.E + (a.shared_gate ? 1 : 0);
    if (e >= n_out) return;
    const int64_t t0 = (int64_t)blockIdx.y * kGroup;
    const int nt = a.T - t0 < kGroup ? (int)(a.T - t0) : kGroup;
    const float *w = a.row(e);
    float acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; j++) acc[j] = 0.0f;
    for (int h = lane * 4; h < a.H; h += 128) {
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
        if (lane == 0 && j < nt) a.store(t0 + j, e, acc[j]);
    }
}

__global__ void __launch_bounds__(kThreads) gate_many_kernel(const gate_args a) {
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
    for (int k0 = 0; k0 < a.H; k0 += kBK) {
        const bool in = k0 + lc < a.H;
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
            if (t < a.T && e < n_out) a.store(t, e, acc[i][j]);
        }
}

} // namespace

moe_status moe__cuda_gate_logits(moe_ctx *ctx, const __nv_bfloat16 *x, const float *gate, const float *gate_bias,
                                 const float *shared_gate, int64_t T, int H, int E, float *logits,
                                 float *shared_scale, cudaStream_t stream) {
    const gate_args a = {x, gate, gate_bias, shared_gate, T, H, gate ? E : 0, logits, shared_scale};
    const int n_out = a.E + (shared_gate ? 1 : 0);
    if (T == 0 || n_out == 0) return MOE_OK;
    if (T < kTile) {
        const dim3 grid((unsigned)((n_out + kWarps - 1) / kWarps), (unsigned)((T + kGroup - 1) / kGroup));
        gate_few_kernel<<<grid, kWarps * 32, 0, stream>>>(a);
    } else {
        const dim3 grid((unsigned)((n_out + kTile - 1) / kTile), (unsigned)((T + kTile - 1) / kTile));
        gate_many_kernel<<<grid, kThreads, 0, stream>>>(a);
    }
    MOE_CUDA_LAUNCHED(ctx, "gate logits");
    return MOE_OK;
}
