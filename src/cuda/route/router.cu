/* router.cu — one fused kernel for every router family (docs/routing.md §1–2): a warp per token
 * (route_warp.cuh does the work), tokens strided over a grid sized to the GPU. */
#include "cuda/route/route_warp.cuh"

namespace {

constexpr int kThreads = 256;

/* kPerLane: experts a lane holds (E <= 32 * kPerLane). */
template <int kPerLane> __global__ void __launch_bounds__(kThreads) route_kernel(route_warp::params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const int64_t n_warps = (int64_t)gridDim.x * (kThreads / 32);
    for (int64_t t = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; t < p.n_tokens; t += n_warps) {
        int id;
        route_warp::route_token<kPerLane>(p, t, id);
    }
}

} // namespace

extern "C" moe_status moe__cuda_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (a->n_tokens == 0) return MOE_OK;
    const route_warp::params p = route_warp::make_params(c, a);
    const unsigned grid = moe__grid_for(ctx, a->n_tokens * 32, kThreads);
    const bool pdl = moe__cuda_pdl(ctx);
    if (c->n_experts <= 64)
        MOE_CUDA_TRY(ctx, moe_launch(pdl, route_kernel<2>, grid, kThreads, 0, st, p));
    else if (c->n_experts <= 128)
        MOE_CUDA_TRY(ctx, moe_launch(pdl, route_kernel<4>, grid, kThreads, 0, st, p));
    else if (c->n_experts <= 256)
        MOE_CUDA_TRY(ctx, moe_launch(pdl, route_kernel<8>, grid, kThreads, 0, st, p));
    else
        MOE_CUDA_TRY(ctx, moe_launch(pdl, route_kernel<16>, grid, kThreads, 0, st, p));
    return MOE_OK;
}
