/* cmd_quantize.c — `moe quantize`: quantise and dequantise a tensor in one or every format and report the
 * error against the input. The README's first command runs it on its defaults. */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: moe quantize [options]\n"
    "Quantises a tensor in one format or in every format (default), dequantises it again and reports:\n"
    "bits per value (scales included), SNR in dB, mean and max relative error over the non-zero values,\n"
    "and the time of each direction.\n"
    "\n"
    "data:\n"
    "  --shape R,C          shape of the random tensor (default 2048,4096)\n"
    "  --dist NAME          normal (default), uniform, lognormal, outliers (1 in 1000 values x100)\n"
    "  --seed N             random seed (default 1)\n"
    "  --input FILE         raw little-endian values instead of random data; needs --shape and --dtype\n"
    "  --dtype T            input dtype: f32 (default), bf16, f16\n"
    "format (default: every format at its preset, see docs/formats.md):\n"
    "  --format NAME        fp8_tensor, fp8_row, fp8_1x128, fp8_128x128, mxfp8, mxfp4, nvfp4\n"
    "  --elem T             e4m3 or e5m2 (FP8 and MXFP8)\n"
    "  --rule R             f32, floor, ceil, rceil\n"
    "  --scale-dtype T      f32 or e8m0 (power-of-two rules on FP8 formats)\n"
    "  --layout L           linear or swizzled (MX and NVFP4 scales)\n"
    "  --global G           nvfp4: encode (448*6/amax) or decode (amax/(448*6)); required with --format nvfp4\n"
    "  --amax-floor X       raise every block's amax to X\n"
    "  --output PREFIX      write PREFIX.data, PREFIX.scale (and PREFIX.global) as raw bytes (one format only)\n"
    "machine:\n"
    "  --backend B          auto (default), cpu, cuda\n"
    "  --threads N          CPU threads (default: all)\n";

typedef struct stats {
    double snr_db, mean_rel, max_rel;
    int64_t nonfinite;
} stats;

static stats error_stats(const float *x, const float *y, int64_t n) {
    double sig = 0, noise = 0, rel = 0, max_rel = 0;
    int64_t counted = 0, nonfinite = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            nonfinite++;
            continue;
        }
        double e = (double)y[i] - x[i];
        sig += (double)x[i] * x[i];
        noise += e * e;
        if (x[i] != 0) {
            double r = fabs(e) / fabs(x[i]);
            rel += r;
            max_rel = r > max_rel ? r : max_rel;
            counted++;
        }
    }
    stats s = {noise > 0 ? 10 * log10(sig / noise) : INFINITY, counted ? rel / counted : 0, max_rel, nonfinite};
    return s;
}

static int write_file(const char *prefix, const char *suffix, const void *data, size_t bytes) {
    char path[1024];
    snprintf(path, sizeof path, "%s.%s", prefix, suffix);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "moe quantize: cannot write %s\n", path);
        if (f) fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

/* Quantises and dequantises with one format; prints its row. */
static int run_format(moe_ctx *ctx, const moe_qformat *f, const char *label, const moe_tensor *xd, const float *x,
                      float *y, const char *output) {
    moe_qsizes sz;
    moe_qtensor q = {*f, xd->rank, {xd->shape[0], xd->shape[1]}, NULL, NULL, NULL};
    if (moe_qtensor_sizes(ctx, f, xd->rank, xd->shape, &sz) != MOE_OK) {
        fprintf(stderr, "moe quantize: %s: %s\n", label, moe_last_error(ctx));
        return CLI_FAIL;
    }
    const int64_t n = moe_tensor_numel(xd);
    void *yd = NULL;
    int rc = CLI_FAIL;
    if (moe_alloc(ctx, sz.data_bytes, &q.data) || moe_alloc(ctx, sz.scale_bytes, &q.scale) ||
        moe_alloc(ctx, 4, (void **)&q.global_scale) || moe_alloc(ctx, (size_t)n * 4, &yd))
        goto done;
    moe_tensor yt = *xd;
    yt.data = yd;
    yt.dtype = MOE_DTYPE_F32;
    double t0 = cli_now_ms();
    if (moe_quantize(ctx, xd, &q, NULL) || moe_sync(ctx, NULL)) goto done;
    double t1 = cli_now_ms();
    if (moe_dequantize(ctx, &q, &yt, NULL) || moe_sync(ctx, NULL)) goto done;
    double t2 = cli_now_ms();
    if (moe_memcpy(ctx, y, yd, (size_t)n * 4, MOE_COPY_CTX_TO_HOST, NULL) || moe_sync(ctx, NULL)) goto done;
    stats s = error_stats(x, y, n);
    double bits = 8.0 * (double)(sz.data_bytes + sz.scale_bytes + sz.global_scale_bytes) / (double)n;
    printf("%-17s %-5s %-6s %-5s %9.3f %8.2f %12.3g %12.3g %9.2f %9.2f\n", label, moe_dtype_name(f->elem),
           moe_scale_rule_name(f->rule), moe_dtype_name(f->scale_dtype), bits, s.snr_db, s.mean_rel, s.max_rel,
           t1 - t0, t2 - t1);
    if (output) {
        uint8_t *host = malloc(sz.data_bytes + sz.scale_bytes + 4);
        if (!host) {
            fprintf(stderr, "moe quantize: %s: no host memory for the output\n", label);
            goto done;
        }
        float global = 0;
        moe_memcpy(ctx, host, q.data, sz.data_bytes, MOE_COPY_CTX_TO_HOST, NULL);
        moe_memcpy(ctx, host + sz.data_bytes, q.scale, sz.scale_bytes, MOE_COPY_CTX_TO_HOST, NULL);
        moe_memcpy(ctx, &global, q.global_scale, 4, MOE_COPY_CTX_TO_HOST, NULL);
        moe_sync(ctx, NULL);
        int bad = write_file(output, "data", host, sz.data_bytes) ||
                  write_file(output, "scale", host + sz.data_bytes, sz.scale_bytes) ||
                  (sz.global_scale_bytes && write_file(output, "global", &global, 4));
        free(host);
        if (bad) goto done;
    }
    rc = CLI_OK;
done:
    if (rc != CLI_OK && moe_last_error(ctx)[0]) fprintf(stderr, "moe quantize: %s: %s\n", label, moe_last_error(ctx));
    moe_free(ctx, q.data);
    moe_free(ctx, q.scale);
    moe_free(ctx, q.global_scale);
    moe_free(ctx, yd);
    return rc;
}

int cmd_quantize(int argc, char **argv) {
    const char *shape_text = "2048,4096", *dist = "normal", *input = NULL, *dtype_name = "f32", *format = "all";
    const char *elem = NULL, *rule = NULL, *scale_dtype = NULL, *layout = NULL, *global = NULL, *output = NULL;
    const char *backend = "auto";
    double amax_floor = -1;
    int64_t seed = 1;
    int threads = 0;
    static const struct option opts[] = {
        {"shape", 1, 0, 's'},  {"dist", 1, 0, 'd'},   {"seed", 1, 0, 'S'},        {"input", 1, 0, 'i'},
        {"dtype", 1, 0, 't'},  {"format", 1, 0, 'f'}, {"elem", 1, 0, 'e'},        {"rule", 1, 0, 'r'},
        {"scale-dtype", 1, 0, 'c'}, {"layout", 1, 0, 'l'}, {"global", 1, 0, 'g'}, {"amax-floor", 1, 0, 'a'},
        {"output", 1, 0, 'o'}, {"backend", 1, 0, 'b'}, {"threads", 1, 0, 'T'},   {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case 's': shape_text = optarg; break;
        case 'd': dist = optarg; break;
        case 'S':
            if (cli_int64("--seed", optarg, 0, INT64_MAX, &seed)) return CLI_USAGE;
            break;
        case 'i': input = optarg; break;
        case 't': dtype_name = optarg; break;
        case 'f': format = optarg; break;
        case 'e': elem = optarg; break;
        case 'r': rule = optarg; break;
        case 'c': scale_dtype = optarg; break;
        case 'l': layout = optarg; break;
        case 'g': global = optarg; break;
        case 'a':
            if (cli_real("--amax-floor", optarg, 0.0, 3.4e38, &amax_floor)) return CLI_USAGE;
            break;
        case 'o': output = optarg; break;
        case 'b': backend = optarg; break;
        case 'T':
            if (cli_int("--threads", optarg, 0, MOE_MAX_CPU_THREADS, &threads)) return CLI_USAGE;
            break;
        case 'h': fputs(usage, stdout); return CLI_OK;
        default: fputs(usage, stderr); return CLI_USAGE;
        }
    }
    int64_t shape[4];
    int rank = cli_parse_shape(shape_text, shape, 2);
    moe_dtype dtype = moe_dtype_from_name(dtype_name);
    if (rank != 2 || (dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_F16)) {
        fprintf(stderr, "moe quantize: --shape takes R,C and --dtype f32, bf16 or f16\n");
        return CLI_USAGE;
    }
    if (shape[0] < 1 || shape[1] < 1 || shape[0] > INT64_MAX / 4 / shape[1]) { /* f32 bytes must fit int64 */
        fprintf(stderr, "moe quantize: --shape %s: R and C from 1, R x C x 4 bytes within int64\n", shape_text);
        return CLI_USAGE;
    }
    const int per_format = elem || rule || scale_dtype || layout || global || amax_floor >= 0;
    if (per_format && !strcmp(format, "all")) {
        fprintf(stderr, "moe quantize: --elem, --rule, --scale-dtype, --layout, --global and --amax-floor go with one "
                        "--format\n");
        return CLI_USAGE;
    }
    if ((rule && moe_scale_rule_from_name(rule) == MOE_SCALE_RULE_COUNT_) ||
        (layout && strcmp(layout, "linear") && strcmp(layout, "swizzled")) ||
        (global && strcmp(global, "encode") && strcmp(global, "decode"))) {
        fprintf(stderr, "moe quantize: --rule f32|floor|ceil|rceil, --layout linear|swizzled, --global encode|decode\n");
        return CLI_USAGE;
    }

    /* the format list: every preset, or the one asked for with its options */
    moe_qformat formats[16];
    const char *labels[16];
    int nf;
    if (!strcmp(format, "all")) {
        nf = cli_format_list(formats, labels, 16);
    } else {
        nf = 1;
        labels[0] = format;
        formats[0] = moe_qformat_preset(moe_qformat_kind_from_name(format));
        if (formats[0].kind == MOE_QFORMAT_INVALID) {
            fprintf(stderr, "moe quantize: unknown format \"%s\"\n", format);
            return CLI_USAGE;
        }
        if (elem) formats[0].elem = moe_dtype_from_name(elem);
        if (rule) formats[0].rule = moe_scale_rule_from_name(rule);
        if (scale_dtype) formats[0].scale_dtype = moe_dtype_from_name(scale_dtype);
        if (layout) formats[0].layout = !strcmp(layout, "swizzled") ? MOE_SCALE_SWIZZLED_128X4 : MOE_SCALE_LINEAR;
        if (global) formats[0].global = !strcmp(global, "encode") ? MOE_NVFP4_GLOBAL_ENCODE : MOE_NVFP4_GLOBAL_DECODE;
        if (amax_floor >= 0) formats[0].amax_floor = (float)amax_floor;
    }
    if (output && nf != 1) {
        fprintf(stderr, "moe quantize: --output needs one --format\n");
        return CLI_USAGE;
    }

    const int64_t n = shape[0] * shape[1];
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    void *raw = malloc((size_t)n * 4), *xdev = NULL;
    moe_ctx *ctx = NULL;
    int rc = CLI_FAIL;
    if (!x || !y || !raw) {
        fprintf(stderr, "moe quantize: %lld values do not fit in memory\n", (long long)n);
        goto done;
    }
    const size_t item = (size_t)moe_dtype_bytes(dtype, 1);
    if (input) {
        FILE *f = fopen(input, "rb");
        size_t got = f ? fread(raw, item, (size_t)n, f) : 0;
        if (f) fclose(f);
        if (got != (size_t)n) {
            fprintf(stderr, "moe quantize: %s: expected %lld %s values\n", input, (long long)n, dtype_name);
            goto done;
        }
    } else {
        if (cli_random(x, n, dist, seed)) {
            fprintf(stderr, "moe quantize: unknown distribution \"%s\"\n", dist);
            rc = CLI_USAGE;
            goto done;
        }
    }
    /* x: the input's values as f32 (exact for every input dtype); raw: the input in its dtype */
    for (int64_t i = 0; i < n; i++) {
        uint16_t *h = raw;
        if (dtype == MOE_DTYPE_F32) {
            if (input) memcpy(&x[i], (float *)raw + i, 4);
        } else if (input) {
            x[i] = dtype == MOE_DTYPE_BF16 ? moe_bf16_to_f32(h[i]) : moe_f16_to_f32(h[i]);
        } else {
            h[i] = dtype == MOE_DTYPE_BF16 ? moe_bf16_from_f32(x[i]) : moe_f16_from_f32(x[i]);
            x[i] = dtype == MOE_DTYPE_BF16 ? moe_bf16_to_f32(h[i]) : moe_f16_to_f32(h[i]);
        }
    }
    if (dtype == MOE_DTYPE_F32) memcpy(raw, x, (size_t)n * 4);

    ctx = cli_ctx(backend, threads);
    if (!ctx) goto done;
    if (moe_alloc(ctx, (size_t)n * item, &xdev) ||
        moe_memcpy(ctx, xdev, raw, (size_t)n * item, MOE_COPY_HOST_TO_CTX, NULL)) {
        fprintf(stderr, "moe quantize: %s\n", moe_last_error(ctx));
        goto done;
    }
    moe_tensor xd = moe_tensor_2d(xdev, dtype, shape[0], shape[1]);
    printf("moe quantize: %lld x %lld %s values (%s), on %s\n", (long long)shape[0], (long long)shape[1],
           dtype_name, input ? input : dist, moe_ctx_describe(ctx));
    printf("%-17s %-5s %-6s %-5s %9s %8s %12s %12s %9s %9s\n", "format", "elem", "rule", "scale", "bits/val",
           "SNR dB", "mean rel", "max rel", "quant ms", "deq ms");
    rc = CLI_OK;
    for (int k = 0; k < nf; k++)
        if (run_format(ctx, &formats[k], labels[k], &xd, x, y, output) != CLI_OK) rc = CLI_FAIL;
done:
    moe_free(ctx, xdev);
    moe_ctx_destroy(ctx);
    free(x), free(y), free(raw);
    return rc;
}
