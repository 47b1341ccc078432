/* route_permute.h — the fused route + permute (route_permute.c), shared with the CUDA backend. */
#ifndef MOE_ROUTE_ROUTE_PERMUTE_H
#define MOE_ROUTE_ROUTE_PERMUTE_H

#include "route/permute.h"
#include "route/router.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest batch the GPU routes and permutes in one launch on sm_90: a cluster of 16 CTAs, a token a warp
 * (8 CTAs, 2 tokens a warp, where 16 cannot be scheduled). */
#define MOE_ROUTE_PERMUTE_MAX_TOKENS 128

#ifdef MOE_WITH_CUDA
/* Whether moe__cuda_route_permute takes T tokens of top_k (else the two ops run apart). */
int moe__cuda_route_permute_fuses(const moe_ctx *ctx, int64_t n_tokens, int top_k);
moe_status moe__cuda_route_permute(moe_ctx *ctx, const moe_router_config *rc, const moe_route_args *ra,
                                   const moe_permute_config *pc, const moe_permute_outputs *out, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTE_ROUTE_PERMUTE_H */
