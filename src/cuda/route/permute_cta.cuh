/* permute_cta.cuh — the per-CTA pieces of permute / align (docs/routing.md §6), shared by the permute kernels
 * (permute.cu) and the fused route + permute kernel (route_permute.cu): the chunk's keys and histogram, the expert
 * layout and the padding, the placement by warp stretches, and the whole single-chunk placement. */
#ifndef MOE_CUDA_PERMUTE_CTA_CUH
#define MOE_CUDA_PERMUTE_CTA_CUH

#include <cub/block/block_scan.cuh>

#include "cuda/common/cuda.cuh"
#include "route/permute.h"

namespace permute_cta {

constexpr int kThreads = 256, kMaxExperts = MOE_PERMUTE_MAX_EXPERTS;
static_assert(MOE_PERMUTE_CHUNK % kThreads == 0 && MOE_PERMUTE_CHUNK <= MOE_PERMUTE_CTA_MAX, "chunk");

using block_scan = cub::BlockScan<long long, kThreads>;

struct permute_params {
    moe_permute_config c;
    const int32_t *ids;
    int64_t n; /* T * k */
    int32_t *counts;
    int64_t *offsets;
    int32_t *row_src, *slot_row, *invalid, *dropped;
    int64_t chunks;         /* ceil(n / MOE_PERMUTE_CHUNK) */
    int32_t *chunk_base;    /* (chunks, E): counts per chunk, then (the scan kernel) their prefix over chunks */
    int32_t *chunk_invalid; /* (chunks): invalid ids per chunk */
};

/* The kernels' view of a moe_permute call (workspace: moe_permute_workspace_size). */
inline permute_params make_params(const moe_permute_config *c, const int32_t *ids, int64_t n_tokens,
                                  const moe_permute_outputs *out, void *workspace) {
    permute_params p;
    p.c = *c;
    p.ids = ids;
    p.n = n_tokens * c->top_k;
    p.counts = out->counts;
    p.offsets = out->offsets;
    p.row_src = out->row_src;
    p.slot_row = out->slot_row;
    p.invalid = out->invalid;
    p.dropped = out->dropped;
    p.chunks = (p.n + MOE_PERMUTE_CHUNK - 1) / MOE_PERMUTE_CHUNK;
    p.chunk_base = static_cast<int32_t *>(workspace);
    p.chunk_invalid = p.chunk_base ? p.chunk_base + p.chunks * c->n_experts : NULL;
    return p;
}

/* Shared memory of one CTA. */
struct permute_smem {
    union {
        block_scan::TempStorage scan;
        uint16_t warp_count[kThreads / 32][kMaxExperts]; /* entries per (warp stretch, expert) */
    } tmp;
    int key[MOE_PERMUTE_CTA_MAX];   /* the chunk's keys in list order */
    int hist[kMaxExperts];          /* entries per expert key (key E, skipped, is not counted) */
    int seg[kMaxExperts];           /* several chunks: this chunk's first rank of each expert */
    long long off[kMaxExperts + 1]; /* first row of each expert (contiguous) */
    int invalid, dropped;
};

/* The key of an id: its local expert, E when skipped; invalid counts ids < -1 or >= the global expert count. */
__device__ __forceinline__ int key_of(const permute_params &p, int32_t id, int &invalid) {
    invalid += id < -1 || id >= p.c.n_experts_global;
    const int e = id - p.c.expert_begin;
    return id >= p.c.expert_begin && e < p.c.n_experts ? e : p.c.n_experts;
}

/* Exclusive prefix sums of in[0..E) (each thread a contiguous range), into out; returns the total. */
template <typename T, typename F>
__device__ long long exclusive_scan(permute_smem &sm, int E, F value, T *out) {
    const int per = (E + kThreads - 1) / kThreads, first = threadIdx.x * per;
    long long local = 0, prefix, total;
    for (int e = first; e < first + per && e < E; e++) local += value(e);
    block_scan(sm.tmp.scan).ExclusiveSum(local, prefix, total);
    for (int e = first; e < first + per && e < E; e++) {
        out[e] = (T)prefix;
        prefix += value(e);
    }
    __syncthreads();
    return total;
}

constexpr int kPerThread = MOE_PERMUTE_CHUNK / kThreads; /* entries of a chunk a thread */

/* The ids of entries [first, first + len) (len <= MOE_PERMUTE_CHUNK), thread t's j-th at first + t + j kThreads
 * (coalesced), -1 past len: loads that are all issued before any is used, so a caller can overlap their latency
 * with other work before store_keys. */
__device__ __forceinline__ void fetch_ids(const permute_params &p, int64_t first, int64_t len,
                                          int32_t (&id)[kPerThread]) {
#pragma unroll
    for (int j = 0; j < kPerThread; j++) {
        const int l = threadIdx.x + j * kThreads;
        id[j] = l < len ? p.ids[first + l] : -1;
    }
}

/* fetch_ids' ids as keys into sm.key; with kCount also their histogram into sm.hist and their invalid ids into
 * sm.invalid (the place kernel of several chunks takes both from the chunk counts instead). Ends with a barrier. */
template <bool kCount = true>
__device__ inline void store_keys(const permute_params &p, int64_t len, const int32_t (&id)[kPerThread],
                                  permute_smem &sm) {
    const int E = p.c.n_experts;
    if (kCount) {
        for (int e = threadIdx.x; e < E; e += kThreads) sm.hist[e] = 0;
        if (threadIdx.x == 0) sm.invalid = 0;
        __syncthreads();
    }
    int invalid = 0;
#pragma unroll
    for (int j = 0; j < kPerThread; j++) {
        const int l = threadIdx.x + j * kThreads, key = key_of(p, id[j], invalid);
        if (l < len) sm.key[l] = key;
        if (kCount && l < len && key < E) atomicAdd(&sm.hist[key], 1); /* skipped entries are not counted */
    }
    if (kCount && invalid) atomicAdd(&sm.invalid, invalid);
    __syncthreads();
}

/* Entries [first, first + len) into sm.key, sm.hist and sm.invalid (fetch_ids, then store_keys). */
__device__ inline void load_keys(const permute_params &p, int64_t first, int64_t len, permute_smem &sm) {
    int32_t id[kPerThread];
    fetch_ids(p, first, len, id);
    store_keys(p, len, id, sm);
}

/* From the per-expert totals in sm.hist: the first row of each expert (sm.off, contiguous layout); with write,
 * also offsets and the dropped count (and counts, with write_counts). */
__device__ inline void compute_layout(const permute_params &p, permute_smem &sm, bool write, bool write_counts) {
    const int E = p.c.n_experts;
    const unsigned tm = (unsigned)p.c.tile_m; /* 32-bit: a count plus tile_m - 1 stays below 2^32 */
    const int64_t max_rows = p.c.max_rows;
    if (p.c.layout == MOE_PERMUTE_CONTIGUOUS) {
        const long long total =
            exclusive_scan<long long>(sm, E, [&](int e) { return (long long)((sm.hist[e] + tm - 1u) / tm * tm); }, sm.off);
        if (threadIdx.x == 0) sm.off[E] = total;
        __syncthreads();
    }
    if (!write) return;
    if (write_counts)
        for (int e = threadIdx.x; e < E; e += kThreads) p.counts[e] = sm.hist[e];
    if (p.c.layout == MOE_PERMUTE_CONTIGUOUS) {
        for (int e = threadIdx.x; e <= E; e += kThreads) p.offsets[e] = sm.off[e];
        if (threadIdx.x == 0 && p.dropped) *p.dropped = 0; /* nothing is dropped */
    } else if (p.dropped) { /* summed in the CTA and stored: no zeroing before, no other writer */
        if (threadIdx.x == 0) sm.dropped = 0;
        __syncthreads();
        int dropped = 0;
        for (int e = threadIdx.x; e < E; e += kThreads) dropped += sm.hist[e] > max_rows ? sm.hist[e] - max_rows : 0;
        if (dropped) atomicAdd(&sm.dropped, dropped);
        __syncthreads();
        if (threadIdx.x == 0) *p.dropped = sm.dropped;
    }
}

/* -1 in the rows no entry lands in, for experts first, first + step, ...: each expert's padding (contiguous) or
 * its rows past its count (masked). A warp looks at 32 of its experts at once (a lane each: one shared-memory
 * read, not a chain of them) and then writes the rows of those that have any, one expert at a time, four rows a
 * lane in one 16-byte store where aligned: 128 rows a step, so a padding shorter than a tile of 128 is one step. */
__device__ inline void fill_padding(const permute_params &p, const permute_smem &sm, int first, int step) {
    const int64_t max_rows = p.c.max_rows;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = kThreads / 32, E = p.c.n_experts;
    const bool vec = (reinterpret_cast<uintptr_t>(p.row_src) & 15u) == 0;
    /* warp w takes experts first + (w + n_warps * (lane + 32 i)) * step: the warps share them evenly */
    for (int64_t e0 = first + (int64_t)warp * step; e0 < E; e0 += (int64_t)n_warps * 32 * step) {
        const int64_t e = e0 + (int64_t)lane * n_warps * step;
        int64_t lo = 0, hi = 0;
        if (e < E) {
            lo = p.c.layout == MOE_PERMUTE_CONTIGUOUS ? sm.off[e] + sm.hist[e]
                                                      : e * max_rows + (sm.hist[e] < max_rows ? sm.hist[e] : max_rows);
            hi = p.c.layout == MOE_PERMUTE_CONTIGUOUS ? sm.off[e + 1] : (e + 1) * max_rows;
        }
        for (unsigned todo = __ballot_sync(0xffffffffu, hi > lo); todo; todo &= todo - 1) {
            const int src = __ffs(todo) - 1;
            const int64_t a = __shfl_sync(0xffffffffu, lo, src), b = __shfl_sync(0xffffffffu, hi, src);
            if (!vec) {
                for (int64_t r = a + lane; r < b; r += 32) p.row_src[r] = -1;
                continue;
            }
            for (int64_t r = (a & ~(int64_t)3) + 4 * lane; r < b; r += 128) { /* rows r .. r + 3 */
                if (r >= a && r + 4 <= b) {
                    *reinterpret_cast<int4 *>(p.row_src + r) = make_int4(-1, -1, -1, -1);
                } else {
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        if (r + q >= a && r + q < b) p.row_src[r + q] = -1;
                }
            }
        }
    }
}

/* Places the entries [lo, hi) of the list with the calling warp, 32 a step in list order (their keys in sm.key from
 * entry `first` on): entries with the same expert find each other with __match_any_sync and take consecutive ranks
 * after base[e] + next[e]; next[e] holds the entries of expert e placed before lo in this chunk on entry and is
 * advanced as the steps go, base[e] (none: 0) those of the chunks before. sm.off holds the layout. */
template <typename T>
__device__ inline void place_range(const permute_params &p, const permute_smem &sm, int64_t lo, int64_t hi, T *next,
                                   int64_t first = 0, const int *base = nullptr) {
    const int E = p.c.n_experts, lane = threadIdx.x % 32;
    const unsigned lower = (1u << lane) - 1u;
    for (int64_t step = lo; step < hi; step += 32) {
        const int64_t i = step + lane;
        const int key = i < hi ? sm.key[i - first] : E + 1;
        const unsigned peers = __match_any_sync(0xffffffffu, key);
        const int start = key < E ? next[key] : 0;
        __syncwarp();
        if (key < E && (peers & lower) == 0) next[key] = (T)(start + __popc(peers));
        __syncwarp(); /* the next step reads these */
        if (key > E) continue;
        int64_t row = -1;
        if (key < E) {
            const int64_t rank = (base ? base[key] : 0) + start + __popc(peers & lower);
            if (p.c.layout == MOE_PERMUTE_CONTIGUOUS)
                row = sm.off[key] + rank;
            else if (rank < p.c.max_rows)
                row = (int64_t)key * p.c.max_rows + rank;
        }
        p.slot_row[i] = (int32_t)row;
        if (row >= 0) p.row_src[row] = (int32_t)i;
    }
}

/* Places the entries [first, first + len) with their keys in sm.key, the layout in sm.off and base as in place_range:
 * each warp takes a stretch of them in order, 32 entries a step. Pass 1 counts each stretch's entries per expert
 * (__match_any_sync groups equal keys), a prefix over the warps gives each stretch its first rank per expert, pass
 * 2 places. Stable by construction, and cheaper than a block sort: two passes of a few match steps a warp. */
__device__ inline void place_stretches(const permute_params &p, permute_smem &sm, int64_t first, int64_t len,
                                       const int *base = nullptr) {
    constexpr int W = kThreads / 32;
    const int E = p.c.n_experts, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int w = 0; w < W; w++)
        for (int e = threadIdx.x; e < E; e += kThreads) sm.tmp.warp_count[w][e] = 0;
    __syncthreads();
    const int64_t stretch = (len + W * 32 - 1) / (W * 32) * 32, lo = first + min(len, warp * stretch),
                  hi = first + min(len, (warp + 1) * stretch);
    const unsigned lower = (1u << lane) - 1u;
    for (int64_t step = lo; step < hi; step += 32) { /* pass 1: counts of this stretch */
        const int key = step + lane < hi ? sm.key[step + lane - first] : E + 1;
        const unsigned peers = __match_any_sync(0xffffffffu, key);
        if (key < E && (peers & lower) == 0) sm.tmp.warp_count[warp][key] += (uint16_t)__popc(peers);
        __syncwarp(); /* the next step's leaders read these counters */
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += kThreads) { /* first rank of each stretch, per expert */
        int c[W], running = 0;
#pragma unroll
        for (int w = 0; w < W; w++) c[w] = sm.tmp.warp_count[w][e]; /* all reads first: no chain */
#pragma unroll
        for (int w = 0; w < W; w++) {
            sm.tmp.warp_count[w][e] = (uint16_t)running;
            running += c[w];
        }
    }
    __syncthreads();
    place_range(p, sm, lo, hi, sm.tmp.warp_count[warp], first, base); /* pass 2: place */
}

/* The whole list in one chunk, by one CTA of kThreads, from load_keys' keys, histogram and invalid count: the
 * layout, the padding and the placement. */
__device__ __forceinline__ void place_single(const permute_params &p, permute_smem &sm) {
    compute_layout(p, sm, true, true); /* ends with a barrier; tmp is free again */
    fill_padding(p, sm, 0, 1);
    place_stretches(p, sm, 0, p.n);
    if (threadIdx.x == 0 && p.invalid) *p.invalid = sm.invalid;
}

} // namespace permute_cta

#endif /* MOE_CUDA_PERMUTE_CTA_CUH */
