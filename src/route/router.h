/* router.h — the routers' backends; validation lives in router.c, shared by both. */
#ifndef MOE_ROUTE_ROUTER_H
#define MOE_ROUTE_ROUTER_H

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Expert-load counters (stats.c): (n_layers, stripes, n_experts) int64 counts and (n_layers) invalid counts; a
 * layer's count of an expert is the sum over its stripes. The GPU keeps MOE_STATS_STRIPES stripes and each CTA adds
 * to stripe blockIdx % stripes: 8192 tokens of top 8 over 128 experts put 512 atomics on every counter of one
 * stripe, and those serialised in the L2 (the router took 25.9 us where 10.5 without counters). The CPU keeps 1. */
#define MOE_STATS_STRIPES 32 /* a power of two */

/* The CUDA routers' reach (a warp a token, up to 16 experts a lane): past it moe_route, and moe_layer_create for
 * a CUDA layer, answer MOE_ERR_UNSUPPORTED. */
#define MOE_CUDA_ROUTER_MAX_EXPERTS 512
#define MOE_CUDA_ROUTER_MAX_TOPK 16
struct moe_expert_stats {
    int n_layers, n_experts, stripes;
    moe_backend backend; /* where the counters live: the making context's backend, and its GPU (else -1) */
    int device;
    int64_t *counts;
    int64_t *invalid;
};

/* Whether s's counters live where ctx computes (its backend, its GPU); else the error, naming what asked. */
moe_status moe__stats_check(moe_ctx *ctx, const moe_expert_stats *s, const char *what);

/* Whether the CUDA routers take c (MOE_CUDA_ROUTER_MAX_*); else MOE_ERR_UNSUPPORTED, the message led by fn. */
moe_status moe__router_cuda_reach(moe_ctx *ctx, const moe_router_config *c, const char *fn);

/* The router config alone (kind, E, k, score, groups, hash table), as moe_route checks it; the layer checks its
 * router with it at create. */
moe_status moe__router_check(moe_ctx *ctx, const moe_router_config *c);
/* Every check of moe_route (config, arguments, pointers, backend limits), with its error set. */
moe_status moe__route_check(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a);
/* moe_route after its checks: the backend's router. */
moe_status moe__route_run(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream);
moe_status moe__cpu_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a);
#ifdef MOE_WITH_CUDA
moe_status moe__cuda_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTE_ROUTER_H */
