/* test_scalar.c — scalar conversions: the test vectors of specs.md, the oracle's golden files (every special
 * class, 2^21 random f32 patterns, every code decoded) and encode/decode round trips. */
#include <float.h>
#include <stdlib.h>

#include "conversions.h"

TEST_IMPL(status_strings) {
    (void)env;
    const moe_status all[] = {MOE_OK, MOE_ERR_INVALID_ARG, MOE_ERR_UNSUPPORTED, MOE_ERR_CUDA,
                              MOE_ERR_OOM, MOE_ERR_IO, MOE_ERR_NO_DEVICE};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        ASSERT(strlen(moe_status_string(all[i])) > 0);
        for (size_t j = 0; j < i; j++) ASSERT(strcmp(moe_status_string(all[i]), moe_status_string(all[j])) != 0);
    }
    ASSERT(!strcmp(moe_status_string((moe_status)12345), "unknown status"));
    return TEST_OK;
}

TEST_IMPL(dtype_table) {
    (void)env;
    for (int d = 1; d < MOE_DTYPE_COUNT_; d++) ASSERT_EQ_I64(moe_dtype_from_name(moe_dtype_name((moe_dtype)d)), d);
    ASSERT_EQ_I64(moe_dtype_from_name("float99"), MOE_DTYPE_INVALID);
    ASSERT_EQ_I64(moe_dtype_bits(MOE_DTYPE_E2M1), 4);
    ASSERT_EQ_I64(moe_dtype_bytes(MOE_DTYPE_E2M1, 10), 5);
    ASSERT_EQ_I64(moe_dtype_bytes(MOE_DTYPE_E2M1, 11), -1);
    ASSERT_EQ_I64(moe_dtype_bytes(MOE_DTYPE_BF16, 3), 6);
    ASSERT_EQ_I64(moe_dtype_bytes((moe_dtype)99, 3), -1);
    for (int k = 1; k < MOE_QFORMAT_COUNT_; k++)
        ASSERT_EQ_I64(moe_qformat_kind_from_name(moe_qformat_kind_name((moe_qformat_kind)k)), k);
    for (int r = 0; r < MOE_SCALE_RULE_COUNT_; r++)
        ASSERT_EQ_I64(moe_scale_rule_from_name(moe_scale_rule_name((moe_scale_rule)r)), r);
    return TEST_OK;
}

/* specs.md A3, A4 and A5, typed in from the document: a second source beside the oracle's files. */
TEST_IMPL(scalar_spec_vectors) {
    (void)env;
    static const struct {
        float x;
        int e4m3_sat, e4m3_nosat, e5m2_sat, e5m2_nosat; /* -1: not given */
    } fp8[] = {
        {NAN, 0x7f, 0x7f, 0x7f, 0x7f},      {-NAN, 0x7f, 0x7f, 0x7f, 0x7f},    {INFINITY, 0x7e, 0x7f, 0x7b, 0x7c},
        {-INFINITY, 0xfe, 0xff, 0xfb, 0xfc}, {-0.0f, 0x80, 0x80, 0x80, 0x80},   {1.0f, 0x38, 0x38, 0x3c, 0x3c},
        {-1.0f, 0xb8, 0xb8, 0xbc, 0xbc},     {448, 0x7e, 0x7e, 0x5f, 0x5f},     {449, 0x7e, 0x7e, 0x5f, 0x5f},
        {463.99f, 0x7e, 0x7e, 0x5f, 0x5f},   {464, 0x7e, 0x7e, 0x5f, 0x5f},     {464.01f, 0x7e, 0x7f, 0x5f, 0x5f},
        {480, 0x7e, 0x7f, 0x60, 0x60},       {1e6f, 0x7e, 0x7f, 0x7b, 0x7c},    {57344, 0x7e, 0x7f, 0x7b, 0x7b},
        {61439, 0x7e, 0x7f, 0x7b, 0x7b},     {61440, 0x7e, 0x7f, 0x7b, 0x7c},   {0x1p-10f, 0x00, 0x00, 0x14, 0x14},
        {0x1.000002p-10f, 0x01, 0x01, 0x14, 0x14}, {0x1p-9f, 0x01, 0x01, 0x18, 0x18},
        {0x1.8p-9f, 0x02, 0x02, 0x1a, 0x1a}, {0.25f, 0x28, -1, 0x34, -1},       {0.75f, 0x34, -1, 0x3a, -1},
        {1.25f, 0x3a, -1, 0x3d, -1},         {1.75f, 0x3e, -1, 0x3f, -1},       {2.5f, 0x42, -1, 0x41, -1},
        {3.5f, 0x46, -1, 0x43, -1},          {5, 0x4a, -1, 0x45, -1},           {6, 0x4c, -1, 0x46, -1},
        {7, 0x4e, -1, 0x47, -1},             {100, 0x6c, -1, 0x56, -1},         {-0.1f, 0x9d, -1, 0xae, -1},
        {0.3f, 0x2a, -1, 0x35, -1},          {1.0f / 448, 0x01, -1, 0x19, -1},  {1e-8f, 0x00, -1, 0x00, -1},
        {1e-40f, 0x00, 0x00, 0x00, 0x00},
    };
    for (size_t i = 0; i < sizeof fp8 / sizeof fp8[0]; i++) {
        float x = fp8[i].x;
        ASSERT_MSG(moe_e4m3_from_f32(x, 1) == fp8[i].e4m3_sat, "e4m3 sat(%a) = %02x, want %02x", x,
                   moe_e4m3_from_f32(x, 1), fp8[i].e4m3_sat);
        ASSERT_MSG(fp8[i].e4m3_nosat < 0 || moe_e4m3_from_f32(x, 0) == fp8[i].e4m3_nosat,
                   "e4m3 nosat(%a) = %02x, want %02x", x, moe_e4m3_from_f32(x, 0), fp8[i].e4m3_nosat);
        ASSERT_MSG(moe_e5m2_from_f32(x, 1) == fp8[i].e5m2_sat, "e5m2 sat(%a) = %02x, want %02x", x,
                   moe_e5m2_from_f32(x, 1), fp8[i].e5m2_sat);
        ASSERT_MSG(fp8[i].e5m2_nosat < 0 || moe_e5m2_from_f32(x, 0) == fp8[i].e5m2_nosat,
                   "e5m2 nosat(%a) = %02x, want %02x", x, moe_e5m2_from_f32(x, 0), fp8[i].e5m2_nosat);
    }
    static const struct {
        float x;
        int rp_sat, rp_nosat, rz_sat;
    } e8[] = {
        {1, 0x7f, 0x7f, 0x7f},       {448, 0x88, 0x88, 0x87},   {1e6f, 0x93, 0x93, 0x92},
        {0x1p-10f, 0x75, 0x75, 0x75}, {0.25f, 0x7d, 0x7d, 0x7d}, {0.75f, 0x7f, 0x7f, 0x7e},
        {1.5f, 0x80, 0x80, 0x7f},    {3, 0x81, 0x81, 0x80},     {5, 0x82, 0x82, 0x81},
        {57344, 0x8f, 0x8f, 0x8e},   {1e38f, 0xfe, 0xfe, 0xfd}, {3.4e38f, 0xfe, 0xff, 0xfe},
        {INFINITY, 0xfe, 0xff, 0xfe}, {NAN, 0xff, 0xff, 0xff},  {0, 0x00, 0x00, 0x00},
        {-1, 0x7f, 0x7f, 0x7f},
    };
    for (size_t i = 0; i < sizeof e8 / sizeof e8[0]; i++) {
        float x = e8[i].x;
        ASSERT_MSG(moe_e8m0_from_f32(x, MOE_ROUND_UP, 1) == e8[i].rp_sat, "e8m0 rp sat(%a) = %02x, want %02x", x,
                   moe_e8m0_from_f32(x, MOE_ROUND_UP, 1), e8[i].rp_sat);
        ASSERT_MSG(moe_e8m0_from_f32(x, MOE_ROUND_UP, 0) == e8[i].rp_nosat, "e8m0 rp nosat(%a) = %02x, want %02x",
                   x, moe_e8m0_from_f32(x, MOE_ROUND_UP, 0), e8[i].rp_nosat);
        ASSERT_MSG(moe_e8m0_from_f32(x, MOE_ROUND_ZERO, 1) == e8[i].rz_sat, "e8m0 rz sat(%a) = %02x, want %02x", x,
                   moe_e8m0_from_f32(x, MOE_ROUND_ZERO, 1), e8[i].rz_sat);
    }
    ASSERT(test_f32_bits(moe_e8m0_to_f32(0x00)) == 0x00400000u); /* 2^-127, not zero */
    ASSERT(isnan(moe_e8m0_to_f32(0xFF)));
    static const struct {
        float x;
        int code;
    } fp4[] = {{0.25f, 0x0}, {0.75f, 0x2}, {1.25f, 0x2}, {1.75f, 0x4}, {2.5f, 0x4},       {3.5f, 0x6},
               {5.0f, 0x6},  {5.01f, 0x7}, {7, 0x7},     {INFINITY, 0x7}, {-INFINITY, 0xF}, {-0.1f, 0x8},
               {NAN, 0x7},   {-NAN, 0x7},  {0.5f, 0x1},  {-6, 0xF}};
    for (size_t i = 0; i < sizeof fp4 / sizeof fp4[0]; i++)
        ASSERT_MSG(moe_e2m1_from_f32(fp4[i].x) == fp4[i].code, "e2m1(%a) = %x, want %x", fp4[i].x,
                   moe_e2m1_from_f32(fp4[i].x), fp4[i].code);
    static const float fp4_values[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    for (int c = 0; c < 16; c++) ASSERT(test_same_f32(moe_e2m1_to_f32((uint8_t)c), fp4_values[c]));
    ASSERT(moe_e4m3_to_f32(0x7E) == 448.0f && isnan(moe_e4m3_to_f32(0xFF)) && moe_e4m3_to_f32(0x01) == 0x1p-9f);
    ASSERT(moe_e5m2_to_f32(0x7B) == 57344.0f && isinf(moe_e5m2_to_f32(0xFC)) && isnan(moe_e5m2_to_f32(0x7D)));
    return TEST_OK;
}

/* Compares conversion c over inputs against an explicit golden array; prints the first few mismatches. */
static int check_explicit(const test_conversion *c, const uint32_t *in, int64_t n, const golden_record *want) {
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t got = c->host(test_f32_from_bits(in[i]));
        uint32_t exp = c->out_bytes == 2 ? ((const uint16_t *)want->data)[i] : ((const uint8_t *)want->data)[i];
        if (got != exp && bad++ < 5)
            fprintf(stderr, "  %s(0x%08x = %a): got 0x%x, oracle 0x%x\n", c->name, in[i],
                    test_f32_from_bits(in[i]), got, exp);
    }
    return bad;
}

TEST_IMPL(scalar_golden_specials) {
    golden g;
    ASSERT(golden_load(&g, env->data_dir, "scalars.moeg") == 0);
    const golden_record *in = golden_get(&g, "specials");
    int bad = !in;
    for (int k = 0; in && k < TEST_N_CONVERSIONS; k++) {
        char name[64];
        snprintf(name, sizeof name, "specials.%s", test_conversions[k].name);
        const golden_record *want = golden_get(&g, name);
        if (!want || want->numel != in->numel) {
            bad++;
            continue;
        }
        bad += check_explicit(&test_conversions[k], in->data, in->numel, want);
    }
    golden_free(&g);
    ASSERT_MSG(bad == 0, "%d conversions of special values differ from the oracle", bad);
    return TEST_OK;
}

/* Output of conversion c over all n inputs as the oracle lays it out (one element of out_bytes each). */
static void convert_all(const test_conversion *c, const uint32_t *in, int64_t n, void *out) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = c->host(test_f32_from_bits(in[i]));
        if (c->out_bytes == 2)
            ((uint16_t *)out)[i] = (uint16_t)v;
        else
            ((uint8_t *)out)[i] = (uint8_t)v;
    }
}

TEST_IMPL(scalar_golden_random) {
    golden g;
    ASSERT(golden_load(&g, env->data_dir, "scalars.moeg") == 0);
    const int64_t n = 1 << 20;
    uint32_t *in = malloc((size_t)n * 4);
    uint16_t *out = malloc((size_t)n * 2);
    uint64_t *fnv = malloc((size_t)test_chunk_count(n) * 8);
    int bad = 0;
    const char *sets[] = {"rand", "near"};
    for (int s = 0; s < 2; s++) {
        test_random_set(sets[s], in, n);
        for (int k = 0; k < TEST_N_CONVERSIONS; k++) {
            const test_conversion *c = &test_conversions[k];
            char name[64];
            snprintf(name, sizeof name, "%s.%s.fnv", sets[s], c->name);
            const golden_record *want = golden_get(&g, name);
            if (!want || want->numel != test_chunk_count(n)) {
                bad++;
                continue;
            }
            convert_all(c, in, n, out);
            test_chunk_fnv(out, n, c->out_bytes, fnv);
            for (int64_t ch = 0; ch < want->numel; ch++)
                if (fnv[ch] != ((const uint64_t *)want->data)[ch]) {
                    fprintf(stderr, "  %s: chunk %" PRId64 " (inputs %" PRId64 "..) differs from the oracle\n", name,
                            ch, ch * 4096);
                    bad++;
                    break;
                }
        }
    }
    free(in);
    free(out);
    free(fnv);
    golden_free(&g);
    ASSERT_MSG(bad == 0, "%d random-set conversions differ from the oracle", bad);
    return TEST_OK;
}

TEST_IMPL(scalar_golden_decode) {
    golden g;
    ASSERT(golden_load(&g, env->data_dir, "scalars.moeg") == 0);
    static const struct {
        const char *name;
        int codes;
        float (*decode)(uint8_t);
    } tables[] = {{"decode.e4m3", 256, moe_e4m3_to_f32},
                  {"decode.e5m2", 256, moe_e5m2_to_f32},
                  {"decode.e2m1", 16, moe_e2m1_to_f32},
                  {"decode.e8m0", 256, moe_e8m0_to_f32}};
    int bad = 0;
    for (int t = 0; t < 4; t++) {
        const golden_record *want = golden_get(&g, tables[t].name);
        if (!want || want->numel != tables[t].codes) {
            bad++;
            continue;
        }
        for (int c = 0; c < tables[t].codes; c++) {
            float got = tables[t].decode((uint8_t)c), exp = test_f32_from_bits(((const uint32_t *)want->data)[c]);
            if (!test_same_f32(got, exp) && bad++ < 5)
                fprintf(stderr, "  %s(0x%02x) = %a, oracle %a\n", tables[t].name, c, got, exp);
        }
    }
    /* All 65536 bf16 and f16 codes, NaNs canonicalised as the oracle hashes them. */
    uint32_t *out = malloc(65536 * 4);
    uint64_t fnv[16];
    for (int half = 0; half < 2; half++) {
        for (uint32_t c = 0; c < 65536; c++) {
            float v = half ? moe_f16_to_f32((uint16_t)c) : moe_bf16_to_f32((uint16_t)c);
            out[c] = isnan(v) ? 0x7FC00000u : test_f32_bits(v);
        }
        test_chunk_fnv(out, 65536, 4, fnv);
        const golden_record *want = golden_get(&g, half ? "decode.f16.fnv" : "decode.bf16.fnv");
        if (!want || want->numel != 16 || memcmp(want->data, fnv, sizeof fnv) != 0) {
            fprintf(stderr, "  decode of every %s code differs from the oracle\n", half ? "f16" : "bf16");
            bad++;
        }
    }
    free(out);
    golden_free(&g);
    ASSERT_MSG(bad == 0, "%d decoded codes differ from the oracle", bad);
    return TEST_OK;
}

/* Every non-NaN code decodes to a value that encodes back to the same code. */
TEST_IMPL(scalar_roundtrip) {
    (void)env;
    for (int c = 0; c < 256; c++) {
        float v = moe_e4m3_to_f32((uint8_t)c);
        if (!isnan(v)) ASSERT_MSG(moe_e4m3_from_f32(v, 0) == c, "e4m3 0x%02x", c);
        v = moe_e5m2_to_f32((uint8_t)c);
        if (!isnan(v)) ASSERT_MSG(moe_e5m2_from_f32(v, 0) == c, "e5m2 0x%02x", c);
        v = moe_e8m0_to_f32((uint8_t)c);
        if (!isnan(v)) ASSERT_MSG(moe_e8m0_from_f32(v, MOE_ROUND_UP, 0) == c && moe_e8m0_from_f32(v, MOE_ROUND_ZERO, 0) == c,
                                  "e8m0 0x%02x", c);
    }
    for (int c = 0; c < 16; c++) ASSERT_MSG(moe_e2m1_from_f32(moe_e2m1_to_f32((uint8_t)c)) == c, "e2m1 0x%x", c);
    for (uint32_t c = 0; c < 65536; c++) {
        float v = moe_bf16_to_f32((uint16_t)c);
        if (!isnan(v)) ASSERT_MSG(moe_bf16_from_f32(v) == c, "bf16 0x%04x", c);
        v = moe_f16_to_f32((uint16_t)c);
        if (!isnan(v)) ASSERT_MSG(moe_f16_from_f32(v) == c, "f16 0x%04x", c);
    }
    return TEST_OK;
}

/* moe_convert on the CPU context agrees with the scalar functions, packs E2M1 low nibble first, and
 * decodes low-precision sources exactly. */
TEST_IMPL(convert_cpu) {
    moe_ctx *ctx = env->cpu;
    enum { N = 4096 };
    static uint32_t in[N];
    static uint8_t out[N * 2];
    uint64_t state = env->seed;
    for (int i = 0; i < N; i++) in[i] = (uint32_t)test_splitmix64(&state);
    test_random_set("near", in, N / 2);
    moe_tensor src = moe_tensor_2d(in, MOE_DTYPE_F32, 2, N / 2);
    for (int k = 0; k < TEST_N_CONVERSIONS; k++) {
        const test_conversion *c = &test_conversions[k];
        moe_tensor dst = moe_tensor_2d(out, c->dst, 2, N / 2);
        moe_convert_options o = {c->round, c->saturate};
        ASSERT_OK(ctx, moe_convert(ctx, &src, &dst, &o, NULL));
        for (int i = 0; i < N; i++)
            ASSERT_MSG(test_conversion_output(c, out, i) == c->host(test_f32_from_bits(in[i])), "%s element %d",
                       c->name, i);
    }
    /* every E4M3 code -> f32 -> bf16 */
    uint8_t codes[256];
    uint16_t bf[256];
    for (int i = 0; i < 256; i++) codes[i] = (uint8_t)i;
    moe_tensor s8 = moe_tensor_2d(codes, MOE_DTYPE_E4M3, 1, 256), d16 = moe_tensor_2d(bf, MOE_DTYPE_BF16, 1, 256);
    ASSERT_OK(ctx, moe_convert(ctx, &s8, &d16, NULL, NULL));
    for (int i = 0; i < 256; i++) ASSERT(bf[i] == moe_bf16_from_f32(moe_e4m3_to_f32((uint8_t)i)));
    moe_convert_options rn = {MOE_ROUND_NEAREST_EVEN, 1};
    moe_tensor d8 = moe_tensor_2d(out, MOE_DTYPE_E8M0, 1, 256);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "e8m0", moe_convert(ctx, &d16, &d8, &rn, NULL));
    moe_tensor odd = moe_tensor_2d(out, MOE_DTYPE_E2M1, 1, 255);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "whole bytes", moe_convert(ctx, &s8, &odd, NULL, NULL));
    moe_tensor wrong = moe_tensor_2d(out, MOE_DTYPE_I32, 1, 256);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "no conversion", moe_convert(ctx, &s8, &wrong, NULL, NULL));
    return TEST_OK;
}
