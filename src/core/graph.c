/* graph.c — CUDA-graph capture and replay of a stream's work (the CUDA backend only). */
#include "core/internal.h"

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_graph_begin(moe_ctx *ctx, void *stream);
moe_status moe__cuda_graph_end(moe_ctx *ctx, void *stream, moe_graph **graph);
moe_status moe__cuda_graph_replay(moe_ctx *ctx, moe_graph *graph, void *stream);
void moe__cuda_graph_destroy(moe_ctx *ctx, moe_graph *graph);
#endif

static moe_status moe_graph_backend(moe_ctx *ctx, const char *fn) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    if (ctx->backend != MOE_BACKEND_CUDA)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "%s: graphs are a CUDA feature; this context runs on the CPU", fn);
    return MOE_OK;
}

moe_status moe_graph_begin(moe_ctx *ctx, void *stream) {
    MOE_TRY(moe_graph_backend(ctx, "moe_graph_begin"));
#ifdef MOE_WITH_CUDA
    return moe__cuda_graph_begin(ctx, stream);
#else
    (void)stream;
    return MOE_ERR_UNSUPPORTED;
#endif
}

moe_status moe_graph_end(moe_ctx *ctx, void *stream, moe_graph **graph) {
    MOE_TRY(moe_graph_backend(ctx, "moe_graph_end"));
    MOE_CHECK_ARG(ctx, graph, "moe_graph_end: graph is NULL");
#ifdef MOE_WITH_CUDA
    return moe__cuda_graph_end(ctx, stream, graph);
#else
    (void)stream;
    return MOE_ERR_UNSUPPORTED;
#endif
}

moe_status moe_graph_replay(moe_ctx *ctx, moe_graph *graph, void *stream) {
    MOE_TRY(moe_graph_backend(ctx, "moe_graph_replay"));
    MOE_CHECK_ARG(ctx, graph, "moe_graph_replay: graph is NULL");
#ifdef MOE_WITH_CUDA
    return moe__cuda_graph_replay(ctx, graph, stream);
#else
    (void)stream;
    return MOE_ERR_UNSUPPORTED;
#endif
}

void moe_graph_destroy(moe_ctx *ctx, moe_graph *graph) {
    if (!ctx || !graph) return;
#ifdef MOE_WITH_CUDA
    moe__cuda_graph_destroy(ctx, graph);
#endif
}
