/* eplb_map.cu — replica choice at dispatch (docs/routing.md §4): elementwise, deterministic. */
#include "cuda/common/cuda.cuh"

namespace {

__global__ void eplb_map_kernel(const int32_t *log2phy, const int32_t *logcnt, int n_logical, int max_replicas,
                                const int32_t *ids, int32_t *out, int64_t n, int k_total, int k_routed) {
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < n; p += (int64_t)gridDim.x * blockDim.x) {
        const int32_t id = ids[p];
        int32_t r = id;
        if (p % k_total < k_routed && id != -1) {
            const int cnt = id >= 0 && id < n_logical ? logcnt[id] : 0;
            r = cnt >= 1 && cnt <= max_replicas ? log2phy[(int64_t)id * max_replicas + p % cnt] : -1;
        }
        out[p] = r;
    }
}

} // namespace

extern "C" moe_status moe__cuda_eplb_map(moe_ctx *ctx, const int32_t *log2phy, const int32_t *logcnt, int n_logical,
                                         int max_replicas, const int32_t *ids, int32_t *out, int64_t n_tokens,
                                         int k_total, int k_routed, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const int64_t n = n_tokens * k_total;
    eplb_map_kernel<<<moe__grid_for(ctx, n, 256), 256, 0, st>>>(log2phy, logcnt, n_logical, max_replicas, ids, out, n,
                                                                 k_total, k_routed);
    MOE_CUDA_LAUNCHED(ctx, "eplb_map_kernel");
    return MOE_OK;
}
