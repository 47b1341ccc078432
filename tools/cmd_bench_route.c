/* cmd_bench_route.c — `moe bench route`: router + load statistics + permute (the plan of the grouped GEMM) for a
 * model's router at several token counts, as moe_route_permute (--unfused: moe_route then moe_permute). On a GPU the three run as CUDA-graph replays (the graph holds --reps
 * back-to-back iterations, so launch overhead is what a captured decode step pays); the bandwidth limit is the
 * bytes they must move over the copy bandwidth measured in the same run. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: moe bench route [options]\n"
    "Times routing + expert-load statistics + permute (contiguous layout, tile 128) per step.\n"
    "  --model LIST    router presets, comma separated (default qwen3-30b-a3b,deepseek-v3)\n"
    "  --tokens LIST   token counts (default 1,16,128,1024,8192)\n"
    "  --dtype T       router logits: f32 (default) or bf16\n"
    "  --reps N        iterations per timing (default 200 on a GPU, 3 on the CPU)\n"
    "  --route-only    time the router and its load counters alone\n"
    "  --unfused       moe_route then moe_permute, not moe_route_permute\n"
    "  --json FILE     also write the results as JSON\n"
    "  --backend B     auto (default), cpu, cuda\n";

typedef struct route_bench {
    moe_router_config router;
    moe_route_args args;
    moe_permute_config perm;
    moe_permute_outputs out;
    void *ws;
    size_t ws_bytes;
} route_bench;

static int route_only; /* --route-only: time the router (and its load counters) without the permute */
static int unfused;    /* --unfused: the two calls apart */

static moe_status step(moe_ctx *ctx, route_bench *b) {
    if (!route_only && !unfused)
        return moe_route_permute(ctx, &b->router, &b->args, &b->perm, &b->out, b->ws, b->ws_bytes, NULL);
    moe_status s = moe_route(ctx, &b->router, &b->args, NULL);
    if (s == MOE_OK && !route_only)
        s = moe_permute(ctx, &b->perm, b->args.ids, b->args.n_tokens, &b->out, b->ws, b->ws_bytes, NULL);
    return s;
}

/* Microseconds per step: the median of 5 timings of reps steps (as one graph replay on a GPU). */
static double time_steps(moe_ctx *ctx, route_bench *b, int reps) {
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    moe_graph *g = NULL;
    if (step(ctx, b) || moe_sync(ctx, NULL)) return -1;
    if (gpu) {
        if (moe_graph_begin(ctx, NULL)) return -1;
        for (int i = 0; i < reps; i++)
            if (step(ctx, b)) return -1;
        if (moe_graph_end(ctx, NULL, &g) || moe_graph_replay(ctx, g, NULL) || moe_sync(ctx, NULL)) return -1;
    }
    double t[5];
    for (int r = 0; r < 5; r++) {
        double t0 = cli_now_ms();
        if (gpu) {
            if (moe_graph_replay(ctx, g, NULL)) return -1;
        } else {
            for (int i = 0; i < reps; i++)
                if (step(ctx, b)) return -1;
        }
        if (moe_sync(ctx, NULL)) return -1;
        t[r] = (cli_now_ms() - t0) * 1e3 / reps;
    }
    moe_graph_destroy(ctx, g);
    for (int i = 1; i < 5; i++) /* sort */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return t[2];
}

int bench_route(int argc, char **argv) {
    cli_bench_opts o = {"qwen3-30b-a3b,deepseek-v3", "1,16,128,1024,8192", "f32", NULL, "auto", 0, &route_only, NULL,
                        &unfused, NULL, NULL, NULL};
    const int parsed = cli_bench_parse(argc, argv, usage, &o);
    if (parsed >= 0) return parsed;
    const char *models = o.models, *tokens = o.tokens, *dtype_name = o.dtype, *json_path = o.json;
    int reps = o.reps;
    int64_t token_list[16];
    const int n_tok = cli_parse_tokens(tokens, token_list, 16);
    const moe_dtype dtype = moe_dtype_from_name(dtype_name);
    if (!n_tok || cli_check_models(models, 1)) return CLI_USAGE;
    if (dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_BF16) {
        fprintf(stderr, "moe bench route: --dtype f32 or bf16\n");
        return CLI_USAGE;
    }
    moe_ctx *ctx = cli_ctx(o.backend, 0);
    if (!ctx) return CLI_FAIL;
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    if (!reps) reps = gpu ? 200 : 3;

    /* the copy bandwidth of this run, for the limit; on a GPU the copies run 0.3 s first, so that the clocks have
     * left idle before anything is timed */
    const size_t copy_bytes = (size_t)256 << 20;
    void *ca = NULL, *cb = NULL;
    double copy_gbps = 0;
    if (moe_alloc(ctx, copy_bytes, &ca) == MOE_OK && moe_alloc(ctx, copy_bytes, &cb) == MOE_OK) {
        for (double t0 = cli_now_ms(); gpu && cli_now_ms() - t0 < 300;) {
            moe_memcpy(ctx, cb, ca, copy_bytes, MOE_COPY_CTX_TO_CTX, NULL);
            moe_sync(ctx, NULL);
        }
        moe_memcpy(ctx, cb, ca, copy_bytes, MOE_COPY_CTX_TO_CTX, NULL);
        moe_sync(ctx, NULL);
        double t0 = cli_now_ms();
        for (int i = 0; i < 10; i++) moe_memcpy(ctx, cb, ca, copy_bytes, MOE_COPY_CTX_TO_CTX, NULL);
        moe_sync(ctx, NULL);
        copy_gbps = 2.0 * copy_bytes * 10 / ((cli_now_ms() - t0) * 1e6);
    }
    moe_free(ctx, ca);
    moe_free(ctx, cb);
    printf("moe bench route: %s%s logits, %d steps a timing, on %s, commit %s; copy %.0f GB/s\n",
           route_only ? "router only, " : unfused ? "unfused, " : "", dtype_name, reps, moe_ctx_describe(ctx), MOE_GIT_COMMIT, copy_gbps);
    printf("%-16s %6s %10s %10s %8s\n", "model", "T", "step us", "limit us", "x limit");
    json_t *results = json_array();
    int rc = CLI_OK;
    char list[512];
    snprintf(list, sizeof list, "%s", models);
    for (char *save = NULL, *model = strtok_r(list, ",", &save); model; model = strtok_r(NULL, ",", &save)) {
        route_bench b;
        memset(&b, 0, sizeof b);
        if (moe_router_preset(model, &b.router) != MOE_OK) {
            fprintf(stderr, "moe bench route: unknown model %s\n", model);
            rc = CLI_USAGE;
            continue;
        }
        const int E = b.router.n_experts, k = b.router.top_k;
        void *bias = NULL;
        if (b.router.kind == MOE_ROUTER_GROUPED && b.router.score == MOE_SCORE_SIGMOID) {
            float *hb = calloc((size_t)E, 4);
            moe_alloc(ctx, 4 * (size_t)E, &bias);
            moe_memcpy(ctx, bias, hb, 4 * (size_t)E, MOE_COPY_HOST_TO_CTX, NULL);
            free(hb);
            b.router.bias = bias;
        }
        moe_expert_stats *stats = NULL;
        moe_expert_stats_create(ctx, 1, E, &stats);
        for (int ti = 0; ti < n_tok; ti++) {
            const int64_t T = token_list[ti];
            const size_t lb = (size_t)(T * E) * (size_t)moe_dtype_bytes(dtype, 1);
            b.perm = (moe_permute_config){E, 0, E, k, 128, MOE_PERMUTE_CONTIGUOUS, 0};
            const int64_t rows = moe_permute_rows(&b.perm, T);
            moe_permute_workspace_size(ctx, &b.perm, T, &b.ws_bytes);
            float *hl = malloc(4 * (size_t)(T * E) + 4);
            if (!hl) {
                fprintf(stderr, "moe bench route: %s T=%lld: no host memory for the logits\n", model, (long long)T);
                rc = CLI_FAIL;
                continue;
            }
            cli_random(hl, T * E, "normal", (uint64_t)(T + E));
            if (dtype == MOE_DTYPE_BF16)
                for (int64_t i = 0; i < T * E; i++) ((uint16_t *)hl)[i] = moe_bf16_from_f32(hl[i]);
            void *logits = NULL;
            moe_tensor lt;
            memset(&b.out, 0, sizeof b.out);
            b.ws = NULL;
            int ok = moe_alloc(ctx, lb + 4, &logits) == MOE_OK &&
                     moe_memcpy(ctx, logits, hl, lb, MOE_COPY_HOST_TO_CTX, NULL) == MOE_OK &&
                     moe_alloc(ctx, 8 * (size_t)(T * k) + 8, (void **)&b.args.ids) == MOE_OK &&
                     moe_alloc(ctx, 4 * (size_t)(T * k) + 4, (void **)&b.args.weights) == MOE_OK &&
                     moe_alloc(ctx, 4 * (size_t)E, (void **)&b.out.counts) == MOE_OK &&
                     moe_alloc(ctx, 8 * (size_t)(E + 1), (void **)&b.out.offsets) == MOE_OK &&
                     moe_alloc(ctx, 4 * (size_t)rows + 4, (void **)&b.out.row_src) == MOE_OK &&
                     moe_alloc(ctx, 4 * (size_t)(T * k) + 4, (void **)&b.out.slot_row) == MOE_OK &&
                     (!b.ws_bytes || moe_alloc(ctx, b.ws_bytes, &b.ws) == MOE_OK);
            free(hl);
            lt = moe_tensor_2d(logits, dtype, T, E);
            b.args.logits = &lt;
            b.args.n_tokens = T;
            b.args.stats = stats;
            double us = ok ? time_steps(ctx, &b, reps) : -1;
            if (us < 0) {
                fprintf(stderr, "moe bench route: %s T=%lld: %s\n", model, (long long)T, moe_last_error(ctx));
                rc = CLI_FAIL;
            } else {
                /* bytes: logits read; ids and weights written; ids read again; row_src, slot_row written */
                const double bytes = (double)lb + 8.0 * T * k + (route_only ? 0 : 12.0 * T * k);
                const double limit_us = copy_gbps > 0 ? bytes / (copy_gbps * 1e3) : 0;
                printf("%-16s %6lld %10.2f %10.3f %8.1f\n", model, (long long)T, us, limit_us,
                       limit_us > 0 ? us / limit_us : 0);
                json_array_append_new(results, json_pack("{s:s, s:I, s:f, s:f, s:f, s:f}", "model", model, "tokens",
                                                         (json_int_t)T, "us", us, "bytes", bytes, "limit_us", limit_us,
                                                         "ratio_to_limit", limit_us > 0 ? us / limit_us : 0));
            }
            moe_free(ctx, logits);
            moe_free(ctx, b.args.ids);
            moe_free(ctx, b.args.weights);
            moe_free(ctx, b.out.counts);
            moe_free(ctx, b.out.offsets);
            moe_free(ctx, b.out.row_src);
            moe_free(ctx, b.out.slot_row);
            moe_free(ctx, b.ws);
        }
        moe_expert_stats_destroy(ctx, stats);
        moe_free(ctx, bias);
    }
    if (json_path) {
        char date[32];
        cli_utc_date(date, sizeof date);
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:b, s:b, s:f, s:o}", "bench", "route", "device",
                                moe_ctx_describe(ctx), "commit", MOE_GIT_COMMIT, "date", date, "logits", dtype_name,
                                "reps", reps, "route_only", route_only, "unfused", unfused, "copy_gbps", copy_gbps,
                                "results", results);
        if (!doc || json_dump_file(doc, json_path, JSON_INDENT(2)) != 0) rc = CLI_FAIL;
        json_decref(doc);
    } else {
        json_decref(results);
    }
    moe_ctx_destroy(ctx);
    return rc;
}
