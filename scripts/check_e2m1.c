/* scripts/check_e2m1.c — the arguments behind the GPU's E2M1 encoders (src/cuda/common/cuda.cuh), checked on
 * every f32 input against the CPU definition (src/formats/scalar.h). Not a test (minutes on two cores):
 *   gcc -O2 -march=native -fopenmp -std=c11 -Isrc -Iinclude scripts/check_e2m1.c -o /tmp/check_e2m1 -lm
 *   /tmp/check_e2m1
 * 1. moe_e2m1_code: the minimum of three FMAs, each rounding |x| on one binade's grid, with fminf dropping NaN.
 * 2. The route NVFP4 takes to the f16x2 encoder (docs/performance.md, formats): x
 *    rounded to f16 toward zero with a sticky bit in the last place (round to odd; emulated here bit by bit),
 *    then encoded as that f16 value; the f16 encoder equals the definition on every f16 value
 *    (scripts/check_e2m1_f16.py).
 * 3. What the kernels do for that sticky bit: bit 13 of the f32 input (the f16 result's last place, where the result
 *    is normal) set when any of bits 0-12 is, u | ((u + 0x1FFF) & 0x2000), before the toward-zero conversion; it
 *    gives the same codes as 2 on every input (below 2^-14, where the jam lands under f16's last place, every code
 *    is a zero). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "formats/scalar.h"

static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
/* IEEE minNum, as the GPU's fminf: a NaN operand gives the other */
static float min_num(float a, float b) { return isnan(a) ? b : isnan(b) ? a : (a < b ? a : b); }

static uint32_t three_fma(float x) {
    const float m = 12582912.0f, a = fabsf(x);
    const float c = min_num(min_num(fmaf(a, 2.0f, m), fmaf(a, 1.0f, m + 2.0f)), min_num(fmaf(a, 0.5f, m + 4.0f), m + 7.0f));
    return (bits(c) & 7u) | ((bits(min_num(x, FLT_MAX)) >> 28) & 8u);
}

/* f32 -> f16 bits toward zero, then (sticky) the sticky bit (any of the 13 mantissa bits f16 drops) ORed in */
static uint16_t to_f16(float x, int sticky) {
    const uint32_t u = bits(x), sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFF;
    uint32_t h;
    if (a > 0x7F800000) h = 0x7E00;                                     /* NaN */
    else if (a == 0x7F800000) h = 0x7C00;                               /* Inf */
    else if (from_bits(a) >= 65504.0f) h = 0x7BFF;                      /* toward zero: the largest finite */
    else if ((int)(a >> 23) - 127 >= -14) h = ((((a >> 23) - 112) << 10) | ((a & 0x7FFFFF) >> 13));
    else h = (uint32_t)(from_bits(a) * 16777216.0f);                    /* subnormal: truncated units of 2^-24 */
    return (uint16_t)(sign | h | (sticky && (u & 0x1FFF) ? 1 : 0));
}

static float f16_value(uint16_t h) {
    const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
    const float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 0x400), (int)e - 25);
    return (h & 0x8000) ? -v : v;
}

int main(void) {
    unsigned long long bad_fma = 0, bad_odd = 0, bad_jam = 0;
#pragma omp parallel for reduction(+ : bad_fma, bad_odd, bad_jam) schedule(static)
    for (int64_t i = 0; i < (1LL << 32); i++) {
        const float x = from_bits((uint32_t)i);
        const uint8_t want = moe__e2m1_from_f32(x);
        bad_fma += three_fma(x) != want;
        const float h = f16_value(to_f16(x, 1));
        bad_odd += (isnan(h) ? 0x7 : moe__e2m1_from_f32(h)) != want; /* the f16 encoder gives NaN +6 */
        const uint32_t u = (uint32_t)i;
        const float hj = f16_value(to_f16(from_bits(u | ((u + 0x1FFFu) & 0x2000u)), 0));
        bad_jam += (isnan(hj) ? 0x7 : moe__e2m1_from_f32(hj)) != want;
    }
    printf("three FMAs: %llu inputs differ; round to odd through f16: %llu; with the sticky bit jammed into bit 13: "
           "%llu\n", bad_fma, bad_odd, bad_jam);
    return bad_fma || bad_odd || bad_jam;
}
