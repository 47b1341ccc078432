/* router.c — moe_route: router presets, one validation of config and arguments, then the backend. */
#include <string.h>

#include "route/router.h"

static const char *const moe_router_names[MOE_ROUTER_KIND_COUNT_] = {
    [MOE_ROUTER_INVALID] = "invalid", [MOE_ROUTER_TOPK] = "topk", [MOE_ROUTER_TOPK_SOFTMAX] = "topk_softmax",
    [MOE_ROUTER_GROUPED] = "grouped", [MOE_ROUTER_HASH] = "hash",
};

const char *moe_router_kind_name(moe_router_kind kind) {
    return kind > MOE_ROUTER_INVALID && kind < MOE_ROUTER_KIND_COUNT_ ? moe_router_names[kind] : "invalid";
}

/* Config values from the models' config.json files and reference code (specs.md B1–B7). */
moe_status moe_router_preset(const char *model, moe_router_config *c) {
    if (!model || !c) return MOE_ERR_INVALID_ARG;
    static const struct {
        const char *name;
        moe_router_kind kind;
        moe_score_func score;
        int experts, k, groups, topk_groups;
        moe_group_score group_score;
        int renormalize;
        float scale;
        int weight_on_input;
    } presets[] = {
        {"mixtral-8x7b", MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 8, 2, 0, 0, 0, 1, 1.0f, 0},
        {"qwen2-moe", MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 60, 4, 0, 0, 0, 0, 1.0f, 0},
        {"qwen3-30b-a3b", MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 128, 8, 0, 0, 0, 1, 1.0f, 0},
        {"qwen3-235b-a22b", MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 128, 8, 0, 0, 0, 1, 1.0f, 0},
        {"olmoe", MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 64, 8, 0, 0, 0, 0, 1.0f, 0},
        {"deepseek-v2", MOE_ROUTER_GROUPED, MOE_SCORE_SOFTMAX, 160, 6, 8, 3, MOE_GROUP_SCORE_MAX, 0, 16.0f, 0},
        {"deepseek-v3", MOE_ROUTER_GROUPED, MOE_SCORE_SIGMOID, 256, 8, 8, 4, MOE_GROUP_SCORE_TOP2_SUM, 1, 2.5f, 0},
        {"gpt-oss-20b", MOE_ROUTER_TOPK_SOFTMAX, MOE_SCORE_NONE, 32, 4, 0, 0, 0, 0, 1.0f, 0},
        {"gpt-oss-120b", MOE_ROUTER_TOPK_SOFTMAX, MOE_SCORE_NONE, 128, 4, 0, 0, 0, 0, 1.0f, 0},
        {"llama4-scout", MOE_ROUTER_TOPK, MOE_SCORE_SIGMOID, 16, 1, 0, 0, 0, 0, 1.0f, 1},
        {"llama4-maverick", MOE_ROUTER_TOPK, MOE_SCORE_SIGMOID, 128, 1, 0, 0, 0, 0, 1.0f, 1},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(model, presets[i].name) != 0) continue;
        memset(c, 0, sizeof *c);
        c->kind = presets[i].kind;
        c->score = presets[i].score;
        c->n_experts = presets[i].experts;
        c->top_k = presets[i].k;
        c->n_groups = presets[i].groups;
        c->topk_groups = presets[i].topk_groups;
        c->group_score = presets[i].group_score;
        c->group_mask = MOE_GROUP_MASK_NEG_INF;
        c->renormalize = presets[i].renormalize;
        c->scaling_factor = presets[i].scale;
        c->weight_on_input = presets[i].weight_on_input;
        return MOE_OK;
    }
    return MOE_ERR_INVALID_ARG;
}

moe_status moe__router_check(moe_ctx *ctx, const moe_router_config *c) {
    MOE_CHECK_ARG(ctx, c, "moe_route: config is NULL");
    const char *kn = moe_router_kind_name(c->kind);
    MOE_CHECK_ARG(ctx, c->kind > MOE_ROUTER_INVALID && c->kind < MOE_ROUTER_KIND_COUNT_, "moe_route: unknown router kind %d",
                  (int)c->kind);
    MOE_CHECK_ARG(ctx, c->n_experts >= 1, "moe_route (%s): n_experts is %d", kn, c->n_experts);
    MOE_CHECK_ARG(ctx, c->top_k >= 1 && c->top_k <= c->n_experts, "moe_route (%s): top_k %d is outside 1..n_experts (%d)",
                  kn, c->top_k, c->n_experts);
    MOE_CHECK_ARG(ctx, c->score == MOE_SCORE_NONE || c->score == MOE_SCORE_SOFTMAX || c->score == MOE_SCORE_SIGMOID,
                  "moe_route (%s): unknown score function %d", kn, (int)c->score);
    MOE_CHECK_ARG(ctx, c->scaling_factor == c->scaling_factor, "moe_route (%s): scaling_factor is NaN", kn);
    MOE_CHECK_ALIGNED(ctx, c->bias, float, "moe_route: the router's bias");
    MOE_CHECK_ALIGNED(ctx, c->hash_table, int32_t, "moe_route: the router's hash_table");
    switch (c->kind) {
    case MOE_ROUTER_TOPK_SOFTMAX:
        MOE_CHECK_ARG(ctx, c->score == MOE_SCORE_NONE && !c->renormalize && !c->bias,
                      "moe_route (topk_softmax): the weights are the softmax of the chosen logits; score must be "
                      "MOE_SCORE_NONE, with no renormalisation and no bias");
        break;
    case MOE_ROUTER_TOPK:
        MOE_CHECK_ARG(ctx, c->score != MOE_SCORE_NONE, "moe_route (topk): needs a score function (softmax or sigmoid)");
        break;
    case MOE_ROUTER_GROUPED:
        MOE_CHECK_ARG(ctx, c->score != MOE_SCORE_NONE, "moe_route (grouped): needs a score function (softmax or sigmoid)");
        MOE_CHECK_ARG(ctx, c->n_groups >= 1 && c->n_experts % c->n_groups == 0,
                      "moe_route (grouped): n_experts (%d) must be a multiple of n_groups (%d)", c->n_experts,
                      c->n_groups);
        MOE_CHECK_ARG(ctx, c->n_groups <= 32, "moe_route (grouped): at most 32 groups, not %d", c->n_groups);
        MOE_CHECK_ARG(ctx, c->topk_groups >= 1 && c->topk_groups <= c->n_groups,
                      "moe_route (grouped): topk_groups %d is outside 1..n_groups (%d)", c->topk_groups, c->n_groups);
        MOE_CHECK_ARG(ctx, c->topk_groups * (c->n_experts / c->n_groups) >= c->top_k,
                      "moe_route (grouped): %d groups of %d experts cannot hold top_k %d", c->topk_groups,
                      c->n_experts / c->n_groups, c->top_k);
        MOE_CHECK_ARG(ctx, c->group_score == MOE_GROUP_SCORE_MAX || c->group_score == MOE_GROUP_SCORE_TOP2_SUM,
                      "moe_route (grouped): unknown group score %d", (int)c->group_score);
        MOE_CHECK_ARG(ctx, c->group_mask == MOE_GROUP_MASK_NEG_INF || c->group_mask == MOE_GROUP_MASK_ZERO,
                      "moe_route (grouped): unknown group mask %d", (int)c->group_mask);
        MOE_CHECK_ARG(ctx, c->group_score != MOE_GROUP_SCORE_TOP2_SUM || c->n_experts / c->n_groups >= 2,
                      "moe_route (grouped): a top-2 group score needs groups of 2 or more experts");
        break;
    case MOE_ROUTER_HASH:
        MOE_CHECK_ARG(ctx, c->hash_table && c->hash_vocab >= 1, "moe_route (hash): needs hash_table and hash_vocab");
        break;
    default: break;
    }
    return MOE_OK;
}

moe_status moe__router_cuda_reach(moe_ctx *ctx, const moe_router_config *c, const char *fn) {
    if (c->n_experts <= MOE_CUDA_ROUTER_MAX_EXPERTS && c->top_k <= MOE_CUDA_ROUTER_MAX_TOPK) return MOE_OK;
    return moe__error(ctx, MOE_ERR_UNSUPPORTED, "%s: the CUDA routers take up to %d experts and top_k %d (asked: %d, %d)",
                      fn, MOE_CUDA_ROUTER_MAX_EXPERTS, MOE_CUDA_ROUTER_MAX_TOPK, c->n_experts, c->top_k);
}

moe_status moe__route_check(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a) {
    MOE_TRY(moe__router_check(ctx, c));
    MOE_CHECK_ARG(ctx, a, "moe_route: args is NULL");
    MOE_CHECK_ARG(ctx, a->n_tokens >= 0, "moe_route: n_tokens is %lld", (long long)a->n_tokens);
    const int needs_logits = !(c->kind == MOE_ROUTER_HASH && c->score == MOE_SCORE_NONE);
    if (needs_logits) {
        MOE_CHECK_ARG(ctx, a->logits, "moe_route: logits are NULL");
        MOE_TRY(moe__check_tensor(ctx, a->logits, "moe_route logits"));
        const moe_tensor *l = a->logits;
        MOE_CHECK_ARG(ctx, l->dtype == MOE_DTYPE_F32 || l->dtype == MOE_DTYPE_BF16 || l->dtype == MOE_DTYPE_F16,
                      "moe_route: logits must be f32, bf16 or f16, not %s", moe_dtype_name(l->dtype));
        MOE_CHECK_ARG(ctx, l->rank == 2 && l->shape[0] == a->n_tokens && l->shape[1] == c->n_experts,
                      "moe_route: logits must be (n_tokens %lld, n_experts %d)", (long long)a->n_tokens, c->n_experts);
    }
    if (c->kind == MOE_ROUTER_HASH) MOE_CHECK_ARG(ctx, a->token_ids || a->n_tokens == 0, "moe_route (hash): token_ids are NULL");
    MOE_CHECK_ARG(ctx, (a->ids && a->weights) || a->n_tokens == 0, "moe_route: ids and weights must not be NULL");
    MOE_CHECK_ALIGNED(ctx, a->ids, int32_t, "moe_route: ids");
    MOE_CHECK_ALIGNED(ctx, a->weights, float, "moe_route: weights");
    MOE_CHECK_ALIGNED(ctx, a->token_ids, int32_t, "moe_route: token_ids");
    MOE_CHECK_ALIGNED(ctx, a->invalid_rows, int32_t, "moe_route: invalid_rows");
    if (a->stats) {
        MOE_TRY(moe__stats_check(ctx, a->stats, "moe_route"));
        MOE_CHECK_ARG(ctx, a->stats->n_experts == c->n_experts, "moe_route: the stats count %d experts, the router %d",
                      a->stats->n_experts, c->n_experts);
        MOE_CHECK_ARG(ctx, a->stats_layer >= 0 && a->stats_layer < a->stats->n_layers,
                      "moe_route: stats layer %d is outside 0..%d", a->stats_layer, a->stats->n_layers - 1);
    }
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        if (a->n_tokens > 0) {
            if (needs_logits) MOE_TRY(moe__cuda_check_pointer(ctx, a->logits->data, "logits"));
            MOE_TRY(moe__cuda_check_pointer(ctx, a->ids, "ids"));
            MOE_TRY(moe__cuda_check_pointer(ctx, a->weights, "weights"));
            if (a->token_ids) MOE_TRY(moe__cuda_check_pointer(ctx, a->token_ids, "token_ids"));
        }
        if (c->bias) MOE_TRY(moe__cuda_check_pointer(ctx, c->bias, "bias"));
        if (c->hash_table) MOE_TRY(moe__cuda_check_pointer(ctx, c->hash_table, "hash_table"));
        if (a->invalid_rows) MOE_TRY(moe__cuda_check_pointer(ctx, a->invalid_rows, "invalid_rows"));
        return moe__router_cuda_reach(ctx, c, "moe_route");
    }
#endif
    MOE_CHECK_ARG(ctx, c->n_experts <= 1024, "moe_route: at most 1024 experts, not %d", c->n_experts);
    return MOE_OK;
}

moe_status moe__route_run(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream) {
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_route(ctx, c, a, stream);
#endif
    (void)stream;
    return moe__cpu_route(ctx, c, a);
}

moe_status moe_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_TRY(moe__route_check(ctx, c, a));
    return moe__route_run(ctx, c, a, stream);
}
