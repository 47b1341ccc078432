/* moe.c — the `moe` command-line program: dispatch to the subcommands. */
#include <string.h>

#include "cli.h"

static const char usage[] =
    "moe — Mixture-of-Experts inference engine (this release: number formats, routing, the MoE layer over BF16 or quantised experts, expert parallelism)\n"
    "\n"
    "usage: moe <command> [options]\n"
    "\n"
    "commands:\n"
    "  quantize   quantise and dequantise a tensor (random data or a raw file) in every format, and report the\n"
    "             error (SNR, mean and max relative error) and the bits per value\n"
    "  bench      benchmarks; `moe bench formats`: GB/s of every quantise/dequantise kernel beside the copy\n"
    "             bandwidth measured in the same run; `moe bench route`: routing + load statistics + permute\n"
    "             per step, for a model's router at several token counts; `moe bench layer`:\n"
    "             one MoE layer forward at a model's shapes (random weights: bf16, or quantised with --dtype fp8,\n"
    "             mxfp4, nvfp4, ...) per token count; `moe bench ep`:\n"
    "             the layer split over this machine's GPUs (expert parallelism), phase by phase, beside the\n"
    "             transport's plain all-to-all\n"
    "  tune       times the GPU's expert GEMM tiles at a model's shapes and prints the rows of the tile table\n"
    "             (src/cuda/moe/tile_table.inc) that pick the fastest of each point\n"
    "  info       what this build contains and where it computes on this machine\n"
    "  version    the version and the commit it was built from\n"
    "\n"
    "`moe <command> --help` lists a command's options. Formats: docs/formats.md.\n";

int cmd_info(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: moe info\nPrints the build (CUDA kernels or CPU only) and the context this machine gets.\n");
        return CLI_OK;
    }
    printf("libmoe %s (commit %s), CUDA kernels: %s\n", moe_version(), MOE_GIT_COMMIT,
           moe_built_with_cuda() ? moe_cuda_archs() : "none (CPU-only build)");
    moe_ctx *ctx = cli_ctx("auto", 0);
    if (!ctx) return CLI_FAIL;
    printf("computes on: %s\n", moe_ctx_describe(ctx));
    moe_ctx_destroy(ctx);
    return CLI_OK;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "quantize")) return cmd_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "tune")) return cmd_tune(argc - 1, argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("moe %s (commit %s)\n", moe_version(), MOE_GIT_COMMIT);
        return CLI_OK;
    }
    fprintf(stderr, "moe: unknown command \"%s\"\n\n%s", cmd, usage);
    return CLI_USAGE;
}
