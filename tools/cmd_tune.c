/* cmd_tune.c — `moe tune`: times the routed expert GEMMs' four tiles (moe_layer_config.expert_tile forced) in the
 * whole layer forward at a model's shapes, weight formats and token counts, and prints the rows of
 * src/cuda/moe/tile_table.inc that pick the fastest of each point (docs/layer.md §7). Run on the GPU the table is
 * for; the rows name its generation (sm 90: the Hopper kernels, 80: the portable ones). */
#include <jansson.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: moe tune [options]\n"
    "Times the routed experts' GEMM tiles (small, medium32, medium, large) in the layer forward and prints rows for\n"
    "src/cuda/moe/tile_table.inc: the fastest tile of each (model, weights, T); a row covers the token counts\n"
    "above the previous T listed, up to its own (the last one also every T above). Progress goes to stderr.\n"
    "  --model LIST    layer presets, comma separated (default qwen3-30b-a3b,deepseek-v3,mixtral-8x7b)\n"
    "  --tokens LIST   token counts (default 1,4,16,32,64,128,256,512,1024,2048,8192)\n"
    "  --dtype LIST    the experts' weights, comma separated: bf16 (default), fp8, fp8-row, mxfp8, mxfp4, nvfp4,\n"
    "                  w8a8, w4a8, w4a8-nvfp4 (as `moe bench layer --dtype`)\n"
    "  --reps N        forwards per timing (default: about 30 ms of work)\n"
    "  --idle-ms N     idle time before each timing (default 200)\n"
    "  --tiles LIST    the tiles to time, comma separated (default small,medium32,medium,large): a row then picks\n"
    "                  the fastest of those (for a re-tune where the others are known to lose, e.g. SMALL at large T)\n"
    "  --json FILE     also write every timing as JSON\n"
    "  --backend B     cuda (auto finds it; the CPU has no tiles)\n";

/* Tile t's names: the enum's suffix (rows, JSON), and the word of --tiles and of the rows' comments. */
static const struct {
    const char *name, *word;
} tiles_named[] = {{"SMALL", "small"}, {"MEDIUM32", "medium32"}, {"MEDIUM", "medium"}, {"LARGE", "large"}};
static const char *tile_name(int t) { return tiles_named[t - MOE_EXPERT_TILE_SMALL].name; }
static const char *tile_word(int t) { return tiles_named[t - MOE_EXPERT_TILE_SMALL].word; }

/* 90 where the Hopper kernels run (an sm_90 GPU and a build with sm_90a code), else 80. */
static int tile_generation(moe_ctx *ctx) {
    return strstr(moe_ctx_describe(ctx), "(sm_90") && strstr(moe_cuda_archs(), "sm_90a") ? 90 : 80;
}

/* The tiles of a --tiles list as a mask (bit t: tile t), or 0 for a name that is none of them. */
static unsigned tile_mask(const char *list) {
    unsigned mask = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *s = NULL, *name = strtok_r(buf, ",", &s); name; name = strtok_r(NULL, ",", &s)) {
        unsigned bit = 0;
        for (int t = MOE_EXPERT_TILE_SMALL; t <= MOE_EXPERT_TILE_LARGE; t++)
            if (strcmp(name, tile_word(t)) == 0) bit = 1u << t;
        if (!bit) return 0;
        mask |= bit;
    }
    return mask;
}

/* One model and weight format at every token count: a row per T (the fastest of the tiles in mask), the timings
 * in results. */
static int tune_model(moe_ctx *ctx, const char *model, const char *dtype, const int64_t *tokens, int n_tok,
                      int reps, int idle_ms, unsigned mask, json_t *results) {
    moe_layer_config c;
    moe_qformat format, act;
    if (moe_layer_preset(model, &c) != MOE_OK || cli_expert_format(dtype, &format, &act)) {
        fprintf(stderr, "moe tune: unknown model %s or weights %s\n", model, dtype);
        return CLI_USAGE;
    }
    c.expert_format = format;
    c.act_format = act;
    int64_t T_max = 0;
    for (int i = 0; i < n_tok; i++) T_max = tokens[i] > T_max ? tokens[i] : T_max;
    fprintf(stderr, "  %s %s: preparing weights...\r", model, dtype);
    cli_layer_bench b;
    int rc = CLI_FAIL;
    if (cli_layer_bench_open(ctx, &c, T_max, &b)) goto fail;
    const int sm = tile_generation(ctx);
    for (int ti = 0; ti < n_tok; ti++) {
        const int64_t T = tokens[ti];
        double us[MOE_EXPERT_TILE_LARGE + 1] = {0};
        int best = -1;
        char timed[128] = "";
        for (int t = MOE_EXPERT_TILE_SMALL; t <= MOE_EXPERT_TILE_LARGE; t++) {
            if (!(mask >> t & 1u)) continue;
            fprintf(stderr, "  %s %s T=%lld %s...          \r", model, dtype, (long long)T, tile_name(t));
            if (cli_layer_bench_retile(&b, (moe_expert_tile)t)) goto fail;
            us[t] = cli_layer_bench_time(&b, T, reps, idle_ms, NULL);
            if (us[t] < 0) goto fail;
            if (best < 0 || us[t] < us[best]) best = t;
            json_array_append_new(results, json_pack("{s:s, s:s, s:I, s:s, s:f}", "model", model, "weights", dtype,
                                                     "tokens", (json_int_t)T, "tile", tile_name(t), "us", us[t]));
            const size_t n = strlen(timed); /* the comment: "small 1.0 us, medium32 2.0, ...", the timed tiles */
            snprintf(timed + n, sizeof timed - n, "%s%s %.1f%s", n ? ", " : "", tile_word(t), us[t], n ? "" : " us");
        }
        printf("    {%d, \"%s\", %d, %d, %d, %d, %lld, MOE_EXPERT_TILE_%s}, /* %s T=%lld: %s */\n", sm, dtype, c.hidden,
               c.intermediate, c.router.n_experts, c.router.top_k, (long long)T, tile_name(best), model,
               (long long)T, timed);
        fflush(stdout);
    }
    rc = CLI_OK;
    goto done;
fail:
    fprintf(stderr, "moe tune: %s %s: %s\n", model, dtype, moe_last_error(ctx));
done:
    cli_layer_bench_close(&b);
    return rc;
}

int cmd_tune(int argc, char **argv) {
    int idle_ms = 200;
    const char *tiles = "small,medium32,medium,large";
    cli_bench_opts o = {NULL, NULL, "bf16", NULL, "auto", 0, NULL, &idle_ms, NULL, NULL, NULL, &tiles};
    const int parsed = cli_bench_parse(argc, argv, usage, &o);
    if (parsed >= 0) return parsed;
    const unsigned mask = tile_mask(tiles);
    if (!mask) {
        fprintf(stderr, "moe tune: --tiles takes small, medium32, medium and large, comma separated (not \"%s\")\n",
                tiles);
        return CLI_USAGE;
    }
    const char *models = o.models ? o.models : "qwen3-30b-a3b,deepseek-v3,mixtral-8x7b";
    int64_t tokens[16];
    const int n_tok = cli_parse_tokens(o.tokens ? o.tokens : "1,4,16,32,64,128,256,512,1024,2048,8192", tokens, 16);
    int ok = n_tok > 0;
    for (int i = 1; i < n_tok; i++) ok = ok && tokens[i] > tokens[i - 1];
    if (!ok) {
        if (n_tok) fprintf(stderr, "moe tune: --tokens takes increasing counts, like 1,16,128\n");
        return CLI_USAGE;
    }
    if (cli_check_models(models, 0)) return CLI_USAGE;
    moe_ctx *ctx = cli_ctx(o.backend, 0);
    if (!ctx) return CLI_FAIL;
    if (moe_ctx_backend(ctx) != MOE_BACKEND_CUDA) {
        fprintf(stderr, "moe tune: needs a GPU (the tiles are the CUDA kernels'); this context is %s\n",
                moe_ctx_describe(ctx));
        moe_ctx_destroy(ctx);
        return CLI_FAIL;
    }
    char date[32];
    cli_utc_date(date, sizeof date);
    printf("    /* moe tune on %s, commit %s, %s */\n", moe_ctx_describe(ctx), MOE_GIT_COMMIT, date);
    json_t *results = json_array();
    int rc = CLI_OK;
    char mlist[512], dlist[128];
    snprintf(mlist, sizeof mlist, "%s", models);
    for (char *ms = NULL, *model = strtok_r(mlist, ",", &ms); model && rc != CLI_USAGE; model = strtok_r(NULL, ",", &ms)) {
        snprintf(dlist, sizeof dlist, "%s", o.dtype);
        for (char *ds = NULL, *dtype = strtok_r(dlist, ",", &ds); dtype; dtype = strtok_r(NULL, ",", &ds)) {
            const int r = tune_model(ctx, model, dtype, tokens, n_tok, o.reps, idle_ms, mask, results);
            if (r != CLI_OK) rc = r;
        }
    }
    fprintf(stderr, "%60s\r", "");
    if (o.json) {
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:i, s:o}", "bench", "tune", "device", moe_ctx_describe(ctx),
                                "commit", MOE_GIT_COMMIT, "date", date, "idle_ms", idle_ms, "results", results);
        if (!doc || json_dump_file(doc, o.json, JSON_INDENT(2)) != 0) rc = CLI_FAIL;
        json_decref(doc);
    } else {
        json_decref(results);
    }
    moe_ctx_destroy(ctx);
    return rc;
}
