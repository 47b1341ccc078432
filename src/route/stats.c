/* stats.c — expert-load statistics (docs/routing.md §3): int64 counters in the context's memory. */
#include <stdlib.h>

#include "route/router.h"

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_stats_record(moe_ctx *ctx, moe_expert_stats *s, int layer, const int32_t *ids, int64_t n,
                                  void *stream);
#endif

/* Bytes of the counters, every stripe. */
static size_t moe__stats_bytes(const moe_expert_stats *s) {
    return sizeof(int64_t) * (size_t)s->n_layers * (size_t)s->stripes * (size_t)s->n_experts;
}

/* The GPU a context computes on, or -1. */
static int moe__ctx_device(const moe_ctx *ctx) {
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return ctx->cuda.device;
#endif
    (void)ctx;
    return -1;
}

/* Whether s's counters live in ctx's memory (its backend, its GPU). */
static int moe__stats_here(const moe_ctx *ctx, const moe_expert_stats *s) {
    return ctx && s->backend == ctx->backend && s->device == moe__ctx_device(ctx);
}

moe_status moe__stats_check(moe_ctx *ctx, const moe_expert_stats *s, const char *what) {
    if (moe__stats_here(ctx, s)) return MOE_OK;
    return moe__error(ctx, MOE_ERR_INVALID_ARG, "%s: the load counters were made on %s%s, this context computes on %s",
                      what, s->backend == MOE_BACKEND_CUDA ? "a GPU" : "the CPU",
                      s->backend == ctx->backend ? " (another one)" : "",
                      ctx->backend == MOE_BACKEND_CUDA ? "a GPU" : "the CPU");
}

moe_status moe_expert_stats_create(moe_ctx *ctx, int n_layers, int n_experts, moe_expert_stats **out) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, out, "moe_expert_stats_create: out is NULL");
    *out = NULL;
    MOE_CHECK_ARG(ctx, n_layers >= 1 && n_experts >= 1, "moe_expert_stats_create: %d layers, %d experts", n_layers,
                  n_experts);
    moe_expert_stats *s = calloc(1, sizeof *s);
    if (!s) return moe__error(ctx, MOE_ERR_OOM, "moe_expert_stats_create: out of host memory");
    s->n_layers = n_layers;
    s->n_experts = n_experts;
    s->stripes = ctx->backend == MOE_BACKEND_CUDA ? MOE_STATS_STRIPES : 1;
    s->backend = ctx->backend, s->device = moe__ctx_device(ctx);
    moe_status st = moe_alloc(ctx, moe__stats_bytes(s), (void **)&s->counts);
    if (st == MOE_OK) st = moe_alloc(ctx, sizeof(int64_t) * (size_t)n_layers, (void **)&s->invalid);
    if (st == MOE_OK) st = moe_expert_stats_reset(ctx, s, NULL);
    if (st == MOE_OK) st = moe_sync(ctx, NULL);
    if (st != MOE_OK) {
        moe_expert_stats_destroy(ctx, s);
        return st;
    }
    *out = s;
    return MOE_OK;
}

void moe_expert_stats_destroy(moe_ctx *ctx, moe_expert_stats *s) {
    if (!s) return;
    if (!moe__stats_here(ctx, s)) { /* freeing them with this context's allocator would crash */
        moe__log(ctx, MOE_LOG_ERROR, "moe_expert_stats_destroy: the counters belong to another backend or GPU than "
                                     "this context's; their memory is not freed");
    } else {
        moe_free(ctx, s->counts);
        moe_free(ctx, s->invalid);
    }
    free(s);
}

moe_status moe_expert_stats_record(moe_ctx *ctx, moe_expert_stats *s, int layer, const int32_t *ids, int64_t n,
                                   void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, s, "moe_expert_stats_record: stats is NULL");
    MOE_TRY(moe__stats_check(ctx, s, "moe_expert_stats_record"));
    MOE_CHECK_ARG(ctx, layer >= 0 && layer < s->n_layers, "moe_expert_stats_record: layer %d is outside 0..%d", layer,
                  s->n_layers - 1);
    MOE_CHECK_ARG(ctx, n >= 0 && (ids || n == 0), "moe_expert_stats_record: %lld ids at %p", (long long)n,
                  (const void *)ids);
    MOE_CHECK_ALIGNED(ctx, ids, int32_t, "moe_expert_stats_record: ids");
    if (n == 0) return MOE_OK;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_TRY(moe__cuda_check_pointer(ctx, ids, "ids"));
        return moe__cuda_stats_record(ctx, s, layer, ids, n, stream);
    }
#endif
    (void)stream;
    int64_t *counts = s->counts + (int64_t)layer * s->n_experts; /* one stripe on the CPU */
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] >= 0 && ids[i] < s->n_experts)
            counts[ids[i]]++;
        else if (ids[i] != -1)
            s->invalid[layer]++;
    }
    return MOE_OK;
}

moe_status moe_expert_stats_read(moe_ctx *ctx, moe_expert_stats *s, int64_t *counts, int64_t *invalid, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, s && counts, "moe_expert_stats_read: stats and counts must not be NULL");
    MOE_TRY(moe__stats_check(ctx, s, "moe_expert_stats_read"));
    const size_t n = (size_t)s->n_layers * (size_t)s->n_experts;
    if (s->stripes == 1) {
        MOE_TRY(moe_memcpy(ctx, counts, s->counts, sizeof(int64_t) * n, MOE_COPY_CTX_TO_HOST, stream));
    } else { /* the stripes' sum */
        int64_t *all = malloc(moe__stats_bytes(s));
        if (!all) return moe__error(ctx, MOE_ERR_OOM, "moe_expert_stats_read: out of host memory");
        moe_status st = moe_memcpy(ctx, all, s->counts, moe__stats_bytes(s), MOE_COPY_CTX_TO_HOST, stream);
        if (st == MOE_OK) st = moe_sync(ctx, stream);
        for (size_t l = 0; st == MOE_OK && l < (size_t)s->n_layers; l++)
            for (size_t e = 0; e < (size_t)s->n_experts; e++) {
                int64_t sum = 0;
                for (size_t r = 0; r < (size_t)s->stripes; r++)
                    sum += all[(l * (size_t)s->stripes + r) * (size_t)s->n_experts + e];
                counts[l * (size_t)s->n_experts + e] = sum;
            }
        free(all);
        MOE_TRY(st);
    }
    if (invalid)
        MOE_TRY(moe_memcpy(ctx, invalid, s->invalid, sizeof(int64_t) * (size_t)s->n_layers, MOE_COPY_CTX_TO_HOST,
                           stream));
    return moe_sync(ctx, stream);
}

moe_status moe_expert_stats_reset(moe_ctx *ctx, moe_expert_stats *s, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, s, "moe_expert_stats_reset: stats is NULL");
    MOE_TRY(moe__stats_check(ctx, s, "moe_expert_stats_reset"));
    MOE_TRY(moe_memset(ctx, s->counts, 0, moe__stats_bytes(s), stream));
    return moe_memset(ctx, s->invalid, 0, sizeof(int64_t) * (size_t)s->n_layers, stream);
}

double moe_balancedness(const int64_t *counts, int n) {
    if (!counts || n <= 0) return 1.0;
    int64_t max = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        sum += (double)counts[i];
        if (counts[i] > max) max = counts[i];
    }
    return max == 0 ? 1.0 : sum / n / (double)max;
}
