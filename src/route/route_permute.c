/* route_permute.c — moe_route, then moe_permute of the ids it wrote, as one call (docs/routing.md §7). Both ops'
 * checks run before anything is launched; the GPU fuses small batches into one kernel
 * (cuda/route/route_permute.cu), and everything else is the two ops in order, so the results are theirs. */
#include "route/route_permute.h"

moe_status moe_route_permute(moe_ctx *ctx, const moe_router_config *rc, const moe_route_args *ra,
                             const moe_permute_config *pc, const moe_permute_outputs *out, void *workspace,
                             size_t workspace_bytes, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_TRY(moe__route_check(ctx, rc, ra));
    MOE_TRY(moe__permute_check(ctx, pc, ra->ids, ra->n_tokens, out, workspace, workspace_bytes));
    MOE_CHECK_ARG(ctx, pc->top_k == rc->top_k && pc->n_experts_global == rc->n_experts,
                  "moe_route_permute: the permute's top_k %d and n_experts_global %d must be the router's (%d, %d)",
                  pc->top_k, pc->n_experts_global, rc->top_k, rc->n_experts);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA && moe__cuda_route_permute_fuses(ctx, ra->n_tokens, rc->top_k))
        return moe__cuda_route_permute(ctx, rc, ra, pc, out, stream);
#endif
    MOE_TRY(moe__route_run(ctx, rc, ra, stream)); /* checked above: the checks' pointer queries run once */
    return moe__permute_run(ctx, pc, ra->ids, ra->n_tokens, out, workspace, stream);
}
