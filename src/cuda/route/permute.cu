/* permute.cu — permute / align on the GPU (docs/routing.md §6), exactly the CPU's arrays with no host
 * synchronisation. The flat (token, slot) list is cut into chunks of MOE_PERMUTE_CHUNK entries; a chunk is
 * sorted by local expert with CUB's block radix sort, which is stable, so rows keep token order and the result
 * is deterministic. A row's rank inside its expert = (entries of that expert in earlier chunks) + (its position
 * among the chunk's entries of that expert).
 *   one chunk (decode):  one CTA: histogram, layout, then a warp places the entries in order
 *   several chunks:      count per chunk -> scan over chunks (a warp per expert) -> place per chunk
 * Grids are one-dimensional (up to 2^31 - 1 CTAs); row ids are int32 (checked by the caller), offsets int64.
 * The per-CTA pieces are in permute_cta.cuh. */
#include "cuda/route/permute_cta.cuh"

namespace {

using namespace permute_cta;

/* The whole list in one chunk: one CTA, one launch. */
__global__ void __launch_bounds__(kThreads) permute_single_kernel(permute_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ permute_smem sm;
    int keys[kItems], vals[kItems];
    load_chunk(p, 0, sm, keys, vals);
#pragma unroll
    for (int j = 0; j < kItems; j++) sm.key[threadIdx.x * kItems + j] = keys[j];
    place_single(p, sm);
}

/* Several chunks, step 1: each chunk's histogram into chunk_base. */
__global__ void __launch_bounds__(kThreads) permute_count_kernel(permute_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ permute_smem sm;
    int keys[kItems], vals[kItems];
    load_chunk(p, blockIdx.x, sm, keys, vals);
    for (int e = threadIdx.x; e < p.c.n_experts; e += kThreads)
        p.chunk_base[(int64_t)blockIdx.x * p.c.n_experts + e] = sm.hist[e];
    if (threadIdx.x == 0 && sm.invalid && p.invalid) atomicAdd(p.invalid, sm.invalid);
}

/* Step 2: a warp per expert turns its per-chunk counts into their exclusive prefix over chunks (32 chunks a
 * step, a warp scan each) and writes the expert's total to counts. */
__global__ void __launch_bounds__(kThreads) permute_scan_kernel(permute_params p, int64_t chunks) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const int E = p.c.n_experts, lane = threadIdx.x % 32, e = blockIdx.x * (kThreads / 32) + threadIdx.x / 32;
    if (e >= E) return;
    int running = 0;
    for (int64_t c0 = 0; c0 < chunks; c0 += 32) {
        const int64_t c = c0 + lane;
        const int v = c < chunks ? p.chunk_base[c * E + e] : 0;
        int incl = v;
#pragma unroll
        for (int o = 1; o < 32; o *= 2) {
            const int up = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += up;
        }
        if (c < chunks) p.chunk_base[c * E + e] = running + incl - v;
        running += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) p.counts[e] = running;
}

/* Step 3: each chunk sorted and placed; every CTA derives the offsets from the totals, CTA 0 writes them, and
 * CTA b fills the padding of experts b, b + grid, ... */
__global__ void __launch_bounds__(kThreads) permute_place_kernel(permute_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ permute_smem sm;
    const int E = p.c.n_experts;
    for (int e = threadIdx.x; e < E; e += kThreads) sm.off[e] = p.counts[e]; /* totals, parked in off */
    __syncthreads();
    int keys[kItems], vals[kItems];
    load_chunk(p, blockIdx.x, sm, keys, vals); /* sm.hist: this chunk's counts */
    exclusive_scan<int>(sm, E, [&](int e) { return (long long)sm.hist[e]; }, sm.seg);
    int chunk_hist[4] = {0, 0, 0, 0}; /* E <= 1024 = 4 per thread */
    for (int e = threadIdx.x, i = 0; e < E; e += kThreads, i++) chunk_hist[i] = sm.hist[e], sm.hist[e] = (int)sm.off[e];
    __syncthreads();
    compute_layout(p, sm, blockIdx.x == 0, false); /* sm.hist now holds the totals; counts are written */
    fill_padding(p, sm, blockIdx.x, gridDim.x);
    __syncthreads(); /* fill_padding reads the totals in sm.hist */
    for (int e = threadIdx.x, i = 0; e < E; e += kThreads, i++) sm.hist[e] = chunk_hist[i];
    __syncthreads();
    place_chunk(p, sm, keys, vals, p.chunk_base + (int64_t)blockIdx.x * E);
}

} // namespace

extern "C" moe_status moe__cuda_permute(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids,
                                        int64_t n_tokens, const moe_permute_outputs *out, int64_t rows,
                                        void *workspace, void *stream) {
    (void)rows;
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const permute_params p = make_params(c, ids, n_tokens, out, workspace);
    const int64_t chunks = (p.n + MOE_PERMUTE_CHUNK - 1) / MOE_PERMUTE_CHUNK;
    if (chunks <= 1) { /* the kernel zeroes dropped itself */
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), permute_single_kernel, 1, kThreads, 0, st, p));
    } else {
        if (out->invalid) MOE_CUDA_TRY(ctx, cudaMemsetAsync(out->invalid, 0, sizeof(int32_t), st));
        if (out->dropped) MOE_CUDA_TRY(ctx, cudaMemsetAsync(out->dropped, 0, sizeof(int32_t), st));
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), permute_count_kernel, (unsigned)chunks, kThreads, 0, st,
                                     p));
        const unsigned scan_blocks = (unsigned)((c->n_experts + kThreads / 32 - 1) / (kThreads / 32));
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), permute_scan_kernel, scan_blocks, kThreads, 0, st, p, chunks));
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), permute_place_kernel, (unsigned)chunks, kThreads, 0, st, p));
    }
    return MOE_OK;
}
