/* layer_experts.cu — the MoE layer's expert GEMMs on the GPU (docs/layer.md §5-7): which tile a step takes (the
 * forced tile, the measured table, the rules), the permutation's plan for it, and the two grouped GEMMs of a set of
 * experts with BF16 or W8A8 inputs. A set is the routed experts, or the quantised shared experts, which run as S
 * experts of every token over a plan of their own (shared_plan_kernel), so every weight format and the FP8 kernels
 * serve both. The rest of the forward (gate, routing, the dense shared experts, the combine, the streams) is in
 * layer.cu. */
#include "cuda/moe/layer_experts.cuh"

#include "cuda/common/cuda.cuh"
#include "cuda/moe/act_quant.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "cuda/moe/tile_table.cuh"
#include "formats/qformat.h"

namespace {

/* The quantised shared experts' plan: S experts of every token, expert s's rows at [s Tp, (s + 1) Tp), T of them
 * token rows 0 .. T-1 (row_src t: top_k 1) and the rest padding (-1); offsets (S + 1) = s Tp. */
__global__ void shared_plan_kernel(int S, int64_t T, int64_t Tp, int64_t *offsets, int32_t *row_src) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r <= S) offsets[r] = r * Tp;
    if (r < S * Tp) row_src[r] = r % Tp < T ? (int32_t)(r % Tp) : -1;
}

} // namespace

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
    size_t offsets, row_src, h, y;
    moe_w8a8_scratch q;
    int64_t rows;
};

static expert_bufs routed_bufs(const moe_layer_scratch *s) {
    return {s->offsets, s->row_src, s->h, s->y, s->w8a8, s->rows};
}

static expert_bufs shared_bufs(const moe_layer_scratch *s) {
    return {s->shared_offsets, s->shared_row_src, s->shared_h, s->shared_y, s->shared_w8a8, s->shared_rows};
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

/* The set's two GEMMs as far as the kernels' fit tests read them: storage, shapes, groups. */
static void fit_params(const moe_layer *l, const expert_set &x, moe_gemm_params &g, moe_gemm_params &g2) {
    const moe_layer_config *c = &l->c;
    g = {}, g2 = {};
    g.offsets = g2.offsets = (const int64_t *)1; /* routed: only its presence is read */
    g.n_groups = g2.n_groups = x.n;
    g.interleaved = c->w13_layout == MOE_W13_INTERLEAVED;
    expert_storage(x, 0, g), expert_storage(x, 1, g2);
    g.b_group_stride = (int64_t)2 * x.I * c->hidden, g.n = x.I, g.k = c->hidden;
    g2.b_group_stride = (int64_t)c->hidden * x.I, g2.n = c->hidden, g2.k = x.I;
}

/* Whether the set's GEMMs run W8A8 on the FP8 tensor cores when their tile is LARGE, MEDIUM or SMALL. */
static bool w8a8_fits(const moe_layer *l, const expert_set &x) {
    if (!l->act_quantized || !x.q13) return false;
    moe_gemm_params g, g2;
    fit_params(l, x, g, g2);
    return moe__cuda_gemm_fp8_fits(l->ctx, g, true) && moe__cuda_gemm_fp8_fits(l->ctx, g2, false);
}

/* Whether the set's GEMMs run W4A8 on the FP8 tensor cores when their tile is SMALL (FP4 weights on Hopper). */
static bool w4a8_fits(const moe_layer *l, const expert_set &x) {
    if (!l->act_quantized || !x.q13) return false;
    moe_gemm_params g, g2;
    fit_params(l, x, g, g2);
    return (g.b_fmt == MOE_B_E2M1_E8M0 || g.b_fmt == MOE_B_E2M1_E4M3) && moe__cuda_gemm_rs_decode_fits(l->ctx, g) &&
           moe__cuda_gemm_rs_decode_fits(l->ctx, g2);
}

/* The layer's routed GEMMs on the FP8 tensor cores (w8a8_fits). */
static bool w8a8_mma(const moe_layer *l) {
    return w8a8_fits(l, routed_set(l));
}

/* Whether the layer's routed GEMMs take the FP4 wgmma tile (grouped_gemm_fp4_rs.cu) at MEDIUM. */
static bool fp4_rs_medium(const moe_layer *l) {
    const expert_set x = routed_set(l);
    if (!x.q13) return false;
    moe_gemm_params g, g2;
    fit_params(l, x, g, g2);
    return moe__cuda_gemm_fp4_rs_fits(l->ctx, g) && moe__cuda_gemm_fp4_rs_fits(l->ctx, g2);
}

/* The tile by the rows a touched expert gets on average (assignments / touched): LARGE from 64 rows on Hopper
 * (wgmma: measured 1.2-1.3x faster there than 64-row mma.sync tiles despite the padding; worse from 32), from 128
 * elsewhere. Between SMALL and LARGE: where MEDIUM is a Hopper wgmma tile (medium_wgmma: bf16 weights, W8A8 on
 * the FP8 kernels, or FP4 weights on the FP4 wgmma tile), MEDIUM (H200, bf16: 0-11% faster than MEDIUM32 at 16 rows
 * an expert for all seven models of the table, faster than LARGE at 32 rows for all seven, 2-19% either way at 64;
 * W8A8, Qwen3-30B-A3B and DeepSeek-V3: 17-26% faster than LARGE at 16 and 32 rows, at 64 8% faster and 4% slower;
 * H100, MXFP4 / NVFP4 at 16 rows against MEDIUM32: DeepSeek-V3 -12% / -17%, Mixtral-8x7B -25% / -27%, GPT-OSS-20B
 * -0.4% / -11%, Qwen3-30B-A3B +3% / -3%, docs/performance.md "Since d5ac007"); elsewhere MEDIUM32 below
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
    return shape_by_rows(sm90, sm90 && (!l->quantized || w8a8_mma(l) || fp4_rs_medium(l)), assignments, touched);
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
 * rows) or a decode kernel (SMALL: FP8 weights, or MXFP4 through W4A8), which read x as codes and scales. */
static bool w8a8_fp8_shape(const moe_layer *l, const expert_set &x, moe_gemm_shape shape) {
    if (shape == MOE_GEMM_SMALL) return w8a8_fits(l, x) || w4a8_fits(l, x);
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

extern "C" moe_layer_scratch moe__cuda_layer_experts_scratch(const moe_layer *l, int64_t T, size_t at) {
    const moe_layer_config *c = &l->c;
    const size_t E = (size_t)l->n_local, k = (size_t)c->router.top_k, t = (size_t)(T > 0 ? T : 0);
    const size_t H = (size_t)c->hidden, I = (size_t)c->intermediate;
    moe_layer_scratch s = {};
    s.rows = (int64_t)(t * k + E * (MOE_LAYER_MAX_TILE_M - 1));
    const moe_permute_config pc = {l->n_global, 0, (int)E, (int)k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    size_t pb = 0;
    moe_permute_workspace_size(l->ctx, &pc, (int64_t)t, &pb);
    s.counts = at, at += moe__align256(E * 4);
    s.offsets = at, at += moe__align256((E + 1) * 8);
    s.row_src = at, at += moe__align256((size_t)s.rows * 4);
    s.slot_row = at, at += moe__align256(t * k * 4);
    s.permute = at, s.permute_bytes = pb, at += moe__align256(pb);
    s.h = at, at += moe__align256((size_t)s.rows * I * 2);
    s.y = at, at += moe__align256((size_t)s.rows * H * 2);
    if (l->act_quantized) s.w8a8 = moe__w8a8_scratch(&at, t, H, (size_t)s.rows, I, s.h);
    s.bytes = at;
    return s;
}

void moe__cuda_layer_plan(const moe_layer *l, int64_t plan_tokens, const moe_layer_scratch *s, char *ws,
                          moe_permute_config *pc, moe_permute_outputs *po) {
    const int k = l->c.router.top_k;
    const moe_gemm_shape shape = routed_shape(l, plan_tokens, k, l->c.router.n_experts);
    *pc = {l->n_global, l->expert_begin, l->n_local, k, moe__gemm_tile_m(shape), MOE_PERMUTE_CONTIGUOUS, 0};
    *po = {(int32_t *)(ws + s->counts), (int64_t *)(ws + s->offsets), (int32_t *)(ws + s->row_src),
           (int32_t *)(ws + s->slot_row), NULL, NULL};
}

/* GEMM 1 (GLU) and GEMM 2 of the set x over the plan in b (offsets, row_src of top_k slots a token), A gathered
 * from a (token row_src / top_k), h and y into b's rows; row_weight: Llama-4's weight on the input, or NULL;
 * counters: the set's two pairs of l->tile_counters (GEMM 1's, then GEMM 2's), or NULL. */
static void expert_gemms(const moe_layer *l, const expert_set &x, const expert_bufs &b, char *ws, const void *a,
                         int top_k, const float *row_weight, uint32_t *counters, moe_gemm_params &g,
                         moe_gemm_params &g2) {
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
    g.tile_counter = counters;
    g2 = g;
    g2.a = g.c, g2.gather = false, g2.row_weight = nullptr;
    expert_storage(x, 1, g2);
    g2.b_group_stride = (int64_t)H * I, g2.n = H, g2.k = I;
    g2.bias = x.b2, g2.bias_group_stride = H;
    g2.c = (__nv_bfloat16 *)(ws + b.y);
    g2.tile_counter = counters ? counters + 2 : nullptr;
}

/* Where the set's GEMMs g, g2 take the FP4 wgmma tile (MEDIUM and LARGE on Hopper), their A in its K order
 * (grouped_gemm.cuh): x (T rows) rewritten into xk (or in place: xk at x), h written so by GEMM 1. The callers put
 * xk in the set's y region: it holds at least T rows of H and only GEMM 2 writes it, after GEMM 1 has read x (same
 * stream). */
static moe_status kperm_operands(moe_layer *l, const void *x, int64_t T, moe_gemm_shape shape, size_t xk, char *ws,
                                 moe_gemm_params &g, moe_gemm_params &g2, cudaStream_t st) {
    if (!moe__cuda_gemm_fp4_rs_takes(l->ctx, g, shape) || !moe__cuda_gemm_fp4_rs_takes(l->ctx, g2, shape))
        return MOE_OK;
    __nv_bfloat16 *const to = (__nv_bfloat16 *)(ws + xk);
    MOE_TRY(moe__cuda_gemm_kperm_rows(l->ctx, (const __nv_bfloat16 *)x, to, T, g.k, st));
    g.a = to, g.a_kperm = g.c_kperm = g2.a_kperm = true;
    return MOE_OK;
}

/* The set's two GEMMs g (GLU) and g2 with W8A8 inputs (docs/layer.md §6). On the FP8 tensor cores where the kernels
 * take both (LARGE, MEDIUM: the wgmma tile; SMALL: a decode kernel, the wgmma one for MXFP4 weights): x quantised to
 * codes and scales (x_codes: where they come from, MOE_X_CODES_* of moe/layer.h), GEMM 1 writing h quantised (the
 * decode kernels write h in f32 and act_quant.cu quantises it), GEMM 2 reading the codes. Elsewhere (MEDIUM32,
 * other weights, other GPUs) x and h are replaced by their quantised values in bf16 around the bf16 GEMMs. The
 * FP8 tile takes its tiles from g's and g2's counters (expert_gemms). */
static moe_status experts_w8a8(moe_layer *l, const expert_set &x, moe_gemm_params g, moe_gemm_params g2,
                               const void *xv, int x_codes, int64_t T, moe_gemm_shape shape, int64_t tiles,
                               const expert_bufs &b, char *ws, cudaStream_t st) {
    moe_ctx *ctx = l->ctx;
    const moe_layer_config *c = &l->c;
    const int H = c->hidden, I = x.I;
    const moe_qformat &af = c->act_format;
    const moe_scale_rule rule = l->qx.f.rule; /* resolved at create */
    const int64_t rows = tiles * moe__gemm_tile_m(shape), live = rows < b.rows ? rows : b.rows; /* offsets[G] exact */
    if (w8a8_fp8_shape(l, x, shape)) {
        if (x_codes == MOE_X_CODES_SIDE) MOE_CUDA_TRY(ctx, cudaStreamWaitEvent(st, (cudaEvent_t)l->xq_event, 0));
        else if (x_codes == MOE_X_CODES_NONE) MOE_TRY(quantize_x(l, xv, T, b.q.xq, b.q.xs, ws, st));
        moe_gemm_fp8 f = {};
        f.a = (const uint8_t *)(ws + b.q.xq), f.a_scale = (const float *)(ws + b.q.xs);
        if (shape == MOE_GEMM_SMALL) { /* decode: h in f32, quantised between the GEMMs */
            /* wgmma with the weights in registers (FP4 always: W4A8; FP8 where opted in), else mma.sync */
            const bool rs = moe__cuda_gemm_rs_decode_fits(ctx, g) && moe__cuda_gemm_rs_decode_fits(ctx, g2);
            /* an expert's rows: one a token, but a hash table row may name an expert more than once */
            const int64_t max_rows = c->router.kind == MOE_ROUTER_HASH ? T * c->router.top_k : T;
            auto decode = [&](const moe_gemm_params &gp, const moe_gemm_fp8 &fp, bool glu) {
                return rs ? moe__cuda_grouped_gemm_rs_decode(ctx, gp, fp, glu, tiles, max_rows, st)
                          : moe__cuda_grouped_gemm_fp8_decode(ctx, gp, fp, glu, tiles, st);
            };
            g.c32 = (float *)(ws + b.q.h8);
            MOE_TRY(decode(g, f, true));
            uint8_t *hq = (uint8_t *)(ws + b.q.hq);
            float *hqs = (float *)(ws + b.q.hqs);
            MOE_TRY(moe__cuda_act_quant(ctx, g.c32, hq, hqs, b.rows, live, g.offsets + g.n_groups, I, rule,
                                        af.amax_floor, st));
            moe_gemm_fp8 f2 = {};
            f2.a = hq, f2.a_scale = hqs, f2.a_scale_ld = b.rows;
            return decode(g2, f2, false);
        }
        f.c = (uint8_t *)(ws + b.q.h8), f.c_scale = (float *)(ws + b.q.hs), f.c_scale_ld = b.rows;
        f.rule = rule, f.amax_floor = af.amax_floor;
        const int tile_m = moe__gemm_tile_m(shape);
        MOE_TRY(moe__cuda_grouped_gemm_fp8(ctx, g, f, true, tile_m, tiles, st));
        moe_gemm_fp8 f2 = {};
        f2.a = f.c, f2.a_scale = f.c_scale, f2.a_scale_ld = f2.a_rows = b.rows;
        return moe__cuda_grouped_gemm_fp8(ctx, g2, f2, false, tile_m, tiles, st);
    }
    /* h leaves GEMM 1 in f32, so that it is quantised from the value the reference quantises (a bf16 h first
     * would move about 3% of its codes by a step) */
    __nv_bfloat16 *xq = (__nv_bfloat16 *)(ws + b.q.xq), *h = (__nv_bfloat16 *)g.c;
    float *h32 = (float *)(ws + b.q.h8);
    MOE_TRY(moe__cuda_act_fake_quant(ctx, xv, MOE_DTYPE_BF16, xq, T, nullptr, H, rule, af.amax_floor, st));
    g.a = xq, g.c32 = h32;
    /* FP4 weights on their wgmma tile: xq into the K order in place, h32 written so; the quantisation blocks of 128
     * hold whole spans of 32, so h's quantisation is that of the natural order */
    MOE_TRY(kperm_operands(l, xq, T, shape, b.q.xq, ws, g, g2, st));
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
    moe__cuda_layer_plan(l, plan_tokens, s, ws, &pc, &po);
    if (!permuted) MOE_TRY(moe_permute(ctx, &pc, ids, T, &po, ws + s->permute, s->permute_bytes, st));

    /* at most min(rows / tile_m, T k) tiles hold rows */
    const int64_t assignments = T * k;
    const int64_t max_tiles = (assignments + (int64_t)E * (tile_m - 1)) / tile_m;
    const int64_t tiles = max_tiles < assignments ? max_tiles : assignments;
    const expert_set es = routed_set(l);
    moe_gemm_params g, g2;
    expert_gemms(l, es, routed_bufs(s), ws, x, k, c->router.weight_on_input ? weights : nullptr, l->tile_counters, g,
                 g2);
    /* a decode step's GEMM 1 (the decode kernels) as a dependent launch of the routing, so that its CTAs are resident
     * when the routing ends. Measured on the H100 (docs/performance.md): MXFP4 at T = 1 DeepSeek-V2 -8.7%,
     * DeepSeek-V3 -3.9%, at T = 8 level; W8A8 level or slower (DeepSeek-V3 +0.4 to +1.2% at T = 1-8), so not there */
    g.early = plan_tokens <= MOE_GATE_GROUP && !l->act_quantized;
    if (l->act_quantized)
        return experts_w8a8(l, es, g, g2, x, x_codes, T, shape, tiles, routed_bufs(s), ws, st);
    MOE_TRY(kperm_operands(l, x, T, shape, s->y, ws, g, g2, st));
    MOE_TRY(moe__cuda_grouped_gemm(ctx, g, true, shape, tiles, 1, st));
    return moe__cuda_grouped_gemm(ctx, g2, false, shape, tiles, 1, st);
}

moe_status moe__cuda_layer_shared_quantized(moe_layer *l, const void *xv, int64_t T, bool x_codes,
                                            const moe_layer_scratch *s, char *ws, cudaStream_t side) {
    const expert_set x = shared_set(l);
    const moe_gemm_shape shape = shared_shape(l, T);
    const int tile_m = moe__gemm_tile_m(shape);
    const int64_t Tp = (T + tile_m - 1) / tile_m * tile_m, rows = (int64_t)x.n * Tp;
    expert_bufs b = shared_bufs(s);
    const unsigned blocks = (unsigned)((rows + 256) / 256); /* rows + 1 >= S + 1 threads */
    MOE_CUDA_TRY(l->ctx, moe_launch(false, shared_plan_kernel, blocks, 256, 0, side, x.n, T, Tp,
                                    (int64_t *)(ws + b.offsets), (int32_t *)(ws + b.row_src)));
    moe_gemm_params g, g2;
    expert_gemms(l, x, b, ws, xv, 1, nullptr, l->tile_counters ? l->tile_counters + 4 : nullptr, g, g2);
    const int64_t tiles = rows / tile_m;
    if (!l->act_quantized) {
        MOE_TRY(kperm_operands(l, xv, T, shape, b.y, ws, g, g2, side));
        MOE_TRY(moe__cuda_grouped_gemm(l->ctx, g, true, shape, tiles, 1, side));
        return moe__cuda_grouped_gemm(l->ctx, g2, false, shape, tiles, 1, side);
    }
    int at = MOE_X_CODES_NONE; /* the side stream's x codes are ready in its order, the gate's before the fork */
    if (x_codes && w8a8_fp8_shape(l, x, shape)) b.q.xq = s->w8a8.xq, b.q.xs = s->w8a8.xs, at = MOE_X_CODES_READY;
    return experts_w8a8(l, x, g, g2, xv, at, T, shape, tiles, b, ws, side);
}

bool moe__cuda_layer_x_codes(const moe_layer *l, int64_t T) {
    const moe_layer_config *c = &l->c;
    return T > 0 && w8a8_fp8_shape(l, routed_set(l), routed_shape(l, T, c->router.top_k, c->router.n_experts));
}

moe_status moe__cuda_layer_quantize_x(moe_layer *l, const void *x, int64_t T, const moe_layer_scratch *s, char *ws,
                                      cudaStream_t st) {
    return quantize_x(l, x, T, s->w8a8.xq, s->w8a8.xs, ws, st);
}
