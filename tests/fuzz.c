/* fuzz.c — the API fuzz tests' shared parts (fuzz.h). */
#include <math.h>
#include <stdlib.h>

#include "fuzz.h"

void *fz_buf(fuzz *f, size_t bytes, const void *init) {
    void *p = NULL;
    if (f->n_held == (int)(sizeof f->held / sizeof f->held[0])) return NULL;
    if (!f->gpu) {
        p = calloc(bytes ? bytes : 1, 1);
        if (p && init) memcpy(p, init, bytes);
    } else if (moe_alloc(f->ctx, bytes ? bytes : 1, &p) != MOE_OK ||
               (init ? moe_memcpy(f->ctx, p, init, bytes, MOE_COPY_HOST_TO_CTX, NULL)
                     : moe_memset(f->ctx, p, 0, bytes ? bytes : 1, NULL)) != MOE_OK) {
        moe_free(f->ctx, p);
        p = NULL;
    }
    if (p) f->held[f->n_held++] = p;
    return p;
}

/* bytes of a buffer of fz_buf back to the host. */
int fz_get(fuzz *f, void *host, const void *buf, size_t bytes) {
    if (!f->gpu) return memcpy(host, buf, bytes), 0;
    return moe_memcpy(f->ctx, host, buf, bytes, MOE_COPY_CTX_TO_HOST, NULL) != MOE_OK || moe_sync(f->ctx, NULL) != MOE_OK;
}

/* Frees the op's buffers; on the GPU after its work is done, which must still succeed (a kernel that faulted
 * leaves the context failing every call after it, each with a message). */
void fz_release(fuzz *f) {
    if (f->gpu && moe_sync(f->ctx, NULL) != MOE_OK) {
        fprintf(stderr, "  the GPU failed after an op: %s\n", moe_last_error(f->ctx));
        f->bad++;
    }
    for (int i = 0; i < f->n_held; i++) f->gpu ? moe_free(f->ctx, f->held[i]) : free(f->held[i]);
    f->n_held = 0;
}

uint64_t fz_next(fuzz *f) { return test_splitmix64(&f->state); }
int fz_pick(fuzz *f, const int *v, int n) { return v[fz_next(f) % (uint64_t)n]; }
/* A float that is often special: NaN, +-Inf, 0, else a small value. */
float fz_float(fuzz *f) {
    switch (fz_next(f) % 10) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 0.0f;
    default: return (float)((int64_t)(fz_next(f) % 2001) - 1000) / 100.0f;
    }
}

/* Counts a call's status: a failure must name its problem. */
void fz_status(fuzz *f, moe_status s, const char *what) {
    if (s == MOE_OK) {
        f->ok++;
    } else if (!moe_last_error(f->ctx)[0]) {
        fprintf(stderr, "  %s failed (%s) without a message\n", what, moe_status_string(s));
        f->bad++;
    } else {
        f->failed++;
        if (getenv("MOE_FUZZ_VERBOSE")) fprintf(stderr, "    %s: %s\n", what, moe_last_error(f->ctx));
    }
}

/* The n int32 of buf (context memory) are all in -1 .. hi - 1. */
void fz_range(fuzz *f, const char *what, const int32_t *buf, int64_t n, int64_t hi) {
    int32_t *v = malloc(4 * (size_t)(n + 1));
    if (n > 0 && fz_get(f, v, buf, 4 * (size_t)n)) {
        fprintf(stderr, "  %s: cannot read the output back: %s\n", what, moe_last_error(f->ctx));
        f->bad++;
        n = 0;
    }
    for (int64_t i = 0; i < n; i++)
        if (v[i] < -1 || v[i] >= hi) {
            fprintf(stderr, "  %s[%lld] = %d is outside -1..%lld\n", what, (long long)i, v[i], (long long)hi - 1);
            f->bad++;
            break;
        }
    free(v);
}

/* The bytes of two buffers of fz_buf are the same (a property violation otherwise). */
int fz_same(fuzz *f, const char *what, const void *a, const void *b, size_t bytes) {
    if (!bytes) return 0;
    char *ha = malloc(bytes), *hb = malloc(bytes);
    const long bad = f->bad;
    if (fz_get(f, ha, a, bytes) || fz_get(f, hb, b, bytes)) {
        fprintf(stderr, "  %s: cannot read the outputs back: %s\n", what, moe_last_error(f->ctx));
        f->bad++;
    } else if (memcmp(ha, hb, bytes)) {
        size_t i = 0;
        while (ha[i] == hb[i]) i++;
        fprintf(stderr, "  %s differ from byte %zu of %zu\n", what, i, bytes);
        f->bad++;
    }
    free(ha), free(hb);
    return f->bad != bad;
}

const char *const fz_models[9] = {"mixtral-8x7b", "qwen2-moe",    "qwen3-30b-a3b", "olmoe",       "deepseek-v2",
                                  "deepseek-v3",  "gpt-oss-20b", "gpt-oss-120b", "llama4-scout"};

fz_dims fz_layer_config(fuzz *f, moe_layer_config *c) {
    moe_layer_preset(fz_models[fz_next(f) % 9], c);
    c->hidden = fz_next(f) % 4 ? PICK(f, 8, 16, 24, 40, 64, 136, 256) : PICK(f, 7, 0, -8);
    c->intermediate = fz_next(f) % 4 ? PICK(f, 8, 16, 32, 48, 72) : PICK(f, 9, 0);
    c->router.n_experts = fz_next(f) % 4 ? PICK(f, 1, 2, 4, 8, 16, 32) : PICK(f, 0, 3);
    if (c->router.kind == MOE_ROUTER_GROUPED)
        c->router.n_groups = c->router.topk_groups = c->router.n_experts >= 4 ? 4 : 1;
    c->router.top_k = fz_next(f) % 4 ? PICK(f, 1, 2, 4, 8) : PICK(f, 0, 40);
    c->router.bias = NULL;
    if (fz_next(f) % 4 == 0) c->dtype = (moe_dtype)PICK(f, MOE_DTYPE_BF16, MOE_DTYPE_F16, MOE_DTYPE_E4M3);
    else c->dtype = f->gpu ? MOE_DTYPE_BF16 : MOE_DTYPE_F32;
    if (fz_next(f) % 8 == 0) c->activation = (moe_activation)(fz_next(f) % 6);
    if (fz_next(f) % 8 == 0) c->w13_layout = (moe_w13_layout)(fz_next(f) % 3);
    if (fz_next(f) % 3 == 0) c->n_shared = PICK(f, 0, 1, 2, -1);
    if (c->n_shared) c->shared_intermediate = fz_next(f) % 4 ? PICK(f, 8, 16, 24) : PICK(f, 0, 5);
    if (fz_next(f) % 6 == 0) c->shared_gate = 1;
    if (fz_next(f) % 4 == 0) c->gate_dtype = (moe_dtype)PICK(f, MOE_DTYPE_BF16, MOE_DTYPE_F32, MOE_DTYPE_F16);
    if (fz_next(f) % 3 == 0) {
        c->expert_format = moe_qformat_preset((moe_qformat_kind)(fz_next(f) % 9));
        if (c->expert_format.kind == MOE_QFORMAT_NVFP4) c->expert_format.global = (moe_nvfp4_global)(fz_next(f) % 3);
    }
    if (fz_next(f) % 4 == 0) c->act_format = moe_qformat_preset((moe_qformat_kind)(fz_next(f) % 9));
    if (fz_next(f) % 6 == 0 && c->n_shared > 0) c->shared_format = c->expert_format;
    const fz_dims d = {c->hidden > 0 ? c->hidden : 8, c->intermediate > 0 ? c->intermediate : 8,
                       c->router.n_experts > 0 ? c->router.n_experts : 1, c->n_shared > 0 ? c->n_shared : 0,
                       c->shared_intermediate > 0 ? c->shared_intermediate : 8};
    return d;
}

/* What a weight buffer holds, for its random values. */
typedef enum { FZ_VALUES, FZ_CODES, FZ_SCALES, FZ_F32 } fz_content;

/* A buffer of `copies` x `bytes` bytes: `bytes` of random content, repeated. */
static void *fz_weight(fuzz *f, size_t bytes, int64_t copies, fz_content what, moe_dtype dtype) {
    if (copies < 1) copies = 1;
    uint8_t *h = malloc(bytes * (size_t)copies + 1);
    if (!h) return NULL;
    const size_t item = what == FZ_F32 || (what == FZ_SCALES && dtype == MOE_DTYPE_F32) ? 4
                        : what == FZ_VALUES && dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_E4M3 ? 2
                        : what == FZ_VALUES && dtype == MOE_DTYPE_F32 ? 4 : 1;
    for (size_t i = 0; i + item <= bytes; i += item) {
        const uint64_t r = fz_next(f);
        const float v = (float)((int)(r % 201) - 100) / 400.0f; /* -0.25 .. 0.25 */
        if (item == 4) {
            const float u = what == FZ_SCALES ? 0.01f + (float)(r % 100) / 1000.0f : v; /* scales 0.01 .. 0.11 */
            memcpy(h + i, &u, 4);
        } else if (item == 2) {
            const uint16_t b = moe_bf16_from_f32(v);
            memcpy(h + i, &b, 2);
        } else if (what == FZ_SCALES) { /* E8M0 2^-9 .. 2^3, E4M3 0.0156 .. 0.5 */
            h[i] = (uint8_t)(dtype == MOE_DTYPE_E8M0 ? 118 + r % 13 : 0x18 + r % 0x20);
        } else { /* codes with neither E4M3's NaN nor E5M2's Inf and NaN; E2M1 pairs as they come */
            h[i] = (uint8_t)(r & 0xB7);
        }
    }
    for (int64_t c = 1; c < copies; c++) memcpy(h + (size_t)c * bytes, h, bytes);
    void *p = fz_buf(f, bytes * (size_t)copies, h);
    free(h);
    return p;
}

void fz_layer_weights(fuzz *f, const moe_layer_config *c, const fz_dims *d, int64_t slots, moe_layer_weights *w) {
    memset(w, 0, sizeof *w);
    const int64_t H = d->H, E = d->E, copies = slots > E ? (slots + E - 1) / E : 1; /* whole copies */
    /* routed (E matrices, copied to the slots) and shared (S) w13 and w2: values, or elements and scales */
    for (int shared = 0; shared < 2 && (!shared || d->S); shared++) {
        const int64_t m = shared ? d->S : E, width = shared ? d->Is : d->I, n = shared ? 1 : copies;
        const moe_qformat *fmt = shared ? &c->shared_format : &c->expert_format;
        const int64_t s13[3] = {m, 2 * width, H}, s2[3] = {m, H, width};
        moe_qsizes q13 = {0}, q2 = {0};
        const int quant = fmt->kind != MOE_QFORMAT_INVALID && !moe_qtensor_sizes(NULL, fmt, 3, s13, &q13) &&
                          !moe_qtensor_sizes(NULL, fmt, 3, s2, &q2);
        const size_t vb = c->dtype == MOE_DTYPE_F32 ? 4 : 2; /* other dtypes: the layer refuses them */
        const void *d13 = quant ? fz_weight(f, q13.data_bytes, n, FZ_CODES, fmt->elem)
                                : fz_weight(f, (size_t)(m * 2 * width * H) * vb, n, FZ_VALUES, c->dtype);
        const void *d2 = quant ? fz_weight(f, q2.data_bytes, n, FZ_CODES, fmt->elem)
                               : fz_weight(f, (size_t)(m * H * width) * vb, n, FZ_VALUES, c->dtype);
        const void *sc13 = quant ? fz_weight(f, q13.scale_bytes, n, FZ_SCALES, fmt->scale_dtype) : NULL;
        const void *sc2 = quant ? fz_weight(f, q2.scale_bytes, n, FZ_SCALES, fmt->scale_dtype) : NULL;
        const float *g13 = quant && q13.global_scale_bytes ? fz_weight(f, 4 * (size_t)m, n, FZ_SCALES, MOE_DTYPE_F32) : NULL;
        const float *g2 = quant && q13.global_scale_bytes ? fz_weight(f, 4 * (size_t)m, n, FZ_SCALES, MOE_DTYPE_F32) : NULL;
        if (shared)
            w->shared_w13 = d13, w->shared_w2 = d2, w->shared_w13_scale = sc13, w->shared_w2_scale = sc2,
            w->shared_w13_global = g13, w->shared_w2_global = g2;
        else
            w->w13 = d13, w->w2 = d2, w->w13_scale = sc13, w->w2_scale = sc2, w->w13_global = g13, w->w2_global = g2;
    }
    if (fz_next(f) % 2)
        w->b13 = fz_weight(f, 4 * (size_t)(E * 2 * d->I), copies, FZ_F32, MOE_DTYPE_F32),
        w->b2 = fz_weight(f, 4 * (size_t)(E * H), copies, FZ_F32, MOE_DTYPE_F32);
    /* the router weights in gate_dtype: bf16 as two-byte values, anything else (f16 is refused) as f32 */
    const int gate_bf16 = c->gate_dtype == MOE_DTYPE_BF16;
    const size_t gb = gate_bf16 ? 2 : 4;
    const fz_content gw = gate_bf16 ? FZ_VALUES : FZ_F32;
    const moe_dtype gd = gate_bf16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32;
    if (fz_next(f) % 4) w->gate = fz_weight(f, gb * (size_t)(E * H), 1, gw, gd);
    if (fz_next(f) % 4 == 0) w->gate_bias = fz_weight(f, 4 * (size_t)E, 1, FZ_F32, MOE_DTYPE_F32);
    if (c->shared_gate) w->shared_gate = fz_weight(f, gb * (size_t)H, 1, gw, gd);
    if (fz_next(f) % 10 == 0) w->w2 = NULL;
}

void fz_layer_inputs(fuzz *f, const moe_layer_config *c, const fz_dims *d, int64_t T, int64_t Hx, fz_inputs *in) {
    const int64_t H = d->H, E = d->E;
    float *h = malloc(4 * (size_t)(T * Hx + T * E + 1));
    int32_t *tok = malloc(4 * (size_t)(T + 1));
    for (int64_t i = 0; i < T * Hx; i++)
        h[i] = fz_next(f) % 50 ? (float)((int)(fz_next(f) % 200) - 100) / 50 : fz_float(f);
    if (c->dtype != MOE_DTYPE_F32) /* two-byte values: the first half's bytes */
        for (int64_t i = 0; i < T * Hx; i++) ((uint16_t *)h)[i] = moe_bf16_from_f32(h[i]);
    for (int64_t i = 0; i < T * E; i++) h[T * Hx + i] = fz_float(f);
    for (int64_t i = 0; i < T; i++) tok[i] = (int32_t)(fz_next(f) % 40) - 5;
    in->x = moe_tensor_2d(fz_buf(f, 4 * (size_t)(T * Hx), h), c->dtype, T, Hx);
    in->out = moe_tensor_2d(fz_buf(f, 4 * (size_t)(T * H), NULL), c->dtype, T, H);
    in->logits = moe_tensor_2d(fz_buf(f, 4 * (size_t)(T * E), h + T * Hx), MOE_DTYPE_F32, T, E);
    in->token_ids = fz_buf(f, 4 * (size_t)T, tok);
    free(h), free(tok);
}

moe_expert_stats *fz_stats(fuzz *f, const fz_dims *d, int *stats_layer) {
    moe_expert_stats *st = NULL;
    *stats_layer = 0;
    if (fz_next(f) % 3) return NULL;
    const int experts = (int)d->E + (fz_next(f) % 4 == 0);
    if (moe_expert_stats_create(f->ctx, PICK(f, 1, 2), experts, &st) != MOE_OK) return NULL;
    *stats_layer = PICK(f, 0, 0, 1, -1, 2);
    return st;
}
