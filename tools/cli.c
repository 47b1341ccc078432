/* cli.c — helpers shared by the subcommands: contexts, shapes, random data, the format list, bench options. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

moe_ctx *cli_ctx(const char *backend, int threads) {
    moe_ctx_options o = moe_ctx_options_default();
    o.n_threads = threads;
    if (!backend || !strcmp(backend, "auto"))
        o.backend = MOE_BACKEND_AUTO;
    else if (!strcmp(backend, "cpu"))
        o.backend = MOE_BACKEND_CPU;
    else if (!strcmp(backend, "cuda"))
        o.backend = MOE_BACKEND_CUDA;
    else {
        fprintf(stderr, "moe: unknown backend \"%s\" (auto, cpu or cuda)\n", backend);
        return NULL;
    }
    moe_ctx *ctx = NULL;
    moe_status s = moe_ctx_create(&o, &ctx);
    if (s != MOE_OK) fprintf(stderr, "moe: cannot create a %s context: %s\n", backend, moe_status_string(s));
    return ctx;
}

int cli_int64(const char *option, const char *text, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    const long long v = strtoll(text, &end, 10);
    if (end == text || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "moe: %s takes a whole number from %lld to %lld, not \"%s\"\n", option, (long long)lo,
                (long long)hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_int(const char *option, const char *text, int lo, int hi, int *out) {
    int64_t v;
    if (cli_int64(option, text, lo, hi, &v)) return -1;
    *out = (int)v;
    return 0;
}

int cli_real(const char *option, const char *text, double lo, double hi, double *out) {
    char *end;
    const double v = strtod(text, &end);
    if (end == text || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "moe: %s takes a number from %g to %g, not \"%s\"\n", option, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_shape(const char *text, int64_t *shape, int max_rank) {
    int rank = 0;
    const char *p = text;
    while (*p && rank < max_rank) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0) return 0;
        shape[rank++] = v;
        if (*end == ',' || *end == 'x') end++;
        else if (*end) return 0;
        p = end;
    }
    return *p ? 0 : rank;
}

int cli_parse_tokens(const char *text, int64_t *list, int cap) {
    int n = cli_parse_shape(text, list, cap);
    for (int i = 0; i < n; i++)
        if (list[i] < 1 || list[i] > CLI_MAX_TOKENS) n = 0;
    if (!n)
        fprintf(stderr, "moe: --tokens takes up to %d counts from 1 to %lld, like 1,16,128, not \"%s\"\n", cap,
                (long long)CLI_MAX_TOKENS, text);
    return n;
}

int cli_check_models(const char *list, int router_only) {
    char copy[512];
    if (snprintf(copy, sizeof copy, "%s", list) >= (int)sizeof copy) {
        fprintf(stderr, "moe: --model: the list is longer than %d characters\n", (int)sizeof copy - 1);
        return -1;
    }
    for (char *save = NULL, *m = strtok_r(copy, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        moe_layer_config c;
        moe_router_config r;
        if ((router_only ? moe_router_preset(m, &r) : moe_layer_preset(m, &c)) != MOE_OK) {
            fprintf(stderr, "moe: --model: no %s preset is called \"%s\"\n", router_only ? "router" : "layer", m);
            return -1;
        }
    }
    return 0;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static double uniform01(uint64_t *s) {
    return ((splitmix64(s) >> 11) + 0.5) * 0x1p-53;
}

static double normal(uint64_t *s) {
    return sqrt(-2.0 * log(uniform01(s))) * cos(6.283185307179586 * uniform01(s));
}

int cli_random(float *x, int64_t n, const char *dist, uint64_t seed) {
    int kind = !strcmp(dist, "normal") ? 0 : !strcmp(dist, "uniform") ? 1 : !strcmp(dist, "lognormal") ? 2
               : !strcmp(dist, "outliers")                            ? 3
                                                                      : -1;
    if (kind < 0) return -1;
#pragma omp parallel
    {
        /* Each chunk of 65536 values has its own stream, so the data do not depend on the thread count. */
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < (n + 65535) / 65536; chunk++) {
            uint64_t s = seed * 0x100000001B3ull + (uint64_t)chunk;
            for (int64_t i = chunk * 65536; i < n && i < (chunk + 1) * 65536; i++) {
                double v = kind == 1 ? 2 * uniform01(&s) - 1 : normal(&s);
                if (kind == 2) v = (splitmix64(&s) & 1 ? -1 : 1) * exp(2 * v);
                if (kind == 3 && splitmix64(&s) % 1000 == 0) v *= 100;
                x[i] = (float)v;
            }
        }
    }
    return 0;
}

int cli_format_list(moe_qformat *f, const char **labels, int cap) {
    static const struct {
        moe_qformat_kind kind;
        moe_scale_rule rule;
        moe_dtype scale;
        moe_nvfp4_global global;
        const char *label;
    } list[] = {
        {MOE_QFORMAT_FP8_TENSOR, MOE_SCALE_F32, MOE_DTYPE_F32, 0, "fp8_tensor"},
        {MOE_QFORMAT_FP8_ROW, MOE_SCALE_F32, MOE_DTYPE_F32, 0, "fp8_row"},
        {MOE_QFORMAT_FP8_1X128, MOE_SCALE_F32, MOE_DTYPE_F32, 0, "fp8_1x128"},
        {MOE_QFORMAT_FP8_1X128, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, "fp8_1x128 ue8m0"},
        {MOE_QFORMAT_FP8_128X128, MOE_SCALE_F32, MOE_DTYPE_F32, 0, "fp8_128x128"},
        {MOE_QFORMAT_MXFP8, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, "mxfp8"},
        {MOE_QFORMAT_MXFP8, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_E8M0, 0, "mxfp8 floor"},
        {MOE_QFORMAT_MXFP4, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, "mxfp4"},
        {MOE_QFORMAT_MXFP4, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_E8M0, 0, "mxfp4 floor"},
        {MOE_QFORMAT_NVFP4, MOE_SCALE_DEFAULT, MOE_DTYPE_E4M3, MOE_NVFP4_GLOBAL_ENCODE, "nvfp4"},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof list / sizeof list[0] && n < cap; i++, n++) {
        f[n] = moe_qformat_preset(list[i].kind);
        f[n].rule = list[i].rule;
        f[n].scale_dtype = list[i].scale;
        f[n].global = list[i].global;
        labels[n] = list[i].label;
    }
    return n;
}

double cli_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int cli_bench_parse(int argc, char **argv, const char *usage, cli_bench_opts *o) {
    static const struct option opts[] = {{"model", 1, 0, 'm'}, {"tokens", 1, 0, 't'},     {"dtype", 1, 0, 'd'},
                                         {"reps", 1, 0, 'r'},  {"json", 1, 0, 'j'},       {"backend", 1, 0, 'b'},
                                         {"help", 0, 0, 'h'},  {"route-only", 0, 0, 'o'}, {"idle-ms", 1, 0, 'i'},
                                         {"unfused", 0, 0, 'u'},   {"shared-bf16", 0, 0, 's'},
                                         {"gate-bf16", 0, 0, 'g'}, {"tiles", 1, 0, 'l'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (c) {
        case 'm': o->models = optarg; break;
        case 't': o->tokens = optarg; break;
        case 'd': o->dtype = optarg; break;
        case 'r':
            if (cli_int("--reps", optarg, 0, CLI_MAX_REPS, &o->reps)) return CLI_USAGE;
            break;
        case 'j': o->json = optarg; break;
        case 'b': o->backend = optarg; break;
        case 'h': fputs(usage, stdout); return CLI_OK;
        case 'o':
            if (!o->route_only) { /* not an option of this command */
                fputs(usage, stderr);
                return CLI_USAGE;
            }
            *o->route_only = 1;
            break;
        case 'i':
            if (!o->idle_ms) {
                fputs(usage, stderr);
                return CLI_USAGE;
            }
            if (cli_int("--idle-ms", optarg, 0, CLI_MAX_IDLE_MS, o->idle_ms)) return CLI_USAGE;
            break;
        case 'u':
            if (!o->unfused) {
                fputs(usage, stderr);
                return CLI_USAGE;
            }
            *o->unfused = 1;
            break;
        case 's':
            if (!o->shared_bf16) {
                fputs(usage, stderr);
                return CLI_USAGE;
            }
            *o->shared_bf16 = 1;
            break;
        case 'g':
            if (!o->gate_bf16) {
                fputs(usage, stderr);
                return CLI_USAGE;
            }
            *o->gate_bf16 = 1;
            break;
        case 'l':
            if (!o->tiles) {
                fputs(usage, stderr);
                return CLI_USAGE;
            }
            *o->tiles = optarg;
            break;
        default: fputs(usage, stderr); return CLI_USAGE;
        }
    }
    return -1;
}

void cli_utc_date(char *out, size_t cap) {
    const time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
