/* layer_bench.c — what `moe bench layer` and `moe tune` share: a model's layer with random weights (bf16, or
 * quantised on the device), two copies of it on a GPU so that back-to-back forwards never find the previous
 * step's experts in L2, x and out for up to T_max tokens, and the timing of forwards as CUDA-graph replays. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* --dtype: the experts' storage (kind 0: bf16), and the experts' inputs (act; kind 0: bf16). */
int cli_expert_format(const char *name, moe_qformat *f, moe_qformat *act) {
    static const struct {
        const char *name;
        moe_qformat_kind kind, act;
    } list[] = {{"bf16", MOE_QFORMAT_INVALID, MOE_QFORMAT_INVALID}, {"fp8", MOE_QFORMAT_FP8_128X128, MOE_QFORMAT_INVALID},
                {"fp8-row", MOE_QFORMAT_FP8_ROW, MOE_QFORMAT_INVALID},  {"mxfp8", MOE_QFORMAT_MXFP8, MOE_QFORMAT_INVALID},
                {"mxfp4", MOE_QFORMAT_MXFP4, MOE_QFORMAT_INVALID},      {"nvfp4", MOE_QFORMAT_NVFP4, MOE_QFORMAT_INVALID},
                {"w8a8", MOE_QFORMAT_FP8_128X128, MOE_QFORMAT_FP8_1X128},
                {"w4a8", MOE_QFORMAT_MXFP4, MOE_QFORMAT_FP8_1X128},
                {"w4a8-nvfp4", MOE_QFORMAT_NVFP4, MOE_QFORMAT_FP8_1X128}};
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (!strcmp(name, list[i].name)) {
            memset(f, 0, sizeof *f);
            memset(act, 0, sizeof *act);
            if (list[i].kind) *f = moe_qformat_preset(list[i].kind);
            if (list[i].act) *act = moe_qformat_preset(list[i].act);
            f->global = list[i].kind == MOE_QFORMAT_NVFP4 ? MOE_NVFP4_GLOBAL_DECODE : MOE_NVFP4_GLOBAL_UNSET;
            return 0;
        }
    return -1;
}

/* Replaces E bf16 matrices (E, rows, cols) at *bf by their quantisation in format f, on the device: each matrix with
 * scales of its own at *scale and, for NVFP4, a global of its own at *global. */
static moe_status quantize_matrices(moe_ctx *ctx, const moe_qformat *f, int64_t E, int64_t rows, int64_t cols,
                                    void **bf, void **scale, void **global) {
    const int64_t shape[2] = {rows, cols};
    moe_qsizes qs;
    void *data = NULL;
    moe_status s = moe_qtensor_sizes(ctx, f, 2, shape, &qs);
    if (s == MOE_OK) s = moe_alloc(ctx, qs.data_bytes * (size_t)E, &data);
    if (s == MOE_OK) s = moe_alloc(ctx, qs.scale_bytes * (size_t)E, scale);
    if (s == MOE_OK && qs.global_scale_bytes) s = moe_alloc(ctx, sizeof(float) * (size_t)E, global);
    for (int64_t e = 0; e < E && s == MOE_OK; e++) {
        moe_tensor x = moe_tensor_2d((char *)*bf + (size_t)(e * rows * cols) * 2, MOE_DTYPE_BF16, rows, cols);
        moe_qtensor q = {*f, 2, {rows, cols}, (char *)data + (size_t)e * qs.data_bytes,
                         (char *)*scale + (size_t)e * qs.scale_bytes, *global ? (float *)*global + e : NULL};
        s = moe_quantize(ctx, &x, &q, NULL);
    }
    moe_free(ctx, *bf);
    *bf = data;
    return s;
}

/* Fills n bytes of ctx memory from a device pool of random bf16 values, shifting the source each chunk so that
 * experts differ. */
static moe_status fill(moe_ctx *ctx, void *dst, size_t n, const void *pool, size_t pool_bytes) {
    size_t shift = 0;
    for (size_t off = 0; off < n;) {
        const size_t len = n - off < pool_bytes - shift ? n - off : pool_bytes - shift;
        moe_status s = moe_memcpy(ctx, (char *)dst + off, (const char *)pool + shift, len, MOE_COPY_CTX_TO_CTX, NULL);
        if (s != MOE_OK) return s;
        off += len;
        shift = (shift + 2 * 4099) % (pool_bytes / 2);
    }
    return MOE_OK;
}

static moe_status alloc_fill(moe_ctx *ctx, void **p, size_t n, const void *pool, size_t pool_bytes) {
    if (!n) return MOE_OK;
    moe_status s = moe_alloc(ctx, n, p);
    return s == MOE_OK ? fill(ctx, *p, n, pool, pool_bytes) : s;
}

/* n normal values times scale in ctx memory, in f32 or (dtype bf16) rounded to bf16 */
static void *host_to_ctx(moe_ctx *ctx, int64_t n, double scale, uint64_t seed, moe_dtype dtype) {
    const int bf16 = dtype == MOE_DTYPE_BF16;
    float *h = malloc(sizeof(float) * (size_t)n);
    uint16_t *b = bf16 ? malloc(2 * (size_t)n) : NULL;
    void *d = NULL;
    if (h && (b || !bf16)) {
        cli_random(h, n, "normal", seed);
        for (int64_t i = 0; i < n; i++) h[i] *= (float)scale;
        for (int64_t i = 0; bf16 && i < n; i++) b[i] = moe_bf16_from_f32(h[i]);
        const size_t bytes = (bf16 ? 2 : 4) * (size_t)n;
        if (moe_alloc(ctx, bytes, &d) == MOE_OK)
            moe_memcpy(ctx, d, bf16 ? (const void *)b : (const void *)h, bytes, MOE_COPY_HOST_TO_CTX, NULL);
    }
    free(h), free(b);
    return d;
}

static void *host_f32_to_ctx(moe_ctx *ctx, int64_t n, double scale, uint64_t seed) {
    return host_to_ctx(ctx, n, scale, seed, MOE_DTYPE_F32);
}

static moe_status make_copy(moe_ctx *ctx, const moe_layer_config *c, const void *pool, size_t pool_bytes,
                            uint64_t seed, layer_copy *w) {
    const size_t H = (size_t)c->hidden, I = (size_t)c->intermediate, E = (size_t)c->router.n_experts;
    const size_t S = (size_t)c->n_shared, Is = (size_t)c->shared_intermediate;
    memset(w, 0, sizeof *w);
    moe_status s = alloc_fill(ctx, &w->w13, E * 2 * I * H * 2, pool, pool_bytes);
    if (s == MOE_OK) s = alloc_fill(ctx, &w->w2, E * H * I * 2, pool, pool_bytes);
    if (s == MOE_OK) s = alloc_fill(ctx, &w->sw13, S * 2 * Is * H * 2, pool, pool_bytes);
    if (s == MOE_OK) s = alloc_fill(ctx, &w->sw2, S * H * Is * 2, pool, pool_bytes);
    for (int m = 0; m < 2 && s == MOE_OK && c->expert_format.kind; m++)
        s = quantize_matrices(ctx, &c->expert_format, (int64_t)E, m ? (int64_t)H : 2 * (int64_t)I,
                              m ? (int64_t)I : (int64_t)H, m ? &w->w2 : &w->w13, &w->scale[m], &w->global[m]);
    for (int m = 0; m < 2 && s == MOE_OK && S && c->shared_format.kind; m++)
        s = quantize_matrices(ctx, &c->shared_format, (int64_t)S, m ? (int64_t)H : 2 * (int64_t)Is,
                              m ? (int64_t)Is : (int64_t)H, m ? &w->sw2 : &w->sw13, &w->sscale[m], &w->sglobal[m]);
    if (s != MOE_OK) return s;
    w->gate = host_to_ctx(ctx, (int64_t)(E * H), 1.0 / sqrt((double)H), seed, c->gate_dtype);
    if (c->activation == MOE_ACT_GPTOSS_GLU) {
        w->b13 = host_f32_to_ctx(ctx, (int64_t)(E * 2 * I), 0.1, seed + 1);
        w->b2 = host_f32_to_ctx(ctx, (int64_t)(E * H), 0.1, seed + 2);
        w->gate_bias = host_f32_to_ctx(ctx, (int64_t)E, 0.1, seed + 3);
    }
    if (c->router.kind == MOE_ROUTER_GROUPED && c->router.score == MOE_SCORE_SIGMOID)
        w->bias = host_f32_to_ctx(ctx, (int64_t)E, 0.01, seed + 4);
    if (c->shared_gate) w->sgate = host_to_ctx(ctx, (int64_t)H, 1.0 / sqrt((double)H), seed + 5, c->gate_dtype);
    w->config = *c;
    w->config.router.bias = w->bias;
    const moe_layer_weights lw = {.w13 = w->w13, .w2 = w->w2, .b13 = w->b13, .b2 = w->b2, .gate = w->gate,
                                  .gate_bias = w->gate_bias, .shared_w13 = w->sw13, .shared_w2 = w->sw2,
                                  .shared_gate = w->sgate, .w13_scale = w->scale[0], .w2_scale = w->scale[1],
                                  .w13_global = w->global[0], .w2_global = w->global[1],
                                  .shared_w13_scale = w->sscale[0], .shared_w2_scale = w->sscale[1],
                                  .shared_w13_global = w->sglobal[0], .shared_w2_global = w->sglobal[1]};
    w->weights = lw;
    return moe_layer_create(ctx, &w->config, &w->weights, &w->layer);
}

static void free_copy(moe_ctx *ctx, layer_copy *w) {
    moe_layer_destroy(w->layer);
    void *all[] = {w->w13,  w->w2,   w->b13,      w->b2,       w->gate,     w->gate_bias, w->bias,
                   w->sw13, w->sw2,  w->sgate,    w->scale[0], w->scale[1], w->global[0], w->global[1],
                   w->sscale[0], w->sscale[1], w->sglobal[0], w->sglobal[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) moe_free(ctx, all[i]);
    memset(w, 0, sizeof *w);
}

moe_status cli_layer_bench_open(moe_ctx *ctx, const moe_layer_config *c, int64_t T_max, cli_layer_bench *b) {
    memset(b, 0, sizeof *b);
    b->ctx = ctx;
    b->n_copies = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA ? 2 : 1;
    const int64_t H = c->hidden;
    /* a pool of random bf16 weights at the scale 1/sqrt(H) */
    const int64_t pool_n = (int64_t)1 << 23;
    float *hp = malloc(sizeof(float) * (size_t)pool_n);
    uint16_t *hb = malloc(2 * (size_t)pool_n);
    float *hx = malloc(sizeof(float) * (size_t)(T_max * H));
    uint16_t *hx16 = malloc(2 * (size_t)(T_max * H));
    void *pool = NULL;
    moe_status s = hp && hb && hx && hx16 ? MOE_OK : MOE_ERR_OOM;
    if (s == MOE_OK) {
        cli_random(hp, pool_n, "normal", 7);
        for (int64_t i = 0; i < pool_n; i++) hb[i] = moe_bf16_from_f32(hp[i] / sqrtf((float)H));
        s = moe_alloc(ctx, 2 * (size_t)pool_n, &pool);
    }
    if (s == MOE_OK) s = moe_memcpy(ctx, pool, hb, 2 * (size_t)pool_n, MOE_COPY_HOST_TO_CTX, NULL);
    for (int i = 0; i < b->n_copies && s == MOE_OK; i++)
        s = make_copy(ctx, c, pool, 2 * (size_t)pool_n, 100 + (uint64_t)i, &b->copies[i]);
    /* x: random rows, the same for every T (the first T of them) */
    if (s == MOE_OK) {
        cli_random(hx, T_max * H, "normal", 11);
        for (int64_t i = 0; i < T_max * H; i++) hx16[i] = moe_bf16_from_f32(hx[i]);
        s = moe_alloc(ctx, 2 * (size_t)(T_max * H), &b->x);
    }
    if (s == MOE_OK) s = moe_memcpy(ctx, b->x, hx16, 2 * (size_t)(T_max * H), MOE_COPY_HOST_TO_CTX, NULL);
    if (s == MOE_OK) s = moe_alloc(ctx, 2 * (size_t)(T_max * H), &b->out);
    if (s == MOE_OK) s = moe_layer_workspace_size(b->copies[0].layer, T_max, &b->ws_bytes);
    if (s == MOE_OK && b->ws_bytes) s = moe_alloc(ctx, b->ws_bytes, &b->ws);
    free(hp), free(hb), free(hx), free(hx16);
    moe_free(ctx, pool);
    return s;
}

moe_status cli_layer_bench_retile(cli_layer_bench *b, moe_expert_tile tile) {
    for (int i = 0; i < b->n_copies; i++) {
        layer_copy *w = &b->copies[i];
        moe_layer_destroy(w->layer);
        w->layer = NULL;
        w->config.expert_tile = tile;
        moe_status s = moe_layer_create(b->ctx, &w->config, &w->weights, &w->layer);
        if (s != MOE_OK) return s;
    }
    return MOE_OK;
}

void cli_layer_bench_close(cli_layer_bench *b) {
    for (int i = 0; i < 2; i++) free_copy(b->ctx, &b->copies[i]);
    moe_free(b->ctx, b->x), moe_free(b->ctx, b->out), moe_free(b->ctx, b->ws);
    memset(b, 0, sizeof *b);
}

/* n forwards of T tokens, alternating between the copies. */
moe_status cli_layer_bench_forwards(cli_layer_bench *b, int64_t T, int n, moe_expert_stats *stats) {
    const int64_t H = b->copies[0].config.hidden;
    moe_tensor xt = moe_tensor_2d(b->x, MOE_DTYPE_BF16, T, H), ot = moe_tensor_2d(b->out, MOE_DTYPE_BF16, T, H);
    const moe_layer_io io = {&xt, NULL, &ot, NULL, stats, 0};
    for (int i = 0; i < n; i++) {
        moe_status s = moe_layer_forward(b->copies[i % b->n_copies].layer, &io, b->ws, b->ws_bytes, NULL);
        if (s != MOE_OK) return s;
    }
    return MOE_OK;
}

double cli_layer_bench_time(cli_layer_bench *b, int64_t T, int reps, int idle_ms, int *reps_used) {
    moe_ctx *ctx = b->ctx;
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    if (!reps) {
        reps = 1;
        if (gpu) { /* about 30 ms of forwards, 2..200 */
            const double t0 = cli_now_ms();
            if (cli_layer_bench_forwards(b, T, 4, NULL) || moe_sync(ctx, NULL)) return -1;
            const double per = (cli_now_ms() - t0) / 4;
            reps = per > 0 ? (int)(30.0 / per) : 200;
            reps = reps < 2 ? 2 : reps > 200 ? 200 : reps;
        }
    }
    if (reps_used) *reps_used = reps;
    moe_graph *g = NULL;
    if (gpu) {
        if (moe_graph_begin(ctx, NULL) || cli_layer_bench_forwards(b, T, reps, NULL)) return -1;
        if (moe_graph_end(ctx, NULL, &g) || moe_graph_replay(ctx, g, NULL) || moe_sync(ctx, NULL)) return -1;
    }
    if (idle_ms > 0) { /* every point starts its timings from the same power state */
        const struct timespec pause = {idle_ms / 1000, (long)(idle_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    double t[5];
    for (int r = 0; r < 5; r++) {
        const double t0 = cli_now_ms();
        if (gpu ? moe_graph_replay(ctx, g, NULL) : cli_layer_bench_forwards(b, T, reps, NULL)) return -1;
        if (moe_sync(ctx, NULL)) return -1;
        t[r] = (cli_now_ms() - t0) * 1e3 / reps;
    }
    moe_graph_destroy(ctx, g);
    for (int i = 1; i < 5; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            const double x = t[j];
            t[j] = t[j - 1], t[j - 1] = x;
        }
    return t[2];
}
