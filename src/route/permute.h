/* permute.h — shared between permute.c and the CUDA backend. */
#ifndef MOE_ROUTE_PERMUTE_H
#define MOE_ROUTE_PERMUTE_H

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The GPU places the flat (token, slot) list in chunks of MOE_PERMUTE_CHUNK entries, a CTA each (a list of at most
 * that many is one CTA, one launch). MOE_PERMUTE_CTA_MAX: the most entries one CTA holds (the fused route + permute
 * takes lists up to that). */
#define MOE_PERMUTE_CHUNK 512
#define MOE_PERMUTE_CTA_MAX 2048
/* The most local experts a permute takes (a CTA's counters in shared memory). */
#define MOE_PERMUTE_MAX_EXPERTS 1024

/* Every check of moe_permute (config, sizes, outputs, workspace, pointers), with its error set. */
moe_status moe__permute_check(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                              const moe_permute_outputs *out, const void *workspace, size_t workspace_bytes);
/* moe_permute after its checks: the backend's permute. */
moe_status moe__permute_run(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                            const moe_permute_outputs *out, void *workspace, void *stream);

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_permute(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                             const moe_permute_outputs *out, int64_t rows, void *workspace, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_ROUTE_PERMUTE_H */
