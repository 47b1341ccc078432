/* route_warp.cuh — one token routed by one warp (docs/routing.md §1–2), shared by the router kernel (router.cu)
 * and the fused route + permute kernel (route_permute.cu). Lane l holds experts l, l + 32, ... (E <= 32 *
 * kPerLane: 16 a lane at E = 512). Scores, the group filter, the top-k selection, weights and the load counters
 * in one pass; the arithmetic is route_math.h's, shared with the CPU reference, and the expert sums follow its
 * fixed order (lane partials, then a butterfly), so both agree bit for bit.
 *
 * Every warp-wide maximum is a 32-bit order key reduced by one redux.sync (__reduce_max_sync, sm_80+): a round of
 * the top-k selection is a lane-local maximum (a tree), that reduction and a vote; only when two lanes hold the
 * maximum does a second reduction (a minimum) pick the lower expert index. DeepSeek-V3's group keys are
 * warp-uniform and ranked by the lanes at once, not in rounds. At decode sizes a token's time is one warp's
 * dependent chain, so every load a token needs (logits, bias, token id) is issued before any arithmetic. */
#ifndef MOE_CUDA_ROUTE_WARP_CUH
#define MOE_CUDA_ROUTE_WARP_CUH

#include "cuda/common/cuda.cuh"
#include "route/route_math.h"
#include "route/router.h"

namespace route_warp {

struct params {
    moe_router_config c;
    const void *logits;
    moe_dtype dtype;
    const int32_t *token_ids;
    int64_t n_tokens;
    int32_t *ids;
    float *weights;
    int32_t *invalid_rows;
    unsigned long long *counts; /* the stats layer's stripe 0, or NULL; stripe r at counts + r E (router.h) */
    int stripes;
};

/* The kernels' view of a moe_route call. */
inline params make_params(const moe_router_config *c, const moe_route_args *a) {
    params p;
    p.c = *c;
    p.logits = a->logits ? a->logits->data : NULL;
    p.dtype = a->logits ? a->logits->dtype : MOE_DTYPE_F32;
    p.token_ids = a->token_ids;
    p.n_tokens = a->n_tokens;
    p.ids = a->ids;
    p.weights = a->weights;
    p.invalid_rows = a->invalid_rows;
    p.counts = a->stats ? reinterpret_cast<unsigned long long *>(a->stats->counts) +
                              (int64_t)a->stats_layer * a->stats->stripes * c->n_experts
                        : NULL;
    p.stripes = a->stats ? a->stats->stripes : 1;
    return p;
}

/* The router families compiled on their own (router.cu, route_permute.cu): the score function and the kind fixed at
 * compile time, with E = 32 kPerLane (and for GROUPED, groups of 32), so that a kernel holds one family's path and
 * nothing of the others'. The presets' routers then fit in 32 registers (sm_90a) where the kernel for any config
 * takes 62 (E = 128) and 80 (E = 256), so more than twice the warps fit on an SM, and in half the code. Every other
 * field stays a run-time one. kAny reads them all at run time (E below 32 kPerLane, DeepSeek-V2's groups of 20, hash
 * routers). */
enum family : int { kAny, kSoftmaxTopk, kSigmoidTopk, kTopkSoftmax, kSigmoidGrouped32 };

/* The family config c belongs to, for kernels of kPerLane experts a lane (host code). */
inline family family_of(const moe_router_config *c, int per_lane) {
    if (c->n_experts != 32 * per_lane) return kAny;
    if (c->kind == MOE_ROUTER_TOPK && c->score == MOE_SCORE_SOFTMAX) return kSoftmaxTopk;
    if (c->kind == MOE_ROUTER_TOPK && c->score == MOE_SCORE_SIGMOID) return kSigmoidTopk;
    if (c->kind == MOE_ROUTER_TOPK_SOFTMAX && c->score == MOE_SCORE_NONE) return kTopkSoftmax;
    if (c->kind == MOE_ROUTER_GROUPED && c->score == MOE_SCORE_SIGMOID && c->n_groups == per_lane)
        return kSigmoidGrouped32;
    return kAny;
}

template <int F> struct family_tag {
    static constexpr int value = F;
};
/* Calls launch(tag) with tag::value the family of c (family_of) that kernels of kPerLane experts a lane are compiled
 * for: a switch written once for the router and the fused route + permute kernels. At 16 a lane (E = 512: no preset)
 * only the kernel of every family is compiled. */
template <int kPerLane, class Launch> cudaError_t by_family(const moe_router_config *c, Launch launch) {
    if constexpr (kPerLane > 8) {
        (void)c;
        return launch(family_tag<kAny>());
    } else {
        switch (family_of(c, kPerLane)) {
        case kSoftmaxTopk: return launch(family_tag<kSoftmaxTopk>());
        case kSigmoidTopk: return launch(family_tag<kSigmoidTopk>());
        case kTopkSoftmax: return launch(family_tag<kTopkSoftmax>());
        case kSigmoidGrouped32: return launch(family_tag<kSigmoidGrouped32>());
        default: return launch(family_tag<kAny>());
        }
    }
}

/* c with family F's fields as the compile-time constants they equal (family_of chose F for c). */
template <int kPerLane, int F> __device__ __forceinline__ void fix_family(moe_router_config &c) {
    if (F == kAny) return;
    c.n_experts = 32 * kPerLane;
    c.kind = F == kTopkSoftmax        ? MOE_ROUTER_TOPK_SOFTMAX
             : F == kSigmoidGrouped32 ? MOE_ROUTER_GROUPED
                                      : MOE_ROUTER_TOPK;
    c.score = F == kSoftmaxTopk ? MOE_SCORE_SOFTMAX : F == kTopkSoftmax ? MOE_SCORE_NONE : MOE_SCORE_SIGMOID;
    if (F == kSigmoidGrouped32) c.n_groups = kPerLane;
}

/* Row t's logits into x (this lane's experts; NaN past E, and everywhere for t < 0: an unscored hash router). One
 * loop per dtype, so the dtype is decided once and not per element. */
template <int kPerLane> __device__ __forceinline__ void load_logits(const params &p, int64_t t, float (&x)[kPerLane]) {
    const int lane = threadIdx.x % 32, E = p.c.n_experts;
    if (p.dtype == MOE_DTYPE_BF16) {
        const __nv_bfloat16 *row = static_cast<const __nv_bfloat16 *>(p.logits) + (t < 0 ? 0 : t) * E;
#pragma unroll
        for (int j = 0; j < kPerLane; j++) x[j] = t >= 0 && lane + 32 * j < E ? __bfloat162float(row[lane + 32 * j]) : NAN;
    } else if (p.dtype == MOE_DTYPE_F16) {
        const __half *row = static_cast<const __half *>(p.logits) + (t < 0 ? 0 : t) * E;
#pragma unroll
        for (int j = 0; j < kPerLane; j++) x[j] = t >= 0 && lane + 32 * j < E ? __half2float(row[lane + 32 * j]) : NAN;
    } else {
        const float *row = static_cast<const float *>(p.logits) + (t < 0 ? 0 : t) * E;
#pragma unroll
        for (int j = 0; j < kPerLane; j++) x[j] = t >= 0 && lane + 32 * j < E ? row[lane + 32 * j] : NAN;
    }
}

/* The selection order of a value as an unsigned key, largest first: 0 for an item that cannot be chosen, else
 * the float made order-preserving (-0 counted as +0, as the float comparison does). Every non-NaN float maps
 * above 1 (-Inf to 0x007FFFFF), so 0 and 1 stay free for "none" and "invalid but present". */
__device__ __forceinline__ uint32_t order_key(bool ok, float v) {
    if (!ok) return 0u;
    const uint32_t u = __float_as_uint(v + 0.0f);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* The float a key was made from (-0 comes back as +0). */
__device__ __forceinline__ float key_value(uint32_t u) {
    return __uint_as_float(u & 0x80000000u ? u & 0x7FFFFFFFu : ~u);
}

/* The lane holding the warp's largest key, the lowest lane among equals (all 32 lanes take part). */
__device__ __forceinline__ int warp_argmax(uint32_t key, int lane, uint32_t &top) {
    top = __reduce_max_sync(0xffffffffu, key);
    return (int)__reduce_min_sync(0xffffffffu, key == top ? (uint32_t)lane : 32u);
}

/* This lane's largest key and its slot, the lowest slot among equal keys: a tree, log2(kPerLane) steps deep. */
template <int kPerLane> __device__ __forceinline__ void lane_best(const uint32_t (&key)[kPerLane], uint32_t &best, int &slot) {
    uint32_t kk[kPerLane];
    int ss[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; j++) kk[j] = key[j], ss[j] = j;
#pragma unroll
    for (int w = 1; w < kPerLane; w *= 2)
#pragma unroll
        for (int j = 0; j + w < kPerLane; j += 2 * w)
            if (kk[j + w] > kk[j]) kk[j] = kk[j + w], ss[j] = ss[j + w];
    best = kk[0];
    slot = ss[0];
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

/* The value in slot (e / 32) of lane (e % 32), for this lane's own expert e (each lane asks for a different
 * one): kPerLane independent shuffles. 0 for e < 0. */
template <int kPerLane> __device__ __forceinline__ float gather(const float (&v)[kPerLane], int e) {
    float out = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; j++) {
        const float o = __shfl_sync(0xffffffffu, v[j], e & 31);
        out = e >= 0 && (e >> 5) == j ? o : out;
    }
    return out;
}

/* A group's key from the lanes' best two keys k1 >= k2 in it (0: none), warp-uniform: its best key m1 is a warp
 * maximum; its runner-up is m1 again when two lanes hold m1, else the maximum with the winner's k1 replaced by
 * its k2 (that reduction and the vote run side by side). Invalid groups (fewer than the score needs) get 1:
 * they rank after every valid one, lower index first, as on the CPU. */
__device__ __forceinline__ uint32_t group_key(const moe_router_config &c, uint32_t k1, uint32_t k2) {
    const uint32_t m1 = __reduce_max_sync(0xffffffffu, k1);
    if (c.group_score == MOE_GROUP_SCORE_MAX) return m1 != 0 ? order_key(true, key_value(m1)) : 1u;
    const uint32_t rest = __reduce_max_sync(0xffffffffu, k1 == m1 ? k2 : k1);
    const uint32_t m2 = __popc(__ballot_sync(0xffffffffu, k1 == m1)) >= 2 ? m1 : rest;
    return m2 != 0 ? order_key(true, key_value(m1) + key_value(m2)) : 1u;
}

/* The group filter of GROUPED (docs §2): keeps the topk_groups best groups and masks the rest. key[j] is the
 * selection key of slot j (0: not selectable). */
template <int kPerLane>
__device__ __forceinline__ void group_filter(const moe_router_config &c, int lane, const float (&s)[kPerLane],
                                             float (&b)[kPerLane], int (&ok)[kPerLane], const uint32_t (&key)[kPerLane]) {
    const int G = c.n_groups, per = c.n_experts / G;
    int group[kPerLane]; /* the group of each item, -1 past E */
    uint32_t keep = 0;   /* bit g: group g is kept */
    if (per == 32 && G <= kPerLane) {
        /* DeepSeek-V3 (256 experts, 8 groups of 32): slot j of every lane is group j, so no search; the group
         * keys are warp-uniform, and lane g ranks group g (the better ones, lower index first on ties) */
        uint32_t gk[kPerLane], mine = 0; /* lane g < G: group g's key */
#pragma unroll
        for (int j = 0; j < kPerLane; j++) {
            group[j] = j < G ? j : -1;
            gk[j] = j < G ? group_key(c, key[j], 0u) : 0u;
            mine = lane == j ? gk[j] : mine;
        }
        int rank = 0;
#pragma unroll
        for (int h = 0; h < kPerLane; h++) rank += h < lane ? gk[h] >= mine : gk[h] > mine;
        keep = __ballot_sync(0xffffffffu, lane < G && rank < c.topk_groups);
    } else {
        uint32_t group_key_mine = 0; /* lane g ends up holding group g's key */
#pragma unroll
        for (int j = 0; j < kPerLane; j++) group[j] = lane + 32 * j < c.n_experts ? (lane + 32 * j) / per : -1;
        for (int g0 = 0; g0 < G; g0 += 8) { /* 8 groups at a time: their reductions overlap */
            uint32_t k1[8], k2[8];          /* this lane's best two in group g0 + q */
#pragma unroll
            for (int q = 0; q < 8; q++) {
                k1[q] = k2[q] = 0;
#pragma unroll
                for (int j = 0; j < kPerLane; j++) {
                    if (group[j] != g0 + q) continue;
                    if (key[j] > k1[q])
                        k2[q] = k1[q], k1[q] = key[j];
                    else if (key[j] > k2[q])
                        k2[q] = key[j];
                }
            }
#pragma unroll
            for (int q = 0; q < 8; q++) {
                const uint32_t gk = group_key(c, k1[q], k2[q]);
                if (lane == g0 + q && g0 + q < G) group_key_mine = gk;
            }
        }
        for (int n = 0; n < c.topk_groups; n++) {
            uint32_t top;
            const int g = warp_argmax(group_key_mine, lane, top);
            keep |= 1u << g;
            if (lane == g) group_key_mine = 0;
        }
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

/* Routes token t with the calling warp (all 32 lanes), p.c of family F. On return lane n < k holds slot n: id (-1
 * when the slot stayed empty) and weight; ids, weights, the load counters and the invalid-row count are written. */
template <int kPerLane, int F = kAny>
__device__ __forceinline__ void route_token(const params &p_in, int64_t t, int &out_id) {
    params p = p_in;
    fix_family<kPerLane, F>(p.c);
    const moe_router_config &c = p.c;
    const int lane = threadIdx.x % 32, E = c.n_experts, k = c.top_k;
    float x[kPerLane], s[kPerLane], b[kPerLane];
    int ok[kPerLane];
    const bool scored = !(c.kind == MOE_ROUTER_HASH && c.score == MOE_SCORE_NONE);
    load_logits(p, scored ? t : -1, x);
    /* the bias and the token id are loaded beside the logits, so that their latencies overlap */
    float bias[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; j++) bias[j] = c.bias && lane + 32 * j < E ? c.bias[lane + 32 * j] : 0.0f;
    const int64_t tok = c.kind == MOE_ROUTER_HASH ? p.token_ids[t] : 0;
    /* scores */
    if (c.score == MOE_SCORE_SOFTMAX) {
        uint32_t mk = 0; /* the row maximum over the non-NaN logits */
#pragma unroll
        for (int j = 0; j < kPerLane; j++) mk = max(mk, order_key(x[j] == x[j], x[j]));
        mk = __reduce_max_sync(0xffffffffu, mk);
        const bool any = mk != 0;
        const float m = any ? key_value(mk) : -INFINITY;
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
        for (int n = 0; n < k; n++) {
            int32_t e = tok >= 0 && tok < c.hash_vocab ? c.hash_table[tok * k + n] : -1;
            if (e < 0 || e >= E) e = -1;
            const float se = e >= 0 && scored ? fetch(s, e) : 0.0f;
            if (scored && se != se) e = -1;
            if (lane == n) my_id = e, my_w = e < 0 ? 0.0f : scored ? se : 1.0f / (float)k;
        }
    } else {
        uint32_t key[kPerLane];
#pragma unroll
        for (int j = 0; j < kPerLane; j++) {
            const int e = lane + 32 * j;
            b[j] = c.bias && e < E ? s[j] + bias[j] : s[j];
            ok[j] = e < E && s[j] == s[j] && b[j] == b[j];
            key[j] = order_key(ok[j], b[j]);
        }
        if (c.kind == MOE_ROUTER_GROUPED) {
            group_filter(c, lane, s, b, ok, key);
#pragma unroll
            for (int j = 0; j < kPerLane; j++) key[j] = order_key(ok[j], b[j]);
        }
        for (int n = 0; n < k; n++) { /* one selection round a slot (a rolled loop: small code) */
            uint32_t best;
            int slot;
            lane_best(key, best, slot);
            const uint32_t top = __reduce_max_sync(0xffffffffu, best);
            if (top == 0) break; /* nothing selectable is left (warp-uniform) */
            /* the winner: the lowest expert index among the lanes holding top; one lane, almost always */
            const unsigned hit = __ballot_sync(0xffffffffu, best == top);
            int w = __ffs(hit) - 1;
            if (hit & (hit - 1))
                w = (int)(__reduce_min_sync(0xffffffffu, best == top ? (uint32_t)(lane + 32 * slot) : ~0u) & 31u);
            const int e = __shfl_sync(0xffffffffu, lane + 32 * slot, w); /* off the rounds' chain */
            if (lane == n) my_id = e;
#pragma unroll
            for (int j = 0; j < kPerLane; j++)
                if (lane == w && j == slot) key[j] = 0; /* taken */
        }
        my_w = gather(s, my_id);
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
        if (p.counts && my_id >= 0) atomicAdd(p.counts + (int64_t)(blockIdx.x & (p.stripes - 1)) * E + my_id, 1ull);
    }
    if (empty && lane == 0 && p.invalid_rows) atomicAdd(p.invalid_rows, 1);
    out_id = my_id;
}

} // namespace route_warp

#endif /* MOE_CUDA_ROUTE_WARP_CUH */
