/* stats.cu — expert-load counters: one atomic per valid id, aggregated per CTA in shared memory first and added
 * to the CTA's stripe (router.h), so hot experts do not serialise on one global address. */
#include "cuda/common/cuda.cuh"
#include "route/router.h"

namespace {

constexpr int kThreads = 256, kMaxSharedExperts = 4096;

/* counts: the layer's stripe 0; stripe r is counts + r n_experts. */
__global__ void record_kernel(const int32_t *ids, int64_t n, int n_experts, int stripes, unsigned long long *counts,
                              unsigned long long *invalid) {
    counts += (int64_t)(blockIdx.x & (stripes - 1)) * n_experts;
    __shared__ unsigned int local[kMaxSharedExperts];
    const bool use_shared = n_experts <= kMaxSharedExperts;
    if (use_shared)
        for (int e = threadIdx.x; e < n_experts; e += blockDim.x) local[e] = 0;
    __syncthreads();
    unsigned int bad = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int32_t id = ids[i];
        if (id >= 0 && id < n_experts) {
            if (use_shared)
                atomicAdd(&local[id], 1u);
            else
                atomicAdd(counts + id, 1ull);
        } else if (id != -1) {
            bad++;
        }
    }
    if (bad) atomicAdd(invalid, (unsigned long long)bad);
    __syncthreads();
    if (use_shared)
        for (int e = threadIdx.x; e < n_experts; e += blockDim.x)
            if (local[e]) atomicAdd(counts + e, (unsigned long long)local[e]);
}

} // namespace

extern "C" moe_status moe__cuda_stats_record(moe_ctx *ctx, moe_expert_stats *s, int layer, const int32_t *ids,
                                             int64_t n, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    unsigned long long *counts =
        reinterpret_cast<unsigned long long *>(s->counts) + (int64_t)layer * s->stripes * s->n_experts;
    unsigned long long *invalid = reinterpret_cast<unsigned long long *>(s->invalid) + layer;
    record_kernel<<<moe__grid_for(ctx, n, kThreads), kThreads, 0, st>>>(ids, n, s->n_experts, s->stripes, counts, invalid);
    MOE_CUDA_LAUNCHED(ctx, "record_kernel");
    return MOE_OK;
}
