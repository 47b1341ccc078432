/* router.cu — one fused kernel for every router family (docs/routing.md §1–2): a warp per token
 * (route_warp.cuh does the work), tokens strided over a grid sized to the GPU. */
#include "cuda/route/route_warp.cuh"

namespace {

constexpr int kThreads = 256;

/* CTAs an SM that a family kernel is compiled for: 8 (32 registers, every warp slot of an SM filled; at T = 8192 the
 * grid's 1024 CTAs in one wave) where ptxas fits it in them without spilling, 6 for softmax at 8 experts a lane
 * (8 bytes of spills at 32 registers). The kernel of every family keeps the compiler's choice. */
template <int kPerLane, int F> constexpr int min_ctas() {
    return F == route_warp::kAny ? 0 : kPerLane == 8 && F == route_warp::kSoftmaxTopk ? 6 : 8;
}

/* kPerLane: experts a lane holds (E <= 32 * kPerLane); F: the router family compiled (route_warp::family). */
template <int kPerLane, int F>
__global__ void __launch_bounds__(kThreads, (min_ctas<kPerLane, F>())) route_kernel(route_warp::params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const int64_t n_warps = (int64_t)gridDim.x * (kThreads / 32);
    for (int64_t t = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; t < p.n_tokens; t += n_warps) {
        int id;
        route_warp::route_token<kPerLane, F>(p, t, id);
    }
}

/* The kernel of c's family. */
template <int kPerLane> cudaError_t launch(const moe_router_config *c, bool pdl, unsigned grid, cudaStream_t st,
                                           const route_warp::params &p) {
    return route_warp::by_family<kPerLane>(c, [&](auto f) {
        return moe_launch(pdl, route_kernel<kPerLane, decltype(f)::value>, grid, kThreads, 0, st, p);
    });
}

} // namespace

extern "C" moe_status moe__cuda_route(moe_ctx *ctx, const moe_router_config *c, const moe_route_args *a, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (a->n_tokens == 0) return MOE_OK;
    const route_warp::params p = route_warp::make_params(c, a);
    const unsigned grid = moe__grid_for(ctx, a->n_tokens * 32, kThreads);
    const bool pdl = moe__cuda_pdl(ctx);
    if (c->n_experts <= 64)
        MOE_CUDA_TRY(ctx, launch<2>(c, pdl, grid, st, p));
    else if (c->n_experts <= 128)
        MOE_CUDA_TRY(ctx, launch<4>(c, pdl, grid, st, p));
    else if (c->n_experts <= 256)
        MOE_CUDA_TRY(ctx, launch<8>(c, pdl, grid, st, p));
    else
        MOE_CUDA_TRY(ctx, launch<16>(c, pdl, grid, st, p));
    return MOE_OK;
}
