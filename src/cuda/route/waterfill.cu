/* waterfill.cu — SGLang's DeepEP waterfill on the GPU: the per-rank routed load, then one thread per token running
 * the rule of route/waterfill.h (shared with the CPU backend). */
#include "cuda/common/cuda.cuh"
#include "route/waterfill.h"

namespace {

__global__ void rank_load_kernel(moe_waterfill_config c, const int32_t *ids, int64_t n, unsigned long long *load) {
    __shared__ unsigned int local[32];
    if (threadIdx.x < 32) local[threadIdx.x] = 0;
    __syncthreads();
    const int epr = c.n_experts / c.world;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        if (moe__wf_valid(ids[i], &c)) atomicAdd(&local[moe__wf_rank(ids[i], epr, c.world)], 1u);
    __syncthreads();
    if (threadIdx.x < c.world && local[threadIdx.x]) atomicAdd(load + threadIdx.x, (unsigned long long)local[threadIdx.x]);
}

__global__ void waterfill_kernel(moe_waterfill_config c, const int32_t *ids, const float *w, int64_t n_tokens,
                                 const int64_t *rank_load, int32_t *out_ids, float *out_w) {
    __shared__ int64_t load[32];
    if (threadIdx.x < c.world) load[threadIdx.x] = rank_load[threadIdx.x];
    __syncthreads();
    const int64_t target = moe__wf_target(&c, load);
    const int k = c.top_k;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n_tokens; t += (int64_t)gridDim.x * blockDim.x)
        moe__wf_token(&c, ids + t * k, w + t * k, load, target, n_tokens, t, out_ids + t * (k + 1), out_w + t * (k + 1));
}

} // namespace

extern "C" moe_status moe__cuda_waterfill_rank_load(moe_ctx *ctx, const moe_waterfill_config *c, const int32_t *ids,
                                                    int64_t n_tokens, int64_t *rank_load, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaMemsetAsync(rank_load, 0, sizeof(int64_t) * (size_t)c->world, st));
    const int64_t n = n_tokens * c->top_k;
    if (n == 0) return MOE_OK;
    rank_load_kernel<<<moe__grid_for(ctx, n, 256), 256, 0, st>>>(*c, ids, n,
                                                                  reinterpret_cast<unsigned long long *>(rank_load));
    MOE_CUDA_LAUNCHED(ctx, "rank_load_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_waterfill(moe_ctx *ctx, const moe_waterfill_config *c, const int32_t *ids,
                                          const float *weights, int64_t n_tokens, const int64_t *rank_load,
                                          int32_t *out_ids, float *out_weights, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    waterfill_kernel<<<moe__grid_for(ctx, n_tokens, 128), 128, 0, st>>>(*c, ids, weights, n_tokens, rank_load, out_ids,
                                                                         out_weights);
    MOE_CUDA_LAUNCHED(ctx, "waterfill_kernel");
    return MOE_OK;
}
