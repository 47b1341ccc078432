/* waterfill.c — SGLang's DeepEP waterfill (docs/routing.md §5): validation, the CPU backend, dispatch. */
#include "route/waterfill.h"

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_waterfill_rank_load(moe_ctx *ctx, const moe_waterfill_config *c, const int32_t *ids,
                                         int64_t n_tokens, int64_t *rank_load, void *stream);
moe_status moe__cuda_waterfill(moe_ctx *ctx, const moe_waterfill_config *c, const int32_t *ids, const float *weights,
                               int64_t n_tokens, const int64_t *rank_load, int32_t *out_ids, float *out_weights,
                               void *stream);
#endif

static moe_status moe_check_waterfill(moe_ctx *ctx, const moe_waterfill_config *c, int64_t n_tokens) {
    MOE_CHECK_ARG(ctx, c, "waterfill: config is NULL");
    MOE_CHECK_ARG(ctx, c->world >= 1 && c->world <= 32, "waterfill: world %d is outside 1..32", c->world);
    MOE_CHECK_ARG(ctx, c->n_experts >= c->world && c->n_experts % c->world == 0,
                  "waterfill: n_experts (%d) must be a multiple of world (%d)", c->n_experts, c->world);
    MOE_CHECK_ARG(ctx, c->source_rank >= 0 && c->source_rank < c->world, "waterfill: source_rank %d is outside 0..%d",
                  c->source_rank, c->world - 1);
    MOE_CHECK_ARG(ctx, c->top_k >= 1, "waterfill: top_k is %d", c->top_k);
    MOE_CHECK_ARG(ctx, c->target >= 0, "waterfill: target is negative");
    MOE_CHECK_ARG(ctx, n_tokens >= 0, "waterfill: n_tokens is negative");
    return MOE_OK;
}

moe_status moe_waterfill_rank_load(moe_ctx *ctx, const moe_waterfill_config *c, const int32_t *ids, int64_t n_tokens,
                                   int64_t *rank_load, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_TRY(moe_check_waterfill(ctx, c, n_tokens));
    MOE_CHECK_ARG(ctx, rank_load && (ids || n_tokens == 0), "moe_waterfill_rank_load: NULL ids or rank_load");
    MOE_CHECK_ALIGNED(ctx, ids, int32_t, "moe_waterfill_rank_load: ids");
    MOE_CHECK_ALIGNED(ctx, rank_load, int64_t, "moe_waterfill_rank_load: rank_load");
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_TRY(moe__cuda_check_pointer(ctx, rank_load, "rank_load"));
        if (n_tokens) MOE_TRY(moe__cuda_check_pointer(ctx, ids, "ids"));
        return moe__cuda_waterfill_rank_load(ctx, c, ids, n_tokens, rank_load, stream);
    }
#endif
    (void)stream;
    const int epr = c->n_experts / c->world;
    for (int r = 0; r < c->world; r++) rank_load[r] = 0;
    for (int64_t i = 0; i < n_tokens * c->top_k; i++)
        if (moe__wf_valid(ids[i], c)) rank_load[moe__wf_rank(ids[i], epr, c->world)]++;
    return MOE_OK;
}

moe_status moe_waterfill(moe_ctx *ctx, const moe_waterfill_config *c, const int32_t *ids, const float *weights,
                         int64_t n_tokens, const int64_t *rank_load, int32_t *out_ids, float *out_weights,
                         void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_TRY(moe_check_waterfill(ctx, c, n_tokens));
    MOE_CHECK_ARG(ctx, rank_load, "moe_waterfill: rank_load is NULL");
    MOE_CHECK_ARG(ctx, (ids && weights && out_ids && out_weights) || n_tokens == 0,
                  "moe_waterfill: ids, weights, out_ids and out_weights must not be NULL");
    MOE_CHECK_ALIGNED(ctx, ids, int32_t, "moe_waterfill: ids");
    MOE_CHECK_ALIGNED(ctx, weights, float, "moe_waterfill: weights");
    MOE_CHECK_ALIGNED(ctx, rank_load, int64_t, "moe_waterfill: rank_load");
    MOE_CHECK_ALIGNED(ctx, out_ids, int32_t, "moe_waterfill: out_ids");
    MOE_CHECK_ALIGNED(ctx, out_weights, float, "moe_waterfill: out_weights");
    if (n_tokens == 0) return MOE_OK;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_TRY(moe__cuda_check_pointer(ctx, rank_load, "rank_load"));
        MOE_TRY(moe__cuda_check_pointer(ctx, ids, "ids"));
        MOE_TRY(moe__cuda_check_pointer(ctx, weights, "weights"));
        MOE_TRY(moe__cuda_check_pointer(ctx, out_ids, "out_ids"));
        MOE_TRY(moe__cuda_check_pointer(ctx, out_weights, "out_weights"));
        return moe__cuda_waterfill(ctx, c, ids, weights, n_tokens, rank_load, out_ids, out_weights, stream);
    }
#endif
    (void)stream;
    const int k = c->top_k;
    const int64_t target = moe__wf_target(c, rank_load);
    for (int64_t t = 0; t < n_tokens; t++)
        moe__wf_token(c, ids + t * k, weights + t * k, rank_load, target, n_tokens, t, out_ids + t * (k + 1),
                      out_weights + t * (k + 1));
    return MOE_OK;
}
