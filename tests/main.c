/* main.c — the test runner: runs every test of test_list.h (or those whose name contains an argument),
 * prints one line per test and closes with "N passed, N failed[, N skipped]". Exit status 1 on any failure.
 *
 *   moe_tests [--data DIR] [--list] [name-filter ...]
 * Environment: MOE_TEST_SEED (fixes the random inputs), MOE_TEST_GPU_MIB (GPU tensor size, default 64),
 * MOE_TEST_FP4_TILE (rs or mma: gpu_layer_fp4_medium and _large on the FP4 wgmma tile only, or on the other tile
 * only; walk: _large's walks of 3 CTAs only; default all). */
#include <stdlib.h>

#include "test.h"
#include "test_list.h"

char test_skip_reason[256];

#define TEST_DECLARE_(name) TEST_IMPL(name);
TEST_LIST(TEST_DECLARE_)

static const struct {
    const char *name;
    test_result (*fn)(test_env *);
} tests[] = {
#define TEST_ENTRY_(name) {#name, test_##name},
    TEST_LIST(TEST_ENTRY_)
};

static void quiet_log(void *user, moe_log_level level, const char *message) {
    (void)user;
    (void)level;
    (void)message;
}

static int selected(const char *name, int argc, char **argv, int first_filter) {
    if (first_filter >= argc) return 1;
    for (int i = first_filter; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    test_env env = {.data_dir = "tests/data", .gpu_mib = 64};
    int first_filter = 1;
    for (; first_filter < argc && argv[first_filter][0] == '-'; first_filter++) {
        if (!strcmp(argv[first_filter], "--data") && first_filter + 1 < argc) {
            env.data_dir = argv[++first_filter];
        } else if (!strcmp(argv[first_filter], "--list")) {
            for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) printf("%s\n", tests[i].name);
            return 0;
        } else {
            fprintf(stderr, "usage: %s [--data DIR] [--list] [name-filter ...]\n", argv[0]);
            return 2;
        }
    }
    /* under mpirun only rank 0 prints (a failing rank still fails the run, and its messages go to stderr) */
    const char *mpi_rank = getenv("OMPI_COMM_WORLD_RANK");
    if (mpi_rank && strcmp(mpi_rank, "0") != 0 && !freopen("/dev/null", "w", stdout)) return 1;
    const char *seed = getenv("MOE_TEST_SEED"), *mib = getenv("MOE_TEST_GPU_MIB");
    env.seed = seed ? strtoull(seed, NULL, 0) : (uint64_t)(test_now_ms() * 1000.0);
    if (mib) env.gpu_mib = atoll(mib);

    moe_ctx_options o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CPU;
    if (moe_ctx_create(&o, &env.cpu) != MOE_OK) {
        fprintf(stderr, "cannot create a CPU context\n");
        return 1;
    }
    if (moe_built_with_cuda()) {
        o.backend = MOE_BACKEND_CUDA;
        o.log = quiet_log;
        if (moe_ctx_create(&o, &env.gpu) != MOE_OK) env.gpu = NULL;
    }
    printf("moe_tests: seed %" PRIu64 "; cpu: %s; gpu: %s\n", env.seed, moe_ctx_describe(env.cpu),
           env.gpu ? moe_ctx_describe(env.gpu) : (moe_built_with_cuda() ? "none found" : "not built"));

    int passed = 0, failed = 0, skipped = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (!selected(tests[i].name, argc, argv, first_filter)) continue;
        fflush(stdout);
        double t0 = test_now_ms();
        test_result r = tests[i].fn(&env);
        double ms = test_now_ms() - t0;
        fflush(stderr);
        if (r == TEST_OK) {
            passed++;
            printf("ok      %-28s %8.1f ms\n", tests[i].name, ms);
        } else if (r == TEST_SKIPPED) {
            skipped++;
            printf("skip    %-28s (%s)\n", tests[i].name, test_skip_reason);
        } else {
            failed++;
            printf("FAIL    %-28s %8.1f ms\n", tests[i].name, ms);
        }
    }
    moe_ctx_destroy(env.gpu);
    moe_ctx_destroy(env.cpu);
    if (skipped)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
