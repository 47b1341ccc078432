/* cmd_bench.c — `moe bench` dispatch and `moe bench formats`: throughput of every quantise and dequantise kernel on one large tensor,
 * beside the device-to-device copy bandwidth measured in the same run (the limit for a memory-bound kernel).
 * Bytes counted: each input read once plus each output written once. Results print as a table and, with
 * --json, go to a file for bench/results/. */
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char usage[] =
    "usage: moe bench formats [options]\n"
    "GB/s of every quantise/dequantise kernel on one tensor, beside the copy (read+write) bandwidth measured in\n"
    "the same run. Each figure is the median of --repeat timings of --iters back-to-back calls.\n"
    "  --mib N         input size in MiB (default 1024 on a GPU, 64 on the CPU)\n"
    "  --cols C        row length (default 7168, DeepSeek-V3's hidden size)\n"
    "  --dtype T       input and dequantised dtype: bf16 (default), f16, f32\n"
    "  --iters N       calls per timing (default 20 on a GPU, 2 on the CPU)\n"
    "  --repeat N      timings per figure (default 5)\n"
    "  --json FILE     also write the results as JSON\n"
    "  --backend B     auto (default), cpu, cuda\n"
    "  --threads N     CPU threads (default: all)\n";

typedef moe_status (*bench_fn)(moe_ctx *ctx, void *arg);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over repeat timings of iters calls, in microseconds per call; < 0 on failure. */
static double time_us(moe_ctx *ctx, bench_fn fn, void *arg, int iters, int repeat) {
    double t[64];
    if (fn(ctx, arg) || moe_sync(ctx, NULL)) return -1; /* warm-up */
    for (int r = 0; r < repeat; r++) {
        double t0 = cli_now_ms();
        for (int i = 0; i < iters; i++)
            if (fn(ctx, arg)) return -1;
        if (moe_sync(ctx, NULL)) return -1;
        t[r] = (cli_now_ms() - t0) * 1e3 / iters;
    }
    qsort(t, (size_t)repeat, sizeof t[0], cmp_double);
    return t[repeat / 2];
}

typedef struct bench_args {
    moe_tensor x, y;
    moe_qtensor q;
    void *copy_dst;
    size_t bytes;
} bench_args;

static moe_status do_copy(moe_ctx *ctx, void *a) {
    bench_args *b = a;
    return moe_memcpy(ctx, b->copy_dst, b->x.data, b->bytes, MOE_COPY_CTX_TO_CTX, NULL);
}
static moe_status do_fill(moe_ctx *ctx, void *a) {
    bench_args *b = a;
    return moe_memset(ctx, b->copy_dst, 0, b->bytes, NULL);
}
static moe_status do_quantize(moe_ctx *ctx, void *a) {
    bench_args *b = a;
    return moe_quantize(ctx, &b->x, &b->q, NULL);
}
static moe_status do_dequantize(moe_ctx *ctx, void *a) {
    bench_args *b = a;
    return moe_dequantize(ctx, &b->q, &b->y, NULL);
}

/* The two ceilings of the run: copy (read + write, GB/s of both) and fill (write only). */
typedef struct ceilings {
    double copy_gbps, fill_gbps;
} ceilings;

/* The least time a kernel can take at the run's ceilings: its least traffic at the copy rate, or the bytes it writes
 * at the fill rate, whichever is longer (a kernel that mostly writes, such as a dequantiser from 4 or 8 bits to 16,
 * is held by the write rate before the copy rate). */
static double bound_us(double least, double written, ceilings c) {
    const double by_copy = least / (c.copy_gbps * 1e3), by_fill = written / (c.fill_gbps * 1e3);
    return by_copy > by_fill ? by_copy : by_fill;
}

/* bytes: each input byte read once and each output byte written once; least: the traffic the format needs at
 * the least (dynamic per-tensor scales read the input twice: an amax pass, then the quantiser); written: the
 * output's bytes. */
static json_t *result_json(const char *format, const char *op, double us, double bytes, double least,
                           double written, ceilings c) {
    double gbps = bytes / (us * 1e3), bound = bound_us(least, written, c);
    return json_pack("{s:s, s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "format", format, "op", op, "us", us,
                     "bytes", bytes, "gbps", gbps, "ratio_to_copy", gbps / c.copy_gbps, "least_bytes", least,
                     "least_ratio_to_copy", least / (us * 1e3) / c.copy_gbps, "written_bytes", written, "bound_us",
                     bound, "ratio_to_bound", bound / us);
}

static int bench_formats(int argc, char **argv) {
    const char *dtype_name = "bf16", *json_path = NULL, *backend = "auto";
    int64_t mib = 0, cols = 7168;
    int iters = 0, repeat = 5, threads = 0;
    static const struct option opts[] = {{"mib", 1, 0, 'm'},    {"cols", 1, 0, 'c'},  {"dtype", 1, 0, 't'},
                                         {"iters", 1, 0, 'i'},  {"repeat", 1, 0, 'r'}, {"json", 1, 0, 'j'},
                                         {"backend", 1, 0, 'b'}, {"threads", 1, 0, 'T'}, {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case 'm':
            if (cli_int64("--mib", optarg, 0, 1 << 20, &mib)) return CLI_USAGE;
            break;
        case 'c':
            if (cli_int64("--cols", optarg, 32, 1 << 24, &cols)) return CLI_USAGE;
            break;
        case 't': dtype_name = optarg; break;
        case 'i':
            if (cli_int("--iters", optarg, 0, CLI_MAX_REPS, &iters)) return CLI_USAGE;
            break;
        case 'r':
            if (cli_int("--repeat", optarg, 1, 64, &repeat)) return CLI_USAGE;
            break;
        case 'j': json_path = optarg; break;
        case 'b': backend = optarg; break;
        case 'T':
            if (cli_int("--threads", optarg, 0, MOE_MAX_CPU_THREADS, &threads)) return CLI_USAGE;
            break;
        case 'h': fputs(usage, stdout); return CLI_OK;
        default: fputs(usage, stderr); return CLI_USAGE;
        }
    }
    moe_dtype dtype = moe_dtype_from_name(dtype_name);
    if ((dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_F16 && dtype != MOE_DTYPE_F32) || cols <= 0 || cols % 32 ||
        repeat < 1 || repeat > 64) {
        fprintf(stderr, "moe bench formats: --dtype bf16|f16|f32, --cols a multiple of 32, --repeat 1..64\n");
        return CLI_USAGE;
    }
    moe_ctx *ctx = cli_ctx(backend, threads);
    if (!ctx) return CLI_FAIL;
    const int gpu = moe_ctx_backend(ctx) == MOE_BACKEND_CUDA;
    if (!mib) mib = gpu ? 1024 : 64;
    if (!iters) iters = gpu ? 20 : 2;
    const size_t item = (size_t)moe_dtype_bytes(dtype, 1);
    const int64_t rows = mib * 1048576 / (int64_t)item / cols, n = rows * cols;
    const size_t in_bytes = (size_t)n * item;
    bench_args b;
    memset(&b, 0, sizeof b);
    b.bytes = in_bytes;
    if (moe_alloc(ctx, in_bytes, &b.x.data) || moe_alloc(ctx, in_bytes, &b.copy_dst)) {
        fprintf(stderr, "moe bench formats: %s\n", moe_last_error(ctx));
        moe_free(ctx, b.x.data), moe_ctx_destroy(ctx);
        return CLI_FAIL;
    }
    b.x = moe_tensor_2d(b.x.data, dtype, rows, cols);
    b.y = moe_tensor_2d(b.copy_dst, dtype, rows, cols);

    /* Random normal data: one 64 MiB chunk generated on the host, repeated over the buffer. */
    const int64_t chunk = n < (16 << 20) ? n : (16 << 20);
    float *host = malloc((size_t)chunk * 4);
    if (!host) {
        fprintf(stderr, "moe bench formats: no host memory for a %lld-value chunk\n", (long long)chunk);
        moe_free(ctx, b.x.data), moe_free(ctx, b.copy_dst), moe_ctx_destroy(ctx);
        return CLI_FAIL;
    }
    cli_random(host, chunk, "normal", 7);
    if (dtype != MOE_DTYPE_F32)
        for (int64_t i = 0; i < chunk; i++)
            ((uint16_t *)host)[i] = dtype == MOE_DTYPE_BF16 ? moe_bf16_from_f32(host[i]) : moe_f16_from_f32(host[i]);
    for (int64_t off = 0; off < n; off += chunk) {
        int64_t len = n - off < chunk ? n - off : chunk;
        moe_memcpy(ctx, (char *)b.x.data + off * (int64_t)item, host, (size_t)len * item, MOE_COPY_HOST_TO_CTX, NULL);
    }
    moe_sync(ctx, NULL);
    free(host);

    printf("moe bench formats: %lld x %lld %s (%.0f MiB) on %s, commit %s\n", (long long)rows, (long long)cols,
           dtype_name, in_bytes / 1048576.0, moe_ctx_describe(ctx), MOE_GIT_COMMIT);
    double copy_us = time_us(ctx, do_copy, &b, iters, repeat);
    double copy_gbps = 2.0 * (double)in_bytes / (copy_us * 1e3);
    double fill_us = time_us(ctx, do_fill, &b, iters, repeat);
    const ceilings ceil = {copy_gbps, (double)in_bytes / (fill_us * 1e3)};
    printf("copy (read + write): %.1f us, %.1f GB/s; fill (write only): %.1f us, %.1f GB/s\n\n", copy_us, copy_gbps,
           fill_us, ceil.fill_gbps);
    printf("%-17s %10s %9s %7s %7s %7s %12s %9s %7s %7s\n", "format", "quant us", "GB/s", "%copy", "%least",
           "%bound", "dequant us", "GB/s", "%copy", "%bound");

    json_t *results = json_array();
    moe_qformat formats[16];
    const char *labels[16];
    int nf = cli_format_list(formats, labels, 16), rc = CLI_OK;
    for (int k = 0; k < nf; k++) {
        moe_qsizes sz;
        b.q = (moe_qtensor){formats[k], 2, {rows, cols}, NULL, NULL, NULL};
        if (moe_qtensor_sizes(ctx, &formats[k], 2, b.q.shape, &sz) || moe_alloc(ctx, sz.data_bytes, &b.q.data) ||
            moe_alloc(ctx, sz.scale_bytes, &b.q.scale) || moe_alloc(ctx, 4, (void **)&b.q.global_scale)) {
            fprintf(stderr, "moe bench formats: %s: %s\n", labels[k], moe_last_error(ctx));
            rc = CLI_FAIL;
            break;
        }
        /* Per-tensor scales are computed by an amax pass first; a second row times the quantiser alone with the
         * scale given (static), as inference with calibrated scales runs it. */
        const int passes = formats[k].kind == MOE_QFORMAT_FP8_TENSOR || formats[k].kind == MOE_QFORMAT_NVFP4 ? 2 : 1;
        for (int pass = 0; pass < passes; pass++) {
            char label[64];
            snprintf(label, sizeof label, "%s%s", labels[k], pass ? " static" : "");
            b.q.format.static_scale = pass;
            double q_us = time_us(ctx, do_quantize, &b, iters, repeat);
            double d_us = pass ? 0 : time_us(ctx, do_dequantize, &b, iters, repeat);
            if (q_us < 0 || d_us < 0) {
                fprintf(stderr, "moe bench formats: %s: %s\n", label, moe_last_error(ctx));
                rc = CLI_FAIL;
                continue;
            }
            double moved = (double)(in_bytes + sz.data_bytes + sz.scale_bytes);
            double least = moved + (passes == 2 && pass == 0 ? (double)in_bytes : 0.0);
            double q_written = (double)(sz.data_bytes + sz.scale_bytes), d_written = (double)in_bytes;
            printf("%-17s %10.1f %9.1f %6.1f%% %6.1f%% %6.1f%%", label, q_us, moved / (q_us * 1e3),
                   100 * moved / (q_us * 1e3) / copy_gbps, 100 * least / (q_us * 1e3) / copy_gbps,
                   100 * bound_us(least, q_written, ceil) / q_us);
            json_array_append_new(results, result_json(label, "quantize", q_us, moved, least, q_written, ceil));
            if (pass == 0) {
                printf(" %12.1f %9.1f %6.1f%% %6.1f%%", d_us, moved / (d_us * 1e3),
                       100 * moved / (d_us * 1e3) / copy_gbps, 100 * bound_us(moved, d_written, ceil) / d_us);
                json_array_append_new(results, result_json(label, "dequantize", d_us, moved, moved, d_written, ceil));
            }
            printf("\n");
        }
        moe_free(ctx, b.q.data);
        moe_free(ctx, b.q.scale);
        moe_free(ctx, b.q.global_scale);
    }
    printf("\nGB/s counts each input byte read once and each output byte written once. Dynamic fp8_tensor and\n"
           "nvfp4 read the input twice (an amax pass, then the quantiser), so their ratio to copy is at most about\n"
           "2/3; %%least counts that second read; their \"static\" rows time the quantiser alone with the per-tensor\n"
           "scale given. %%bound: the least time at the run's ceilings (least traffic at the copy rate, or the\n"
           "bytes written at the fill rate, whichever is longer) over the time taken.\n");
    if (json_path) {
        char date[32];
        cli_utc_date(date, sizeof date);
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:I, s:I, s:I}, s:i, s:i, s:f, s:f, s:f, s:f, s:o}", "bench",
                                "formats", "device", moe_ctx_describe(ctx), "commit", MOE_GIT_COMMIT, "date", date,
                                "input", "dtype", dtype_name, "rows", (json_int_t)rows, "cols", (json_int_t)cols,
                                "bytes", (json_int_t)in_bytes, "iters", iters, "repeat", repeat, "copy_us", copy_us,
                                "copy_gbps", copy_gbps, "fill_us", fill_us, "fill_gbps", ceil.fill_gbps, "results", results);
        if (!doc || json_dump_file(doc, json_path, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "moe bench formats: cannot write %s\n", json_path);
            rc = CLI_FAIL;
        }
        json_decref(doc);
    } else {
        json_decref(results);
    }
    moe_free(ctx, b.x.data);
    moe_free(ctx, b.copy_dst);
    moe_ctx_destroy(ctx);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "formats")) return bench_formats(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "route")) return bench_route(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "layer")) return bench_layer(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "ep")) return bench_ep(argc - 1, argv + 1);
    fprintf(stderr, "usage: moe bench formats|route|layer|ep [options]   (`moe bench <what> --help` for the options)\n");
    return argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? CLI_OK : CLI_USAGE;
}
