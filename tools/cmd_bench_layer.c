/* cmd_bench_layer.c — `moe bench layer`: one whole MoE layer (gate logits, routing, permute, both expert GEMMs,
 * shared experts, combine) at a model's real shapes with random weights, for several token counts.
 *
 * On a GPU each timing is a CUDA-graph replay of back-to-back forwards that alternate between two copies of the
 * weights, so a step never finds the previous step's experts in L2 (the peers in docs/performance.md are measured
 * the same way). The limit is max(bytes / read bandwidth, FLOPs / bf16 tensor rate) with the ceilings measured
 * in docs/performance.md for the device; bytes count the touched experts' weights as stored (quantised: codes and
 * scales; found by a counted forward before the timing), the shared experts, the gate and x and out. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char usage[] =
    "usage: moe bench layer [options]\n"
    "Times one MoE layer forward (random weights at the model's shapes, bf16 activations).\n"
    "  --model LIST    layer presets, comma separated: qwen3-30b-a3b, qwen3-235b-a22b, deepseek-v3, deepseek-v2,\n"
    "                  mixtral-8x7b, gpt-oss-20b, gpt-oss-120b, olmoe, qwen2-moe, llama4-scout, llama4-maverick\n"
    "                  (default qwen3-30b-a3b,deepseek-v3,mixtral-8x7b on a GPU, qwen3-30b-a3b on the CPU)\n"
    "  --tokens LIST   token counts (default 1,16,128,1024,8192 on a GPU, 1,16 on the CPU)\n"
    "  --dtype T       the routed experts' weights: bf16 (default), fp8 (E4M3, 128x128 blocks, f32 scales:\n"
    "                  DeepSeek-V3), fp8-row, mxfp8, mxfp4 (gpt-oss), nvfp4; activations stay bf16;\n"
    "                  w8a8: fp8 weights and the experts' inputs in FP8 1x128 groups (the FP8 tensor cores)\n"
    "  --reps N        forwards per timing (default: about 30 ms of work on a GPU, 1 on the CPU)\n"
    "  --idle-ms N     idle time before each point's timings (default 500 on a GPU, 0 on the CPU): the GPU's\n"
    "                  power cap otherwise makes a point's clocks depend on the points just before it\n"
    "  --json FILE     also write the results as JSON\n"
    "  --backend B     auto (default), cpu, cuda\n";

/* Ceilings of docs/performance.md (measured with PyTorch on the GPU machines, 2026-11-22). */
static void device_ceilings(const char *device, double *read_gbps, double *tflops) {
    *read_gbps = 0, *tflops = 0;
    if (strstr(device, "H200")) *read_gbps = 4150, *tflops = 785;
    else if (strstr(device, "H100")) *read_gbps = 3000, *tflops = 775; /* copy bandwidth: read not measured */
}

typedef struct layer_copy {
    void *w13, *w2, *b13, *b2, *gate, *gate_bias, *bias, *sw13, *sw2, *sgate;
    void *scale[2], *global[2]; /* quantised experts: w13's and w2's scales and NVFP4 globals */
    moe_layer *layer;
} layer_copy;

/* --dtype: the experts' storage (kind 0: bf16), and the experts' inputs (act; kind 0: bf16). */
static int expert_format_from_name(const char *name, moe_qformat *f, moe_qformat *act) {
    static const struct {
        const char *name;
        moe_qformat_kind kind, act;
    } list[] = {{"bf16", MOE_QFORMAT_INVALID, MOE_QFORMAT_INVALID}, {"fp8", MOE_QFORMAT_FP8_128X128, MOE_QFORMAT_INVALID},
                {"fp8-row", MOE_QFORMAT_FP8_ROW, MOE_QFORMAT_INVALID},  {"mxfp8", MOE_QFORMAT_MXFP8, MOE_QFORMAT_INVALID},
                {"mxfp4", MOE_QFORMAT_MXFP4, MOE_QFORMAT_INVALID},      {"nvfp4", MOE_QFORMAT_NVFP4, MOE_QFORMAT_INVALID},
                {"w8a8", MOE_QFORMAT_FP8_128X128, MOE_QFORMAT_FP8_1X128}};
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

/* Bytes of one expert's w13 (which 0) or w2 (1) as stored, scales included. */
static double expert_matrix_bytes(const moe_layer_config *c, int which) {
    const int64_t shape[2] = {which ? c->hidden : 2 * (int64_t)c->intermediate, which ? c->intermediate : c->hidden};
    if (!c->expert_format.kind) return 2.0 * (double)(shape[0] * shape[1]);
    moe_qsizes qs;
    if (moe_qtensor_sizes(NULL, &c->expert_format, 2, shape, &qs) != MOE_OK) return 0;
    return (double)(qs.data_bytes + qs.scale_bytes + qs.global_scale_bytes);
}

/* Replaces the bf16 w13 (which 0) or w2 (1) of a copy by its quantisation in c->expert_format, on the device:
 * the E experts as E matrices, each with an NVFP4 global of its own. */
static moe_status quantize_experts(moe_ctx *ctx, const moe_layer_config *c, layer_copy *w, int which) {
    const int64_t E = c->router.n_experts, rows = which ? c->hidden : 2 * (int64_t)c->intermediate,
                  cols = which ? c->intermediate : c->hidden, shape[2] = {rows, cols};
    moe_qsizes qs;
    void **bf = which ? &w->w2 : &w->w13, *data = NULL;
    moe_status s = moe_qtensor_sizes(ctx, &c->expert_format, 2, shape, &qs);
    if (s == MOE_OK) s = moe_alloc(ctx, qs.data_bytes * (size_t)E, &data);
    if (s == MOE_OK) s = moe_alloc(ctx, qs.scale_bytes * (size_t)E, &w->scale[which]);
    if (s == MOE_OK && qs.global_scale_bytes) s = moe_alloc(ctx, sizeof(float) * (size_t)E, &w->global[which]);
    for (int64_t e = 0; e < E && s == MOE_OK; e++) {
        moe_tensor x = moe_tensor_2d((char *)*bf + (size_t)(e * rows * cols) * 2, MOE_DTYPE_BF16, rows, cols);
        moe_qtensor q = {c->expert_format, 2, {rows, cols}, (char *)data + (size_t)e * qs.data_bytes,
                         (char *)w->scale[which] + (size_t)e * qs.scale_bytes,
                         w->global[which] ? (float *)w->global[which] + e : NULL};
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

static void *host_f32_to_ctx(moe_ctx *ctx, int64_t n, double scale, uint64_t seed) {
    float *h = malloc(sizeof(float) * (size_t)n);
    void *d = NULL;
    if (h) {
        cli_random(h, n, "normal", seed);
        for (int64_t i = 0; i < n; i++) h[i] *= (float)scale;
        if (moe_alloc(ctx, sizeof(float) * (size_t)n, &d) == MOE_OK)
            moe_memcpy(ctx, d, h, sizeof(float) * (size_t)n, MOE_COPY_HOST_TO_CTX, NULL);
    }
    free(h);
    return d;
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
    for (int m = 0; m < 2 && s == MOE_OK && c->expert_format.kind; m++) s = quantize_experts(ctx, c, w, m);
    if (s != MOE_OK) return s;
    w->gate = host_f32_to_ctx(ctx, (int64_t)(E * H), 1.0 / sqrt((double)H), seed);
    if (c->activation == MOE_ACT_GPTOSS_GLU) {
        w->b13 = host_f32_to_ctx(ctx, (int64_t)(E * 2 * I), 0.1, seed + 1);
        w->b2 = host_f32_to_ctx(ctx, (int64_t)(E * H), 0.1, seed + 2);
        w->gate_bias = host_f32_to_ctx(ctx, (int64_t)E, 0.1, seed + 3);
    }
    if (c->router.kind == MOE_ROUTER_GROUPED && c->router.score == MOE_SCORE_SIGMOID)
        w->bias = host_f32_to_ctx(ctx, (int64_t)E, 0.01, seed + 4);
    if (c->shared_gate) w->sgate = host_f32_to_ctx(ctx, (int64_t)H, 1.0 / sqrt((double)H), seed + 5);
    moe_layer_config cc = *c;
    cc.router.bias = w->bias;
    const moe_layer_weights lw = {w->w13,    w->w2,      w->b13,      w->b2,       w->gate,
                                  w->gate_bias, w->sw13,  w->sw2,      w->sgate,    w->scale[0],
                                  w->scale[1], w->global[0], w->global[1]};
    return moe_layer_create(ctx, &cc, &lw, &w->layer);
}

static void free_copy(moe_ctx *ctx, layer_copy *w) {
    moe_layer_destroy(w->layer);
    void *all[] = {w->w13,  w->w2,   w->b13,      w->b2,       w->gate,     w->gate_bias, w->bias,
                   w->sw13, w->sw2,  w->sgate,    w->scale[0], w->scale[1], w->global[0], w->global[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) moe_free(ctx, all[i]);
    memset(w, 0, sizeof *w);
}

typedef struct step_args {
    layer_copy *copies;
    int n_copies;
    moe_layer_io io;
    void *ws;
    size_t ws_bytes;
} step_args;

static moe_status forwards(step_args *a, int n) {
    for (int i = 0; i < n; i++) {
        moe_status s = moe_layer_forward(a->copies[i % a->n_copies].layer, &a->io, a->ws, a->ws_bytes, NULL);
        if (s != MOE_OK) return s;
    }
    return MOE_OK;
}

/* Microseconds per forward: the median of 5 timings of reps forwards (one graph replay on a GPU). */
static double time_forward(moe_ctx *ctx, step_args *a, int reps, int idle_ms) {
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    moe_graph *g = NULL;
    if (gpu) {
        if (moe_graph_begin(ctx, NULL) || forwards(a, reps)) return -1;
        if (moe_graph_end(ctx, NULL, &g) || moe_graph_replay(ctx, g, NULL) || moe_sync(ctx, NULL)) return -1;
    }
    if (idle_ms > 0) { /* every point starts its timings from the same power state */
        const struct timespec pause = {idle_ms / 1000, (long)(idle_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    double t[5];
    for (int r = 0; r < 5; r++) {
        const double t0 = cli_now_ms();
        if (gpu ? moe_graph_replay(ctx, g, NULL) : forwards(a, reps)) return -1;
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

/* One model at every token count; appends to results. */
static int bench_model(moe_ctx *ctx, const char *model, const moe_qformat *format, const moe_qformat *act,
                       const int64_t *tokens, int n_tok, int reps_opt, int idle_ms, double read_gbps, double tflops,
                       json_t *results) {
    moe_layer_config c;
    if (moe_layer_preset(model, &c) != MOE_OK) {
        fprintf(stderr, "moe bench layer: unknown model %s\n", model);
        return CLI_USAGE;
    }
    c.expert_format = *format;
    c.act_format = *act;
    const double expert_bytes = expert_matrix_bytes(&c, 0) + expert_matrix_bytes(&c, 1);
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    const int64_t H = c.hidden, I = c.intermediate, E = c.router.n_experts, k = c.router.top_k, S = c.n_shared,
                  Is = c.shared_intermediate;
    int64_t T_max = 0;
    for (int i = 0; i < n_tok; i++) T_max = tokens[i] > T_max ? tokens[i] : T_max;
    fprintf(stderr, "  %s: preparing weights (%.1f GB of experts a copy)...\r", model, (double)E * expert_bytes / 1e9);

    /* a pool of random bf16 weights at the scale 1/sqrt(H) */
    const int64_t pool_n = (int64_t)1 << 23;
    float *hp = malloc(sizeof(float) * (size_t)pool_n);
    uint16_t *hb = malloc(2 * (size_t)pool_n);
    void *pool = NULL, *x = NULL, *out = NULL, *ws = NULL;
    layer_copy copies[2];
    memset(copies, 0, sizeof copies);
    const int n_copies = gpu ? 2 : 1;
    moe_expert_stats *stats = NULL;
    int rc = CLI_FAIL;
    if (!hp || !hb) goto done;
    cli_random(hp, pool_n, "normal", 7);
    for (int64_t i = 0; i < pool_n; i++) hb[i] = moe_bf16_from_f32(hp[i] / sqrtf((float)H));
    if (moe_alloc(ctx, 2 * (size_t)pool_n, &pool) ||
        moe_memcpy(ctx, pool, hb, 2 * (size_t)pool_n, MOE_COPY_HOST_TO_CTX, NULL))
        goto fail;
    for (int i = 0; i < n_copies; i++)
        if (make_copy(ctx, &c, pool, 2 * (size_t)pool_n, 100 + (uint64_t)i, &copies[i])) goto fail;
    moe_free(ctx, pool), pool = NULL;
    /* x: random rows, the same for every T (the first T of them) */
    {
        float *hx = malloc(sizeof(float) * (size_t)(T_max * H));
        uint16_t *hx16 = malloc(2 * (size_t)(T_max * H));
        int ok = hx && hx16;
        if (ok) {
            cli_random(hx, T_max * H, "normal", 11);
            for (int64_t i = 0; i < T_max * H; i++) hx16[i] = moe_bf16_from_f32(hx[i]);
            ok = moe_alloc(ctx, 2 * (size_t)(T_max * H), &x) == MOE_OK &&
                 moe_memcpy(ctx, x, hx16, 2 * (size_t)(T_max * H), MOE_COPY_HOST_TO_CTX, NULL) == MOE_OK &&
                 moe_alloc(ctx, 2 * (size_t)(T_max * H), &out) == MOE_OK;
        }
        free(hx), free(hx16);
        if (!ok) goto fail;
    }
    size_t ws_bytes = 0;
    if (moe_layer_workspace_size(copies[0].layer, T_max, &ws_bytes) || (ws_bytes && moe_alloc(ctx, ws_bytes, &ws)) ||
        moe_expert_stats_create(ctx, 1, (int)E, &stats))
        goto fail;

    for (int ti = 0; ti < n_tok; ti++) {
        const int64_t T = tokens[ti];
        fprintf(stderr, "  %s T=%lld (%d/%d)...                    \r", model, (long long)T, ti + 1, n_tok);
        moe_tensor xt = moe_tensor_2d(x, MOE_DTYPE_BF16, T, H), ot = moe_tensor_2d(out, MOE_DTYPE_BF16, T, H);
        step_args a = {copies, n_copies, {&xt, NULL, &ot, NULL, stats, 0}, ws, ws_bytes};
        /* a counted forward: the experts this T touches */
        int64_t counts[1024];
        if (moe_expert_stats_reset(ctx, stats, NULL) || forwards(&a, 1) ||
            moe_expert_stats_read(ctx, stats, counts, NULL, NULL))
            goto fail;
        a.io.stats = NULL;
        int64_t touched = 0;
        for (int64_t e = 0; e < E; e++) touched += counts[e] > 0;
        int reps = reps_opt;
        if (!reps) {
            reps = 1;
            if (gpu) { /* about 30 ms of forwards, 2..200 */
                const double t0 = cli_now_ms();
                if (forwards(&a, 4) || moe_sync(ctx, NULL)) goto fail;
                const double per = (cli_now_ms() - t0) / 4;
                reps = per > 0 ? (int)(30.0 / per) : 200;
                reps = reps < 2 ? 2 : reps > 200 ? 200 : reps;
            }
        }
        const double us = time_forward(ctx, &a, reps, idle_ms);
        if (us < 0) goto fail;
        const double flops = 2.0 * T * (k * 3.0 * I * H + S * 3.0 * Is * H + (double)E * H);
        const double bytes = touched * expert_bytes + 2.0 * S * 3.0 * Is * H + 4.0 * E * H + 2.0 * 2 * T * H;
        const double limit = read_gbps > 0 ? fmax(bytes / (read_gbps * 1e3), flops / (tflops * 1e6)) : 0;
        printf("%-16s %6lld %4lld %10.1f %9.1f %8.0f %9.1f %7.1f\n", model, (long long)T, (long long)touched, us,
               flops / us / 1e6, bytes / us / 1e3, limit, limit > 0 ? 100.0 * limit / us : 0);
        fflush(stdout);
        json_array_append_new(results, json_pack("{s:s, s:I, s:I, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "model",
                                                 model, "tokens", (json_int_t)T, "experts_touched",
                                                 (json_int_t)touched, "reps", reps, "us", us, "flops", flops, "bytes",
                                                 bytes, "tflops", flops / us / 1e6, "gbps", bytes / us / 1e3,
                                                 "limit_us", limit, "pct_of_limit",
                                                 limit > 0 ? 100.0 * limit / us : 0.0));
    }
    rc = CLI_OK;
    goto done;
fail:
    fprintf(stderr, "moe bench layer: %s: %s\n", model, moe_last_error(ctx));
done:
    free(hp), free(hb);
    for (int i = 0; i < 2; i++) free_copy(ctx, &copies[i]);
    moe_expert_stats_destroy(ctx, stats);
    moe_free(ctx, pool), moe_free(ctx, x), moe_free(ctx, out), moe_free(ctx, ws);
    return rc;
}

int bench_layer(int argc, char **argv) {
    int idle_ms = -1;
    cli_bench_opts o = {NULL, NULL, "bf16", NULL, "auto", 0, NULL, &idle_ms, NULL};
    const int parsed = cli_bench_parse(argc, argv, usage, &o);
    if (parsed >= 0) return parsed;
    const char *models = o.models, *tokens = o.tokens, *dtype_name = o.dtype, *json_path = o.json;
    const int reps = o.reps;
    moe_qformat format, act;
    if (expert_format_from_name(dtype_name, &format, &act) || reps < 0) {
        fprintf(stderr, "moe bench layer: --dtype bf16, fp8, fp8-row, mxfp8, mxfp4, nvfp4 or w8a8; --reps >= 0\n");
        return CLI_USAGE;
    }
    moe_ctx *ctx = cli_ctx(o.backend, 0);
    if (!ctx) return CLI_FAIL;
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    if (idle_ms < 0) idle_ms = gpu ? 500 : 0;
    if (!models) models = gpu ? "qwen3-30b-a3b,deepseek-v3,mixtral-8x7b" : "qwen3-30b-a3b";
    if (!tokens) tokens = gpu ? "1,16,128,1024,8192" : "1,16";
    int64_t token_list[16];
    const int n_tok = cli_parse_shape(tokens, token_list, 16);
    for (int i = 0; i < n_tok; i++)
        if (token_list[i] < 1) {
            fprintf(stderr, "moe bench layer: token counts must be >= 1\n");
            moe_ctx_destroy(ctx);
            return CLI_USAGE;
        }
    if (!n_tok) {
        fprintf(stderr, "moe bench layer: --tokens takes a list like 1,16,128\n");
        moe_ctx_destroy(ctx);
        return CLI_USAGE;
    }
    double read_gbps, tflops;
    device_ceilings(moe_ctx_describe(ctx), &read_gbps, &tflops);
    if (act.kind) tflops *= 2; /* Hopper's FP8 tensor cores: twice the BF16 rate */
    printf("moe bench layer: %s experts, %s activations, on %s, commit %s; limit from %s\n", dtype_name,
           act.kind ? "fp8 1x128" : "bf16",
           moe_ctx_describe(ctx), MOE_GIT_COMMIT,
           read_gbps > 0 ? "the ceilings of docs/performance.md" : "(no ceilings known for this device)");
    printf("%-16s %6s %4s %10s %9s %8s %9s %7s\n", "model", "T", "u", "us", "TFLOP/s", "GB/s", "limit us",
           "% limit");
    json_t *results = json_array();
    int rc = CLI_OK;
    char list[512];
    snprintf(list, sizeof list, "%s", models);
    for (char *save = NULL, *model = strtok_r(list, ",", &save); model; model = strtok_r(NULL, ",", &save)) {
        const int r =
            bench_model(ctx, model, &format, &act, token_list, n_tok, reps, idle_ms, read_gbps, tflops, results);
        if (r != CLI_OK) rc = r;
    }
    fprintf(stderr, "%60s\r", "");
    if (json_path) {
        char date[32];
        cli_utc_date(date, sizeof date);
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:f, s:f, s:s, s:i, s:o}", "bench", "layer", "device",
                                moe_ctx_describe(ctx), "commit", MOE_GIT_COMMIT, "date", date, "dtype", dtype_name,
                                "read_gbps", read_gbps, "tflops", tflops, "ceilings", "docs/performance.md",
                                "idle_ms", idle_ms, "results", results);
        if (!doc || json_dump_file(doc, json_path, JSON_INDENT(2)) != 0) rc = CLI_FAIL;
        json_decref(doc);
    } else {
        json_decref(results);
    }
    moe_ctx_destroy(ctx);
    return rc;
}
