/* grouped_gemm.cuh — the layer's grouped BF16 GEMM: C[r] = epilogue(A[row(r)] . B[group(r)]^T), one weight
 * matrix per group (expert), f32 accumulation on the tensor cores (mma.sync m16n8k16, sm_80 and later).
 *
 * Rows come in one of two ways:
 *  - routed: the contiguous permutation (offsets (G + 1), multiples of the tile's rows) gives each row tile its
 *    group, a group's rows first and its padding rows (row_src -1) after them; with `gather`, A row r is token
 *    row_src[r] / top_k of A (x) (zeros for padding), without, A row r is row r (the activations GEMM1 wrote in
 *    permuted order); the outputs of padding rows are undefined (GEMM 1 may leave them unwritten: GEMM 2 reads
 *    them, but its rows never mix and it stores none of them);
 *  - dense: grid.z is the group (a shared expert), every row 0..m-1 belongs to it.
 * GLU (GEMM1): B is w13 (2N, K); each output column n pairs gate row and up row of w13 (concatenated or
 * interleaved), and the epilogue gives act(gate, up) (after * row weight, + bias). Plain (GEMM2): B is (N, K),
 * C = acc + bias. C is bf16 (rows, N); A bf16 with K a multiple of 8; B bf16, or quantised codes (FP8 E4M3,
 * FP4 E2M1) with block scales that the kernel turns into bf16 in shared memory (K a multiple of 32). */
#ifndef MOE_CUDA_MOE_GROUPED_GEMM_CUH
#define MOE_CUDA_MOE_GROUPED_GEMM_CUH

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/internal.h"

/* How B is stored. The quantised kinds are converted tile by tile to bf16 as round(code * block scale), which is
 * exact for E8M0 scales and for E2M1 codes under E4M3 scales; an f32 scale rounds each weight to bf16 once. */
enum moe_gemm_bfmt { MOE_B_BF16, MOE_B_E4M3_F32, MOE_B_E4M3_E8M0, MOE_B_E2M1_E8M0, MOE_B_E2M1_E4M3 };

/* The block scales of quantised B: scale of element (r, c) of group g's (rows, k) matrix at
 * scale + g * group_stride + (r >> row_shift) * cols + (c >> col_shift) (in scale elements: f32 or one byte). */
struct moe_gemm_bscale {
    const void *scale;
    int64_t group_stride;
    int cols;
    int row_shift, col_shift;
    const float *global; /* NVFP4: (groups) the per-group f32 global scale, applied to the accumulators; or NULL */
    bool global_encode;  /* global holds the encode convention: the factor is 1 / global */
};

struct moe_gemm_params {
    const __nv_bfloat16 *a;  /* (rows of A, k) */
    int64_t a_group_stride;  /* dense: elements between groups' A */
    const int32_t *row_src;  /* routed: (rows) flat (token, slot) index, -1 for padding */
    int top_k;
    bool gather;             /* routed: A row = row_src / top_k */
    uint32_t top_k_magic;    /* set by moe_decode_grid: row_src / top_k as a multiply (moe_decode_a_row) */
    int top_k_shift;
    const int64_t *offsets;  /* routed: (n_groups + 1); NULL: dense */
    int n_groups;
    int64_t m;               /* dense: rows per group */
    const void *b;           /* group g at b + g * b_group_stride elements (b_fmt) */
    int64_t b_group_stride;
    moe_gemm_bfmt b_fmt;
    moe_gemm_bscale bs;      /* quantised b_fmt */
    int n, k;                /* output columns, reduction length */
    const float *bias;       /* group g: (2n) GLU or (n) plain, at bias + g * bias_group_stride; or NULL */
    int64_t bias_group_stride;
    const float *row_weight; /* GLU, routed: scale row r by row_weight[row_src[r]] before the bias; or NULL */
    bool interleaved;        /* GLU: w13 rows 2i, 2i+1 are gate and up of column i (else i and n + i) */
    moe_activation act;
    float alpha, limit;
    __nv_bfloat16 *c;        /* (rows, n) */
    float *c32;              /* GLU: h written in f32 here instead of c (W8A8's bf16 path quantises it next); NULL */
    int64_t c_group_stride;  /* dense */
    int64_t m_tiles, n_tiles; /* set by moe__cuda_grouped_gemm */
    bool a_kperm;            /* A's K in the FP4 wgmma tile's order (moe_gemm_kperm_slot), which that tile needs */
    bool c_kperm;            /* GLU: h's columns written in that order (for GEMM 2 on that tile); that tile only */
    bool early;              /* GLU on a decode kernel: a programmatic dependent launch of the kernel before it, which
                              * it waits for before reading anything (moe_decode_start: a short step's routing) */
    uint32_t *tile_counter;  /* the persistent W8A8 tile: two counters in device memory, zero before the launch and
                              * again after it, that the CTAs take their tiles from (gemm_tile.cuh, moe_tile_ask);
                              * NULL: each CTA walks every gridDim.x-th tile. One launch at a time may use a pair */
};

/* Calls launch(tag) with tag::value the compiled instance of B's storage f (a switch written once for both GEMM
 * files); an unknown f is an error. */
template <int F> struct moe_bfmt_tag {
    static constexpr int value = F;
};
template <class Launch> moe_status moe_gemm_by_bfmt(moe_ctx *ctx, moe_gemm_bfmt f, Launch launch) {
    switch (f) {
    case MOE_B_BF16: return launch(moe_bfmt_tag<MOE_B_BF16>());
    case MOE_B_E4M3_F32: return launch(moe_bfmt_tag<MOE_B_E4M3_F32>());
    case MOE_B_E4M3_E8M0: return launch(moe_bfmt_tag<MOE_B_E4M3_E8M0>());
    case MOE_B_E2M1_E8M0: return launch(moe_bfmt_tag<MOE_B_E2M1_E8M0>());
    case MOE_B_E2M1_E4M3: return launch(moe_bfmt_tag<MOE_B_E2M1_E4M3>());
    }
    return moe__error(ctx, MOE_ERR_UNSUPPORTED, "grouped GEMM: unknown weight storage %d", (int)f);
}

/* Tile shapes, chosen on the host from the rows an expert gets on average:
 *  SMALL  (16 rows): decode; CTAs of 32 weight rows streaming K in steps of 128 through 4 stages, the K step
 *                    split over 4 warps: many small CTAs keep every SM's loads in flight on the touched experts;
 *  MEDIUM32 (32 rows): 32 x 128 tiles, 8 warps of 16 x 32, K steps of 64 through 4 stages: experts of about 16
 *                    rows, where 64-row tiles would compute (and stage) half or more of padding;
 *  MEDIUM (64 rows): on Hopper with bf16 weights the wgmma tile of LARGE at 64 x 256, with FP4 weights and A in
 *                    its K order the RS wgmma tile (grouped_gemm_fp4_rs.cu); else 64 x 128 tiles, 8 warps of
 *                    32 x 32, K steps of 64 through 4 stages;
 *  LARGE (128 rows): prefill; on Hopper wgmma (grouped_gemm_sm90.cu), elsewhere 128 x 128 tiles, 8 warps of
 *                    64 x 32, K steps of 32 through 4 stages.
 * (Measured on the H200 against 128 x 256 tiles of 64 x 64 warps, which need 226 registers a thread and run one
 * CTA an SM: those were 1.3-1.6x slower; see docs/performance.md.) */
enum moe_gemm_shape { MOE_GEMM_SMALL, MOE_GEMM_MEDIUM32, MOE_GEMM_MEDIUM, MOE_GEMM_LARGE };

/* Rows of a tile of that shape: the permutation's tile_m. */
int moe__gemm_tile_m(moe_gemm_shape shape);

/* m_tiles: tiles on grid.x (routed: an upper bound; tiles past offsets[G] exit); groups: grid.z (dense) or 1.
 * Quantised B: SMALL takes the FP4 decode kernel where it fits (FP4 weights), else builds B fragments in
 * registers; MEDIUM takes the FP4 wgmma tile on Hopper where it fits (FP4 weights, converted in registers); the
 * other MEDIUM, MEDIUM32 and LARGE tiles convert B in shared memory (bquant.cuh). MOE_GEMM_NO_FP4_DECODE in the
 * environment keeps FP4 weights off the decode kernel (the tests use it to run the register tile). */
moe_status moe__cuda_grouped_gemm(moe_ctx *ctx, const moe_gemm_params &p, bool glu, moe_gemm_shape shape,
                                  int64_t m_tiles, int groups, cudaStream_t stream);

/* The LARGE shape on Hopper (grouped_gemm_sm90.cu): wgmma, 128 x 128 tiles. Usable when the GPU is sm_90 and
 * the build holds sm_90a code, unless the environment sets MOE_GEMM_PORTABLE (the tests use it to run the
 * portable kernels on Hopper); moe__cuda_grouped_gemm picks it then. */
bool moe__cuda_gemm_sm90_usable(moe_ctx *ctx);
moe_status moe__cuda_grouped_gemm_sm90(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles, int groups,
                                       cudaStream_t stream);

/* The LARGE (tile_m 128) and MEDIUM (64) shapes on Hopper for bf16 weights (grouped_gemm_sm90_tma.cu):
 * warp-specialised, TMA, tile_m x 256 tiles. Runs and returns true (status in *st) when B is bf16 and TMA can
 * address it (16-byte aligned rows and groups) and the environment does not set MOE_GEMM_SM90_CPASYNC (which keeps
 * the cp.async wgmma tile for LARGE and the mma.sync tile for MEDIUM, to compare); false when it did not run.
 * Called only where moe__cuda_gemm_sm90_usable. */
bool moe__cuda_grouped_gemm_sm90_tma(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int tile_m, int64_t m_tiles,
                                     int groups, cudaStream_t stream, moe_status *st);

/* A TMA descriptor of a 3-D tensor (d0 innermost, contiguous rows of d0 elements, d2 matrices stride2 elements
 * apart) read in boxes of box0 x box1 x 1 in the 128-byte swizzle (grouped_gemm_sm90_tma.cu); false when the
 * driver has no encoder or refuses the shape. */
bool moe__cuda_tmap_3d(CUtensorMap *m, CUtensorMapDataType type, int elem_bytes, const void *base, int64_t d0,
                       int64_t d1, int64_t d2, int64_t stride2, int box0, int box1);

/* W8A8 (grouped_gemm_sm90_fp8.cu): the routed GEMMs on the FP8 tensor cores. A is FP8 E4M3 with 1x128 f32 scales,
 * B FP8 E4M3 in 128x128 blocks (p.b_fmt E4M3_F32 or E4M3_E8M0, p.bs as for the other kernels); each 128-wide K
 * block's products are summed on the tensor cores, then added to f32 accumulators times a_scale * b_scale (the
 * promotion DeepGEMM does). GEMM 1 (GLU) writes h quantised the same way, for GEMM 2 to read. p gives rows,
 * groups, B, bias, row weight, activation and (GEMM 2) the bf16 C; p.a is unused. */
struct moe_gemm_fp8 {
    const uint8_t *a;     /* codes: with p.gather x (tokens, k), else the rows (rows, k) */
    const float *a_scale; /* with p.gather (tokens, ceil(k / 128)), row-major; else (ceil(k / 128), a_scale_ld) */
    int64_t a_scale_ld;
    uint8_t *c;           /* GLU: h codes (rows, n) */
    float *c_scale;       /* GLU: (ceil(n / 128), c_scale_ld): the scales of a row tile lie side by side */
    int64_t c_scale_ld;
    moe_scale_rule rule;  /* how h's scales are chosen (F32 or a UE8M0 rule), and their amax floor */
    float amax_floor;
    int64_t a_rows;       /* without p.gather: rows of a, at least every tile's (GEMM 2's TMA box); else unread */
};

/* Whether the W8A8 kernel takes p (GLU or plain): sm_90a code in the build and the GPU, B in 128x128 FP8 blocks
 * that TMA can address, K a multiple of 16, for concatenated GLU n a multiple of 128 (so that a tile's gate
 * and up rows each lie in one block row), for plain n a multiple of 8 (its outputs leave by bulk stores of whole
 * 16-byte runs, from a 16-byte aligned p.c: checked when it runs). */
bool moe__cuda_gemm_fp8_fits(moe_ctx *ctx, const moe_gemm_params &p, bool glu);
/* Runs it (m_tiles of tile_m = 128 rows, LARGE, or 64, MEDIUM); call only where moe__cuda_gemm_fp8_fits. GEMM 2
 * (rows not gathered) reads A by TMA where TMA can address it (f.a 16-byte aligned, f.a_rows rows), unless the
 * environment sets MOE_GEMM_FP8_A_CPASYNC (cp.async, as GEMM 1 reads its gathered rows; for tests). The tiles come
 * from p.tile_counter where it is set, unless the environment sets MOE_GEMM_STATIC_WALK (for tests). */
moe_status moe__cuda_grouped_gemm_fp8(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                      int tile_m, int64_t m_tiles, cudaStream_t stream);

/* W8A8 at decode (grouped_gemm_fp8_decode.cu): the same GEMMs over 16-row tiles (the SMALL shape's permutation),
 * streaming the weights through mma.sync (E4M3 codes as f16; sm_89+). A as for the W8A8 tile; GEMM 1 (GLU) writes h
 * in f32 to p.c32 (every row of every tile, padding too), for moe__cuda_act_quant; GEMM 2 writes bf16 p.c. Runs
 * where moe__cuda_gemm_fp8_fits. */
moe_status moe__cuda_grouped_gemm_fp8_decode(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                             int64_t m_tiles, cudaStream_t stream);

/* The W8A8 decode GEMMs on wgmma with the weights as A in registers (grouped_gemm_rs_decode.cu, Hopper): A and h as
 * for moe__cuda_grouped_gemm_fp8_decode, with B in MXFP4 or NVFP4 (p.b_fmt E2M1_E8M0, E2M1_E4M3: W4A8, the codes
 * turned into E4M3 in registers; NVFP4's global as the epilogue's) or in FP8 128x128 blocks (E4M3_F32, E4M3_E8M0:
 * ldmatrix hands wgmma the codes as they are). Fits: sm_90a code and GPU, routed rows, K a multiple of 32 (FP4, a
 * scale a row and 32 or 16 codes) or 16 (FP8), 16-byte aligned codes, and opted in until each has run on a GPU:
 * MOE_GEMM_W4A8_DECODE=1 (MXFP4, NVFP4), MOE_GEMM_W8A8_RS_DECODE=1 (FP8) in the environment (without, the layer runs
 * W4A8 on the bf16 path and W8A8 on the mma.sync decode kernel); MOE_GEMM_RS_KSPLIT (1, 2, 4, wave) overrides the
 * K split, for tuning. FP8 also asks what moe__cuda_gemm_fp8_fits does of a GLU (n a multiple of 128 for
 * concatenated w13: a warp's gate and up rows each in one block row). max_rows: the most rows an expert can hold
 * (the tokens; times top_k for a hash router, whose table rows may name an expert twice). */
bool moe__cuda_gemm_rs_decode_fits(moe_ctx *ctx, const moe_gemm_params &p);
moe_status moe__cuda_grouped_gemm_rs_decode(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                            int64_t m_tiles, int64_t max_rows, cudaStream_t stream);

/* BF16 weights at decode (grouped_gemm_bf16_decode.cu): the routed GEMMs over 16-row tiles, streaming the weights
 * through mma.sync m16n8k16 bf16 (sm_80+) with the K of a column tile split over warps; routed, or dense with a group
 * per grid.z (groups). moe__cuda_grouped_gemm takes it for the SMALL shape where it fits: K a multiple of 8, 16-byte
 * aligned weights and A (and each dense group's A). */
bool moe__cuda_gemm_bf16_decode_fits(const moe_gemm_params &p);
moe_status moe__cuda_grouped_gemm_bf16_decode(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles,
                                              int groups, cudaStream_t stream);

/* FP4 weights at decode (grouped_gemm_fp4_decode.cu): the routed GEMMs over 16-row tiles with MXFP4 or NVFP4 B and
 * bf16 A, streaming the codes through mma.sync m16n8k16 bf16 (sm_80+), each weight bf16(code * block scale) as in
 * the other tiles. moe__cuda_grouped_gemm takes it for the SMALL shape where it fits: routed rows, K a multiple of
 * 32, per-row block scales (NVFP4's 2-byte aligned), 16-byte aligned codes and A. */
bool moe__cuda_gemm_fp4_decode_fits(const moe_gemm_params &p);
moe_status moe__cuda_grouped_gemm_fp4_decode(moe_ctx *ctx, const moe_gemm_params &p, bool glu, int64_t m_tiles,
                                             cudaStream_t stream);

/* FP4 weights at 64- and 128-row tiles on Hopper (grouped_gemm_fp4_rs.cu): the MEDIUM and LARGE shapes with MXFP4
 * or NVFP4 B and bf16 A on wgmma, the weights as A in registers converted by the threads that hold them (no bf16 copy
 * of B in shared memory). Its A comes in the tile's K order (p.a_kperm; moe_gemm_kperm_slot): moe__cuda_gemm_kperm_rows
 * writes x so, and GEMM 1 on this tile writes h so with p.c_kperm. moe__cuda_grouped_gemm takes it for MEDIUM and
 * LARGE when p.a_kperm is set (and fails with MOE_ERR_UNSUPPORTED where the tile does not fit then); fits says
 * whether it can: sm_90a code and GPU, K a multiple of 32, per-row block scales, 16-byte aligned codes and A, unless
 * the environment sets MOE_GEMM_NO_FP4_RS (which keeps the other tiles, to compare); takes whether the layer gives it
 * a shape: fits, and MEDIUM, or LARGE where K is 1024 or more and each row's scales start on a 4-byte word
 * (MOE_GEMM_FP4_RS_LARGE: any K, for tests) unless the environment sets MOE_GEMM_NO_FP4_RS_LARGE (which keeps LARGE on
 * the cp.async wgmma tile of grouped_gemm_sm90.cu). At LARGE its CTAs are persistent, one an SM, walking the tiles
 * (MOE_GEMM_FP4_RS_CTAS caps them, for tests). */
bool moe__cuda_gemm_fp4_rs_fits(moe_ctx *ctx, const moe_gemm_params &p);
bool moe__cuda_gemm_fp4_rs_takes(moe_ctx *ctx, const moe_gemm_params &p, moe_gemm_shape shape);
moe_status moe__cuda_grouped_gemm_fp4_rs(moe_ctx *ctx, const moe_gemm_params &p, bool glu, moe_gemm_shape shape,
                                         int64_t m_tiles, int groups, cudaStream_t stream);
/* dst (rows, k) = src (rows, k) with each row in the FP4 wgmma tile's K order; bf16, k a multiple of 32, both
 * 16-byte aligned, rows of k elements. */
moe_status moe__cuda_gemm_kperm_rows(moe_ctx *ctx, const __nv_bfloat16 *src, __nv_bfloat16 *dst, int64_t rows, int k,
                                     cudaStream_t stream);

#endif /* MOE_CUDA_MOE_GROUPED_GEMM_CUH */
