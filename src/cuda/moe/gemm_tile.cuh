/* gemm_tile.cuh — what the grouped GEMM kernels (grouped_gemm.cu: mma.sync; grouped_gemm_sm90.cu: wgmma) share:
 * which tile a CTA computes, where its A and B rows come from, the GLU activations and the epilogue of one
 * accumulator pair. Device code only. */
#ifndef MOE_CUDA_MOE_GEMM_TILE_CUH
#define MOE_CUDA_MOE_GEMM_TILE_CUH

#include "cuda/common/sm90.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "route/route_math.h"

constexpr int kGemmBand = 16; /* row tiles a band of the tile order */

/* The activations of docs/layer.md, in the same form as the CPU reference; A is the activation, fixed at compile
 * time so that an epilogue unrolled over a tile's accumulators holds one activation's code, not all four. */
template <int A> __device__ __forceinline__ float moe_glu(float g, float u, float alpha, float limit) {
    if (A == MOE_ACT_GELU_GLU) return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)) * u;
    if (A == MOE_ACT_GELU_TANH_GLU)
        return 0.5f * g * (1.0f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g))) * u;
    if (A == MOE_ACT_GPTOSS_GLU) {
        const float gc = g < limit ? g : limit;
        const float uc = u < -limit ? -limit : u > limit ? limit : u;
        return gc * moe__sigmoidf(alpha * gc) * (uc + 1.0f);
    }
    return g * moe__sigmoidf(g) * u;
}

template <int A> struct moe_act_tag {
    static constexpr int value = A;
};
/* Calls epilogue(tag) with tag::value the activation of p (GLU), or once with SiLU's tag (plain: unused). */
template <bool kGlu, class Epilogue> __device__ __forceinline__ void moe_gemm_by_act(moe_activation act, Epilogue epilogue) {
    if (!kGlu) return epilogue(moe_act_tag<MOE_ACT_SILU_GLU>());
    switch (act) {
    case MOE_ACT_GELU_GLU: return epilogue(moe_act_tag<MOE_ACT_GELU_GLU>());
    case MOE_ACT_GELU_TANH_GLU: return epilogue(moe_act_tag<MOE_ACT_GELU_TANH_GLU>());
    case MOE_ACT_GPTOSS_GLU: return epilogue(moe_act_tag<MOE_ACT_GPTOSS_GLU>());
    default: return epilogue(moe_act_tag<MOE_ACT_SILU_GLU>());
    }
}

struct moe_gemm_tile {
    int64_t row0, row_end, tile_n;
    int group;
};

/* The descriptor a persistent kernel's producer hands its consumers for a tile found without rows (none is, in the
 * order of the rows written): stages of zeros, nothing stored (row_end 0, group -1). */
__device__ __forceinline__ void moe_gemm_tile_none(moe_gemm_tile &t) {
    t.row0 = 0, t.row_end = 0, t.tile_n = 0, t.group = -1;
}

/* The descriptor after a persistent CTA's last tile: it ends the consumers. */
constexpr int kGemmTileEnd = -2;
__device__ __forceinline__ void moe_gemm_tile_end(moe_gemm_tile &t) {
    moe_gemm_tile_none(t);
    t.group = kGemmTileEnd;
}

/* A persistent wgmma tile's walk (the W8A8 tile's; docs/performance.md has it tried on the bf16 one). Each CTA starts
 * at tile blockIdx.x; with p.tile_counter set its producer then takes the next tile nobody has taken from counter[0]
 * (tiles past the first gridDim.x), so that the tiles start in the order's sequence whatever each one took: the 2-3
 * row tiles of an expert, which read the same B rows, stay neighbours in time and share them through L2, where a
 * fixed stride let the CTAs drift apart (bench/results/2026-12-07-w8a8-tile-counter-*). The producer's thread 0 asks
 * at a tile's start (moe_tile_ask), so that the answer's latency passes under the tile's K loop; its 128 threads
 * take the answer after the K loop (moe_tile_next: named barrier 8 of the producer warpgroup, the answer in one of
 * two shared words used in turns, so that a slow thread still reads its own). After its last tile thread 0 counts
 * the CTA done on counter[1] (moe_tile_done), and the CTA done last sets both back to zero: a launch leaves the pair
 * as it found it, and CUDA graphs replay it. Without counters each CTA walks every gridDim.x-th tile. */
__device__ __forceinline__ uint32_t moe_tile_ask(uint32_t *counter, int tid) {
    return counter && tid == 0 ? atomicAdd(&counter[0], 1u) + gridDim.x : 0u;
}
__device__ __forceinline__ int64_t moe_tile_next(const uint32_t *counter, int64_t tile, uint32_t asked,
                                                 uint32_t *slot, int tid) {
    if (!counter) return tile + gridDim.x;
    if (tid == 0) *slot = asked;
    asm volatile("bar.sync 8, 128;\n" ::: "memory"); /* the producer's 128 threads */
    return *slot;
}
__device__ __forceinline__ void moe_tile_done(uint32_t *counter) {
    if (!counter) return;
    __threadfence(); /* this CTA's last ask precedes its count */
    if (atomicAdd(&counter[1], 1u) == gridDim.x - 1) atomicExch(&counter[0], 0u), atomicExch(&counter[1], 0u);
}

/* Tile `index` of the 1-D tile order over m_tiles row tiles (bands of kGemmBand row tiles, all column tiles of a band
 * before the next band, so that the CTAs resident at once share A rows and B rows through L2): its first row and
 * column tile. In 32 bits: a launch has fewer than 2^31 tiles (a grid's limit, or checked where CTAs are
 * persistent), and a 64-bit division costs several times a 32-bit one at the start of every tile. */
__device__ __forceinline__ void moe_gemm_tile_at(const moe_gemm_params &p, int bm, int64_t m_tiles, int64_t index,
                                                 moe_gemm_tile &t) {
    const uint32_t per_band = kGemmBand * (uint32_t)p.n_tiles, i = (uint32_t)index;
    const uint32_t band = i / per_band, in_band = i - band * per_band;
    const uint32_t left = (uint32_t)m_tiles - band * kGemmBand, rows_in_band = left < kGemmBand ? left : kGemmBand;
    t.row0 = (int64_t)(band * kGemmBand + in_band % rows_in_band) * bm;
    t.tile_n = in_band / rows_in_band;
}
__device__ __forceinline__ void moe_gemm_tile_at(const moe_gemm_params &p, int bm, int64_t index, moe_gemm_tile &t) {
    moe_gemm_tile_at(p, bm, p.m_tiles, index, t);
}

/* The tile order a persistent kernel walks: the row tiles the permutation wrote (its rows, offsets[n_groups], over
 * bm), not the most there could be (p.m_tiles, what the host sized the grid for), and their tiles. Over p.m_tiles,
 * the empty row tiles lie in every band and the CTAs' strided walks met unequal numbers of real tiles: Mixtral-8x7B
 * at T = 128, the LARGE tile's GEMM 2 had 128 real of 160 tiles for 132 CTAs, so 22 CTAs took two while 26 took none
 * (Nsight Compute: the SMs active 51% of the kernel's time). */
struct moe_gemm_order {
    int64_t m_tiles, tiles;
};
__device__ __forceinline__ moe_gemm_order moe_gemm_order_of(const moe_gemm_params &p, int bm) {
    int64_t m = p.m_tiles;
    if (p.offsets) {
        const int64_t written = (p.offsets[p.n_groups] + bm - 1) / bm;
        m = written < m ? written : m;
    }
    return {m, m * p.n_tiles};
}

/* The whole tile `index` of the order over m_tiles row tiles (p.m_tiles: a CTA's blockIdx.x; moe_gemm_order: the
 * tiles a persistent CTA walks); false when it holds no row. */
__device__ __forceinline__ bool moe_gemm_locate(const moe_gemm_params &p, int bm, int64_t m_tiles, int64_t index,
                                                moe_gemm_tile &t) {
    moe_gemm_tile_at(p, bm, m_tiles, index, t);
    if (!p.offsets) {
        t.row_end = p.m;
        t.group = blockIdx.z;
        return t.row0 < t.row_end;
    }
    t.row_end = p.offsets[p.n_groups];
    if (t.row0 >= t.row_end) return false;
    int lo = 0, hi = p.n_groups - 1; /* the last group starting at or before row0: it is never empty */
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (p.offsets[mid] <= t.row0) lo = mid;
        else hi = mid - 1;
    }
    t.group = lo;
    return true;
}
__device__ __forceinline__ bool moe_gemm_locate(const moe_gemm_params &p, int bm, int64_t index, moe_gemm_tile &t) {
    return moe_gemm_locate(p, bm, p.m_tiles, index, t);
}

/* The group of routed row `row` (below offsets[n_groups]: the last group starting at or before it, never empty),
 * found by a whole warp: its 32 lanes probe 32 groups a round, so that E groups cost about log32(E) dependent loads
 * instead of log2(E) (the start of a short-lived decode CTA waits on that chain before its first weight load).
 * `first` is the lane's first probe, offsets[lane * ceil(n_groups / 32)] (or INT64_MAX past the groups), which a
 * caller may load before it knows the row. */
__device__ __forceinline__ int moe_gemm_group_warp(const moe_gemm_params &p, int64_t row, int64_t first, int lane) {
    int lo = 0, hi = p.n_groups - 1; /* invariant: offsets[lo] <= row (offsets[0] = 0) */
    int step = (hi + 32) >> 5;       /* ceil(n_groups / 32) */
    for (int64_t off = first;;) {
        const unsigned le = __ballot_sync(0xFFFFFFFFu, off <= row);
        lo += (31 - __clz(le)) * step;
        hi = min(hi, lo + step - 1);
        if (lo >= hi) return lo;
        step = (hi - lo + 32) >> 5;
        off = lo + lane * step <= hi ? p.offsets[lo + lane * step] : INT64_MAX;
    }
}
__device__ __forceinline__ int64_t moe_gemm_group_warp_first(const moe_gemm_params &p, int lane) {
    const int step = (p.n_groups + 31) >> 5;
    return lane * step < p.n_groups ? p.offsets[lane * step] : INT64_MAX;
}

/* moe_gemm_locate for routed GEMMs (p.offsets set), called by a whole warp (moe_gemm_group_warp). */
__device__ __forceinline__ bool moe_gemm_locate_warp(const moe_gemm_params &p, int bm, int64_t m_tiles, int64_t index,
                                                     moe_gemm_tile &t, int lane) {
    moe_gemm_tile_at(p, bm, m_tiles, index, t);
    const int64_t first = moe_gemm_group_warp_first(p, lane);
    t.row_end = p.offsets[p.n_groups];
    if (t.row0 >= t.row_end) return false;
    t.group = moe_gemm_group_warp(p, t.row0, first, lane);
    return true;
}
__device__ __forceinline__ bool moe_gemm_locate_warp(const moe_gemm_params &p, int bm, int64_t index,
                                                     moe_gemm_tile &t, int lane) {
    return moe_gemm_locate_warp(p, bm, p.m_tiles, index, t, lane);
}

/* Tile `index` of a persistent kernel's walk over routed row tiles in expert bands: a band holds one expert's row
 * tiles (at most kGemmBand of them; an expert with more has several bands), all its column tiles before the next
 * band. So the CTAs that read an expert's B rows at once are the tiles of that expert, which start together and
 * keep step, and L2 serves the later reads. Called by whole warps. The index lies in the band of row tile
 * index / n_tiles (bands cover whole row tiles, so band b's indices are [R_b n_tiles, R_{b+1} n_tiles)); the warp's
 * search finds that row tile's expert, whose tiles start at offsets[e] / bm (the permutation pads experts to bm).
 * The bf16 TMA tile walks this order: against the striped bands of moe_gemm_tile_at, the H200 ran the layer of
 * DeepSeek-V3 4-5.5% faster at T = 1024 and 2048, Mixtral-8x7B 3-9% and Qwen3-30B-A3B 2-4% at T = 1024 to 8192. The
 * W8A8 tile keeps the striped bands: this order measured level to 4% slower there (docs/performance.md, "Since
 * b0efb3c"). */
__device__ __forceinline__ bool moe_gemm_locate_expert_band(const moe_gemm_params &p, int bm,
                                                            const moe_gemm_order &order, int64_t index,
                                                            moe_gemm_tile &t) {
    const int lane = threadIdx.x & 31;
    const int64_t first = moe_gemm_group_warp_first(p, lane);
    const uint32_t i = (uint32_t)index, n_tiles = (uint32_t)p.n_tiles, u = i / n_tiles;
    t.row_end = p.offsets[p.n_groups];
    if ((int64_t)u * bm >= t.row_end) return false;
    t.group = moe_gemm_group_warp(p, (int64_t)u * bm, first, lane);
    const uint32_t start = (uint32_t)(p.offsets[t.group] / bm), written = (uint32_t)order.m_tiles;
    uint32_t end = (uint32_t)(p.offsets[t.group + 1] / bm);
    end = end < written ? end : written; /* the walk's row tiles (the host's bound holds them all) */
    static_assert((kGemmBand & (kGemmBand - 1)) == 0, "bands of a power of two row tiles");
    const uint32_t band = start + ((u - start) & ~(uint32_t)(kGemmBand - 1)), left = end - band;
    const uint32_t rows = left < (uint32_t)kGemmBand ? left : (uint32_t)kGemmBand, in_band = i - band * n_tiles;
    t.row0 = (int64_t)(band + in_band % rows) * bm;
    t.tile_n = in_band / rows;
    return true;
}

/* Tile `index` of a persistent kernel's walk (moe_gemm_order), called by whole warps (routed GEMMs: the warp's
 * search, 2 dependent loads for 256 groups where the binary search waits on 8 at the start of every tile). */
__device__ __forceinline__ bool moe_gemm_locate_order(const moe_gemm_params &p, int bm, const moe_gemm_order &order,
                                                      int64_t index, moe_gemm_tile &t) {
    return p.offsets ? moe_gemm_locate_warp(p, bm, order.m_tiles, index, t, threadIdx.x & 31)
                     : moe_gemm_locate(p, bm, order.m_tiles, index, t);
}

/* A row r of the tile's group, or NULL where it reads as zeros (past the end, padding). */
__device__ __forceinline__ const __nv_bfloat16 *moe_gemm_a_row(const moe_gemm_params &p, const moe_gemm_tile &t,
                                                               int64_t r) {
    if (r >= t.row_end) return nullptr;
    if (!p.offsets) return p.a + t.group * p.a_group_stride + r * p.k;
    if (!p.gather) return p.a + r * p.k;
    const int32_t src = p.row_src[r];
    return src >= 0 ? p.a + (int64_t)(src / p.top_k) * p.k : nullptr;
}

/* Whether a GEMM's consumers look for rows to skip (moe_gemm_rows_idle, a dependent load at each tile's start):
 * with 128-row tiles where most groups have one row tile, i.e. the row tiles written are at most twice the groups. */
__device__ __forceinline__ bool moe_gemm_lone_tiles(const moe_gemm_params &p, int bm, const moe_gemm_order &order) {
    return bm == 128 && order.m_tiles <= 2 * (int64_t)(p.offsets ? p.n_groups : 1);
}

/* Whether a consumer warpgroup may skip rows [r, r + 64) of a tile of bm rows: they hold no row to compute (past
 * the end, or padding: a group's padding rows follow its rows in the contiguous permutation and the shared
 * experts' plan, so row r tells), and the tile is its group's only row tile. Skipping the padding of a group's
 * last tile too made DeepSeek-V3 at T = 8192 (256 rows an expert) 13-15% slower on the H200: the CTAs walking a
 * group's tiles (neighbours in the tile order) read the same B rows at about the same time, so that L2 serves most
 * of them, and a shorter tile lets its CTA run ahead of the others (Nsight Compute: GEMM 1's DRAM reads 21.3 -> 41.1
 * GB, L2 hit rate 50% -> 31%; docs/performance.md, "Since b0efb3c"). */
__device__ __forceinline__ bool moe_gemm_rows_idle(const moe_gemm_params &p, const moe_gemm_tile &t, int bm,
                                                   int64_t r) {
    if (!p.offsets) return t.row_end <= bm && r >= t.row_end;
    return p.offsets[t.group + 1] - p.offsets[t.group] <= bm && p.row_src[r] < 0;
}

/* The row of group t.group's B matrix that B row s (0..bn-1) of the tile reads: for GLU the pairs (gate, up) of
 * columns tile_n * bn / 2 + s / 2. -1 past N. */
template <bool kGlu>
__device__ __forceinline__ int64_t moe_gemm_b_index(const moe_gemm_params &p, const moe_gemm_tile &t, int bn, int s) {
    if (kGlu) {
        const int64_t col = t.tile_n * (bn / 2) + (s >> 1);
        if (col >= p.n) return -1;
        return p.interleaved ? 2 * col + (s & 1) : (s & 1) * p.n + col;
    }
    const int64_t col = t.tile_n * bn + s;
    return col < p.n ? col : -1;
}

/* That row of a bf16 B, or NULL past N. */
template <bool kGlu>
__device__ __forceinline__ const __nv_bfloat16 *moe_gemm_b_row(const moe_gemm_params &p, const moe_gemm_tile &t,
                                                               int bn, int s) {
    const int64_t r = moe_gemm_b_index<kGlu>(p, t, bn, s);
    return r < 0 ? nullptr : (const __nv_bfloat16 *)p.b + t.group * p.b_group_stride + r * p.k;
}

/* The epilogue of one row: the per-row factors, then pairs of accumulators. */
struct moe_gemm_row_out {
    bool skip;  /* past the end, or a padding row of the routed GEMM 2 (never read) */
    float w;    /* GLU with the routed weight on the input: the row's weight */
    float g;    /* NVFP4 B: the group's global decode factor; else 1 */
};

/* NVFP4 B: the tile's group's global decode factor (moe_gemm_row_out.g); else 1. */
__device__ __forceinline__ float moe_gemm_global_factor(const moe_gemm_params &p, const moe_gemm_tile &t) {
    float f = 1.0f;
    if (p.bs.global) {
        const float g = p.bs.global[t.group];
        f = p.bs.global_encode ? 1.0f / g : g;
    }
    return f;
}

template <bool kGlu>
__device__ __forceinline__ moe_gemm_row_out moe_gemm_row(const moe_gemm_params &p, const moe_gemm_tile &t,
                                                         int64_t r) {
    moe_gemm_row_out o = {r >= t.row_end, 1.0f, moe_gemm_global_factor(p, t)};
    if (o.skip || !p.offsets) return o;
    const int32_t src = p.row_src[r];
    if (!kGlu && src < 0) o.skip = true;
    if (kGlu && p.row_weight) o.w = src >= 0 ? p.row_weight[src] : 0.0f;
    return o;
}

/* The FP4 wgmma tile's K order (grouped_gemm_fp4_rs.cu; moe_gemm_params.a_kperm, c_kperm): within each span of
 * 32, natural index n = 8q + 2j + h + 4e (q < 4; j, h, e < 2) lies at slot 16j + 8h + 2q + e. Spans stay in place. */
__host__ __device__ __forceinline__ int64_t moe_gemm_kperm_slot(int64_t n) {
    const int r = (int)(n & 7), q = (int)(n >> 3) & 3;
    return (n & ~(int64_t)31) + 16 * ((r >> 1) & 1) + 8 * (r & 1) + 2 * q + (r >> 2);
}

/* Accumulators (v0, v1) of row r at B rows s, s + 1 of the tile (s even): GLU gives A(gate, up) at column
 * tile_n * bn / 2 + s / 2 (stored at its slot in the K order above when kKperm: GEMM 2's A for the FP4 wgmma
 * tile); plain gives columns tile_n * bn + s, s + 1. */
template <bool kGlu, int A, bool kKperm = false>
__device__ __forceinline__ void moe_gemm_store(const moe_gemm_params &p, const moe_gemm_tile &t, int bn, int64_t r,
                                               const moe_gemm_row_out &ro, int s, float v0, float v1) {
    const float *bias = p.bias ? p.bias + t.group * p.bias_group_stride : nullptr;
    __nv_bfloat16 *c = p.c + (p.offsets ? 0 : t.group * p.c_group_stride);
    if (kGlu) {
        const int64_t col = t.tile_n * (bn / 2) + (s >> 1);
        if (col >= p.n) return;
        v0 *= ro.g, v1 *= ro.g;
        v0 *= ro.w, v1 *= ro.w;
        if (bias) {
            v0 += bias[p.interleaved ? 2 * col : col];
            v1 += bias[p.interleaved ? 2 * col + 1 : p.n + col];
        }
        const float h = moe_glu<A>(v0, v1, p.alpha, p.limit);
        const int64_t at = r * p.n + (kKperm ? moe_gemm_kperm_slot(col) : col);
        if (p.c32) p.c32[at] = h;
        else c[at] = __float2bfloat16_rn(h);
    } else {
        const int64_t col = t.tile_n * bn + s;
        if (col >= p.n) return;
        v0 *= ro.g, v1 *= ro.g;
        if (bias) v0 += bias[col], v1 += bias[col + 1];
        *reinterpret_cast<__nv_bfloat162 *>(c + r * p.n + col) = __floats2bfloat162_rn(v0, v1);
    }
}

/* moe_gemm_store in two parts, for a tile whose thread stores many rows at the same columns (the FP4 wgmma tile):
 * where the accumulators of B rows s, s + 1 go (moe_gemm_store's columns; `in` false past N) and their biases (b0, b1,
 * read only where there are any), found once; then each row with moe_gemm_store's arithmetic. moe_gemm_store is not
 * written as these two: that changed the other tiles' SASS (their bias loads moved), which are measured as they are. */
struct moe_gemm_cols {
    int64_t col;
    bool in;
    float b0, b1;
};
template <bool kGlu>
__device__ __forceinline__ moe_gemm_cols moe_gemm_cols_of(const moe_gemm_params &p, const moe_gemm_tile &t, int bn,
                                                          int s) {
    moe_gemm_cols k;
    k.col = kGlu ? t.tile_n * (bn / 2) + (s >> 1) : t.tile_n * bn + s;
    k.in = k.col < p.n;
    k.b0 = k.b1 = 0.0f;
    if (k.in && p.bias) {
        const float *bias = p.bias + t.group * p.bias_group_stride;
        if (kGlu) {
            k.b0 = bias[p.interleaved ? 2 * k.col : k.col];
            k.b1 = bias[p.interleaved ? 2 * k.col + 1 : p.n + k.col];
        } else {
            k.b0 = bias[k.col], k.b1 = bias[k.col + 1];
        }
    }
    return k;
}

/* Accumulators (v0, v1) of row r at the columns k (moe_gemm_cols_of): moe_gemm_store's arithmetic. */
template <bool kGlu, int A, bool kKperm = false>
__device__ __forceinline__ void moe_gemm_store_cols(const moe_gemm_params &p, const moe_gemm_tile &t,
                                                    const moe_gemm_cols &k, int64_t r, const moe_gemm_row_out &ro,
                                                    float v0, float v1) {
    if (!k.in) return;
    __nv_bfloat16 *c = p.c + (p.offsets ? 0 : t.group * p.c_group_stride);
    if (kGlu) {
        v0 *= ro.g, v1 *= ro.g;
        v0 *= ro.w, v1 *= ro.w;
        if (p.bias) v0 += k.b0, v1 += k.b1;
        const float h = moe_glu<A>(v0, v1, p.alpha, p.limit);
        const int64_t at = r * p.n + (kKperm ? moe_gemm_kperm_slot(k.col) : k.col);
        if (p.c32) p.c32[at] = h;
        else c[at] = __float2bfloat16_rn(h);
    } else {
        v0 *= ro.g, v1 *= ro.g;
        if (p.bias) v0 += k.b0, v1 += k.b1;
        *reinterpret_cast<__nv_bfloat162 *>(c + r * p.n + k.col) = __floats2bfloat162_rn(v0, v1);
    }
}

/* GLU over concatenated w13 with gate and up of columns col, col + 1 (col even) side by side: both outputs in one
 * bf16x2 store, the same arithmetic as moe_gemm_store. */
template <int A>
__device__ __forceinline__ void moe_gemm_store_glu2(const moe_gemm_params &p, const moe_gemm_tile &t, int64_t r,
                                                    const moe_gemm_row_out &ro, int64_t col, float g0, float u0,
                                                    float g1, float u1) {
    if (col >= p.n) return; /* n is a multiple of 8: col + 1 < n too */
    g0 *= ro.g, u0 *= ro.g, g1 *= ro.g, u1 *= ro.g;
    g0 *= ro.w, u0 *= ro.w, g1 *= ro.w, u1 *= ro.w;
    if (p.bias) {
        const float *bias = p.bias + t.group * p.bias_group_stride;
        g0 += bias[col], g1 += bias[col + 1], u0 += bias[p.n + col], u1 += bias[p.n + col + 1];
    }
    const float h0 = moe_glu<A>(g0, u0, p.alpha, p.limit), h1 = moe_glu<A>(g1, u1, p.alpha, p.limit);
    if (p.c32) {
        *reinterpret_cast<float2 *>(p.c32 + r * p.n + col) = make_float2(h0, h1);
        return;
    }
    __nv_bfloat16 *c = p.c + (p.offsets ? 0 : t.group * p.c_group_stride);
    *reinterpret_cast<__nv_bfloat162 *>(c + r * p.n + col) = __floats2bfloat162_rn(h0, h1);
}

/* The plain epilogue of a Hopper tile of 256 B rows (grouped_gemm_sm90_fp8.cu's GEMM 2) through shared memory. Each
 * warp writes its rows' outputs in bf16 (moe_gemm_store's arithmetic) into the staging buffer (out, or out_s as a
 * shared::cta address: kBM rows of kGemmStagedLd bytes), then its lanes start one bulk store (TMA) each, of a row's
 * run of columns, which completes while the warp goes on to its next tile. (The 4-byte stores from the registers it
 * replaces wrote 8 rows apart in each instruction; without any epilogue DeepSeek-V3's W8A8 GEMM 2 took a third less
 * time, docs/performance.md.) The buffer is written again once the warp's last stores have read it, and the CTA
 * must not end before they have (moe_bulk_wait_all). The stores go out under the L2 policy given (the caller's
 * moe_l2_evict_first: nothing reads the rows again before they would leave L2).
 * acc[h][4j + 2i + {0, 1}]: row r0 + 16 warp + lane / 4 + 8 i of the tile, columns h * 128 + c0 + 8j + 2 (lane % 4)
 * + {0, 1} (wgmma m64nN's layout, kWN = N). BM 128 (c0 = 0): lanes 0-15 store the 256 columns of the warp's 16 rows.
 * BM 64, where warp w of both consumers holds rows 16 w .. 16 w + 15 and consumer c the columns c0 = 64 c + [0, 64)
 * of each half: lane l stores row l % 16's columns c0 + 128 (l / 16) + [0, 64). Needs n % 8 == 0 and 16-byte
 * aligned output rows (whole 16-byte runs); the 16 bytes that pad a row put the fragment writes in 32 banks. */
constexpr int kGemmStagedLd = 2 * 256 + 16;
#ifdef MOE_WGMMA
template <int kBM, int kWN>
__device__ __forceinline__ void moe_gemm_store_staged(const moe_gemm_params &p, const moe_gemm_tile &t,
                                                      const float (&acc)[2][kWN / 2], unsigned char *out,
                                                      uint32_t out_s, int r0, int c0, int warp, int lane,
                                                      uint64_t policy) {
    constexpr int kRun = kBM == 128 ? 256 : 64; /* columns a bulk store */
    const float gf = moe_gemm_global_factor(p, t);
    const float *bias = p.bias ? p.bias + t.group * p.bias_group_stride : nullptr;
    const int arow = r0 + warp * 16 + (lane >> 2);
    moe_bulk_wait_read<0>();
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int j = 0; j < kWN / 8; j++) {
                const int s = h * 128 + c0 + j * 8 + 2 * (lane & 3);
                const int64_t col = t.tile_n * 256 + s;
                float v0 = acc[h][4 * j + 2 * i], v1 = acc[h][4 * j + 2 * i + 1];
                v0 *= gf, v1 *= gf;
                if (bias && col < p.n) v0 += bias[col], v1 += bias[col + 1];
                *reinterpret_cast<__nv_bfloat162 *>(out + (arow + 8 * i) * kGemmStagedLd + 2 * s) =
                    __floats2bfloat162_rn(v0, v1);
            }
    moe_fence_proxy_async(); /* the writes -> the bulk stores' reads */
    __syncwarp();
    if (lane < (kBM == 128 ? 16 : 32)) {
        const int lr = r0 + warp * 16 + (lane & 15), s0 = kBM == 128 ? 0 : c0 + (lane >> 4) * 128;
        const int64_t r = t.row0 + lr, col = t.tile_n * 256 + s0, cols = p.n - col < kRun ? p.n - col : kRun;
        if (cols > 0 && !moe_gemm_row<false>(p, t, r).skip) {
            __nv_bfloat16 *c = p.c + (p.offsets ? 0 : t.group * p.c_group_stride);
            moe_bulk_store_hint(c + r * p.n + col, out_s + lr * kGemmStagedLd + 2 * s0, (uint32_t)cols * 2, policy);
            moe_bulk_commit();
        }
    }
}
#endif

#endif /* MOE_CUDA_MOE_GEMM_TILE_CUH */
