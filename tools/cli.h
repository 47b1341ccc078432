/* cli.h — what the subcommands of the `moe` program share. */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "moe.h"

/* Exit codes: 0 success, 1 failure of the work, 2 bad command line. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

int cmd_quantize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int bench_route(int argc, char **argv);
int bench_layer(int argc, char **argv);
int bench_ep(int argc, char **argv);
int cmd_info(int argc, char **argv);

/* Creates a context for --backend auto|cpu|cuda (NULL name: auto) and --threads; prints why on failure. */
moe_ctx *cli_ctx(const char *backend, int threads);

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
} cli_bench_opts;
int cli_bench_parse(int argc, char **argv, const char *usage, cli_bench_opts *o);

/* The current UTC time as 2026-11-22T03:52:24Z. */
void cli_utc_date(char *out, size_t cap);

#ifndef MOE_GIT_COMMIT
#define MOE_GIT_COMMIT "unknown"
#endif

#endif
