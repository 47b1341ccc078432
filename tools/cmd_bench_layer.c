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
#include <string.h>

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
    "                  w8a8: fp8 weights and the experts' inputs in FP8 1x128 groups (the FP8 tensor cores);\n"
    "                  w4a8: mxfp4 weights and FP8 1x128 inputs, w4a8-nvfp4 the same with nvfp4 weights (at\n"
    "                  decode on Hopper with MOE_GEMM_W4A8_DECODE=1: the FP8 tensor cores; else the bf16 path);\n"
    "                  shared experts are stored as the routed ones (DeepSeek-V3's checkpoint ships both in FP8)\n"
    "  --shared-bf16   keep the shared experts in bf16 whatever --dtype says\n"
    "  --gate-bf16     the router weights in bf16, as the checkpoints ship them (default f32: the API's default)\n"
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

/* Bytes of one expert's w13 (which 0) or w2 (1) of width I stored in format f (kind 0: bf16), scales included. */
static double expert_matrix_bytes(const moe_layer_config *c, const moe_qformat *f, int64_t I, int which) {
    const int64_t shape[2] = {which ? c->hidden : 2 * I, which ? I : c->hidden};
    if (!f->kind) return 2.0 * (double)(shape[0] * shape[1]);
    moe_qsizes qs;
    if (moe_qtensor_sizes(NULL, f, 2, shape, &qs) != MOE_OK) return 0;
    return (double)(qs.data_bytes + qs.scale_bytes + qs.global_scale_bytes);
}

/* One model at every token count; appends to results. */
static int bench_model(moe_ctx *ctx, const char *model, const moe_qformat *format, const moe_qformat *act,
                       int shared_bf16, int gate_bf16, const int64_t *tokens, int n_tok, int reps_opt, int idle_ms,
                       double read_gbps, double tflops, json_t *results) {
    moe_layer_config c;
    if (moe_layer_preset(model, &c) != MOE_OK) {
        fprintf(stderr, "moe bench layer: unknown model %s\n", model);
        return CLI_USAGE;
    }
    c.expert_format = *format;
    c.act_format = *act;
    if (c.n_shared && !shared_bf16) c.shared_format = *format;
    c.gate_dtype = gate_bf16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32;
    const double expert_bytes = expert_matrix_bytes(&c, format, c.intermediate, 0) +
                                expert_matrix_bytes(&c, format, c.intermediate, 1);
    const double shared_bytes = c.n_shared * (expert_matrix_bytes(&c, &c.shared_format, c.shared_intermediate, 0) +
                                              expert_matrix_bytes(&c, &c.shared_format, c.shared_intermediate, 1));
    const int64_t H = c.hidden, I = c.intermediate, E = c.router.n_experts, k = c.router.top_k, S = c.n_shared,
                  Is = c.shared_intermediate;
    int64_t T_max = 0;
    for (int i = 0; i < n_tok; i++) T_max = tokens[i] > T_max ? tokens[i] : T_max;
    fprintf(stderr, "  %s: preparing weights (%.1f GB of experts a copy)...\r", model, (double)E * expert_bytes / 1e9);
    cli_layer_bench b;
    moe_expert_stats *stats = NULL;
    int rc = CLI_FAIL;
    if (cli_layer_bench_open(ctx, &c, T_max, &b) || moe_expert_stats_create(ctx, 1, (int)E, &stats)) goto fail;
    for (int ti = 0; ti < n_tok; ti++) {
        const int64_t T = tokens[ti];
        fprintf(stderr, "  %s T=%lld (%d/%d)...                    \r", model, (long long)T, ti + 1, n_tok);
        /* a counted forward: the experts this T touches */
        int64_t counts[1024];
        if (moe_expert_stats_reset(ctx, stats, NULL) || cli_layer_bench_forwards(&b, T, 1, stats) ||
            moe_expert_stats_read(ctx, stats, counts, NULL, NULL))
            goto fail;
        int64_t touched = 0;
        for (int64_t e = 0; e < E; e++) touched += counts[e] > 0;
        int reps = 0;
        const double us = cli_layer_bench_time(&b, T, reps_opt, idle_ms, &reps);
        if (us < 0) goto fail;
        const double flops = 2.0 * T * (k * 3.0 * I * H + S * 3.0 * Is * H + (double)E * H);
        const double bytes = touched * expert_bytes + shared_bytes + (gate_bf16 ? 2.0 : 4.0) * E * H + 2.0 * 2 * T * H;
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
    /* (host allocations set no message in the context) */
    fprintf(stderr, "moe bench layer: %s: %s\n", model, moe_last_error(ctx)[0] ? moe_last_error(ctx) : "out of host memory");
done:
    moe_expert_stats_destroy(ctx, stats);
    cli_layer_bench_close(&b);
    return rc;
}

int bench_layer(int argc, char **argv) {
    int idle_ms = -1, shared_bf16 = 0, gate_bf16 = 0;
    cli_bench_opts o = {NULL, NULL, "bf16", NULL, "auto", 0, NULL, &idle_ms, NULL, &shared_bf16, &gate_bf16, NULL};
    const int parsed = cli_bench_parse(argc, argv, usage, &o);
    if (parsed >= 0) return parsed;
    const char *models = o.models, *tokens = o.tokens, *dtype_name = o.dtype, *json_path = o.json;
    const int reps = o.reps;
    moe_qformat format, act;
    if (cli_expert_format(dtype_name, &format, &act)) {
        fprintf(stderr, "moe bench layer: --dtype bf16, fp8, fp8-row, mxfp8, mxfp4, nvfp4, w8a8, w4a8 or w4a8-nvfp4\n");
        return CLI_USAGE;
    }
    moe_ctx *ctx = cli_ctx(o.backend, 0);
    if (!ctx) return CLI_FAIL;
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    if (idle_ms < 0) idle_ms = gpu ? 500 : 0;
    if (!models) models = gpu ? "qwen3-30b-a3b,deepseek-v3,mixtral-8x7b" : "qwen3-30b-a3b";
    if (!tokens) tokens = gpu ? "1,16,128,1024,8192" : "1,16";
    int64_t token_list[16];
    const int n_tok = cli_parse_tokens(tokens, token_list, 16);
    if (!n_tok || cli_check_models(models, 0)) {
        moe_ctx_destroy(ctx);
        return CLI_USAGE;
    }
    double read_gbps, tflops;
    device_ceilings(moe_ctx_describe(ctx), &read_gbps, &tflops);
    if (act.kind) tflops *= 2; /* Hopper's FP8 tensor cores: twice the BF16 rate */
    printf("moe bench layer: %s experts (shared: %s), %s activations, %s gate, on %s, commit %s; limit from %s\n",
           dtype_name, shared_bf16 ? "bf16" : dtype_name, act.kind ? "fp8 1x128" : "bf16", gate_bf16 ? "bf16" : "f32",
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
            bench_model(ctx, model, &format, &act, shared_bf16, gate_bf16, token_list, n_tok, reps, idle_ms,
                        read_gbps, tflops, results);
        if (r != CLI_OK) rc = r;
    }
    fprintf(stderr, "%60s\r", "");
    if (json_path) {
        char date[32];
        cli_utc_date(date, sizeof date);
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:f, s:f, s:s, s:i, s:o}", "bench", "layer",
                                "device", moe_ctx_describe(ctx), "commit", MOE_GIT_COMMIT, "date", date, "dtype",
                                dtype_name, "shared_dtype", shared_bf16 ? "bf16" : dtype_name, "gate_dtype",
                                gate_bf16 ? "bf16" : "f32",
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
