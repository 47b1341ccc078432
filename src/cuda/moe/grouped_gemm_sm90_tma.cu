/* grouped_gemm_sm90_tma.cu — the wgmma tiles of the grouped GEMM on Hopper for bf16 weights (LARGE: 128 rows;
 * MEDIUM: 64 rows): warp-specialised, TMA for the weights, mbarriers between producer and consumers (sm_90a). Same
 * contract as grouped_gemm.cuh, same tile order, operand rows and epilogue (gemm_tile.cuh) as the other kernels.
 *
 * A CTA computes BM = 128 (or 64) rows x 256 B rows, K in steps of 64 bf16 (one 128-byte swizzle row) through 4
 * stages of shared memory (48 KB each; 64 rows: 5 stages of 40 KB), one CTA an SM. Three warpgroups:
 *  - the producer (warpgroup 0, its registers handed to the consumers): for each stage, once the consumers have
 *    released it (mbarrier `empty`), one thread starts two TMA boxes of 128 B rows x 64 (gate and up rows for
 *    GLU, or 256 consecutive rows) and all 128 threads cp.async the 128 A rows, whose addresses come from the
 *    permutation (gathered tokens, zeros for padding rows and the K tail); the stage is full (mbarrier `full`)
 *    when the TMA bytes have landed and every producer thread's copies completed;
 *  - two consumers (warpgroups 1, 2), 64 rows each (BM 64: the same 64 rows, each with half of each box's B rows):
 *    wait for a stage, issue its 8 wgmma.m64n128k16 (4 K steps of 16 x 2 halves of B; BM 64: m64n64k16), keep one
 *    stage's wgmma in flight and release the stage before it; then the epilogue of gemm_tile.cuh from the
 *    accumulators (128 f32 a thread; BM 64: 64). With BM 128, a consumer whose 64 rows are all padding in an
 *    expert's only row tile (64 rows or fewer: moe_gemm_rows_idle) issues no wgmma and stores nothing: the other
 *    consumer has the tensor cores alone, and the tile costs about half.
 * The CTAs are persistent (one an SM, walking the tiles of the rows written, moe_gemm_order, with a stride of the
 * grid; routed row tiles in expert bands, moe_gemm_locate_expert_band), so the producer loads the next tile's first
 * stages while the consumers store the last one's outputs; it also finds each tile and passes its descriptor to the
 * consumers beside the tile's first stage.
 * TMA zero-fills B past N and past K, so the K tail and the last column tile need no special case. For GLU over
 * concatenated w13 the tile's 256 B rows are 128 gate rows then the 128 matching up rows, so the accumulator
 * halves pair register by register; for interleaved w13 they are 256 consecutive rows (pairs side by side). With
 * 64 rows a consumer takes rows [64 c, 64 c + 64) of each box, so a gate row and its up row stay in one consumer.
 * The 64-row tile halves the padding of experts of about 64 rows and less, where the weights' bytes, not the
 * tensor cores, should bound the GEMM. */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdlib.h>

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/sm90.cuh"
#include "cuda/moe/gemm_tile.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "moe/layer.h"

namespace {

constexpr int kBN = 256, kBK = 64, kThreads = 384;
constexpr int kRow = kBK * 2;       /* bytes a row a stage: one swizzle atom */
constexpr int kStageB = kBN * kRow; /* 32 KB */
constexpr int kBoxRows = 128;       /* B rows a TMA box */
/* The tile of BM rows: its stages, and the B rows of a box each consumer multiplies (all, or its half). */
template <int BM> struct tma_tile {
    static constexpr int stage_a = BM * kRow, stages = BM == 128 ? 4 : 5, wn = BM == 128 ? 128 : 64;
    /* + barriers and the tiles' descriptors (a moe_gemm_tile, 32 bytes, a stage) */
    static constexpr size_t smem = (size_t)stages * (stage_a + kStageB) + 2 * stages * 8 + stages * 32 + 1024;
};
static_assert(MOE_LAYER_MAX_TILE_M == 128, "the LARGE tile is the permutation's largest");
static_assert(tma_tile<64>::wn == 64 && tma_tile<128>::wn == 128, "BM 64: each consumer half of a box's B rows");

/* Tile `index` of a CTA's walk: routed GEMMs in expert bands (gemm_tile.cuh), dense ones as the other tiles. */
template <int kBM>
__device__ __forceinline__ bool locate(const moe_gemm_params &p, const moe_gemm_order &order, int64_t index,
                                       moe_gemm_tile &t) {
    return p.offsets ? moe_gemm_locate_expert_band(p, kBM, order, index, t)
                     : moe_gemm_locate_order(p, kBM, order, index, t);
}

template <int kBM, bool kGlu>
__global__ void __launch_bounds__(kThreads, 1) gemm_sm90_tma_kernel(const moe_gemm_params p,
                                                                    const __grid_constant__ CUtensorMap tmap_b) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#ifdef MOE_WGMMA
    constexpr int kStages = tma_tile<kBM>::stages, kStageA = tma_tile<kBM>::stage_a, kWN = tma_tile<kBM>::wn;
    extern __shared__ unsigned char smem_raw[];
    const uint32_t raw = (uint32_t)__cvta_generic_to_shared(smem_raw), base = (raw + 1023u) & ~1023u;
    /* A stages, B stages, full[kStages], empty[kStages], the tile of each stage */
    unsigned char *smem = smem_raw + (base - raw);
    const uint32_t a_smem = base, b_smem = base + kStages * kStageA, bars = b_smem + kStages * kStageB;
    moe_gemm_tile *stage_tile = reinterpret_cast<moe_gemm_tile *>(smem + (bars - base) + 2 * kStages * 8);
    static_assert(sizeof(moe_gemm_tile) <= 32, "a tile's descriptor in its slot");
    const moe_pipe pipe = {bars, kStages};
    auto full = [&](int s) { return pipe.full(s); };
    auto empty = [&](int s) { return pipe.empty(s); };
    const int tid = threadIdx.x, wg = tid >> 7;
    /* full: 128 cp.async arrivals + the TMA thread's expect_tx arrival; empty: lane 0 of the consumers' 8 warps */
    pipe.init(128 + 1, 2 * 4);
    const int k_tiles = (p.k + kBK - 1) / kBK;
    const moe_gemm_order order = moe_gemm_order_of(p, kBM); /* the tiles with rows */
    /* Both roles walk the same tiles (index blockIdx.x + i gridDim.x of the order's, moe_gemm_order: the row tiles
     * the permutation wrote) and count K steps over all of them (it): stage it % kStages, in its (it / kStages)-th
     * use. The producer finds each tile (the expert's lookup: dependent loads) and hands it to the consumers with
     * the tile's first stage, so that a consumer's next tile waits on no global load after its epilogue. */

    if (wg == 0) { /* producer */
        moe_regs_dec<56>();
        const int kc = tid & 7; /* chunk kc of rows tid / 8 + 16 i */
        uint32_t it = 0;
        for (int64_t tile = blockIdx.x; tile < order.tiles; tile += gridDim.x) {
            moe_gemm_tile t;
            if (!locate<kBM>(p, order, tile, t)) moe_gemm_tile_none(t);
            const __nv_bfloat16 *a_row[kBM / 16];
#pragma unroll
            for (int i = 0; i < kBM / 16; i++) a_row[i] = moe_gemm_a_row(p, t, t.row0 + (tid >> 3) + 16 * i);
            /* B rows of the two boxes in group t.group's (rows, k) matrix */
            int b0, b1;
            if (kGlu && !p.interleaved) b0 = (int)t.tile_n * kBoxRows, b1 = p.n + b0;
            else b0 = (int)t.tile_n * kBN, b1 = b0 + kBoxRows;
            for (int kt = 0; kt < k_tiles; kt++, it++) {
                const int s = it % kStages;
                moe_mbar_wait(empty(s), ((it / kStages) & 1) ^ 1);
                if (tid == 0) {
                    if (kt == 0) stage_tile[s] = t; /* seen by the consumers through the arrival below */
                    moe_mbar_arrive_expect_tx(full(s), kStageB);
                    moe_tma_load_3d(b_smem + s * kStageB, &tmap_b, full(s), kt * kBK, b0, t.group);
                    moe_tma_load_3d(b_smem + s * kStageB + kBoxRows * kRow, &tmap_b, full(s), kt * kBK, b1, t.group);
                }
                const int k0 = kt * kBK + kc * 8;
                const bool in_k = k0 < p.k; /* k is a multiple of 8: a chunk is all in or all out */
                unsigned char *a_st = smem + s * kStageA;
#pragma unroll
                for (int i = 0; i < kBM / 16; i++) {
                    const int r = (tid >> 3) + 16 * i;
                    moe_cp_async16(a_st + r * kRow + ((kc ^ (r & 7)) << 4), a_row[i] && in_k ? a_row[i] + k0 : p.a,
                                   a_row[i] && in_k ? 16 : 0);
                }
                moe_mbar_arrive_cp_async(full(s));
            }
        }
        moe_cp_async_wait<0>();
        return;
    }

    /* consumers */
    moe_regs_inc<224>();
    const int cw = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31;
    uint32_t it = 0;
    const bool lone = moe_gemm_lone_tiles(p, kBM, order);
    for (int64_t tile = blockIdx.x; tile < order.tiles; tile += gridDim.x) {
        moe_mbar_wait(full(it % kStages), (it / kStages) & 1); /* the tile's first stage, and its descriptor */
        const moe_gemm_tile t = stage_tile[it % kStages];
        if (t.group < 0 || (lone && moe_gemm_rows_idle(p, t, kBM, t.row0 + cw * 64))) {
            /* this consumer's 64 rows are all padding in an expert's only row tile (or the tile has none): it
             * releases each stage unread, once full (so that its arrivals stay one a use of the stage), and stores
             * nothing */
            for (int kt = 0; kt < k_tiles; kt++, it++) {
                moe_mbar_wait(full(it % kStages), (it / kStages) & 1);
                if (lane == 0) moe_mbar_arrive(empty(it % kStages));
            }
            continue;
        }
        float acc[2][kWN / 2];
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < kWN / 2; i++) acc[h][i] = 0.0f;
        for (int kt = 0; kt < k_tiles; kt++, it++) {
            const int s = it % kStages;
            moe_mbar_wait(full(s), (it / kStages) & 1);
            moe_fence_proxy_async(); /* the producers' cp.async writes -> this warpgroup's wgmma reads */
            /* BM 128: this consumer's 64 A rows, all of each box; BM 64: all A rows, its half of each box */
            const uint32_t a_addr = a_smem + s * kStageA + (kBM == 128 ? cw * 64 * kRow : 0);
            const uint32_t b_addr = b_smem + s * kStageB + (kBM == 128 ? 0 : cw * 64 * kRow);
            moe_acc_fence<2>(acc);
            moe_wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kBK / 16; kk++) { /* 16 bf16 = 32 bytes further into the swizzled rows */
                const uint64_t da = moe_smem_desc(a_addr + kk * 32);
#pragma unroll
                for (int h = 0; h < 2; h++)
                    moe_wgmma_bf16<kWN>(acc[h], da, moe_smem_desc(b_addr + h * kBoxRows * kRow + kk * 32));
            }
            moe_wgmma_commit();
            moe_acc_fence<2>(acc);
            moe_wgmma_wait<1>(); /* step it - 1's wgmma is done: its stage goes back to the producer */
            moe_acc_fence<2>(acc);
            if (kt > 0 && lane == 0) moe_mbar_arrive(empty((it - 1) % kStages));
        }
        moe_wgmma_wait<0>();
        moe_acc_fence<2>(acc);
        if (lane == 0) moe_mbar_arrive(empty((it - 1) % kStages)); /* the tile's last stage */

        /* epilogue: the accumulator layout of wgmma m64nN: registers 4j + {0, 1} hold row 16 warp + lane / 4,
         * columns 8j + 2 (lane % 4) + {0, 1}; 4j + {2, 3} the row 8 below. Half h holds B rows h * 128 + c0 +
         * column (c0: 64 cw for BM 64, else 0). Meanwhile the producer fills the stages for the next tile. */
        const int r0 = kBM == 128 ? cw * 64 : 0, c0 = kBM == 128 ? 0 : cw * 64;
        moe_gemm_by_act<kGlu>(p.act, [&](auto act) {
            constexpr int A = decltype(act)::value;
            auto rows = [&](auto store) { /* store(r, ro, c, q): columns c, c + 1 of row r, registers q, q + 1 */
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int64_t r = t.row0 + r0 + warp * 16 + (lane >> 2) + 8 * i;
                    const moe_gemm_row_out ro = moe_gemm_row<kGlu>(p, t, r);
                    if (ro.skip) continue;
#pragma unroll
                    for (int j = 0; j < kWN / 8; j++) store(r, ro, c0 + j * 8 + 2 * (lane & 3), 4 * j + 2 * i);
                }
            };
            if (kGlu && !p.interleaved) /* gate of tile columns c, c + 1 in half 0, their up in half 1 */
                rows([&](int64_t r, const moe_gemm_row_out &ro, int c, int q) {
                    moe_gemm_store_glu2<A>(p, t, r, ro, t.tile_n * kBoxRows + c, acc[0][q], acc[1][q], acc[0][q + 1],
                                           acc[1][q + 1]);
                });
            else
                rows([&](int64_t r, const moe_gemm_row_out &ro, int c, int q) {
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        moe_gemm_store<kGlu, A>(p, t, kBN, r, ro, h * kBoxRows + c, acc[h][q], acc[h][q + 1]);
                });
        });
    }
#endif
}

/* The weights as a 3-D tensor (k, rows, groups) of bf16, boxes of 64 x 128 x 1 in the 128-byte swizzle. */
bool encode_b(const moe_gemm_params &p, bool glu, CUtensorMap *m) {
    return moe__cuda_tmap_3d(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, p.b, p.k, glu ? 2 * (int64_t)p.n : p.n,
                             p.n_groups, p.b_group_stride, kBK, kBoxRows);
}

template <int kBM, bool kGlu>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, const CUtensorMap &m, int64_t m_tiles, int groups,
                  cudaStream_t st) {
    constexpr size_t kSmem = tma_tile<kBM>::smem;
    moe_gemm_params q = p;
    q.m_tiles = m_tiles, q.n_tiles = (p.n + (kGlu ? kBN / 2 : kBN) - 1) / (kGlu ? kBN / 2 : kBN);
    /* persistent: one CTA an SM (the shared memory allows no more), split over the dense groups */
    const int64_t tiles = q.m_tiles * q.n_tiles;
    if (tiles > INT32_MAX) /* the tile order's 32-bit arithmetic (gemm_tile.cuh) */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: %lld tiles exceed 2^31", (long long)tiles);
    const int64_t per_group = ctx->cuda.sm_count / groups > 0 ? ctx->cuda.sm_count / groups : 1;
    const dim3 grid((unsigned)(tiles < per_group ? tiles : per_group), 1, (unsigned)groups);
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_sm90_tma_kernel<kBM, kGlu>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmem));
    MOE_CUDA_TRY(ctx, moe_launch(false, gemm_sm90_tma_kernel<kBM, kGlu>, grid, kThreads, kSmem, st, q, m));
    return MOE_OK;
}

/* cuTensorMapEncodeTiled from the driver, found once through the runtime (the build links no libcuda). */
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] { /* a thread-safe one-time lookup */
        cudaDriverEntryPointQueryResult q;
        void *f = nullptr;
        const bool ok = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) ==
                            cudaSuccess &&
                        q == cudaDriverEntryPointSuccess;
        cudaGetLastError();
        return ok ? (PFN_cuTensorMapEncodeTiled_v12000)f : nullptr;
    }();
    return fn;
}

} // namespace

bool moe__cuda_tmap_3d(CUtensorMap *m, CUtensorMapDataType type, int elem_bytes, const void *base, int64_t d0,
                       int64_t d1, int64_t d2, int64_t stride2, int box0, int box1) {
    PFN_cuTensorMapEncodeTiled_v12000 fn = encode_fn();
    if (!fn) return false;
    const cuuint64_t dims[3] = {(cuuint64_t)d0, (cuuint64_t)d1, (cuuint64_t)d2};
    const cuuint64_t strides[2] = {(cuuint64_t)(d0 * elem_bytes), (cuuint64_t)(stride2 * elem_bytes)};
    const cuuint32_t box[3] = {(cuuint32_t)box0, (cuuint32_t)box1, 1}, elem[3] = {1, 1, 1};
    return fn(m, type, 3, const_cast<void *>(base), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) ==
           CUDA_SUCCESS;
}

bool moe__cuda_grouped_gemm_sm90_tma(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int tile_m, int64_t m_tiles,
                                     int groups, cudaStream_t stream, moe_status *st) {
    if (p.b_fmt != MOE_B_BF16 || getenv("MOE_GEMM_SM90_CPASYNC")) return false;
    if ((uintptr_t)p.b % 16 || p.k % 8 || p.b_group_stride % 8 || p.n_groups < 1) return false; /* TMA's alignment */
    CUtensorMap m;
    if (!encode_b(p, glu, &m)) return false;
    if (tile_m == 64)
        *st = glu ? launch<64, true>(ctx, p, m, m_tiles, groups, stream)
                  : launch<64, false>(ctx, p, m, m_tiles, groups, stream);
    else
        *st = glu ? launch<128, true>(ctx, p, m, m_tiles, groups, stream)
                  : launch<128, false>(ctx, p, m, m_tiles, groups, stream);
    return true;
}
