/* permute.c — permute / align (docs/routing.md §6): sizes, validation, the CPU reference, dispatch. */
#include "route/permute.h"

static int moe_permute_config_ok(const moe_permute_config *c) {
    return c && c->n_experts_global >= 1 && c->expert_begin >= 0 && c->n_experts >= 1 &&
           c->expert_begin + (int64_t)c->n_experts <= c->n_experts_global && c->top_k >= 1 &&
           (c->layout == MOE_PERMUTE_CONTIGUOUS ? c->tile_m >= 1 : c->layout == MOE_PERMUTE_MASKED && c->max_rows >= 0);
}

int64_t moe_permute_rows(const moe_permute_config *c, int64_t n_tokens) {
    if (!moe_permute_config_ok(c) || n_tokens < 0) return -1;
    if (c->layout == MOE_PERMUTE_MASKED) /* -1 past int64 too */
        return c->max_rows > INT64_MAX / c->n_experts ? -1 : (int64_t)c->n_experts * c->max_rows;
    const int64_t pad = (int64_t)c->n_experts * (c->tile_m - 1); /* below 2^62 */
    return n_tokens > (INT64_MAX - pad) / c->top_k ? -1 : n_tokens * c->top_k + pad;
}

moe_status moe_permute_workspace_size(moe_ctx *ctx, const moe_permute_config *c, int64_t n_tokens, size_t *bytes) {
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, bytes && moe_permute_config_ok(c) && n_tokens >= 0 && n_tokens <= INT64_MAX / c->top_k,
                  "moe_permute_workspace_size: bad config or token count");
    /* the GPU keeps a count per (chunk, expert) and one of invalid ids per chunk when the list spans several */
    const int64_t chunks = (n_tokens * c->top_k + MOE_PERMUTE_CHUNK - 1) / MOE_PERMUTE_CHUNK;
    *bytes = ctx && ctx->backend == MOE_BACKEND_CUDA && chunks > 1 ? (size_t)chunks * (size_t)(c->n_experts + 1) * 4 : 0;
    return MOE_OK;
}

/* rows: the capacity of row_src; the contiguous layout defines its first offsets[E] rows only. */
static void moe_cpu_permute(const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                            const moe_permute_outputs *out, int64_t rows) {
    const int E = c->n_experts, e0 = c->expert_begin;
    const int64_t n = n_tokens * c->top_k;
    int64_t invalid = 0, dropped = 0;
    for (int e = 0; e < E; e++) out->counts[e] = 0;
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = ids[i];
        if (id < -1 || id >= c->n_experts_global) invalid++;
        if (id >= e0 && id < e0 + E) out->counts[id - e0]++;
    }
    if (c->layout == MOE_PERMUTE_CONTIGUOUS) {
        out->offsets[0] = 0;
        for (int e = 0; e < E; e++)
            out->offsets[e + 1] = out->offsets[e] + (out->counts[e] + c->tile_m - 1) / c->tile_m * c->tile_m;
    }
    const int64_t used = c->layout == MOE_PERMUTE_CONTIGUOUS ? out->offsets[E] : rows;
    for (int64_t r = 0; r < used; r++) out->row_src[r] = -1;
    int64_t cur[MOE_PERMUTE_MAX_EXPERTS] = {0}; /* rank so far per expert */
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = ids[i];
        int64_t row = -1;
        if (id >= e0 && id < e0 + E) {
            const int e = id - e0;
            const int64_t rank = cur[e]++;
            if (c->layout == MOE_PERMUTE_CONTIGUOUS)
                row = out->offsets[e] + rank;
            else if (rank < c->max_rows)
                row = (int64_t)e * c->max_rows + rank;
            else
                dropped++;
        }
        out->slot_row[i] = (int32_t)row;
        if (row >= 0) out->row_src[row] = (int32_t)i;
    }
    if (out->invalid) *out->invalid = (int32_t)invalid;
    if (out->dropped) *out->dropped = (int32_t)dropped;
}

moe_status moe__permute_check(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                              const moe_permute_outputs *out, const void *workspace, size_t workspace_bytes) {
    MOE_CHECK_ARG(ctx, moe_permute_config_ok(c),
                  "moe_permute: bad config (need 0 <= expert_begin, expert_begin + n_experts <= n_experts_global, "
                  "top_k >= 1, tile_m >= 1 or max_rows >= 0, a known layout)");
    MOE_CHECK_ARG(ctx, n_tokens >= 0 && n_tokens <= (INT32_MAX - 1) / c->top_k,
                  "moe_permute: %lld tokens x top_k %d must stay below 2^31 (row ids are int32)", (long long)n_tokens,
                  c->top_k);
    MOE_CHECK_ARG(ctx, c->n_experts <= MOE_PERMUTE_MAX_EXPERTS, "moe_permute: at most %d local experts, not %d",
                  MOE_PERMUTE_MAX_EXPERTS, c->n_experts);
    MOE_CHECK_ARG(ctx, out && out->counts && out->row_src && out->slot_row &&
                           (out->offsets || c->layout == MOE_PERMUTE_MASKED),
                  "moe_permute: counts, row_src, slot_row (and offsets for the contiguous layout) must not be NULL");
    MOE_CHECK_ARG(ctx, ids || n_tokens == 0, "moe_permute: ids is NULL");
    MOE_CHECK_ALIGNED(ctx, ids, int32_t, "moe_permute: ids");
    MOE_CHECK_ALIGNED(ctx, out->counts, int32_t, "moe_permute: counts");
    MOE_CHECK_ALIGNED(ctx, out->offsets, int64_t, "moe_permute: offsets");
    MOE_CHECK_ALIGNED(ctx, out->row_src, int32_t, "moe_permute: row_src");
    MOE_CHECK_ALIGNED(ctx, out->slot_row, int32_t, "moe_permute: slot_row");
    MOE_CHECK_ALIGNED(ctx, out->invalid, int32_t, "moe_permute: invalid");
    MOE_CHECK_ALIGNED(ctx, out->dropped, int32_t, "moe_permute: dropped");
    const int64_t rows = moe_permute_rows(c, n_tokens);
    MOE_CHECK_ARG(ctx, rows >= 0 && rows < INT32_MAX,
                  "moe_permute: the rows (%lld; -1: past int64) do not fit int32 row ids", (long long)rows);
    size_t need = 0;
    MOE_TRY(moe_permute_workspace_size(ctx, c, n_tokens, &need));
    MOE_CHECK_ARG(ctx, workspace_bytes >= need && (workspace || need == 0),
                  "moe_permute: the workspace has %zu bytes, %zu needed (moe_permute_workspace_size)", workspace_bytes,
                  need);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_TRY(moe__cuda_check_pointer(ctx, out->counts, "counts"));
        if (out->offsets) MOE_TRY(moe__cuda_check_pointer(ctx, out->offsets, "offsets"));
        if (rows) MOE_TRY(moe__cuda_check_pointer(ctx, out->row_src, "row_src"));
        if (n_tokens) MOE_TRY(moe__cuda_check_pointer(ctx, out->slot_row, "slot_row"));
        if (n_tokens) MOE_TRY(moe__cuda_check_pointer(ctx, ids, "ids"));
        if (out->invalid) MOE_TRY(moe__cuda_check_pointer(ctx, out->invalid, "invalid"));
        if (out->dropped) MOE_TRY(moe__cuda_check_pointer(ctx, out->dropped, "dropped"));
    }
#endif
    return MOE_OK;
}

moe_status moe_permute(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                       const moe_permute_outputs *out, void *workspace, size_t workspace_bytes, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_TRY(moe__permute_check(ctx, c, ids, n_tokens, out, workspace, workspace_bytes));
    return moe__permute_run(ctx, c, ids, n_tokens, out, workspace, stream);
}

moe_status moe__permute_run(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                            const moe_permute_outputs *out, void *workspace, void *stream) {
    const int64_t rows = moe_permute_rows(c, n_tokens);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_permute(ctx, c, ids, n_tokens, out, rows, workspace, stream);
#endif
    (void)ctx, (void)workspace, (void)stream;
    moe_cpu_permute(c, ids, n_tokens, out, rows);
    return MOE_OK;
}
