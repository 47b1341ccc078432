/* route_permute.cu — moe_route and then moe_permute of the ids it wrote, in one launch for small batches
 * (docs/routing.md §7). A cluster of up to 16 CTAs (sm_90; one CTA elsewhere) routes the tokens, a warp a token
 * (route_warp.cuh), and each (token, slot) writes its permute key straight into every CTA's shared memory
 * (distributed shared memory). After the cluster barrier each CTA counts and lays out the whole list and places
 * its own share of it (permute_cta.cuh's place_range) and of the padding rows, so that no CTA's chain of phases
 * is longer than a share's. One kernel instead of two: the second launch's latency, a third of a decode step's
 * routing, is gone, and the ids never make a round trip through global memory. A list of at most 32 entries
 * (every one-token decode step) takes route_permute_small_kernel instead: one CTA, one barrier, the layout by warp
 * operations. */
#include <cooperative_groups.h>

#include "cuda/route/permute_cta.cuh"
#include "route/route_permute.h"
#include "cuda/route/route_warp.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int kThreads = permute_cta::kThreads, kWarps = kThreads / 32;
/* tokens a warp, at most: MOE_ROUTE_PERMUTE_MAX_TOKENS over a portable cluster of 8, or 16 over one CTA */
constexpr int kTokensPerWarp = 2;
static_assert(MOE_ROUTE_PERMUTE_MAX_TOKENS <= kTokensPerWarp * kWarps * 8, "tokens a warp");

/* The permute key of a routed id (an expert of the router or -1): its local expert, or E when skipped. */
__device__ __forceinline__ int routed_key(const permute_cta::permute_params &pp, int id) {
    const int e = id - pp.c.expert_begin;
    return id >= 0 && e >= 0 && e < pp.c.n_experts ? e : pp.c.n_experts;
}

template <int kPerLane, int F>
__global__ void __launch_bounds__(kThreads) route_permute_kernel(route_warp::params rp, permute_cta::permute_params pp) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ permute_cta::permute_smem sm;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k = rp.c.top_k, E = pp.c.n_experts;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = (int)cluster.block_rank(), n_ctas = (int)cluster.num_blocks();
    /* CTA 0's shared memory may be written only once it runs: an arrival now, the wait after the routing */
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#else
    const int rank = 0, n_ctas = 1; /* launched as one CTA */
#endif
    /* the counters are cleared while the tokens are routed */
    for (int e = threadIdx.x; e < E; e += kThreads) sm.hist[e] = 0, sm.seg[e] = 0;
    const int64_t first = rank * kWarps + warp, stride = (int64_t)n_ctas * kWarps;
    int ids[kTokensPerWarp];
#pragma unroll 1 /* one copy of the router's code: at decode sizes its instruction fetch is the cost */
    for (int i = 0; i < kTokensPerWarp; i++) {
        int id = -1;
        if (first + i * stride < rp.n_tokens) route_warp::route_token<kPerLane, F>(rp, first + i * stride, id);
#pragma unroll
        for (int j = 0; j < kTokensPerWarp; j++) /* predicated: ids stays in registers */
            if (j == i) ids[j] = id;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
#pragma unroll
    for (int i = 0; i < kTokensPerWarp; i++) {
        const int64_t t = first + i * stride;
        if (t >= rp.n_tokens || lane >= k) continue;
        const int key = routed_key(pp, ids[i]);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        for (int r = 0; r < n_ctas; r++) cluster.map_shared_rank(sm.key, r)[t * k + lane] = key; /* every CTA's */
#else
        sm.key[t * k + lane] = key;
#endif
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cluster.sync(); /* release / acquire at cluster scope: every CTA holds every key */
#else
    __syncthreads();
#endif
    /* Every CTA places its own share of the list, [lo, hi): the histogram of the whole list, and in sm.seg the
     * entries of each expert before lo, in one pass */
    const int64_t share = (pp.n + n_ctas - 1) / n_ctas, lo = min(pp.n, rank * share), hi = min(pp.n, lo + share);
    for (int64_t i = threadIdx.x; i < pp.n; i += kThreads) {
        const int key = sm.key[i];
        if (key < E) atomicAdd(&sm.hist[key], 1);
        if (key < E && i < lo) atomicAdd(&sm.seg[key], 1);
    }
    __syncthreads();
    permute_cta::compute_layout(pp, sm, rank == 0, rank == 0); /* CTA 0 writes counts, offsets and dropped */
    if (warp == 0) permute_cta::place_range(pp, sm, lo, hi, sm.seg);
    permute_cta::fill_padding(pp, sm, rank, n_ctas); /* and the padding of every n_ctas-th expert */
    if (rank == 0 && threadIdx.x == 0 && pp.invalid) *pp.invalid = 0; /* routed ids are never invalid */
}

/* A list of at most 32 entries (T * k <= 32, T <= kWarps), contiguous layout: one CTA and one barrier. Warp t
 * routes token t and stores its keys; then every warp reads the whole list into its lanes, a lane an entry, and
 * finds the layout with warp operations alone: the entries of an expert find each other with __match_any_sync (a
 * rank in list order, a count), and the lane of an expert's first entry holds its padded rows. Warp w then lays
 * out the experts of chunks w, w + kWarps, ... of 32 (a lane an expert: the chunk's leaders drop their padded rows
 * and counts into the warp's shared row, a scan over the lanes gives the rows within the chunk, one reduction over
 * the list the padded rows of the experts below it) and writes their counts, offsets and padding rows; warp 0 also
 * places the entries, each entry's first row the padded rows of the present experts below it. So no thread waits
 * for another after the routing (route_permute_kernel's histogram, scan, placement and fill are five
 * barrier-separated phases, which at T = 1 cost as much as the routing). */
constexpr int kSmallList = 32;

template <int kPerLane, int F>
__global__ void __launch_bounds__(kThreads)
    route_permute_small_kernel(route_warp::params rp, permute_cta::permute_params pp) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    __shared__ int keys[kSmallList], chunk_pad[kWarps][32], chunk_count[kWarps][32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, k = rp.c.top_k, E = pp.c.n_experts;
    if (warp < rp.n_tokens) {
        int id = -1;
        route_warp::route_token<kPerLane, F>(rp, warp, id);
        if (lane < k) keys[warp * k + lane] = routed_key(pp, id);
    }
    __syncthreads();
    const int n = (int)pp.n;
    const unsigned lower = (1u << lane) - 1u, tm = (unsigned)pp.c.tile_m;
    const int key = lane < n ? keys[lane] : E + 1; /* E: skipped; E + 1: no entry */
    const unsigned peers = __match_any_sync(0xffffffffu, key);
    const int rank = __popc(peers & lower), count = __popc(peers);
    /* the expert's rows padded to the tile, held by the lane of its first entry (0 elsewhere); every sum of them
     * stays below the rows moe_permute_rows allows (< 2^31) */
    const int padded = key < E && rank == 0 ? (int)((count + tm - 1u) / tm * tm) : 0;
    for (int c = warp; 32 * c <= E; c += kWarps) { /* experts e = 32 c + lane, offsets up to e = E */
        chunk_pad[warp][lane] = 0, chunk_count[warp][lane] = 0;
        __syncwarp();
        if (padded > 0 && key / 32 == c) chunk_pad[warp][key % 32] = padded, chunk_count[warp][key % 32] = count;
        __syncwarp();
        const int p = chunk_pad[warp][lane], cnt = chunk_count[warp][lane];
        int incl = p; /* inclusive scan over the chunk's lanes */
#pragma unroll
        for (int o = 1; o < 32; o *= 2) {
            const int v = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += v;
        }
        const int first = (int)__reduce_add_sync(0xffffffffu, key < 32 * c ? (unsigned)padded : 0u) + incl - p;
        const int e = 32 * c + lane;
        if (e < E) pp.counts[e] = cnt;
        if (e <= E) pp.offsets[e] = first;
        /* the padding rows [first + cnt, first + p) of the chunk's experts, one expert at a time */
        for (unsigned pads = __ballot_sync(0xffffffffu, p > cnt); pads; pads &= pads - 1) {
            const int src = __ffs(pads) - 1;
            const int lo = __shfl_sync(0xffffffffu, first + cnt, src), hi = __shfl_sync(0xffffffffu, first + p, src);
            for (int r = lo + lane; r < hi; r += 32) pp.row_src[r] = -1;
        }
        __syncwarp(); /* the chunk's row is read before the next chunk clears it */
    }
    if (warp == 0) {
        int first = 0; /* the entry's expert's first row */
#pragma unroll
        for (int src = 0; src < 32; src++) {
            const int ks = __shfl_sync(0xffffffffu, key, src), ps = __shfl_sync(0xffffffffu, padded, src);
            first += ks < key ? ps : 0;
        }
        if (lane < n) {
            const int row = key < E ? first + rank : -1;
            pp.slot_row[lane] = row;
            if (row >= 0) pp.row_src[row] = lane;
        }
        if (lane == 0 && pp.dropped) *pp.dropped = 0;
        if (lane == 0 && pp.invalid) *pp.invalid = 0; /* routed ids are never invalid */
    }
}

/* The CTAs of route_permute_kernel<kPerLane, F>'s cluster at most: 16 where its sm_90 code runs and the GPU
 * schedules a non-portable cluster of 16 such CTAs (H100 / H200 can), else 8 with 2 tokens a warp; 1 where the sm_90
 * code does not run (older GPUs, or the portable PTX on newer ones). Asked once a kernel. */
template <int kPerLane, int F> int cluster_ctas() {
    static const int limit = moe_cluster_limit(route_permute_kernel<kPerLane, F>, kThreads, 16);
    return limit ? limit : 1;
}

/* Launches route_permute_kernel<kPerLane, F> for T tokens as one cluster of up to cluster_ctas() CTAs, a CTA per 8
 * tokens (F: the router family, route_warp::family_of). */
template <int kPerLane, int F>
cudaError_t launch(bool pdl, cudaStream_t st, const route_warp::params &rp,
                   const permute_cta::permute_params &pp) {
    if (pp.c.layout == MOE_PERMUTE_CONTIGUOUS && pp.n <= kSmallList && rp.n_tokens <= kWarps)
        return moe_launch(pdl, route_permute_small_kernel<kPerLane, F>, 1, kThreads, 0, st, rp, pp);
    void (*kernel)(route_warp::params, permute_cta::permute_params) = route_permute_kernel<kPerLane, F>;
    const int max_ctas = cluster_ctas<kPerLane, F>();
    /* a warp a token, and at most two experts' padding a warp: more CTAs than the tokens need when the list
     * touches many experts (DeepSeek-V3 at T = 16: 128 entries, 2 CTAs for the tokens, 8 for the padding) */
    const int64_t touched = min(rp.n_tokens * rp.c.top_k, (int64_t)pp.c.n_experts);
    const int64_t want = max((rp.n_tokens + kWarps - 1) / kWarps, (touched + 2 * kWarps - 1) / (2 * kWarps));
    const unsigned ctas = (unsigned)(want < max_ctas ? want : max_ctas);
    return moe_launch_ex(pdl, ctas, kernel, ctas, kThreads, 0, st, rp, pp);
}

/* launch<kPerLane, F> for the family of rc (route_warp::by_family): each family's kernels hold its path only, half
 * the code of the kernels for any config, which a decode step's one pass fetches from memory. */
template <int kPerLane>
cudaError_t launch_family(const moe_router_config *rc, bool pdl, cudaStream_t st, const route_warp::params &rp,
                          const permute_cta::permute_params &pp) {
    return route_warp::by_family<kPerLane>(
        rc, [&](auto f) { return launch<kPerLane, decltype(f)::value>(pdl, st, rp, pp); });
}

} // namespace

extern "C" int moe__cuda_route_permute_fuses(const moe_ctx *ctx, int64_t n_tokens, int top_k) {
    (void)ctx; /* every kPerLane is compiled alike: clusters for one are clusters for all */
    const int64_t max_tokens =
        cluster_ctas<4, route_warp::kAny>() > 1 ? MOE_ROUTE_PERMUTE_MAX_TOKENS : kTokensPerWarp * kWarps;
    return n_tokens >= 1 && n_tokens <= max_tokens && n_tokens * top_k <= MOE_PERMUTE_CTA_MAX;
}

extern "C" moe_status moe__cuda_route_permute(moe_ctx *ctx, const moe_router_config *rc, const moe_route_args *ra,
                                              const moe_permute_config *pc, const moe_permute_outputs *out,
                                              void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const route_warp::params rp = route_warp::make_params(rc, ra);
    const permute_cta::permute_params pp = permute_cta::make_params(pc, ra->ids, ra->n_tokens, out, NULL);
    const bool pdl = moe__cuda_pdl(ctx);
    const int E = rc->n_experts;
    if (E <= 64)
        MOE_CUDA_TRY(ctx, launch_family<2>(rc, pdl, st, rp, pp));
    else if (E <= 128)
        MOE_CUDA_TRY(ctx, launch_family<4>(rc, pdl, st, rp, pp));
    else if (E <= 256)
        MOE_CUDA_TRY(ctx, launch_family<8>(rc, pdl, st, rp, pp));
    else
        MOE_CUDA_TRY(ctx, launch_family<16>(rc, pdl, st, rp, pp));
    return MOE_OK;
}
