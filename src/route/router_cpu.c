/* router_cpu.c — the CPU reference of every router (docs/routing.md §1–2): one token at a time, plain loops,
 * the shared arithmetic of route_math.h. */
#include <stdlib.h>

#include "formats/scalar.h"
#include "route/route_math.h"
#include "route/router.h"

#define MOE_MAX_EXPERTS_CPU 1024

/* Per-token working state. */
typedef struct moe_row {
    float s[MOE_MAX_EXPERTS_CPU];         /* scores */
    float b[MOE_MAX_EXPERTS_CPU];         /* selection values */
    unsigned char ok[MOE_MAX_EXPERTS_CPU]; /* selectable */
} moe_row;

/* The fixed summation order of docs §1: 32 strided partial sums, then a butterfly. */
static float moe_sum_fixed(const float *v, int n) {
    float part[32] = {0}, next[32];
    for (int p = 0; p < 32; p++)
        for (int i = p; i < n; i += 32) part[p] += v[i];
    for (int s = 16; s >= 1; s /= 2) {
        for (int p = 0; p < 32; p++) next[p] = part[p] + part[p ^ s];
        memcpy(part, next, sizeof part);
    }
    return part[0];
}

static inline float moe_load_logit(const moe_tensor *l, int64_t i) {
    switch (l->dtype) {
    case MOE_DTYPE_BF16: return moe__bf16_to_f32(((const uint16_t *)l->data)[i]);
    case MOE_DTYPE_F16: return moe__f16_to_f32(((const uint16_t *)l->data)[i]);
    default: return ((const float *)l->data)[i];
    }
}

/* Scores of one row into r->s; r->ok marks the non-NaN ones. */
static void moe_scores(const moe_router_config *c, const float *x, moe_row *r) {
    const int E = c->n_experts;
    if (c->score == MOE_SCORE_SOFTMAX) {
        float m = -INFINITY;
        int any = 0;
        for (int e = 0; e < E; e++)
            if (x[e] == x[e]) {
                m = any && m >= x[e] ? m : x[e];
                any = 1;
            }
        for (int e = 0; e < E; e++) r->s[e] = any ? moe__softmax_term(x[e], m) : 0.0f;
        const float sum = moe_sum_fixed(r->s, E);
        for (int e = 0; e < E; e++) {
            r->ok[e] = x[e] == x[e];
            r->s[e] = r->ok[e] ? r->s[e] / sum : NAN;
        }
    } else {
        for (int e = 0; e < E; e++) {
            r->s[e] = c->score == MOE_SCORE_SIGMOID ? moe__sigmoidf(x[e]) : x[e];
            r->ok[e] = r->s[e] == r->s[e];
        }
    }
}

/* The best selectable, not yet taken candidate by the order of route_math.h; -1 when none. */
static int moe_pick(const moe_row *r, int E, const unsigned char *taken) {
    int best = -1;
    for (int e = 0; e < E; e++) {
        if (!r->ok[e] || taken[e]) continue;
        if (best < 0 || moe__better(1, r->b[e], e, 1, r->b[best], best)) best = e;
    }
    return best;
}

/* GROUPED (docs §2): keep the topk_groups best groups, mask the others. */
static void moe_group_filter(const moe_router_config *c, moe_row *r) {
    const int G = c->n_groups, per = c->n_experts / G;
    float score[32];
    int valid[32], keep[32] = {0};
    for (int g = 0; g < G; g++) {
        int b1 = -1, b2 = -1; /* the group's best two selectable experts */
        for (int e = g * per; e < (g + 1) * per; e++) {
            if (!r->ok[e]) continue;
            if (b1 < 0 || moe__better(1, r->b[e], e, 1, r->b[b1], b1)) {
                b2 = b1;
                b1 = e;
            } else if (b2 < 0 || moe__better(1, r->b[e], e, 1, r->b[b2], b2)) {
                b2 = e;
            }
        }
        valid[g] = c->group_score == MOE_GROUP_SCORE_MAX ? b1 >= 0 : b2 >= 0;
        score[g] = !valid[g] ? 0.0f : c->group_score == MOE_GROUP_SCORE_MAX ? r->b[b1] : r->b[b1] + r->b[b2];
    }
    for (int n = 0; n < c->topk_groups; n++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!keep[g] && (best < 0 || moe__better(valid[g], score[g], g, valid[best], score[best], best))) best = g;
        keep[best] = 1;
    }
    for (int e = 0; e < c->n_experts; e++) {
        if (keep[e / per]) continue;
        if (c->group_mask == MOE_GROUP_MASK_ZERO && r->s[e] == r->s[e])
            r->b[e] = 0.0f; /* still selectable */
        else
            r->ok[e] = 0;
    }
}

/* Routes token t; returns 1 when a slot stayed empty. */
static int moe_route_row(const moe_router_config *c, const moe_route_args *a, int64_t t, moe_row *r, float *x) {
    const int E = c->n_experts, k = c->top_k;
    int32_t *ids = a->ids + t * k;
    float *w = a->weights + t * k;
    /* an unscored hash router neither checks nor reads logits (a caller may pass any) */
    if (c->kind != MOE_ROUTER_HASH || c->score != MOE_SCORE_NONE) {
        for (int e = 0; e < E; e++) x[e] = moe_load_logit(a->logits, t * E + e);
        moe_scores(c, x, r);
    }

    if (c->kind == MOE_ROUTER_HASH) {
        const int64_t tok = a->token_ids[t];
        for (int j = 0; j < k; j++) {
            int32_t e = tok >= 0 && tok < c->hash_vocab ? c->hash_table[tok * k + j] : -1;
            if (e < 0 || e >= E || (c->score != MOE_SCORE_NONE && !r->ok[e])) e = -1;
            ids[j] = e;
            w[j] = e < 0 ? 0.0f : c->score == MOE_SCORE_NONE ? 1.0f / (float)k : r->s[e];
        }
    } else {
        unsigned char taken[MOE_MAX_EXPERTS_CPU] = {0};
        for (int e = 0; e < E; e++) r->b[e] = c->bias ? r->s[e] + c->bias[e] : r->s[e];
        for (int e = 0; e < E; e++) r->ok[e] = r->ok[e] && r->b[e] == r->b[e];
        if (c->kind == MOE_ROUTER_GROUPED) moe_group_filter(c, r);
        for (int j = 0; j < k; j++) {
            const int e = moe_pick(r, E, taken);
            ids[j] = e;
            if (e >= 0) taken[e] = 1;
            w[j] = e < 0 ? 0.0f : r->s[e];
        }
        if (c->kind == MOE_ROUTER_TOPK_SOFTMAX && ids[0] >= 0) { /* softmax over the chosen logits */
            const float m = r->s[ids[0]];
            float sum = 0.0f;
            for (int j = 0; j < k; j++) {
                w[j] = ids[j] < 0 ? 0.0f : moe__softmax_term(r->s[ids[j]], m);
                sum += w[j];
            }
            for (int j = 0; j < k; j++) w[j] = w[j] / sum;
        }
    }
    if (c->renormalize) {
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += w[j];
        if (sum != 0.0f)
            for (int j = 0; j < k; j++) w[j] = w[j] / sum;
    }
    int empty = 0;
    for (int j = 0; j < k; j++) {
        w[j] = w[j] * c->scaling_factor; /* the routed scaling factor: here and only here */
        empty |= ids[j] < 0;
    }
    return empty;
}

moe_status moe__cpu_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a) {
    int64_t invalid = 0;
    int failed = 0;
#pragma omp parallel num_threads(ctx->n_threads) reduction(+ : invalid)
    {
        moe_row *r = malloc(sizeof *r);
        float *x = malloc(sizeof(float) * MOE_MAX_EXPERTS_CPU);
        if (!r || !x) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < a->n_tokens; t++) invalid += moe_route_row(c, a, t, r, x);
        }
        free(r);
        free(x);
    }
    if (failed) return moe__error(ctx, MOE_ERR_OOM, "moe_route: no memory for the CPU router's scratch");
    if (a->invalid_rows) *a->invalid_rows += (int32_t)invalid;
    if (a->stats) {
        const int k = c->top_k;
        int64_t *counts = a->stats->counts + (int64_t)a->stats_layer * c->n_experts; /* one stripe on the CPU */
        for (int64_t i = 0; i < a->n_tokens * k; i++)
            if (a->ids[i] >= 0) counts[a->ids[i]]++;
    }
    return MOE_OK;
}
