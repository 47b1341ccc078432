/* permute.cu — permute / align on the GPU (docs/routing.md §6), exactly the CPU's arrays with no host
 * synchronisation. The flat (token, slot) list is cut into chunks of MOE_PERMUTE_CHUNK entries; a chunk is placed
 * in list order by warp stretches (permute_cta.cuh's place_stretches), which is stable, so rows keep token order
 * and the result is deterministic. A row's rank inside its expert = (entries of that expert in earlier chunks) +
 * (its position among the chunk's entries of that expert).
 *   one chunk (decode):  one CTA: histogram, layout, then a warp places the entries in order
 *   several chunks:      count per chunk -> place per chunk, each place CTA summing the counts of the chunks
 *                        before its own (up to kInlineCounts counts in all; beyond, a scan kernel sums them once)
 * Nothing needs zeroing first (the invalid ids are counted per chunk and summed by one CTA), so no memset sits in
 * the chain of launches.
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
    load_keys(p, 0, p.n, sm);
    place_single(p, sm);
}

/* The place kernel sums the chunk counts itself while they number at most this (chunks x experts): 64 loads a
 * thread. Measured on the H200 at T = 8192 (128 chunks of 512): Qwen3 (E = 128, 16 K counts) 20.3 us inline
 * against 21.1 with the scan kernel; DeepSeek-V3 (E = 256, 32 K) 34.2 inline against 33.0. */
constexpr int64_t kInlineCounts = 128 * 128;

/* Several chunks, step 1: each chunk's histogram and invalid ids into the workspace. */
__global__ void __launch_bounds__(kThreads) permute_count_kernel(permute_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ permute_smem sm;
    const int64_t first = (int64_t)blockIdx.x * MOE_PERMUTE_CHUNK;
    load_keys(p, first, min((int64_t)MOE_PERMUTE_CHUNK, p.n - first), sm);
    for (int e = threadIdx.x; e < p.c.n_experts; e += kThreads)
        p.chunk_base[(int64_t)blockIdx.x * p.c.n_experts + e] = sm.hist[e];
    if (threadIdx.x == 0) p.chunk_invalid[blockIdx.x] = sm.invalid;
}

/* Step 2, for more than kInlineCounts counts: a warp per expert turns its per-chunk counts into their exclusive
 * prefix over chunks (32 chunks a step, a warp scan each) and writes the expert's total to counts; warp E sums
 * the invalid ids into *invalid. The loads of kScanBatch steps go out before the first scan, so that a warp waits
 * for the memory once a batch rather than once a step. */
constexpr int kScanBatch = 8;
__global__ void __launch_bounds__(kThreads) permute_scan_kernel(permute_params p) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const int E = p.c.n_experts, lane = threadIdx.x % 32, e = blockIdx.x * (kThreads / 32) + threadIdx.x / 32;
    if (e > E) return;
    int running = 0;
    for (int64_t c0 = 0; c0 < p.chunks; c0 += 32 * kScanBatch) {
        int v[kScanBatch];
#pragma unroll
        for (int b = 0; b < kScanBatch; b++) {
            const int64_t c = c0 + 32 * b + lane;
            v[b] = c >= p.chunks ? 0 : e < E ? p.chunk_base[c * E + e] : p.chunk_invalid[c];
        }
#pragma unroll
        for (int b = 0; b < kScanBatch; b++) {
            const int64_t c = c0 + 32 * b + lane;
            int incl = v[b];
#pragma unroll
            for (int o = 1; o < 32; o *= 2) {
                const int up = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += up;
            }
            if (c < p.chunks && e < E) p.chunk_base[c * E + e] = running + incl - v[b];
            running += __shfl_sync(0xffffffffu, incl, 31);
        }
    }
    if (lane == 0 && e < E) p.counts[e] = running;
    if (lane == 0 && e == E && p.invalid) *p.invalid = running;
}

/* For up to kInlineCounts counts, in place of the scan: the entries of each expert in the chunks before `chunk`
 * (into base) and in all chunks (into sm.off), from the per-chunk counts; CTA 0 also writes the invalid ids of all
 * chunks. Thread j takes expert j % W and every S-th chunk from j / W (W = min(E, kThreads), S = kThreads / W), so
 * its loads do not depend on one another and go out together. Ends with a barrier. */
__device__ __forceinline__ void chunk_prefix(const permute_params &p, permute_smem &sm, int64_t chunk, int *base) {
    const int E = p.c.n_experts, W = E < kThreads ? E : kThreads, S = kThreads / W;
    for (int e = threadIdx.x; e < E; e += kThreads) base[e] = 0, sm.off[e] = 0;
    if (threadIdx.x == 0) sm.invalid = 0;
    __syncthreads();
    if (threadIdx.x < W * S)
        for (int e = threadIdx.x % W; e < E; e += W) {
            int before = 0, all = 0;
#pragma unroll 16
            for (int64_t c = threadIdx.x / W; c < p.chunks; c += S) {
                const int v = p.chunk_base[c * E + e];
                all += v;
                before += c < chunk ? v : 0;
            }
            atomicAdd(&base[e], before);
            atomicAdd(reinterpret_cast<unsigned long long *>(&sm.off[e]), (unsigned long long)all);
        }
    if (chunk == 0) {
        int invalid = 0;
        for (int64_t c = threadIdx.x; c < p.chunks; c += kThreads) invalid += p.chunk_invalid[c];
        if (invalid) atomicAdd(&sm.invalid, invalid);
    }
    __syncthreads();
    if (chunk == 0 && threadIdx.x == 0 && p.invalid) *p.invalid = sm.invalid;
}

/* Step 3: each chunk placed; every CTA derives the layout from the totals, CTA 0 writes it, and CTA b fills the
 * padding of experts b, b + grid, ... With prefix_inline the CTA sums the chunk counts itself (chunk_prefix), else
 * they are the scan kernel's prefixes and totals. */
/* (kThreads, 1): without a minimum of CTAs, ptxas held this kernel to 48 registers and spilled the ids */
__global__ void __launch_bounds__(kThreads, 1) permute_place_kernel(permute_params p, int prefix_inline) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ permute_smem sm;
    const int E = p.c.n_experts;
    int *base = sm.seg; /* this chunk's first rank of each expert */
    const int64_t first = (int64_t)blockIdx.x * MOE_PERMUTE_CHUNK, len = min((int64_t)MOE_PERMUTE_CHUNK, p.n - first);
    int32_t id[kPerThread];
    fetch_ids(p, first, len, id); /* in flight while the counts are summed */
    if (prefix_inline) {
        chunk_prefix(p, sm, blockIdx.x, base); /* totals in sm.off */
    } else {
        for (int e = threadIdx.x; e < E; e += kThreads)
            sm.off[e] = p.counts[e], base[e] = p.chunk_base[(int64_t)blockIdx.x * E + e];
    }
    for (int e = threadIdx.x; e < E; e += kThreads) sm.hist[e] = (int)sm.off[e]; /* the totals */
    store_keys<false>(p, len, id, sm);
    compute_layout(p, sm, blockIdx.x == 0, prefix_inline);
    fill_padding(p, sm, blockIdx.x, gridDim.x);
    place_stretches(p, sm, first, len, base);
}

/* Several chunks whose counts are in the workspace: the prefix over chunks and the placement. */
moe_status place_chunks(moe_ctx *ctx, const permute_params &p, cudaStream_t st) {
    const bool pdl = moe__cuda_pdl(ctx), prefix_inline = p.chunks * p.c.n_experts <= kInlineCounts;
    if (!prefix_inline) {
        const unsigned blocks = (unsigned)((p.c.n_experts + 1 + kThreads / 32 - 1) / (kThreads / 32));
        MOE_CUDA_TRY(ctx, moe_launch(pdl, permute_scan_kernel, blocks, kThreads, 0, st, p));
    }
    MOE_CUDA_TRY(ctx, moe_launch(pdl, permute_place_kernel, (unsigned)p.chunks, kThreads, 0, st, p, (int)prefix_inline));
    return MOE_OK;
}

} // namespace

extern "C" moe_status moe__cuda_permute(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids,
                                        int64_t n_tokens, const moe_permute_outputs *out, int64_t rows,
                                        void *workspace, void *stream) {
    (void)rows;
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const permute_params p = make_params(c, ids, n_tokens, out, workspace);
    if (p.chunks <= 1) {
        MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), permute_single_kernel, 1, kThreads, 0, st, p));
        return MOE_OK;
    }
    MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), permute_count_kernel, (unsigned)p.chunks, kThreads, 0, st, p));
    return place_chunks(ctx, p, st);
}
