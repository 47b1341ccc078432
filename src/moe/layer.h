/* layer.h — the MoE layer's state and its backends. */
#ifndef MOE_MOE_LAYER_H
#define MOE_MOE_LAYER_H

#include "core/internal.h"
#include "formats/qformat.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_layer {
    moe_ctx *ctx;
    moe_layer_config c;
    moe_layer_weights w;
    /* the experts w13/w2/b13/b2 hold: ids [expert_begin, expert_begin + n_local) of the router's E (all of them
     * for a layer of its own; a rank's slice inside expert parallelism, src/ep/) */
    int expert_begin, n_local;
    int n_global; /* the ids the experts see range over [0, n_global): E, or the physical slots under EPLB */
    /* CUDA, with shared experts or W8A8: the shared experts and x's codes run on a stream of their own beside the
     * routing, forked from and joined back to the caller's stream by these events (one forward at a time per
     * layer) */
    void *side_stream, *fork_event, *join_event, *xq_event;
    /* with them, 4 pairs of zeroed counters in device memory from which the W8A8 tile's CTAs take their tiles
     * (moe_gemm_params.tile_counter): the routed GEMMs 1 and 2, the shared experts' GEMMs 1 and 2 */
    uint32_t *tile_counters;
    /* c.expert_format set: the layouts of w13 (E, 2I, H) and w2 (E, H, I) as E matrices each */
    bool quantized;
    moe_qlayout q13, q2;
    /* c.act_format set (W8A8): the layouts of one row of x (1, H) and of h (1, I), for the CPU reference */
    bool act_quantized;
    moe_qlayout qx, qh;
    /* c.shared_format set: the layouts of shared_w13 (S, 2Is, H) and shared_w2 (S, H, Is); with act_format, of one
     * row of the shared experts' h (1, Is) */
    bool shared_quantized;
    moe_qlayout qs13, qs2, qsh;
};

/* The dtype of the layer's gate weights (config.gate_dtype, zero meaning f32). */
static inline moe_dtype moe__layer_gate_dtype(const moe_layer_config *c) {
    return c->gate_dtype == MOE_DTYPE_BF16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32;
}

/* The GPU's grouped GEMMs work on tiles of 16, 64 or 128 rows (chosen per forward from T); the permutation pads
 * each expert's rows to the tile, so the scratch holds rows for the largest. */
#define MOE_LAYER_MAX_TILE_M 128

/* How the GPU's gate logits split H (cuda/moe/gate.cu): slices of multiples of MOE_GATE_SLICE columns, as many as
 * bring the grid to about MOE_GATE_WANT_FEW CTAs (T < MOE_GATE_MANY_T: CTAs of MOE_GATE_GROUP tokens) or
 * MOE_GATE_WANT_MANY CTAs (the tensor-core kernel's tiles of MOE_GATE_MMA_M tokens). */
#define MOE_GATE_SLICE 128
#define MOE_GATE_GROUP 8
#define MOE_GATE_MANY_T 64
#define MOE_GATE_MMA_M 128
#define MOE_GATE_WANT_FEW 1024
#define MOE_GATE_WANT_MANY 132

/* Rows (of E + 1 floats) the partial sums of the gate's splits need: splits s with s * T <= ceil(H / SLICE) * T,
 * and s <= ceil(WANT / ceil(T / TOKENS_A_CTA)), so s * T <= WANT * TOKENS_A_CTA + T (the larger: 132 x 128). */
static inline int64_t moe__gate_partial_rows(int64_t T, int H) {
    const int64_t a = (int64_t)((H + MOE_GATE_SLICE - 1) / MOE_GATE_SLICE) * T;
    const int64_t few = (int64_t)MOE_GATE_WANT_FEW * MOE_GATE_GROUP, many = (int64_t)MOE_GATE_WANT_MANY * MOE_GATE_MMA_M;
    const int64_t b = (few > many ? few : many) + T;
    return a < b ? a : b;
}

static inline size_t moe__align256(size_t n) {
    return (n + 255) / 256 * 256;
}

/* W8A8's GPU buffers of one set of experts (routed, or quantised shared), as offsets into the workspace: x quantised,
 * (T, H) as bf16 values or E4M3 codes with (T, ceil(H / 128)) f32 scales (xq, xs); h as codes (rows, I) with
 * (ceil(I / 128), rows) scales (h8, hs), or in f32 at h8 (the decode kernel and the bf16 path), whose codes and
 * scales then go to hq, hqs inside the set's bf16 h region, which those paths do not use. */
typedef struct moe_w8a8_scratch {
    size_t xq, xs, h8, hs, hq, hqs;
} moe_w8a8_scratch;

/* Carves them from *at for T tokens of width H and `rows` rows of width I whose bf16 h region starts at h (hq, hqs
 * fit in it: rows I + rows ceil(I / 128) 4 + 255 <= 2 rows I for every I >= 8 and rows >= 127). */
static inline moe_w8a8_scratch moe__w8a8_scratch(size_t *at, size_t T, size_t H, size_t rows, size_t I, size_t h) {
    moe_w8a8_scratch w;
    w.xq = *at, *at += moe__align256(T * H * 2);
    w.xs = *at, *at += moe__align256(T * ((H + 127) / 128) * 4);
    /* the FP8 kernels' h codes and scales, or the f32 h, in one region */
    const size_t codes = moe__align256(rows * I) + moe__align256(rows * ((I + 127) / 128) * 4);
    const size_t h32 = moe__align256(rows * I * 4);
    w.h8 = *at, w.hs = *at + moe__align256(rows * I), *at += codes > h32 ? codes : h32;
    w.hq = h, w.hqs = h + moe__align256(rows * I);
    return w;
}

/* Scratch of one forward of T tokens, as offsets into the caller's workspace (a bump allocator: sizing and
 * carving follow the same code). The CPU uses logits, ids, weights, slot_row and y (f32, a row per (token, slot));
 * the GPU all but y is bf16 rows of the permutation. */
typedef struct moe_layer_scratch {
    size_t logits, ids, weights; /* (T, E) f32, (T, k) int32, (T, k) f32 */
    size_t counts, offsets;      /* (E) int32, (E + 1) int64: the contiguous permutation */
    size_t row_src, slot_row;    /* (rows) int32, (T, k) int32 */
    size_t permute, permute_bytes; /* moe_permute's own scratch */
    size_t h, y;                 /* (rows, I) bf16 activations, (rows, H) bf16 expert outputs */
    moe_w8a8_scratch w8a8;       /* W8A8 (GPU) */
    size_t shared_scale;         /* (T) f32: sigmoid(x . shared_gate) */
    size_t gate_partial;         /* (moe__gate_partial_rows, E + 1) f32 */
    size_t shared_h, shared_y;   /* (S, T, Is) bf16, (S, T, H) bf16; quantised shared: (shared_rows, Is), (.., H) */
    /* GPU, quantised shared experts (config.shared_format): they run through the routed experts' GEMMs as S experts
     * of every token, over a plan of their own (shared_offsets (S + 1), shared_row_src (shared_rows)), each expert's
     * rows padded to the tile, and W8A8's buffers (x's own: when the routed experts' codes are not there to reuse) */
    size_t shared_offsets, shared_row_src;
    moe_w8a8_scratch shared_w8a8;
    int64_t shared_rows;         /* S (T + MAX_TILE_M - 1) */
    int64_t rows;                /* row capacity of the permutation: T k + E (MAX_TILE_M - 1) */
    size_t bytes;                /* total */
} moe_layer_scratch;

moe_layer_scratch moe__layer_scratch(const moe_layer *l, int64_t T);

moe_status moe__cpu_layer_forward(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace);
#ifdef MOE_WITH_CUDA
moe_status moe__cuda_layer_init(moe_layer *l);
void moe__cuda_layer_fini(moe_layer *l);
moe_status moe__cuda_layer_forward(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s,
                                   void *workspace, void *stream);
#endif

/* The stages of a forward, for expert parallelism (src/ep/), which runs them on different ranks. A single
 * forward is route -> experts -> combine on one device; each stage computes every row exactly as it does there,
 * so a forward split over ranks gives the same bits when `plan_tokens` (the tokens of the whole step, over all
 * ranks) picks the same kernels. */

/* Router logits (from the gate when io has none) and routing of io->x: ids, weights (T, k) into the scratch,
 * and the shared gate's sigmoid (GPU: s.shared_scale). */
moe_status moe__layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace,
                            void *stream);

/* CPU: y row slot_row[t k + j] (f32, H) = w2[e] . act(w13[e] . x_t' + b13[e]) + b2[e] for every (t, j) whose
 * id e is one of the layer's experts and whose slot_row is >= 0 (x_t' = w x_t with the weight on the input). */
moe_status moe__cpu_layer_experts(moe_layer *l, const void *x, int64_t T, const int32_t *ids, const float *weights,
                                  const int32_t *slot_row, float *y);
/* CPU: out_t = sum over j in order of w_tj y[slot_row[t k + j]] (rows of -1 skipped) + the shared experts. */
moe_status moe__cpu_layer_combine(moe_layer *l, const void *x, int64_t T, const float *y, const int32_t *slot_row,
                                  const float *weights, void *out);

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace,
                                 void *stream);
/* GPU scratch of the routed experts for T tokens, carved from offset `at` on: the permutation, h and y, and W8A8's
 * buffers (the fields of moe_layer_scratch from counts to w8a8, and rows; bytes: the offset past them; the rest
 * unset). */
moe_layer_scratch moe__cuda_layer_experts_scratch(const moe_layer *l, int64_t T, size_t at);
/* Where W8A8's x codes and scales (s->w8a8.xq, xs) come from for the calls below: the call makes them (NONE);
 * moe__cuda_layer_forward's side stream made them, ready once l->xq_event has fired (SIDE); or the gate made them
 * earlier on the caller's stream (READY; decode steps). */
enum { MOE_X_CODES_NONE = 0, MOE_X_CODES_SIDE = 1, MOE_X_CODES_READY = 2 };
/* GPU: permutation of ids over the layer's experts (tiles chosen from plan_tokens; skipped when permuted: the
 * scratch already holds it), GEMM 1, GEMM 2: y (rows, H) bf16 in the scratch and slot_row (T, k) in s->slot_row.
 * x_codes: where W8A8's x codes and scales in the scratch come from (above). */
moe_status moe__cuda_layer_experts(moe_layer *l, const void *x, int64_t T, const int32_t *ids, const float *weights,
                                   int64_t plan_tokens, int permuted, int x_codes, const moe_layer_scratch *s,
                                   void *workspace, void *stream);
/* GPU: the shared experts of x (T tokens, kernels chosen from plan_tokens) into s->shared_y, on the layer's side
 * stream forked from `stream`; moe__cuda_layer_join makes `stream` wait for them. x_codes: as above; SIDE: queued
 * on the side stream before this call (quantised shared experts reuse them either way). */
moe_status moe__cuda_layer_shared(moe_layer *l, const void *x, int64_t T, int64_t plan_tokens, int x_codes,
                                  const moe_layer_scratch *s, void *workspace, void *stream);
moe_status moe__cuda_layer_join(moe_layer *l, void *stream);
/* GPU: out_t = sum over j in order of w_tj y[slot_row[t k + j]] + g_t sum_s shared_y[row(s) + t] (shared_y,
 * shared_scale may be NULL), where row(s) is shared_offsets[s] (device memory: the quantised shared experts' plan)
 * or s T (shared_offsets NULL). plan_early: slot_row and weights were written before the kernel last queued on
 * `stream` started (then the combine reads them before its wait for that kernel). */
moe_status moe__cuda_layer_combine(moe_layer *l, const void *y, const int32_t *slot_row, const float *weights,
                                   int plan_early, int64_t T, const void *shared_y, const int64_t *shared_offsets,
                                   const float *shared_scale, void *out, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_MOE_LAYER_H */
