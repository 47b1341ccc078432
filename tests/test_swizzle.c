/* test_swizzle.c — the 128x4 scale layout: specs.md's offsets, the oracle's golden layouts, round trips. */
#include <stdlib.h>

#include "test.h"

/* specs.md A6.7: R = 300, C = 10 (Cp = 12); a matrix whose byte (r, c) holds a unique tag is swizzled and the
 * tags are looked up at the documented offsets. */
TEST_IMPL(swizzle_spec_vectors) {
    moe_ctx *ctx = env->cpu;
    enum { R = 300, C = 10 };
    ASSERT_EQ_I64(moe_scale_swizzled_bytes(R, C), 4608);
    static uint8_t lin[R * C], back[R * C], swz[4608];
    /* negative, or padded past int64 (the product once overflowed): -1, and swizzling such a shape fails */
    ASSERT_EQ_I64(moe_scale_swizzled_bytes(-1, 4), -1);
    ASSERT_EQ_I64(moe_scale_swizzled_bytes((int64_t)1 << 40, (int64_t)1 << 40), -1);
    ASSERT_EQ_I64(moe_scale_swizzled_bytes(1, INT64_MAX), -1);
    moe_tensor huge = moe_tensor_2d(lin, MOE_DTYPE_U8, 1, ((int64_t)1 << 62) + 1);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "too large", moe_scale_swizzle(ctx, &huge, NULL, NULL));
    static const int vec[][3] = {{5, 2, 82}, {37, 5, 597}, {130, 0, 1568}, {299, 9, 4277},
                                 {0, 4, 512}, {32, 0, 4},  {64, 3, 11}};
    for (size_t v = 0; v < sizeof vec / sizeof vec[0]; v++) {
        memset(lin, 0, sizeof lin);
        lin[vec[v][0] * C + vec[v][1]] = 0xEE;
        moe_tensor t = moe_tensor_2d(lin, MOE_DTYPE_U8, R, C);
        ASSERT_OK(ctx, moe_scale_swizzle(ctx, &t, swz, NULL));
        for (int i = 0; i < 4608; i++)
            ASSERT_MSG(swz[i] == (i == vec[v][2] ? 0xEE : 0), "(%d, %d): byte %d is 0x%02x", vec[v][0], vec[v][1],
                       i, swz[i]);
    }
    uint64_t st = env->seed;
    for (int i = 0; i < R * C; i++) lin[i] = (uint8_t)(test_splitmix64(&st) | 1); /* never 0: padding is */
    moe_tensor t = moe_tensor_2d(lin, MOE_DTYPE_E8M0, R, C), b = moe_tensor_2d(back, MOE_DTYPE_E8M0, R, C);
    ASSERT_OK(ctx, moe_scale_swizzle(ctx, &t, swz, NULL));
    ASSERT_OK(ctx, moe_scale_unswizzle(ctx, swz, &b, NULL));
    ASSERT(!memcmp(lin, back, sizeof lin));
    int zeros = 0;
    for (int i = 0; i < 4608; i++) zeros += swz[i] == 0;
    ASSERT_EQ_I64(zeros, 4608 - R * C);
    return TEST_OK;
}

TEST_IMPL(swizzle_golden) {
    golden g;
    ASSERT(golden_load(&g, env->data_dir, "blocks.moeg") == 0);
    int found = 0;
    for (int i = 0; i < g.count; i++) {
        const golden_record *in = &g.recs[i];
        size_t len = strlen(in->name);
        if (strncmp(in->name, "swz.", 4) || len < 3 || strcmp(in->name + len - 3, ".in")) continue;
        char name[160];
        snprintf(name, sizeof name, "%.*s.out", (int)len - 3, in->name);
        const golden_record *out = golden_get(&g, name);
        ASSERT(out && in->ndim == 3);
        moe_tensor t = {(void *)in->data, MOE_DTYPE_U8, 3, {in->shape[0], in->shape[1], in->shape[2]}};
        ASSERT_EQ_I64(in->shape[0] * moe_scale_swizzled_bytes(in->shape[1], in->shape[2]), out->numel);
        uint8_t *swz = malloc(out->bytes), *back = malloc(in->bytes + 1);
        ASSERT_OK(env->cpu, moe_scale_swizzle(env->cpu, &t, swz, NULL));
        ASSERT_MSG(!memcmp(swz, out->data, out->bytes), "%s differs from the oracle", name);
        t.data = back;
        ASSERT_OK(env->cpu, moe_scale_unswizzle(env->cpu, out->data, &t, NULL));
        ASSERT_MSG(!memcmp(back, in->data, in->bytes), "%s does not unswizzle back", name);
        free(swz);
        free(back);
        found++;
    }
    golden_free(&g);
    ASSERT_MSG(found >= 5, "only %d swizzle cases in blocks.moeg", found);
    return TEST_OK;
}
