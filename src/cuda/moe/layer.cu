/* layer.cu — the MoE layer on the GPU (docs/layer.md), BF16 activations, BF16 or quantised expert weights (turned
 * into bf16 tile by tile inside the GEMMs), f32 accumulation:
 *   logits  = x . gate^T (+ gate_bias)                   gate.cu (and sigmoid(x . shared_gate))
 *   ids, w  = route(logits)                             moe_route
 *   rows    = contiguous permutation, 16/64/128-row tiles moe_permute
 *   h       = act(w13[e] . x[token(row)] + b13[e])       grouped GEMM, GLU epilogue      (rows, I)
 *   y       = w2[e] . h + b2[e]                          grouped GEMM                    (rows, H)
 *   shared  = the same two GEMMs, dense over all tokens,  grid.z = shared expert          (S, T, H)
 *             on a side stream beside everything above (forked and joined by events; W8A8's x codes first;
 *             a decode step of T <= 8 forks after its gate, which then runs alone)
 *   out[t]  = sum_j w[t, j] y[row(t, j)] + g_s sum_s shared[s, t], slot order   combine_kernel
 * Every launch is asynchronous on the caller's stream; grids are sized from T on the host (tiles past the
 * permutation's last row exit at once), so nothing waits for the device. */
#include "cuda/common/cuda.cuh"
#include "cuda/moe/act_quant.cuh"
#include "cuda/moe/gate.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "cuda/moe/tile_table.cuh"
#include "formats/qformat.h"
#include "moe/layer.h"
#include "route/route_math.h"

namespace {

constexpr int kCombineThreads = 64; /* x 8 columns a thread */

/* out[t, h..h+8) = sum over slots j (in order) of coef_j y[slot_row[t, j]] + g_s sum_s shared_y[row(s) + t], row(s)
 * = shared_offsets[s] or s T. A CTA per (token, 512 columns); the rows of up to four slots are loaded before they are
 * added, so a thread keeps four loads in flight instead of waiting for each. */
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const __nv_bfloat16 *y, const int32_t *slot_row, const float *weights, int k,
                   bool weight_on_input, const __nv_bfloat16 *shared_y, const int64_t *shared_offsets, int n_shared,
                   const float *shared_scale, int64_t T, int H, __nv_bfloat16 *out) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    const int64_t t = blockIdx.x;
    const int h = (blockIdx.y * kCombineThreads + threadIdx.x) * 8;
    if (h >= H) return;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j0 = 0; j0 < k; j0 += 4) {
        float v[4][8], coef[4];
        bool used[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int j = j0 + q;
            const int32_t r = j < k ? slot_row[t * k + j] : -1;
            used[q] = r >= 0;
            coef[q] = !used[q] ? 0.0f : weight_on_input ? 1.0f : weights[t * k + j];
            moe_load8(y, used[q] ? (int64_t)r * H + h : 0, used[q] ? 8 : 0, used[q], v[q]);
        }
#pragma unroll
        for (int q = 0; q < 4; q++)
            if (used[q])
#pragma unroll
                for (int e = 0; e < 8; e++) acc[e] += coef[q] * v[q][e];
    }
    if (n_shared) {
        float sh[8] = {0, 0, 0, 0, 0, 0, 0, 0}, v[8];
        for (int s = 0; s < n_shared; s++) {
            const int64_t row = (shared_offsets ? shared_offsets[s] : (int64_t)s * T) + t;
            moe_load8(shared_y, row * H + h, 8, true, v);
#pragma unroll
            for (int e = 0; e < 8; e++) sh[e] += v[e];
        }
        const float g = shared_scale ? shared_scale[t] : 1.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] += g * sh[e];
    }
    moe_store8(out, t * H + h, 8, true, acc);
}

/* The quantised shared experts' plan: S experts of every token, expert s's rows at [s Tp, (s + 1) Tp), T of them
 * token rows 0 .. T-1 (row_src t: top_k 1) and the rest padding (-1); offsets (S + 1) = s Tp. */
__global__ void shared_plan_kernel(int S, int64_t T, int64_t Tp, int64_t *offsets, int32_t *row_src) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r <= S) offsets[r] = r * Tp;
    if (r < S * Tp) row_src[r] = r % Tp < T ? (int32_t)(r % Tp) : -1;
}

} // namespace

extern "C" moe_status moe__cuda_layer_init(moe_layer *l) {
    moe_ctx *ctx = l->ctx;
    moe__cuda_enter(ctx, NULL);
    cudaStream_t side;
    cudaEvent_t fork, join;
    MOE_CUDA_TRY(ctx, cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    l->side_stream = side;
    MOE_CUDA_TRY(ctx, cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    l->fork_event = fork;
    MOE_CUDA_TRY(ctx, cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    l->join_event = join;
    cudaEvent_t xq;
    MOE_CUDA_TRY(ctx, cudaEventCreateWithFlags(&xq, cudaEventDisableTiming));
    l->xq_event = xq;
    return MOE_OK;
}

extern "C" void moe__cuda_layer_fini(moe_layer *l) {
    moe__cuda_enter(l->ctx, NULL);
    if (l->xq_event) cudaEventDestroy((cudaEvent_t)l->xq_event);
    if (l->join_event) cudaEventDestroy((cudaEvent_t)l->join_event);
    if (l->fork_event) cudaEventDestroy((cudaEvent_t)l->fork_event);
    if (l->side_stream) cudaStreamDestroy((cudaStream_t)l->side_stream);
    l->side_stream = l->fork_event = l->join_event = l->xq_event = NULL;
}

static size_t align256(size_t n) {
    return (n + 255) / 256 * 256;
}

/* One set of experts for the grouped GEMMs: the layer's routed experts, or its quantised shared experts, which run
 * through the same GEMMs as n experts of every token. q13 NULL: bf16 weights. */
struct expert_set {
    const void *w13, *w2;  /* (n, 2I, H), (n, H, I) */
    const moe_qlayout *q13, *q2;
    const void *s13, *s2;  /* block scales */
    const float *g13, *g2; /* NVFP4 globals */
    const float *b13, *b2; /* biases (routed only) */
    int n, I;
};

static expert_set routed_set(const moe_layer *l) {
    const moe_layer_weights &w = l->w;
    return {w.w13,         w.w2,         l->quantized ? &l->q13 : nullptr, l->quantized ? &l->q2 : nullptr,
            w.w13_scale,   w.w2_scale,   w.w13_global,                     w.w2_global,
            w.b13,         w.b2,         l->n_local,                       l->c.intermediate};
}

static expert_set shared_set(const moe_layer *l) {
    const moe_layer_weights &w = l->w;
    return {w.shared_w13,        w.shared_w2,        &l->qs13,           &l->qs2, w.shared_w13_scale,
            w.shared_w2_scale,   w.shared_w13_global, w.shared_w2_global, nullptr, nullptr,
            l->c.n_shared,       l->c.shared_intermediate};
}

/* Where one set's two GEMMs keep their rows, as offsets into the workspace (moe_layer_scratch): the permutation, h,
 * y, and W8A8's x and h (codes, or bf16 and f32 values); rows: the row capacity. */
struct expert_bufs {
    size_t offsets, row_src, h, y, xq, xs, h8, hs, hq, hqs;
    int64_t rows;
};

static expert_bufs routed_bufs(const moe_layer_scratch *s) {
    return {s->offsets, s->row_src, s->h, s->y, s->xq, s->xs, s->h8, s->hs, s->hq, s->hqs, s->rows};
}

static expert_bufs shared_bufs(const moe_layer_scratch *s) {
    return {s->shared_offsets, s->shared_row_src, s->shared_h, s->shared_y, s->shared_xq, s->shared_xs,
            s->shared_h8,      s->shared_hs,      s->shared_hq, s->shared_hqs, s->shared_rows};
}

static void expert_storage(const expert_set &x, int which, moe_gemm_params &g);

/* Whether the set's GEMMs run W8A8 on the FP8 tensor cores when their tile is LARGE, MEDIUM or SMALL. */
static bool w8a8_fits(const moe_layer *l, const expert_set &x) {
    if (!l->act_quantized || !x.q13) return false;
    const moe_layer_config *c = &l->c;
    moe_gemm_params g = {}, g2 = {};
    g.offsets = g2.offsets = (const int64_t *)1; /* routed: only its presence is read */
    g.n_groups = g2.n_groups = x.n;
    g.interleaved = c->w13_layout == MOE_W13_INTERLEAVED;
    expert_storage(x, 0, g), expert_storage(x, 1, g2);
    g.b_group_stride = (int64_t)2 * x.I * c->hidden, g.n = x.I, g.k = c->hidden;
    g2.b_group_stride = (int64_t)c->hidden * x.I, g2.n = c->hidden, g2.k = x.I;
    return moe__cuda_gemm_fp8_fits(l->ctx, g, true) && moe__cuda_gemm_fp8_fits(l->ctx, g2, false);
}

/* The layer's routed GEMMs on the FP8 tensor cores (w8a8_fits). */
static bool w8a8_mma(const moe_layer *l) {
    return w8a8_fits(l, routed_set(l));
}

/* The tile by the rows a touched expert gets on average (assignments / touched): LARGE from 64 rows on Hopper
 * (wgmma: measured 1.2-1.3x faster there than 64-row mma.sync tiles despite the padding; worse from 32), from 128
 * elsewhere. Between SMALL and LARGE: where MEDIUM is a Hopper wgmma tile (medium_wgmma: bf16 weights, or W8A8 on
 * the FP8 kernels), MEDIUM (H200, bf16: 0-11% faster than MEDIUM32 at 16 rows an expert for all seven models of
 * the table, faster than LARGE at 32 rows for all seven, 2-19% either way at 64; W8A8, Qwen3-30B-A3B and
 * DeepSeek-V3: 17-26% faster than LARGE at 16 and 32 rows, at 64 8% faster and 4% slower); elsewhere MEDIUM32 below
 * 24 rows (16 rows an expert: 11-26% faster than the best other tile with FP8 and FP4 weights; 32 rows: 10-28% slower
 * than MEDIUM, whose one tile covers most experts there), else MEDIUM. */
static moe_gemm_shape shape_by_rows(bool sm90, bool medium_wgmma, int64_t assignments, int64_t touched) {
    const int64_t large_min = sm90 ? 64 : 128;
    if (assignments < 16 * touched) return MOE_GEMM_SMALL;
    if (assignments >= large_min * touched) return MOE_GEMM_LARGE;
    return assignments < 24 * touched && !medium_wgmma ? MOE_GEMM_MEDIUM32 : MOE_GEMM_MEDIUM;
}

static moe_gemm_shape forced_shape(moe_expert_tile tile, bool *forced) {
    *forced = true;
    switch (tile) {
    case MOE_EXPERT_TILE_SMALL: return MOE_GEMM_SMALL;
    case MOE_EXPERT_TILE_MEDIUM32: return MOE_GEMM_MEDIUM32;
    case MOE_EXPERT_TILE_MEDIUM: return MOE_GEMM_MEDIUM;
    case MOE_EXPERT_TILE_LARGE: return MOE_GEMM_LARGE;
    default: *forced = false; return MOE_GEMM_SMALL;
    }
}

/* The routed tile shape for T tokens over E experts (docs/layer.md §7): the config's forced tile; else the measured
 * table's row for this model shape, weight format and GPU (tile_table.cuh); else shape_by_rows. */
static moe_gemm_shape routed_shape(const moe_layer *l, int64_t T, int k, int E) {
    const bool sm90 = moe__cuda_gemm_sm90_usable(l->ctx);
    moe_expert_tile tile = l->c.expert_tile;
    if (tile == MOE_EXPERT_TILE_AUTO)
        tile = moe__tile_table_lookup(sm90 ? 90 : 80, moe__tile_weights_name(&l->c), l->c.hidden, l->c.intermediate,
                                      E, k, T);
    bool forced;
    const moe_gemm_shape f = forced_shape(tile, &forced);
    if (forced) return f;
    const int64_t assignments = T * k, touched = assignments < E ? assignments : E;
    return shape_by_rows(sm90, sm90 && (!l->quantized || w8a8_mma(l)), assignments, touched);
}

/* The quantised shared experts' tile for T tokens, each expert's rows all T: the config's forced tile, else
 * shape_by_rows (no table: the routed experts' measured rows do not describe one dense expert). */
static moe_gemm_shape shared_shape(const moe_layer *l, int64_t T) {
    bool forced;
    const moe_gemm_shape f = forced_shape(l->c.expert_tile, &forced);
    if (forced) return f;
    const bool sm90 = moe__cuda_gemm_sm90_usable(l->ctx);
    return shape_by_rows(sm90, sm90 && w8a8_fits(l, shared_set(l)), T, 1);
}

/* Whether the set's GEMMs run W8A8 on the FP8 kernels for this tile: the wgmma tile (LARGE, MEDIUM: 128 or 64
 * rows) or the decode kernel (SMALL), which read x as codes and scales. */
static bool w8a8_fp8_shape(const moe_layer *l, const expert_set &x, moe_gemm_shape shape) {
    return shape != MOE_GEMM_MEDIUM32 && w8a8_fits(l, x);
}

/* x (T, H) bf16 -> W8A8's codes and scales at ws + xq, ws + xs (row-major (T, ceil(H / 128))), by the formats'
 * kernel. */
static moe_status quantize_x(moe_layer *l, const void *x, int64_t T, size_t xq, size_t xs, char *ws, cudaStream_t st) {
    const int H = l->c.hidden;
    moe_qlayout lx;
    const int64_t sx[2] = {T, H};
    MOE_TRY(moe__qlayout(l->ctx, &l->c.act_format, 2, sx, &lx));
    moe_tensor xt = moe_tensor_2d((void *)x, MOE_DTYPE_BF16, T, H);
    moe_qtensor q = {lx.f, 2, {T, H}, ws + xq, ws + xs, NULL};
    return moe__cuda_quantize(l->ctx, &lx, &xt, &q, st);
}

extern "C" moe_layer_scratch moe__cuda_layer_experts_scratch(const moe_layer *l, int64_t T) {
    const moe_layer_config *c = &l->c;
    const size_t E = (size_t)l->n_local, k = (size_t)c->router.top_k, t = (size_t)(T > 0 ? T : 0);
    const size_t H = (size_t)c->hidden, I = (size_t)c->intermediate;
    moe_layer_scratch s = {};
    size_t at = 0;
    s.rows = (int64_t)(t * k + E * (MOE_LAYER_MAX_TILE_M - 1));
    const moe_permute_config pc = {l->n_global, 0, (int)E, (int)k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    size_t pb = 0;
    moe_permute_workspace_size(l->ctx, &pc, (int64_t)t, &pb);
    s.counts = at, at += align256(E * 4);
    s.offsets = at, at += align256((E + 1) * 8);
    s.row_src = at, at += align256((size_t)s.rows * 4);
    s.slot_row = at, at += align256(t * k * 4);
    s.permute = at, s.permute_bytes = pb, at += align256(pb);
    s.h = at, at += align256((size_t)s.rows * I * 2);
    s.y = at, at += align256((size_t)s.rows * H * 2);
    if (l->act_quantized) {
        s.xq = at, at += align256(t * H * 2);
        s.xs = at, at += align256(t * ((H + 127) / 128) * 4);
        /* the FP8 kernels' h codes and scales, or the bf16 path's f32 h, in one region */
        const size_t codes = align256((size_t)s.rows * I) + align256((size_t)s.rows * ((I + 127) / 128) * 4);
        const size_t h32 = align256((size_t)s.rows * I * 4);
        s.h8 = at, s.hs = at + align256((size_t)s.rows * I), at += codes > h32 ? codes : h32;
        /* rows I + rows ceil(I / 128) 4 + 255 <= 2 rows I for every I >= 8 (rows >= 127) */
        s.hq = s.h, s.hqs = s.h + align256((size_t)s.rows * I);
    }
    s.bytes = at;
    return s;
}

/* Forks the layer's side stream from st: what is queued on it next runs after what st holds now. */
static moe_status fork_side(moe_layer *l, cudaStream_t st) {
    MOE_CUDA_TRY(l->ctx, cudaEventRecord((cudaEvent_t)l->fork_event, st));
    MOE_CUDA_TRY(l->ctx, cudaStreamWaitEvent((cudaStream_t)l->side_stream, (cudaEvent_t)l->fork_event, 0));
    return MOE_OK;
}

static void expert_gemms(const moe_layer *l, const expert_set &x, const expert_bufs &b, char *ws, const void *a,
                         int top_k, const float *row_weight, moe_gemm_params &g, moe_gemm_params &g2);
/* Where W8A8's x codes come from: quantised on the experts' stream, ready once l->xq_event fires (the side stream
 * made them for the routed experts), or ready in stream order (the shared experts, on the side stream after them). */
enum x_codes_at { X_CODES_HERE, X_CODES_EVENT, X_CODES_READY };
static moe_status experts_w8a8(moe_layer *l, const expert_set &x, moe_gemm_params g, moe_gemm_params g2,
                               const void *xv, x_codes_at x_codes, int64_t T, moe_gemm_shape shape, int64_t tiles,
                               const expert_bufs &b, char *ws, cudaStream_t st);

/* bf16 shared experts: dense GEMMs over the tokens, a shared expert per grid.z, the tile from the step's tokens. */
static moe_status shared_dense(moe_layer *l, const void *xv, int64_t T, int64_t plan_tokens,
                               const moe_layer_scratch *s, char *ws, cudaStream_t side) {
    const moe_layer_config *c = &l->c;
    const int H = c->hidden, S = c->n_shared, Is = c->shared_intermediate;
    const moe_gemm_shape dense = plan_tokens < 64 ? MOE_GEMM_SMALL : plan_tokens < 512 ? MOE_GEMM_MEDIUM
                                                                                        : MOE_GEMM_LARGE;
    const int64_t tiles = (T + moe__gemm_tile_m(dense) - 1) / moe__gemm_tile_m(dense);
    __nv_bfloat16 *shared_h = (__nv_bfloat16 *)(ws + s->shared_h);
    moe_gemm_params d = {};
    d.a = (const __nv_bfloat16 *)xv, d.m = T, d.n_groups = S;
    d.b = (const __nv_bfloat16 *)l->w.shared_w13, d.b_group_stride = (int64_t)2 * Is * H, d.n = Is, d.k = H;
    d.interleaved = c->w13_layout == MOE_W13_INTERLEAVED;
    d.act = c->activation, d.alpha = c->act_alpha, d.limit = c->act_limit;
    d.c = shared_h, d.c_group_stride = T * Is;
    MOE_TRY(moe__cuda_grouped_gemm(l->ctx, d, true, dense, tiles, S, side));
    d.a = shared_h, d.a_group_stride = T * Is;
    d.b = (const __nv_bfloat16 *)l->w.shared_w2, d.b_group_stride = (int64_t)H * Is, d.n = H, d.k = Is;
    d.c = (__nv_bfloat16 *)(ws + s->shared_y), d.c_group_stride = T * H;
    return moe__cuda_grouped_gemm(l->ctx, d, false, dense, tiles, S, side);
}

/* Quantised shared experts (docs/layer.md §5): S experts of every token through the routed experts' GEMMs, so that
 * every weight format and W8A8 take the same kernels (FP8 tensor cores and decode kernels included). Their plan
 * puts token t of expert s at row s Tp + t (Tp: T padded to the tile), and y leaves in those rows of s->shared_y.
 * x_codes: W8A8's x codes are in s->xq already, made earlier on this stream. */
static moe_status shared_quantized(moe_layer *l, const void *xv, int64_t T, bool x_codes, const moe_layer_scratch *s,
                                   char *ws, cudaStream_t side) {
    const expert_set x = shared_set(l);
    const moe_gemm_shape shape = shared_shape(l, T);
    const int tile_m = moe__gemm_tile_m(shape);
    const int64_t Tp = (T + tile_m - 1) / tile_m * tile_m, rows = (int64_t)x.n * Tp;
    expert_bufs b = shared_bufs(s);
    const unsigned blocks = (unsigned)((rows + 256) / 256); /* rows + 1 >= S + 1 threads */
    MOE_CUDA_TRY(l->ctx, moe_launch(false, shared_plan_kernel, blocks, 256, 0, side, x.n, T, Tp,
                                    (int64_t *)(ws + b.offsets), (int32_t *)(ws + b.row_src)));
    moe_gemm_params g, g2;
    expert_gemms(l, x, b, ws, xv, 1, nullptr, g, g2);
    const int64_t tiles = rows / tile_m;
    if (!l->act_quantized) {
        MOE_TRY(moe__cuda_grouped_gemm(l->ctx, g, true, shape, tiles, 1, side));
        return moe__cuda_grouped_gemm(l->ctx, g2, false, shape, tiles, 1, side);
    }
    x_codes_at at = X_CODES_HERE;
    if (x_codes && w8a8_fp8_shape(l, x, shape)) b.xq = s->xq, b.xs = s->xs, at = X_CODES_READY;
    return experts_w8a8(l, x, g, g2, xv, at, T, shape, tiles, b, ws, side);
}

extern "C" moe_status moe__cuda_layer_shared(moe_layer *l, const void *xv, int64_t T, int64_t plan_tokens,
                                             int x_codes, const moe_layer_scratch *s, void *workspace, void *stream) {
    cudaStream_t st = moe__cuda_enter(l->ctx, stream), side = (cudaStream_t)l->side_stream;
    char *ws = (char *)workspace;
    MOE_TRY(fork_side(l, st));
    moe_status ss = MOE_OK;
    if (T > 0)
        ss = l->shared_quantized ? shared_quantized(l, xv, T, x_codes != 0, s, ws, side)
                                 : shared_dense(l, xv, T, plan_tokens, s, ws, side);
    /* the join event is recorded even on failure, so that a caller's join never waits on a stale one */
    const cudaError_t e = cudaEventRecord((cudaEvent_t)l->join_event, side);
    if (ss == MOE_OK && e != cudaSuccess) ss = moe__cuda_fail(l->ctx, e, "cudaEventRecord", __FILE__, __LINE__);
    return ss;
}

extern "C" moe_status moe__cuda_layer_join(moe_layer *l, void *stream) {
    cudaStream_t st = moe__cuda_enter(l->ctx, stream);
    MOE_CUDA_TRY(l->ctx, cudaStreamWaitEvent(st, (cudaEvent_t)l->join_event, 0));
    return MOE_OK;
}

extern "C" moe_status moe__cuda_layer_combine(moe_layer *l, const void *y, const int32_t *slot_row,
                                              const float *weights, int64_t T, const void *shared_y,
                                              const int64_t *shared_offsets, const float *shared_scale, void *out,
                                              void *stream) {
    moe_ctx *ctx = l->ctx;
    const moe_layer_config *c = &l->c;
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const int H = c->hidden;
    if (T == 0) return MOE_OK;
    const dim3 grid((unsigned)T, (unsigned)((H + kCombineThreads * 8 - 1) / (kCombineThreads * 8)));
    MOE_CUDA_TRY(ctx, moe_launch(moe__cuda_pdl(ctx), combine_kernel, grid, kCombineThreads, 0, st,
                                 (const __nv_bfloat16 *)y, slot_row, weights, c->router.top_k,
                                 c->router.weight_on_input != 0, (const __nv_bfloat16 *)shared_y, shared_offsets,
                                 shared_y ? c->n_shared : 0, shared_scale, T, H, (__nv_bfloat16 *)out));
    return MOE_OK;
}

static bool layer_gates(const moe_layer *l, const moe_layer_io *io);
static moe_status layer_gate(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, char *ws, bool alone,
                             cudaStream_t st);
static moe_status layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace,
                              bool permute, bool gated, void *stream);

/* at T <= 8 the gate first; shared experts forked onto the side stream (they need only x, and run beside routing and
 * the routed experts), after W8A8's x codes where the FP8 kernels read them (GEMM 1 waits for those alone); gate
 * logits (unless run first), routing, permutation and the two routed GEMMs on the caller's stream; join; combine in
 * slot order. A capture follows the fork and the joins. */
extern "C" moe_status moe__cuda_layer_forward(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *sp,
                                              void *workspace, void *stream) {
    const moe_layer_config *c = &l->c;
    const int64_t T = io->x->shape[0];
    const moe_layer_scratch &s = *sp;
    char *ws = (char *)workspace;
    const void *x = io->x->data;
    /* a decode step's gate (one group of tokens) first, alone on the GPU, where its splits run as one cluster
     * (gate.cu); the side stream forks after it. Elsewhere the gate runs beside the side stream's kernels. */
    const bool gate_first = T >= 1 && T <= MOE_GATE_GROUP && layer_gates(l, io);
    if (gate_first) MOE_TRY(layer_gate(l, io, &s, ws, true, moe__cuda_enter(l->ctx, stream)));
    /* W8A8 on the FP8 kernels: x's codes on the side stream too (before the shared experts), off the chain of
     * gate, routing and permutation that GEMM 1 waits for */
    const bool x_codes = l->side_stream && T > 0 &&
                         w8a8_fp8_shape(l, routed_set(l), routed_shape(l, T, c->router.top_k, c->router.n_experts));
    if (x_codes) {
        cudaStream_t st = moe__cuda_enter(l->ctx, stream), side = (cudaStream_t)l->side_stream;
        MOE_TRY(fork_side(l, st));
        const moe_status qs = quantize_x(l, x, T, s.xq, s.xs, ws, side);
        MOE_CUDA_TRY(l->ctx, cudaEventRecord((cudaEvent_t)l->xq_event, side)); /* even on failure: always joined */
        if (qs != MOE_OK) {
            MOE_CUDA_TRY(l->ctx, cudaStreamWaitEvent(st, (cudaEvent_t)l->xq_event, 0));
            return qs;
        }
    }
    if (c->n_shared) {
        const moe_status ss = moe__cuda_layer_shared(l, x, T, T, x_codes, &s, ws, stream);
        if (ss != MOE_OK) {
            moe__cuda_layer_join(l, stream);
            return ss;
        }
    }
    moe_status rs = layer_route(l, io, &s, ws, true, gate_first, stream);
    if (rs == MOE_OK)
        rs = moe__cuda_layer_experts(l, x, T, (const int32_t *)(ws + s.ids), (const float *)(ws + s.weights), T, 1,
                                     x_codes, &s, ws, stream);
    if (x_codes) MOE_CUDA_TRY(l->ctx, cudaStreamWaitEvent(moe__cuda_enter(l->ctx, stream),
                                                          (cudaEvent_t)l->xq_event, 0)); /* always joined */
    if (c->n_shared) MOE_TRY(moe__cuda_layer_join(l, stream)); /* always joined */
    if (rs != MOE_OK) return rs;
    return moe__cuda_layer_combine(l, ws + s.y, (const int32_t *)(ws + s.slot_row), (const float *)(ws + s.weights),
                                   T, c->n_shared ? ws + s.shared_y : nullptr,
                                   l->shared_quantized ? (const int64_t *)(ws + s.shared_offsets) : nullptr,
                                   c->shared_gate ? (const float *)(ws + s.shared_scale) : nullptr, io->out->data,
                                   stream);
}

/* The permutation of the routed experts' rows for a step planned for plan_tokens tokens (tiles as the grouped
 * GEMM will pick them), over the layer's local experts, into the scratch. */
static void layer_plan(const moe_layer *l, int64_t plan_tokens, const moe_layer_scratch *s, char *ws,
                       moe_permute_config *pc, moe_permute_outputs *po) {
    const int k = l->c.router.top_k;
    const moe_gemm_shape shape = routed_shape(l, plan_tokens, k, l->c.router.n_experts);
    *pc = {l->n_global, l->expert_begin, l->n_local, k, moe__gemm_tile_m(shape), MOE_PERMUTE_CONTIGUOUS, 0};
    *po = {(int32_t *)(ws + s->counts), (int64_t *)(ws + s->offsets), (int32_t *)(ws + s->row_src),
           (int32_t *)(ws + s->slot_row), NULL, NULL};
}

/* Whether the layer computes gate logits (from its gate weight, when the caller gives none) or Qwen2-MoE's shared
 * scale (always from x). */
static bool layer_gates(const moe_layer *l, const moe_layer_io *io) {
    return (!io->logits && l->w.gate) || l->c.shared_gate;
}

/* The gate's logits and shared scale into the scratch (layer_gates). alone: no other kernel of the layer runs
 * beside it (the gate's cluster may use any SMs). */
static moe_status layer_gate(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, char *ws, bool alone,
                             cudaStream_t st) {
    const moe_layer_config *c = &l->c;
    const moe_layer_weights *w = &l->w;
    return moe__cuda_gate_logits(l->ctx, (const __nv_bfloat16 *)io->x->data, io->logits ? nullptr : w->gate,
                                 w->gate_bias, w->shared_gate, io->x->shape[0], c->hidden, c->router.n_experts,
                                 (float *)(ws + s->logits), c->shared_gate ? (float *)(ws + s->shared_scale) : nullptr,
                                 (float *)(ws + s->gate_partial), alone, st);
}

/* Routing, after the gate unless gated (it ran already); with permute, the permutation too, in one call
 * (moe_route_permute: one kernel at decode sizes). */
static moe_status layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace,
                              bool permute, bool gated, void *stream) {
    moe_ctx *ctx = l->ctx;
    const moe_layer_config *c = &l->c;
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    char *ws = (char *)workspace;
    const int64_t T = io->x->shape[0];
    if (!gated && layer_gates(l, io)) MOE_TRY(layer_gate(l, io, s, ws, false, st));
    /* the caller's logits, else the gate's */
    const moe_tensor logits_t = moe_tensor_2d(ws + s->logits, MOE_DTYPE_F32, T, c->router.n_experts);
    const moe_tensor *logits = io->logits ? io->logits : l->w.gate ? &logits_t : nullptr;
    const moe_route_args ra = {logits, io->token_ids, T, (int32_t *)(ws + s->ids), (float *)(ws + s->weights), NULL,
                               io->stats, io->stats_layer};
    if (!permute) return moe_route(ctx, &c->router, &ra, st);
    moe_permute_config pc;
    moe_permute_outputs po;
    layer_plan(l, T, s, ws, &pc, &po);
    return moe_route_permute(ctx, &c->router, &ra, &pc, &po, ws + s->permute, s->permute_bytes, st);
}

extern "C" moe_status moe__cuda_layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s,
                                            void *workspace, void *stream) {
    return layer_route(l, io, s, workspace, false, false, stream);
}

/* How the set's w13 (which 0) or w2 (1) is stored, for the grouped GEMM. */
static void expert_storage(const expert_set &x, int which, moe_gemm_params &g) {
    g.b = which ? x.w2 : x.w13;
    if (!x.q13) return; /* bf16 */
    const moe_qlayout &q = which ? *x.q2 : *x.q13;
    const bool fp4 = q.f.elem == MOE_DTYPE_E2M1;
    g.b_fmt = fp4 ? (q.f.scale_dtype == MOE_DTYPE_E4M3 ? MOE_B_E2M1_E4M3 : MOE_B_E2M1_E8M0)
                  : (q.f.scale_dtype == MOE_DTYPE_F32 ? MOE_B_E4M3_F32 : MOE_B_E4M3_E8M0);
    g.bs.scale = which ? x.s2 : x.s13;
    g.bs.group_stride = q.scale_rows * q.scale_cols, g.bs.cols = (int)q.scale_cols;
    g.bs.row_shift = q.block_rows == 128 ? 7 : 0;
    /* blocks of 16, 32 or 128 columns, or the whole row (FP8_ROW: every column reads scale column 0) */
    g.bs.col_shift = q.block_cols == q.cols ? 31 : q.block_cols == 128 ? 7 : q.block_cols == 32 ? 5 : 4;
    if (q.f.kind == MOE_QFORMAT_NVFP4) {
        g.bs.global = which ? x.g2 : x.g13;
        g.bs.global_encode = q.f.global == MOE_NVFP4_GLOBAL_ENCODE;
    }
}

/* GEMM 1 (GLU) and GEMM 2 of the set x over the plan in b (offsets, row_src of top_k slots a token), A gathered
 * from a (token row_src / top_k), h and y into b's rows; row_weight: Llama-4's weight on the input, or NULL. */
static void expert_gemms(const moe_layer *l, const expert_set &x, const expert_bufs &b, char *ws, const void *a,
                         int top_k, const float *row_weight, moe_gemm_params &g, moe_gemm_params &g2) {
    const moe_layer_config *c = &l->c;
    const int H = c->hidden, I = x.I;
    g = {};
    g.a = (const __nv_bfloat16 *)a, g.row_src = (const int32_t *)(ws + b.row_src), g.top_k = top_k, g.gather = true;
    g.offsets = (const int64_t *)(ws + b.offsets), g.n_groups = x.n;
    expert_storage(x, 0, g);
    g.b_group_stride = (int64_t)2 * I * H, g.n = I, g.k = H;
    g.bias = x.b13, g.bias_group_stride = 2 * I;
    g.row_weight = row_weight;
    g.interleaved = c->w13_layout == MOE_W13_INTERLEAVED;
    g.act = c->activation, g.alpha = c->act_alpha, g.limit = c->act_limit;
    g.c = (__nv_bfloat16 *)(ws + b.h);
    g2 = g;
    g2.a = g.c, g2.gather = false, g2.row_weight = nullptr;
    expert_storage(x, 1, g2);
    g2.b_group_stride = (int64_t)H * I, g2.n = H, g2.k = I;
    g2.bias = x.b2, g2.bias_group_stride = H;
    g2.c = (__nv_bfloat16 *)(ws + b.y);
}

/* The set's two GEMMs g (GLU) and g2 with W8A8 inputs (docs/layer.md §6). On the FP8 tensor cores where the kernels
 * take both (LARGE, MEDIUM: the wgmma tile; SMALL: the decode kernel): x quantised to codes and scales (x_codes:
 * where they come from), GEMM 1 writing h quantised (the decode kernel writes h in f32 and act_quant.cu quantises
 * it), GEMM 2 reading the codes. Elsewhere (MEDIUM32, other weights, other GPUs) x and h are replaced by their
 * quantised values in bf16 around the bf16 GEMMs. */
static moe_status experts_w8a8(moe_layer *l, const expert_set &x, moe_gemm_params g, moe_gemm_params g2,
                               const void *xv, x_codes_at x_codes, int64_t T, moe_gemm_shape shape, int64_t tiles,
                               const expert_bufs &b, char *ws, cudaStream_t st) {
    moe_ctx *ctx = l->ctx;
    const moe_layer_config *c = &l->c;
    const int H = c->hidden, I = x.I;
    const moe_qformat &af = c->act_format;
    const moe_scale_rule rule = l->qx.f.rule; /* resolved at create */
    const int64_t rows = tiles * moe__gemm_tile_m(shape), live = rows < b.rows ? rows : b.rows; /* offsets[G] exact */
    if (w8a8_fp8_shape(l, x, shape)) {
        if (x_codes == X_CODES_EVENT) MOE_CUDA_TRY(ctx, cudaStreamWaitEvent(st, (cudaEvent_t)l->xq_event, 0));
        else if (x_codes == X_CODES_HERE) MOE_TRY(quantize_x(l, xv, T, b.xq, b.xs, ws, st));
        moe_gemm_fp8 f = {};
        f.a = (const uint8_t *)(ws + b.xq), f.a_scale = (const float *)(ws + b.xs);
        if (shape == MOE_GEMM_SMALL) { /* decode: h in f32, quantised between the GEMMs */
            g.c32 = (float *)(ws + b.h8);
            MOE_TRY(moe__cuda_grouped_gemm_fp8_decode(ctx, g, f, true, tiles, st));
            uint8_t *hq = (uint8_t *)(ws + b.hq);
            float *hqs = (float *)(ws + b.hqs);
            MOE_TRY(moe__cuda_act_quant(ctx, g.c32, hq, hqs, b.rows, live, g.offsets + g.n_groups, I, rule,
                                        af.amax_floor, st));
            moe_gemm_fp8 f2 = {};
            f2.a = hq, f2.a_scale = hqs, f2.a_scale_ld = b.rows;
            return moe__cuda_grouped_gemm_fp8_decode(ctx, g2, f2, false, tiles, st);
        }
        f.c = (uint8_t *)(ws + b.h8), f.c_scale = (float *)(ws + b.hs), f.c_scale_ld = b.rows;
        f.rule = rule, f.amax_floor = af.amax_floor;
        const int tile_m = moe__gemm_tile_m(shape);
        MOE_TRY(moe__cuda_grouped_gemm_fp8(ctx, g, f, true, tile_m, tiles, st));
        moe_gemm_fp8 f2 = {};
        f2.a = f.c, f2.a_scale = f.c_scale, f2.a_scale_ld = b.rows;
        return moe__cuda_grouped_gemm_fp8(ctx, g2, f2, false, tile_m, tiles, st);
    }
    /* h leaves GEMM 1 in f32, so that it is quantised from the value the reference quantises (a bf16 h first
     * would move about 3% of its codes by a step) */
    __nv_bfloat16 *xq = (__nv_bfloat16 *)(ws + b.xq), *h = (__nv_bfloat16 *)g.c;
    float *h32 = (float *)(ws + b.h8);
    MOE_TRY(moe__cuda_act_fake_quant(ctx, xv, MOE_DTYPE_BF16, xq, T, nullptr, H, rule, af.amax_floor, st));
    g.a = xq, g.c32 = h32;
    MOE_TRY(moe__cuda_grouped_gemm(ctx, g, true, shape, tiles, 1, st));
    MOE_TRY(moe__cuda_act_fake_quant(ctx, h32, MOE_DTYPE_F32, h, live, g.offsets + g.n_groups, I, rule,
                                     af.amax_floor, st));
    return moe__cuda_grouped_gemm(ctx, g2, false, shape, tiles, 1, st);
}

extern "C" moe_status moe__cuda_layer_experts(moe_layer *l, const void *x, int64_t T, const int32_t *ids,
                                              const float *weights, int64_t plan_tokens, int permuted, int x_codes,
                                              const moe_layer_scratch *s, void *workspace, void *stream) {
    moe_ctx *ctx = l->ctx;
    const moe_layer_config *c = &l->c;
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    char *ws = (char *)workspace;
    const int E = l->n_local, k = c->router.top_k;
    if (T == 0) return MOE_OK;

    /* rows per expert, padded to the GEMM tile: the tile the whole step would pick (over the logical experts) */
    const moe_gemm_shape shape = routed_shape(l, plan_tokens, k, c->router.n_experts);
    const int tile_m = moe__gemm_tile_m(shape);
    moe_permute_config pc;
    moe_permute_outputs po;
    layer_plan(l, plan_tokens, s, ws, &pc, &po);
    if (!permuted) MOE_TRY(moe_permute(ctx, &pc, ids, T, &po, ws + s->permute, s->permute_bytes, st));

    /* at most min(rows / tile_m, T k) tiles hold rows */
    const int64_t assignments = T * k;
    const int64_t max_tiles = (assignments + (int64_t)E * (tile_m - 1)) / tile_m;
    const int64_t tiles = max_tiles < assignments ? max_tiles : assignments;
    const expert_set es = routed_set(l);
    moe_gemm_params g, g2;
    expert_gemms(l, es, routed_bufs(s), ws, x, k, c->router.weight_on_input ? weights : nullptr, g, g2);
    if (l->act_quantized)
        return experts_w8a8(l, es, g, g2, x, x_codes ? X_CODES_EVENT : X_CODES_HERE, T, shape, tiles, routed_bufs(s),
                            ws, st);
    MOE_TRY(moe__cuda_grouped_gemm(ctx, g, true, shape, tiles, 1, st));
    return moe__cuda_grouped_gemm(ctx, g2, false, shape, tiles, 1, st);
}
