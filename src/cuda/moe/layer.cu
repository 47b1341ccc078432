/* layer.cu — the MoE layer on the GPU (docs/layer.md), BF16 activations, BF16 or quantised expert weights (turned
 * into bf16 tile by tile inside the GEMMs), f32 accumulation:
 *   logits  = x . gate^T (+ gate_bias)                   gate.cu (and sigmoid(x . shared_gate))
 *   ids, w  = route(logits)                             moe_route
 *   rows    = contiguous permutation, 16-128-row tiles   moe_permute (tile: layer_experts.cu)
 *   h       = act(w13[e] . x[token(row)] + b13[e])       grouped GEMM, GLU epilogue      (rows, I)
 *   y       = w2[e] . h + b2[e]                          grouped GEMM                    (rows, H)
 *                                                        (both: layer_experts.cu)
 *   shared  = the same two GEMMs, dense over all tokens,  grid.z = shared expert          (S, T, H)
 *             (quantised: as S experts of every token in layer_experts.cu), on a side stream beside everything
 *             above (forked and joined by events; W8A8's x codes first; a decode step of T <= 8 forks after its
 *             gate, which then runs alone and writes W8A8's x codes on its way)
 *   out[t]  = sum_j w[t, j] y[row(t, j)] + g_s sum_s shared[s, t], slot order   combine_kernel
 * Every launch is asynchronous on the caller's stream; grids are sized from T on the host (tiles past the
 * permutation's last row exit at once), so nothing waits for the device. */
#include "cuda/common/cuda.cuh"
#include "cuda/moe/gate.cuh"
#include "cuda/moe/grouped_gemm.cuh"
#include "cuda/moe/layer_experts.cuh"
#include "moe/layer.h"

namespace {

constexpr int kCombineThreads = 64; /* x 8 columns a thread */
constexpr int kPlanEarly = 8;       /* slots whose rows and weights may be read before the wait */

/* out[t, h..h+8) = sum over slots j (in order) of coef_j y[slot_row[t, j]] + g_s sum_s shared_y[row(s) + t], row(s)
 * = shared_offsets[s] or s T. A CTA per (token, 512 columns); the rows of up to four slots are loaded before they are
 * added, so a thread keeps four loads in flight instead of waiting for each. plan_early: slot_row and weights were
 * written before the previous grid started (the layer's routing: GEMM 1 is always a plain launch), so the first
 * kPlanEarly slots' rows and weights are read before the wait, and only y's loads follow it. */
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const __nv_bfloat16 *y, const int32_t *slot_row, const float *weights, int k,
                   bool weight_on_input, bool plan_early, const __nv_bfloat16 *shared_y,
                   const int64_t *shared_offsets, int n_shared, const float *shared_scale, int64_t T, int H,
                   __nv_bfloat16 *out) {
    const int64_t t = blockIdx.x;
    auto plan = [&](int j, int32_t &r, float &c) { /* slot j's row (-1: none) and weight */
        r = j < k ? slot_row[t * k + j] : -1;
        c = r < 0 ? 0.0f : weight_on_input ? 1.0f : weights[t * k + j];
    };
    int32_t rows[kPlanEarly];
    float coefs[kPlanEarly];
    if (plan_early)
#pragma unroll
        for (int j = 0; j < kPlanEarly; j++) plan(j, rows[j], coefs[j]);
    moe_pdl_wait();
    moe_pdl_launch_next();
    if (!plan_early)
#pragma unroll
        for (int j = 0; j < kPlanEarly; j++) plan(j, rows[j], coefs[j]);
    const int h = (blockIdx.y * kCombineThreads + threadIdx.x) * 8;
    if (h >= H) return;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    auto add4 = [&](const int32_t (&r)[4], const float (&c)[4]) { /* four slots, in order */
        float v[4][8];
#pragma unroll
        for (int q = 0; q < 4; q++)
            moe_load8(y, r[q] >= 0 ? (int64_t)r[q] * H + h : 0, r[q] >= 0 ? 8 : 0, r[q] >= 0, v[q]);
#pragma unroll
        for (int q = 0; q < 4; q++)
            if (r[q] >= 0)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[e] += c[q] * v[q][e];
    };
#pragma unroll
    for (int j0 = 0; j0 < kPlanEarly; j0 += 4) {
        if (j0 >= k) break;
        const int32_t r[4] = {rows[j0], rows[j0 + 1], rows[j0 + 2], rows[j0 + 3]};
        const float c[4] = {coefs[j0], coefs[j0 + 1], coefs[j0 + 2], coefs[j0 + 3]};
        add4(r, c);
    }
    for (int j0 = kPlanEarly; j0 < k; j0 += 4) {
        int32_t r[4];
        float c[4];
#pragma unroll
        for (int q = 0; q < 4; q++) plan(j0 + q, r[q], c[q]);
        add4(r, c);
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
    const size_t counters = 8 * sizeof(uint32_t); /* 4 pairs (layer.h) */
    MOE_CUDA_TRY(ctx, cudaMalloc((void **)&l->tile_counters, counters));
    MOE_CUDA_TRY(ctx, cudaMemset(l->tile_counters, 0, counters));
    return MOE_OK;
}

extern "C" void moe__cuda_layer_fini(moe_layer *l) {
    moe__cuda_enter(l->ctx, NULL);
    if (l->xq_event) cudaEventDestroy((cudaEvent_t)l->xq_event);
    if (l->join_event) cudaEventDestroy((cudaEvent_t)l->join_event);
    if (l->fork_event) cudaEventDestroy((cudaEvent_t)l->fork_event);
    if (l->side_stream) cudaStreamDestroy((cudaStream_t)l->side_stream);
    if (l->tile_counters) cudaFree(l->tile_counters);
    l->side_stream = l->fork_event = l->join_event = l->xq_event = NULL;
    l->tile_counters = NULL;
}

/* Forks the layer's side stream from st: what is queued on it next runs after what st holds now. */
static moe_status fork_side(moe_layer *l, cudaStream_t st) {
    MOE_CUDA_TRY(l->ctx, cudaEventRecord((cudaEvent_t)l->fork_event, st));
    MOE_CUDA_TRY(l->ctx, cudaStreamWaitEvent((cudaStream_t)l->side_stream, (cudaEvent_t)l->fork_event, 0));
    return MOE_OK;
}

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

extern "C" moe_status moe__cuda_layer_shared(moe_layer *l, const void *xv, int64_t T, int64_t plan_tokens,
                                             int x_codes, const moe_layer_scratch *s, void *workspace, void *stream) {
    cudaStream_t st = moe__cuda_enter(l->ctx, stream), side = (cudaStream_t)l->side_stream;
    char *ws = (char *)workspace;
    MOE_TRY(fork_side(l, st));
    moe_status ss = MOE_OK;
    if (T > 0)
        ss = l->shared_quantized ? moe__cuda_layer_shared_quantized(l, xv, T, x_codes != 0, s, ws, side)
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
                                              const float *weights, int plan_early, int64_t T, const void *shared_y,
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
                                 c->router.weight_on_input != 0, plan_early != 0,
                                 (const __nv_bfloat16 *)shared_y, shared_offsets,
                                 shared_y ? c->n_shared : 0, shared_scale, T, H, (__nv_bfloat16 *)out));
    return MOE_OK;
}

static bool layer_gates(const moe_layer *l, const moe_layer_io *io);
static moe_status layer_gate(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, char *ws, bool alone,
                             bool x_codes, cudaStream_t st);
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
    /* W8A8 on the FP8 kernels: x's codes from that gate on its way (no kernel of their own, and GEMM 1 waits for
     * the routing alone), else on the side stream (before the shared experts), off the chain of gate, routing and
     * permutation that GEMM 1 waits for */
    const bool codes = moe__cuda_layer_x_codes(l, T);
    const bool gate_codes = gate_first && codes, side_codes = !gate_first && codes && l->side_stream;
    const int x_codes = gate_codes ? MOE_X_CODES_READY : side_codes ? MOE_X_CODES_SIDE : MOE_X_CODES_NONE;
    if (gate_first) MOE_TRY(layer_gate(l, io, &s, ws, true, gate_codes, moe__cuda_enter(l->ctx, stream)));
    if (side_codes) {
        cudaStream_t st = moe__cuda_enter(l->ctx, stream), side = (cudaStream_t)l->side_stream;
        MOE_TRY(fork_side(l, st));
        const moe_status qs = moe__cuda_layer_quantize_x(l, x, T, &s, ws, side);
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
    if (side_codes) MOE_CUDA_TRY(l->ctx, cudaStreamWaitEvent(moe__cuda_enter(l->ctx, stream),
                                                              (cudaEvent_t)l->xq_event, 0)); /* always joined */
    if (c->n_shared) MOE_TRY(moe__cuda_layer_join(l, stream)); /* always joined */
    if (rs != MOE_OK) return rs;
    /* the routing wrote slot_row and the weights before GEMM 1, a plain launch, started */
    return moe__cuda_layer_combine(l, ws + s.y, (const int32_t *)(ws + s.slot_row), (const float *)(ws + s.weights),
                                   1, T, c->n_shared ? ws + s.shared_y : nullptr,
                                   l->shared_quantized ? (const int64_t *)(ws + s.shared_offsets) : nullptr,
                                   c->shared_gate ? (const float *)(ws + s.shared_scale) : nullptr, io->out->data,
                                   stream);
}

/* Whether the layer computes gate logits (from its gate weight, when the caller gives none) or Qwen2-MoE's shared
 * scale (always from x). */
static bool layer_gates(const moe_layer *l, const moe_layer_io *io) {
    return (!io->logits && l->w.gate) || l->c.shared_gate;
}

/* The gate's logits and shared scale into the scratch (layer_gates). alone: no other kernel of the layer runs
 * beside it (the gate's cluster may use any SMs). x_codes: W8A8's x codes into s->w8a8 too, as the layer's
 * act_format quantises x. */
static moe_status layer_gate(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, char *ws, bool alone,
                             bool x_codes, cudaStream_t st) {
    const moe_layer_config *c = &l->c;
    const moe_layer_weights *w = &l->w;
    const moe_gate_x_codes xc = {(uint8_t *)(ws + s->w8a8.xq), (float *)(ws + s->w8a8.xs), l->qx.f.rule,
                                 c->act_format.amax_floor};
    return moe__cuda_gate_logits(l->ctx, (const __nv_bfloat16 *)io->x->data, io->logits ? nullptr : w->gate,
                                 moe__layer_gate_dtype(c), w->gate_bias, w->shared_gate, io->x->shape[0], c->hidden,
                                 c->router.n_experts, (float *)(ws + s->logits),
                                 c->shared_gate ? (float *)(ws + s->shared_scale) : nullptr,
                                 (float *)(ws + s->gate_partial), alone, x_codes ? &xc : nullptr, st);
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
    if (!gated && layer_gates(l, io)) MOE_TRY(layer_gate(l, io, s, ws, false, false, st));
    /* the caller's logits, else the gate's */
    const moe_tensor logits_t = moe_tensor_2d(ws + s->logits, MOE_DTYPE_F32, T, c->router.n_experts);
    const moe_tensor *logits = io->logits ? io->logits : l->w.gate ? &logits_t : nullptr;
    const moe_route_args ra = {logits, io->token_ids, T, (int32_t *)(ws + s->ids), (float *)(ws + s->weights), NULL,
                               io->stats, io->stats_layer};
    if (!permute) return moe_route(ctx, &c->router, &ra, st);
    moe_permute_config pc;
    moe_permute_outputs po;
    moe__cuda_layer_plan(l, T, s, ws, &pc, &po);
    return moe_route_permute(ctx, &c->router, &ra, &pc, &po, ws + s->permute, s->permute_bytes, st);
}

extern "C" moe_status moe__cuda_layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s,
                                            void *workspace, void *stream) {
    return layer_route(l, io, s, workspace, false, false, stream);
}
