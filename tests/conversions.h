/* conversions.h — the scalar conversions the golden files cover, with the moe_convert options that do the same
 * on a context (so CPU and GPU tests walk one table). */
#ifndef MOE_TEST_CONVERSIONS_H
#define MOE_TEST_CONVERSIONS_H

#include "test.h"

typedef struct test_conversion {
    const char *name;    /* golden record suffix */
    moe_dtype dst;
    moe_round round;
    int saturate;
    int out_bytes;       /* bytes per output element in the golden files (E2M1: one code per byte) */
    uint32_t (*host)(float);
} test_conversion;

static inline uint32_t conv_bf16(float x) { return moe_bf16_from_f32(x); }
static inline uint32_t conv_f16(float x) { return moe_f16_from_f32(x); }
static inline uint32_t conv_e4m3_sat(float x) { return moe_e4m3_from_f32(x, 1); }
static inline uint32_t conv_e4m3_nosat(float x) { return moe_e4m3_from_f32(x, 0); }
static inline uint32_t conv_e5m2_sat(float x) { return moe_e5m2_from_f32(x, 1); }
static inline uint32_t conv_e5m2_nosat(float x) { return moe_e5m2_from_f32(x, 0); }
static inline uint32_t conv_e2m1(float x) { return moe_e2m1_from_f32(x); }
static inline uint32_t conv_e8m0_rz_sat(float x) { return moe_e8m0_from_f32(x, MOE_ROUND_ZERO, 1); }
static inline uint32_t conv_e8m0_rz_nosat(float x) { return moe_e8m0_from_f32(x, MOE_ROUND_ZERO, 0); }
static inline uint32_t conv_e8m0_rp_sat(float x) { return moe_e8m0_from_f32(x, MOE_ROUND_UP, 1); }
static inline uint32_t conv_e8m0_rp_nosat(float x) { return moe_e8m0_from_f32(x, MOE_ROUND_UP, 0); }

static const test_conversion test_conversions[] = {
    {"bf16", MOE_DTYPE_BF16, MOE_ROUND_NEAREST_EVEN, 1, 2, conv_bf16},
    {"f16", MOE_DTYPE_F16, MOE_ROUND_NEAREST_EVEN, 1, 2, conv_f16},
    {"e4m3_sat", MOE_DTYPE_E4M3, MOE_ROUND_NEAREST_EVEN, 1, 1, conv_e4m3_sat},
    {"e4m3_nosat", MOE_DTYPE_E4M3, MOE_ROUND_NEAREST_EVEN, 0, 1, conv_e4m3_nosat},
    {"e5m2_sat", MOE_DTYPE_E5M2, MOE_ROUND_NEAREST_EVEN, 1, 1, conv_e5m2_sat},
    {"e5m2_nosat", MOE_DTYPE_E5M2, MOE_ROUND_NEAREST_EVEN, 0, 1, conv_e5m2_nosat},
    {"e2m1", MOE_DTYPE_E2M1, MOE_ROUND_NEAREST_EVEN, 1, 1, conv_e2m1},
    {"e8m0_rz_sat", MOE_DTYPE_E8M0, MOE_ROUND_ZERO, 1, 1, conv_e8m0_rz_sat},
    {"e8m0_rz_nosat", MOE_DTYPE_E8M0, MOE_ROUND_ZERO, 0, 1, conv_e8m0_rz_nosat},
    {"e8m0_rp_sat", MOE_DTYPE_E8M0, MOE_ROUND_UP, 1, 1, conv_e8m0_rp_sat},
    {"e8m0_rp_nosat", MOE_DTYPE_E8M0, MOE_ROUND_UP, 0, 1, conv_e8m0_rp_nosat},
};
#define TEST_N_CONVERSIONS ((int)(sizeof test_conversions / sizeof test_conversions[0]))

/* Output element i of a conversion's result buffer (E2M1 packed two per byte, as moe_convert writes it). */
static inline uint32_t test_conversion_output(const test_conversion *c, const void *buf, int64_t i) {
    const uint8_t *b = (const uint8_t *)buf;
    if (c->dst == MOE_DTYPE_E2M1) return (b[i / 2] >> (4 * (i % 2))) & 0xF;
    if (c->out_bytes == 2) return ((const uint16_t *)buf)[i];
    return b[i];
}

#endif /* MOE_TEST_CONVERSIONS_H */
