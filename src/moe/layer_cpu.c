/* layer_cpu.c — the MoE layer on the CPU (docs/layer.md): the reference, f32 accumulation, threads over tokens.
 * Each token's output is computed by one thread in slot order, so results do not depend on the thread count. */
#include <stdlib.h>

#include "formats/scalar.h"
#include "moe/layer.h"
#include "route/route_math.h"

static inline float moe_ld(const void *p, moe_dtype d, int64_t i) {
    return d == MOE_DTYPE_BF16 ? moe__bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static float moe_gelu(float z) {
    return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f));
}

static float moe_gelu_tanh(float z) {
    return 0.5f * z * (1.0f + tanhf(0.79788456080286536f * (z + 0.044715f * z * z * z)));
}

/* One expert matrix (rows, cols) as the reference reads it: plain values of the layer's dtype, or matrix e of a
 * quantised tensor, dequantised row by row (moe__cpu_dequantize_row: the formats' own definition). */
typedef struct moe_wmat {
    const void *data;     /* plain: this matrix; quantised: the whole tensor's elements */
    moe_dtype dtype;      /* plain */
    const moe_qlayout *q; /* NULL: plain */
    const void *scale;
    const float *global;  /* NVFP4: (E) */
    int64_t e;
} moe_wmat;

static moe_wmat moe_plain(const void *data, moe_dtype dtype) {
    const moe_wmat m = {data, dtype, NULL, NULL, NULL, 0};
    return m;
}

/* Expert e's w13 (which 0) or w2 (1) of the routed experts. */
static moe_wmat moe_expert_mat(const moe_layer *l, int which, int64_t e) {
    const moe_layer_config *c = &l->c;
    const int64_t I = c->intermediate, H = c->hidden, esize = c->dtype == MOE_DTYPE_BF16 ? 2 : 4;
    const void *data = which ? l->w.w2 : l->w.w13;
    if (!l->quantized) return moe_plain((const char *)data + e * (which ? H * I : 2 * I * H) * esize, c->dtype);
    const moe_wmat m = {data, c->dtype, which ? &l->q2 : &l->q13, which ? l->w.w2_scale : l->w.w13_scale,
                        which ? l->w.w2_global : l->w.w13_global, e};
    return m;
}

/* Shared expert e's shared_w13 (which 0) or shared_w2 (1): plain values of the layer's dtype, or matrix e of the
 * quantised shared tensors (config.shared_format). */
static moe_wmat moe_shared_mat(const moe_layer *l, int which, int64_t e) {
    const moe_layer_config *c = &l->c;
    const int64_t Is = c->shared_intermediate, H = c->hidden, esize = c->dtype == MOE_DTYPE_BF16 ? 2 : 4;
    const void *data = which ? l->w.shared_w2 : l->w.shared_w13;
    if (!l->shared_quantized) return moe_plain((const char *)data + e * (which ? H * Is : 2 * Is * H) * esize, c->dtype);
    const moe_wmat m = {data, c->dtype, which ? &l->qs2 : &l->qs13, which ? l->w.shared_w2_scale : l->w.shared_w13_scale,
                        which ? l->w.shared_w2_global : l->w.shared_w13_global, e};
    return m;
}

/* Row r (cols values) of m in f32. */
static void moe_wmat_row(const moe_wmat *m, int64_t r, int cols, float *out) {
    if (m->q) {
        moe__cpu_dequantize_row(m->q, m->data, m->scale, m->global ? m->global + m->e : NULL, m->e, r, out);
        return;
    }
    for (int c = 0; c < cols; c++) out[c] = moe_ld(m->data, m->dtype, r * cols + c);
}

/* h (I) = act(w13 . x + b13) for one expert: w13 (2I, H), x (H) f32; a (2I) and row (H) are scratch. */
static void moe_ffn_up(const moe_layer *l, const moe_wmat *w13, const float *b13, int I, const float *x, float *a,
                       float *h, float *row) {
    const int H = l->c.hidden;
    for (int r = 0; r < 2 * I; r++) {
        moe_wmat_row(w13, r, H, row);
        float s = 0.0f;
        for (int c = 0; c < H; c++) s += row[c] * x[c];
        a[r] = b13 ? s + b13[r] : s;
    }
    const int inter = l->c.w13_layout == MOE_W13_INTERLEAVED;
    for (int i = 0; i < I; i++) {
        const float g = inter ? a[2 * i] : a[i], u = inter ? a[2 * i + 1] : a[I + i];
        switch (l->c.activation) {
        case MOE_ACT_GELU_GLU: h[i] = moe_gelu(g) * u; break;
        case MOE_ACT_GELU_TANH_GLU: h[i] = moe_gelu_tanh(g) * u; break;
        case MOE_ACT_GPTOSS_GLU: {
            const float gc = g < l->c.act_limit ? g : l->c.act_limit;
            const float uc = u < -l->c.act_limit ? -l->c.act_limit : u > l->c.act_limit ? l->c.act_limit : u;
            h[i] = gc * moe__sigmoidf(l->c.act_alpha * gc) * (uc + 1.0f);
            break;
        }
        default: h[i] = g * moe__sigmoidf(g) * u; break;
        }
    }
}

/* acc (H) += scale * (w2 . h + b2): w2 (H, I); row (I) is scratch. */
static void moe_ffn_down(const moe_layer *l, const moe_wmat *w2, const float *b2, int I, const float *h, float scale,
                         float *acc, float *row) {
    const int H = l->c.hidden;
    for (int r = 0; r < H; r++) {
        moe_wmat_row(w2, r, I, row);
        float s = 0.0f;
        for (int i = 0; i < I; i++) s += row[i] * h[i];
        acc[r] += scale * (b2 ? s + b2[r] : s);
    }
}

/* v (q's cols) -> its value after quantisation in q's format (W8A8 inputs: moe_quantize, then the dequantised
 * value of docs/formats.md); codes and scales are scratch of q's sizes. */
static void moe_act_quantize(moe_ctx *ctx, const moe_qlayout *q, float *v, uint8_t *codes, float *scales) {
    moe_tensor t = moe_tensor_2d(v, MOE_DTYPE_F32, 1, q->cols);
    moe_qtensor qt = {q->f, 2, {1, q->cols}, codes, scales, NULL};
    moe__cpu_quantize(ctx, q, &t, &qt); /* cannot fail: the layout was validated at create */
    moe__cpu_dequantize_row(q, codes, scales, NULL, 0, 0, v);
}

/* The router on the CPU: logits from the gate when io has none, then moe_route. */
static moe_status moe_cpu_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, char *ws) {
    moe_ctx *ctx = l->ctx;
    const moe_layer_config *c = &l->c;
    const int64_t T = io->x->shape[0];
    const int H = c->hidden, E = c->router.n_experts;
    moe_tensor logits_t;
    const moe_tensor *logits = io->logits;
    if (!logits && l->w.gate) {
        float *lg = (float *)(ws + s->logits);
        const moe_dtype gd = moe__layer_gate_dtype(c);
#pragma omp parallel for num_threads(ctx->n_threads) schedule(static)
        for (int64_t t = 0; t < T; t++)
            for (int e = 0; e < E; e++) {
                float acc = 0.0f;
                for (int h = 0; h < H; h++)
                    acc += moe_ld(l->w.gate, gd, (int64_t)e * H + h) * moe_ld(io->x->data, c->dtype, t * H + h);
                lg[t * E + e] = l->w.gate_bias ? acc + l->w.gate_bias[e] : acc;
            }
        logits_t = moe_tensor_2d(lg, MOE_DTYPE_F32, T, E);
        logits = &logits_t;
    }
    moe_route_args ra = {logits, io->token_ids, T, (int32_t *)(ws + s->ids), (float *)(ws + s->weights), NULL,
                         io->stats, io->stats_layer};
    return moe_route(ctx, &c->router, &ra, NULL);
}

moe_status moe__cpu_layer_experts(moe_layer *l, const void *x, int64_t T, const int32_t *ids, const float *weights,
                                  const int32_t *slot_row, float *y) {
    const moe_layer_config *c = &l->c;
    const int H = c->hidden, I = c->intermediate, k = c->router.top_k;
    int failed = 0;
#pragma omp parallel num_threads(l->ctx->n_threads)
    {
        /* xin (H), a (2I), h (I), acc (H), a weight row (max(H, I)); W8A8: codes (max(H, I)) and scales */
        const int wide = H > I ? H : I;
        float *buf = malloc(sizeof(float) * (size_t)(3 * H + 4 * I + wide / 128 + 1) + (size_t)wide);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        } else {
            float *xin = buf, *a = xin + H, *h = a + 2 * I, *acc = h + I, *wrow = acc + H;
            float *scales = xin + 3 * H + 4 * I; /* after wrow, which has H + I >= wide floats */
            uint8_t *codes = (uint8_t *)(scales + wide / 128 + 1);
#pragma omp for schedule(dynamic, 1)
            for (int64_t tj = 0; tj < T * k; tj++) {
                const int32_t e = ids[tj] - l->expert_begin, row = slot_row[tj];
                if (ids[tj] < 0 || e < 0 || e >= l->n_local || row < 0) continue;
                const float w = weights[tj];
                for (int i = 0; i < H; i++) xin[i] = moe_ld(x, c->dtype, tj / k * H + i);
                /* W8A8: the token is quantised, then weighted (Llama-4), then h before GEMM 2 */
                if (l->act_quantized) moe_act_quantize(l->ctx, &l->qx, xin, codes, scales);
                if (c->router.weight_on_input)
                    for (int i = 0; i < H; i++) xin[i] *= w;
                const moe_wmat w13 = moe_expert_mat(l, 0, e), w2 = moe_expert_mat(l, 1, e);
                moe_ffn_up(l, &w13, l->w.b13 ? l->w.b13 + (int64_t)e * 2 * I : NULL, I, xin, a, h, wrow);
                if (l->act_quantized) moe_act_quantize(l->ctx, &l->qh, h, codes, scales);
                for (int i = 0; i < H; i++) acc[i] = 0.0f;
                moe_ffn_down(l, &w2, l->w.b2 ? l->w.b2 + (int64_t)e * H : NULL, I, h, 1.0f, acc, wrow);
                for (int i = 0; i < H; i++) y[(int64_t)row * H + i] = acc[i];
            }
        }
        free(buf);
    }
    if (failed) return moe__error(l->ctx, MOE_ERR_OOM, "moe_layer_forward: no memory for the CPU scratch");
    return MOE_OK;
}

moe_status moe__cpu_layer_combine(moe_layer *l, const void *x_in, int64_t T, const float *y, const int32_t *slot_row,
                                  const float *weights, void *out) {
    const moe_layer_config *c = &l->c;
    const int H = c->hidden, k = c->router.top_k, Is = c->shared_intermediate;
    const moe_dtype gd = moe__layer_gate_dtype(c); /* the shared gate's */
    int failed = 0;
#pragma omp parallel num_threads(l->ctx->n_threads)
    {
        /* x, acc, sh (H), a (2Is), h (Is), a weight row (H + Is >= either), xq (H); W8A8: scales and codes */
        const int wide = H > Is ? H : Is;
        float *buf = malloc(sizeof(float) * (size_t)(5 * H + 4 * Is + wide / 128 + 1) + (size_t)wide);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        } else {
            float *x = buf, *acc = x + H, *sh = acc + H, *a = sh + H, *h = a + 2 * Is, *row = h + Is;
            float *xq = row + H + Is, *scales = xq + H;
            uint8_t *codes = (uint8_t *)(scales + wide / 128 + 1);
            /* W8A8 with quantised shared experts: their input is Q(x) and their h Q(h), as the routed experts' */
            const bool aq = l->act_quantized && l->shared_quantized;
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < T; t++) {
                for (int i = 0; i < H; i++) acc[i] = 0.0f;
                for (int j = 0; j < k; j++) {
                    const int32_t r = slot_row[t * k + j];
                    if (r < 0) continue;
                    const float w = c->router.weight_on_input ? 1.0f : weights[t * k + j];
                    for (int i = 0; i < H; i++) acc[i] += w * y[(int64_t)r * H + i];
                }
                if (c->n_shared) {
                    for (int i = 0; i < H; i++) x[i] = moe_ld(x_in, c->dtype, t * H + i);
                    float g = 1.0f;
                    if (c->shared_gate) {
                        float d = 0.0f;
                        for (int i = 0; i < H; i++) d += moe_ld(l->w.shared_gate, gd, i) * x[i];
                        g = moe__sigmoidf(d);
                    }
                    for (int i = 0; i < H; i++) sh[i] = 0.0f;
                    if (aq) {
                        for (int i = 0; i < H; i++) xq[i] = x[i];
                        moe_act_quantize(l->ctx, &l->qx, xq, codes, scales);
                    }
                    for (int e = 0; e < c->n_shared; e++) {
                        const moe_wmat w13 = moe_shared_mat(l, 0, e), w2 = moe_shared_mat(l, 1, e);
                        moe_ffn_up(l, &w13, NULL, Is, aq ? xq : x, a, h, row);
                        if (aq) moe_act_quantize(l->ctx, &l->qsh, h, codes, scales);
                        moe_ffn_down(l, &w2, NULL, Is, h, 1.0f, sh, row);
                    }
                    for (int i = 0; i < H; i++) acc[i] += g * sh[i];
                }
                for (int i = 0; i < H; i++) {
                    if (c->dtype == MOE_DTYPE_BF16)
                        ((uint16_t *)out)[t * H + i] = moe__bf16_from_f32(acc[i]);
                    else
                        ((float *)out)[t * H + i] = acc[i];
                }
            }
        }
        free(buf);
    }
    if (failed) return moe__error(l->ctx, MOE_ERR_OOM, "moe_layer_forward: no memory for the CPU scratch");
    return MOE_OK;
}

/* route -> experts (a row per (token, slot), in place t k + j) -> combine */
moe_status moe__cpu_layer_forward(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace) {
    const int64_t T = io->x->shape[0], n = T * l->c.router.top_k;
    char *ws = workspace;
    MOE_TRY(moe_cpu_route(l, io, s, ws));
    const int32_t *ids = (const int32_t *)(ws + s->ids);
    const float *wts = (const float *)(ws + s->weights);
    int32_t *slot_row = (int32_t *)(ws + s->slot_row);
    float *y = (float *)(ws + s->y);
    for (int64_t tj = 0; tj < n; tj++) slot_row[tj] = ids[tj] >= 0 ? (int32_t)tj : -1;
    MOE_TRY(moe__cpu_layer_experts(l, io->x->data, T, ids, wts, slot_row, y));
    return moe__cpu_layer_combine(l, io->x->data, T, y, slot_row, wts, io->out->data);
}

moe_status moe__layer_route(moe_layer *l, const moe_layer_io *io, const moe_layer_scratch *s, void *workspace,
                            void *stream) {
#ifdef MOE_WITH_CUDA
    if (l->ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_layer_route(l, io, s, workspace, stream);
#endif
    (void)stream;
    return moe_cpu_route(l, io, s, workspace);
}
