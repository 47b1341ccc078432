/* router.cu — one fused kernel for every router family (docs/routing.md §1–2): a warp per token, each lane
 * holding experts lane, lane + 32, ... (E <= 512: 16 a lane). Scores, the group filter, the top-k selection,
 * weights and the load counters in one pass; the arithmetic is route_math.h's, shared with the CPU reference,
 * and the expert sums follow its fixed order (lane partials, then a butterfly), so both agree bit for bit. */
#include "cuda/common/cuda.cuh"
#include "route/route_math.h"
#include "route/router.h"

namespace {

constexpr int kThreads = 256;

struct route_params {
    moe_router_config c;
    const void *logits;
    moe_dtype dtype;
    const int32_t *token_ids;
    int64_t n_tokens;
    int32_t *ids;
    float *weights;
    int32_t *invalid_rows;
    unsigned long long *counts; /* the stats layer's row, or NULL */
};

__device__ __forceinline__ float load_logit(const route_params &p, int64_t i) {
    if (p.dtype == MOE_DTYPE_BF16) return __bfloat162float(static_cast<const __nv_bfloat16 *>(p.logits)[i]);
    if (p.dtype == MOE_DTYPE_F16) return __half2float(static_cast<const __half *>(p.logits)[i]);
    return static_cast<const float *>(p.logits)[i];
}

/* The selection order as one 64-bit key (largest wins): bit 63 selectable, then the value made order-preserving
 * as an unsigned integer (-0 counted as +0, as the float comparison does), then the index reversed so that the
 * lower index wins a tie. One warp maximum is then 5 rounds of two shuffles. */
__device__ __forceinline__ unsigned long long order_key(int ok, float v, int i) {
    if (!ok) return 0ull;
    uint32_t u = __float_as_uint(v + 0.0f);
    u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
    return (1ull << 63) | ((unsigned long long)u << 31) | (unsigned long long)(0x7FFFFFFF - i);
}

__device__ __forceinline__ unsigned long long warp_max(unsigned long long k) {
#pragma unroll
    for (int m = 16; m >= 1; m /= 2) {
        const unsigned long long o = __shfl_xor_sync(0xffffffffu, k, m);
        k = o > k ? o : k;
    }
    return k;
}

/* Eight warp maxima at once: their shuffles overlap instead of waiting on one another. */
__device__ __forceinline__ void warp_max8(unsigned long long (&k)[8]) {
#pragma unroll
    for (int m = 16; m >= 1; m /= 2)
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const unsigned long long o = __shfl_xor_sync(0xffffffffu, k[q], m);
            k[q] = o > k[q] ? o : k[q];
        }
}

/* The float a selection key was made from (-0 comes back as +0). */
__device__ __forceinline__ float key_value(unsigned long long key) {
    const uint32_t u = (uint32_t)(key >> 31);
    return __uint_as_float(u & 0x80000000u ? u & 0x7FFFFFFFu : ~u);
}

/* The group filter of GROUPED (docs §2): keeps the topk_groups best groups and masks the rest. A group's best
 * two experts are two warp maxima of selection keys (the second with the first taken out). */
template <int kPerLane>
__device__ __forceinline__ void group_filter(const moe_router_config &c, int lane, float (&s)[kPerLane],
                                             float (&b)[kPerLane], int (&ok)[kPerLane]) {
    const int G = c.n_groups, per = c.n_experts / G;
    int group[kPerLane]; /* the group of each item, computed once */
#pragma unroll
    for (int j = 0; j < kPerLane; j++) group[j] = lane + 32 * j < c.n_experts ? (lane + 32 * j) / per : -1;
    unsigned long long group_key = 0; /* lane g ends up holding group g's key */
    for (int g0 = 0; g0 < G; g0 += 8) { /* 8 groups at a time: their warp maxima overlap */
        unsigned long long k1[8], k2[8], m1[8], m2[8];
#pragma unroll
        for (int q = 0; q < 8; q++) { /* this lane's best two in group g0 + q */
            k1[q] = k2[q] = 0;
#pragma unroll
            for (int j = 0; j < kPerLane; j++) {
                if (group[j] != g0 + q) continue;
                const unsigned long long key = order_key(ok[j], b[j], lane + 32 * j);
                if (key > k1[q])
                    k2[q] = k1[q], k1[q] = key;
                else if (key > k2[q])
                    k2[q] = key;
            }
            m1[q] = k1[q];
        }
        warp_max8(m1);
#pragma unroll
        for (int q = 0; q < 8; q++) m2[q] = k1[q] == m1[q] ? k2[q] : k1[q];
        if (c.group_score == MOE_GROUP_SCORE_TOP2_SUM) warp_max8(m2);
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int g = g0 + q;
            const int valid = c.group_score == MOE_GROUP_SCORE_MAX ? m1[q] != 0 : m2[q] != 0;
            const float score = !valid ? 0.0f
                                : c.group_score == MOE_GROUP_SCORE_MAX ? key_value(m1[q])
                                                                       : key_value(m1[q]) + key_value(m2[q]);
            if (lane == g && g < G) group_key = order_key(valid, score, g);
        }
    }
    uint32_t keep = 0;
    for (int n = 0; n < c.topk_groups; n++) {
        const unsigned long long best = warp_max(group_key);
        const int g = 0x7FFFFFFF - (int)(best & 0x7FFFFFFF);
        keep |= 1u << g;
        if (lane == g) group_key = 0;
    }
#pragma unroll
    for (int j = 0; j < kPerLane; j++) {
        if (group[j] < 0 || (keep >> group[j] & 1u)) continue;
        if (c.group_mask == MOE_GROUP_MASK_ZERO && s[j] == s[j])
            b[j] = 0.0f;
        else
            ok[j] = 0;
    }
}

/* The value in register slot j of lane (e % 32), for a warp-uniform expert e. */
template <int kPerLane> __device__ __forceinline__ float fetch(const float (&v)[kPerLane], int e) {
    float mine = 0.0f;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < kPerLane; j++) /* predicated per slot, so v is never indexed at run time */
        mine = lane + 32 * j == e ? v[j] : mine;
    return __shfl_sync(0xffffffffu, mine, e % 32);
}

/* kPerLane: experts a lane holds (E <= 32 * kPerLane). */
template <int kPerLane> __global__ void __launch_bounds__(kThreads) route_kernel(route_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const moe_router_config &c = p.c;
    const int lane = threadIdx.x % 32, E = c.n_experts, k = c.top_k;
    const int64_t n_warps = (int64_t)gridDim.x * (kThreads / 32);
    for (int64_t t = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; t < p.n_tokens; t += n_warps) {
        float x[kPerLane], s[kPerLane], b[kPerLane];
        int ok[kPerLane];
        const bool scored = !(c.kind == MOE_ROUTER_HASH && c.score == MOE_SCORE_NONE);
#pragma unroll
        for (int j = 0; j < kPerLane; j++) {
            const int e = lane + 32 * j;
            x[j] = scored && e < E ? load_logit(p, t * E + e) : NAN;
        }
        /* scores */
        if (c.score == MOE_SCORE_SOFTMAX) {
            float m = -INFINITY;
            int any = 0;
#pragma unroll
            for (int j = 0; j < kPerLane; j++)
                if (x[j] == x[j]) m = any && m >= x[j] ? m : x[j], any = 1;
#pragma unroll
            for (int o = 16; o >= 1; o /= 2) {
                const float om = __shfl_xor_sync(0xffffffffu, m, o);
                const int oa = __shfl_xor_sync(0xffffffffu, any, o);
                if (oa && (!any || om > m)) m = om;
                any |= oa;
            }
            float part = 0.0f;
#pragma unroll
            for (int j = 0; j < kPerLane; j++) {
                s[j] = any ? moe__softmax_term(x[j], m) : 0.0f;
                part += s[j];
            }
#pragma unroll
            for (int o = 16; o >= 1; o /= 2) part = part + __shfl_xor_sync(0xffffffffu, part, o);
#pragma unroll
            for (int j = 0; j < kPerLane; j++) s[j] = x[j] == x[j] ? s[j] / part : NAN;
        } else {
#pragma unroll
            for (int j = 0; j < kPerLane; j++) s[j] = c.score == MOE_SCORE_SIGMOID ? moe__sigmoidf(x[j]) : x[j];
        }
        /* lane n ends up holding slot n: its expert and weight */
        int32_t my_id = -1;
        float my_w = 0.0f;
        if (c.kind == MOE_ROUTER_HASH) {
            const int64_t tok = p.token_ids[t];
            for (int n = 0; n < k; n++) {
                int32_t e = tok >= 0 && tok < c.hash_vocab ? c.hash_table[tok * k + n] : -1;
                if (e < 0 || e >= E) e = -1;
                const float se = e >= 0 && scored ? fetch(s, e) : 0.0f;
                if (scored && se != se) e = -1;
                if (lane == n) my_id = e, my_w = e < 0 ? 0.0f : scored ? se : 1.0f / (float)k;
            }
        } else {
#pragma unroll
            for (int j = 0; j < kPerLane; j++) {
                const int e = lane + 32 * j;
                b[j] = c.bias && e < E ? s[j] + c.bias[e] : s[j];
                ok[j] = e < E && s[j] == s[j] && b[j] == b[j];
            }
            if (c.kind == MOE_ROUTER_GROUPED) group_filter(c, lane, s, b, ok);
            for (int n = 0; n < k; n++) { /* one selection round a slot (a rolled loop: small code) */
                unsigned long long mine = 0;
#pragma unroll
                for (int j = 0; j < kPerLane; j++) {
                    const unsigned long long key = order_key(ok[j], b[j], lane + 32 * j);
                    mine = key > mine ? key : mine;
                }
                const unsigned long long best = warp_max(mine);
                const int e = best ? 0x7FFFFFFF - (int)(best & 0x7FFFFFFF) : -1;
                const float se = e >= 0 ? fetch(s, e) : 0.0f;
#pragma unroll
                for (int j = 0; j < kPerLane; j++)
                    if (lane + 32 * j == e) ok[j] = 0;
                if (lane == n) my_id = e, my_w = se;
            }
            if (c.kind == MOE_ROUTER_TOPK_SOFTMAX) { /* softmax over the chosen logits, in slot order */
                const float m = __shfl_sync(0xffffffffu, my_w, 0);
                const int any = __shfl_sync(0xffffffffu, my_id, 0) >= 0;
                my_w = my_id < 0 || !any ? 0.0f : moe__softmax_term(my_w, m);
                float sum = 0.0f;
                for (int n = 0; n < k; n++) sum += __shfl_sync(0xffffffffu, my_w, n);
                if (any) my_w = my_w / sum;
            }
        }
        if (c.renormalize) {
            float sum = 0.0f;
            for (int n = 0; n < k; n++) sum += __shfl_sync(0xffffffffu, my_w, n); /* slot order */
            if (sum != 0.0f) my_w = my_w / sum;
        }
        my_w = my_w * c.scaling_factor;
        const unsigned empty = __ballot_sync(0xffffffffu, lane < k && my_id < 0);
        if (lane < k) {
            p.ids[t * k + lane] = my_id;
            p.weights[t * k + lane] = my_w;
            if (p.counts && my_id >= 0) atomicAdd(p.counts + my_id, 1ull);
        }
        if (empty && lane == 0 && p.invalid_rows) atomicAdd(p.invalid_rows, 1);
    }
}

} // namespace

extern "C" moe_status moe__cuda_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (a->n_tokens == 0) return MOE_OK;
    route_params p;
    p.c = *c;
    p.logits = a->logits ? a->logits->data : NULL;
    p.dtype = a->logits ? a->logits->dtype : MOE_DTYPE_F32;
    p.token_ids = a->token_ids;
    p.n_tokens = a->n_tokens;
    p.ids = a->ids;
    p.weights = a->weights;
    p.invalid_rows = a->invalid_rows;
    p.counts = a->stats ? reinterpret_cast<unsigned long long *>(a->stats->counts) + (int64_t)a->stats_layer * c->n_experts
                        : NULL;
    const unsigned grid = moe__grid_for(ctx, a->n_tokens * 32, kThreads);
    if (c->n_experts <= 64)
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), route_kernel<2>, grid, kThreads, 0, st, p));
    else if (c->n_experts <= 128)
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), route_kernel<4>, grid, kThreads, 0, st, p));
    else if (c->n_experts <= 256)
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), route_kernel<8>, grid, kThreads, 0, st, p));
    else
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), route_kernel<16>, grid, kThreads, 0, st, p));
    return MOE_OK;
}
