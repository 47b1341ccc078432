/* cli.h — what the subcommands of the `moe` program share. */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "moe.h"

/* Exit codes: 0 success, 1 failure of the work, 2 bad command line. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* The largest --reps (a CUDA graph holds them all) and --idle-ms the benchmarks take. */
enum { CLI_MAX_REPS = 10000, CLI_MAX_IDLE_MS = 600000 };
#define CLI_MAX_TOKENS ((int64_t)1 << 24)

int cmd_quantize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int bench_route(int argc, char **argv);
int bench_layer(int argc, char **argv);
int bench_ep(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_info(int argc, char **argv);

/* Creates a context for --backend auto|cpu|cuda (NULL name: auto) and --threads; prints why on failure. */
moe_ctx *cli_ctx(const char *backend, int threads);

/* An option's value as a whole number in [lo, hi] (cli_int64) or a finite real in [lo, hi] (cli_real), all of
 * text; 0 on success, else -1 after a line on stderr naming the option and the range. */
int cli_int64(const char *option, const char *text, int64_t lo, int64_t hi, int64_t *out);
int cli_int(const char *option, const char *text, int lo, int hi, int *out);
int cli_real(const char *option, const char *text, double lo, double hi, double *out);

/* A --tokens list ("1,16,128"): up to cap counts, each from 1 to CLI_MAX_TOKENS; returns how many, or 0 after a
 * line on stderr. */
int cli_parse_tokens(const char *text, int64_t *list, int cap);

/* Whether every name of a comma-separated --model list is a layer preset (moe_layer_preset; with router_only,
 * a router preset); 0 if so, else -1 after a line on stderr naming the first that is not. */
int cli_check_models(const char *list, int router_only);

/* Parses "4096,7168" into shape; returns the rank (0 on error). */
int cli_parse_shape(const char *text, int64_t *shape, int max_rank);

/* Fills n f32 values: "normal" N(0,1), "uniform" U(-1,1), "lognormal" (sign random, magnitude e^N(0,2)), or
 * "outliers" (normal with one value in a thousand times 100). Returns -1 for an unknown distribution. */
int cli_random(float *x, int64_t n, const char *dist, uint64_t seed);

/* The library's formats at their presets plus the common rule variants, for loops over "all". */
int cli_format_list(moe_qformat *formats, const char **labels, int cap);

double cli_now_ms(void);

/* The options `moe bench route` and `moe bench layer` share: --model --tokens --dtype --reps --json --backend, and
 * --route-only where route_only is not NULL. Returns -1 to go on, or the exit code (after --help or a bad option). */
typedef struct cli_bench_opts {
    const char *models, *tokens, *dtype, *json, *backend;
    int reps;
    int *route_only; /* --route-only; NULL where the command has no such option */
    int *idle_ms;    /* --idle-ms; NULL where the command has no such option */
    int *unfused;    /* --unfused; NULL where the command has no such option */
    int *shared_bf16; /* --shared-bf16; NULL where the command has no such option */
    int *gate_bf16;   /* --gate-bf16; NULL where the command has no such option */
    const char **tiles; /* --tiles LIST; NULL where the command has no such option */
} cli_bench_opts;
int cli_bench_parse(int argc, char **argv, const char *usage, cli_bench_opts *o);

/* --dtype of `moe bench layer` and `moe tune`: the experts' storage (kind 0: bf16) and their inputs (act; kind
 * 0: bf16) for "bf16", "fp8", "fp8-row", "mxfp8", "mxfp4", "nvfp4" or "w8a8"; -1 for another name. */
int cli_expert_format(const char *name, moe_qformat *f, moe_qformat *act);

/* A model's layer with random weights for timing (layer_bench.c): two copies on a GPU (back-to-back forwards
 * alternate, so a step never finds the previous one's experts in L2), one on the CPU; x and out for T_max. */
typedef struct layer_copy {
    void *w13, *w2, *b13, *b2, *gate, *gate_bias, *bias, *sw13, *sw2, *sgate;
    void *scale[2], *global[2]; /* quantised experts: w13's and w2's scales and NVFP4 globals */
    void *sscale[2], *sglobal[2]; /* the same for quantised shared experts */
    moe_layer_config config;    /* as created (router.bias set) */
    moe_layer_weights weights;
    moe_layer *layer;
} layer_copy;
typedef struct cli_layer_bench {
    moe_ctx *ctx;
    layer_copy copies[2];
    int n_copies;
    void *x, *out, *ws;
    size_t ws_bytes;
} cli_layer_bench;
moe_status cli_layer_bench_open(moe_ctx *ctx, const moe_layer_config *c, int64_t T_max, cli_layer_bench *b);
/* Re-creates the copies' layers with config.expert_tile = tile (the weights stay). */
moe_status cli_layer_bench_retile(cli_layer_bench *b, moe_expert_tile tile);
moe_status cli_layer_bench_forwards(cli_layer_bench *b, int64_t T, int n, moe_expert_stats *stats);
/* Microseconds per forward of T tokens: the median of 5 timings of reps forwards (one CUDA-graph replay on a
 * GPU), after idle_ms of idling; reps 0: about 30 ms of work (2..200). -1 on failure. */
double cli_layer_bench_time(cli_layer_bench *b, int64_t T, int reps, int idle_ms, int *reps_used);
void cli_layer_bench_close(cli_layer_bench *b);

/* The current UTC time as 2026-11-22T03:52:24Z. */
void cli_utc_date(char *out, size_t cap);

#ifndef MOE_GIT_COMMIT
#define MOE_GIT_COMMIT "unknown"
#endif

#endif
