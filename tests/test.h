/* test.h — the test runner's vocabulary: TEST_IMPL, ASSERT_* macros that print both sides, skips.
 * Every test is listed once in test_list.h. */
#ifndef MOE_TEST_H
#define MOE_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moe.h"

typedef struct test_env {
    const char *data_dir; /* tests/data */
    moe_ctx *cpu;         /* always there */
    moe_ctx *gpu;         /* NULL when no GPU is usable */
    uint64_t seed;        /* fresh per run unless MOE_TEST_SEED is set; printed by the runner */
    int64_t gpu_mib;      /* size of the GPU tests' random tensors (MOE_TEST_GPU_MIB, default 64) */
} test_env;

typedef enum test_result { TEST_OK = 0, TEST_FAILED = 1, TEST_SKIPPED = 2 } test_result;

#define TEST_IMPL(name) test_result test_##name(test_env *env)

/* The reason of the last skip, printed by the runner. */
extern char test_skip_reason[256];

#define TEST_FAIL_AT_(...)                                        \
    do {                                                          \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);         \
        fprintf(stderr, __VA_ARGS__);                             \
        fprintf(stderr, "\n");                                    \
        return TEST_FAILED;                                       \
    } while (0)

#define ASSERT(cond)                                                 \
    do {                                                             \
        if (!(cond)) TEST_FAIL_AT_("assertion failed: %s", #cond);   \
    } while (0)

#define ASSERT_MSG(cond, ...)                  \
    do {                                       \
        if (!(cond)) TEST_FAIL_AT_(__VA_ARGS__); \
    } while (0)

#define ASSERT_EQ_I64(a, b)                                                                           \
    do {                                                                                              \
        int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                                                 \
        if (a_ != b_) TEST_FAIL_AT_("%s == %s: %" PRId64 " != %" PRId64, #a, #b, a_, b_);             \
    } while (0)

/* A libmoe call that must succeed; prints the context's message otherwise. */
#define ASSERT_OK(ctx, expr)                                                                                      \
    do {                                                                                                          \
        moe_status s_ = (expr);                                                                                   \
        if (s_ != MOE_OK) TEST_FAIL_AT_("%s: %s: %s", #expr, moe_status_string(s_), moe_last_error(ctx));        \
    } while (0)

/* A libmoe call that must fail with status st and a message containing needle. */
#define ASSERT_FAILS(ctx, st, needle, expr)                                                                     \
    do {                                                                                                        \
        moe_status s_ = (expr);                                                                                 \
        if (s_ != (st))                                                                                         \
            TEST_FAIL_AT_("%s: expected %s, got %s (%s)", #expr, moe_status_string(st), moe_status_string(s_), \
                          moe_last_error(ctx));                                                                 \
        if (!strstr(moe_last_error(ctx), (needle)))                                                             \
            TEST_FAIL_AT_("%s: message \"%s\" does not mention \"%s\"", #expr, moe_last_error(ctx), (needle));  \
    } while (0)

#define SKIP(...)                                                                  \
    do {                                                                           \
        snprintf(test_skip_reason, sizeof test_skip_reason, __VA_ARGS__);          \
        return TEST_SKIPPED;                                                       \
    } while (0)

#define SKIP_WITHOUT_GPU(env)                                                          \
    do {                                                                               \
        if (!(env)->gpu) SKIP("no GPU%s", moe_built_with_cuda() ? "" : " (CPU-only build)"); \
    } while (0)

/* ---- helpers (tests/util.c) ---- */

uint64_t test_splitmix64(uint64_t *state);
/* FNV-1a 64 of each chunk of 4096 elements of elem_bytes each; out has ceil(n / 4096) entries. */
void test_chunk_fnv(const void *data, int64_t n, int elem_bytes, uint64_t *out);
int64_t test_chunk_count(int64_t n);
/* f32 bit patterns of the oracle's random sets: "rand" (seed 1) and "near" (seed 2), n values. */
void test_random_set(const char *name, uint32_t *bits, int64_t n);
uint32_t test_f32_bits(float x);
float test_f32_from_bits(uint32_t u);
/* Bits equal, or both NaN. */
int test_same_f32(float a, float b);
double test_now_ms(void);

/* ---- golden archives (tests/golden.c): the files tests/oracle/ writes ---- */

typedef struct golden_record {
    char name[128];
    char dtype[5]; /* "u8", "u16", "u32", "u64", "i64", "f32", "str" */
    int ndim;
    int64_t shape[8];
    int64_t numel;
    const void *data;
    size_t bytes;
} golden_record;

typedef struct golden {
    uint8_t *buf;     /* the file */
    uint8_t *payload; /* the records' payloads, each 16-byte aligned (their data points here) */
    golden_record *recs;
    int count;
} golden;

/* Loads data_dir/file; returns 0 on success, prints why otherwise. */
int golden_load(golden *g, const char *data_dir, const char *file);
void golden_free(golden *g);
/* The record of that name, or NULL (printing that it is missing). */
const golden_record *golden_get(const golden *g, const char *name);
/* The same for a record that may be absent: NULL, silently. */
const golden_record *golden_find(const golden *g, const char *name);
/* Record "<name>.<suffix>", or NULL (printing that it is missing). */
const golden_record *golden_case(const golden *g, const char *name, const char *suffix);
/* The names listed in record `list` (one per line): a NULL-terminated array for golden_free_names. */
char **golden_case_names(const golden *g, const char *list);
void golden_free_names(char **names);
/* The "<name>.cfg" text ("key=value ...") into buf, or NULL. */
const char *golden_cfg(const golden *g, const char *name, char *buf, size_t cap);
/* The value after key ("k=") as an integer, a word or an f32 given as 8 hex digits (1.0 when missing). */
int golden_cfg_int(const char *cfg, const char *key, long long *out);
int golden_cfg_word(const char *cfg, const char *key, char *out, size_t cap);
float golden_cfg_f32(const char *cfg, const char *key);
/* An i64 record as int32 (malloc). */
int32_t *golden_to_i32(const golden_record *r);

/* Copies n bytes of host data into a new buffer of ctx (NULL when n is 0 or on failure). */
void *test_upload(moe_ctx *ctx, const void *host, size_t n);
/* Copies n bytes back and waits; 0 on success. */
int test_download(moe_ctx *ctx, void *host, const void *dev, size_t n);

#endif /* MOE_TEST_H */
