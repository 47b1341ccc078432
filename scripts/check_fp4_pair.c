/* scripts/check_fp4_pair.c — the FP4 kernels' code-to-bf16 step (fp4_pair in src/cuda/moe/fp4_codes.cuh, copied
 * here) checked on every 32-bit word of codes against the CPU definition of E2M1 (src/formats/scalar.h): pair t of
 * word w holds codes 3 - t (low half) and 7 - t (high half), each as the bf16 of its value times 2^-126, exactly.
 * Not a test (about a minute on two cores):
 *   gcc -O2 -march=native -fopenmp -std=c11 -Isrc -Iinclude scripts/check_fp4_pair.c -o /tmp/check_fp4_pair -lm
 *   /tmp/check_fp4_pair */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "formats/scalar.h"

static uint32_t fp4_pair(uint32_t w, uint32_t w8, int t) { /* the kernel's */
    const uint32_t c = (t < 2 ? w8 : w) & ((t & 1) ? 0x000F000Fu : 0x00F000F0u);
    return (c * ((t & 1) ? 4160u : 260u)) & 0x81C081C0u;
}

static float bf16_value(uint32_t bits16) {
    const uint32_t u = bits16 << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main(void) {
    /* the expected bf16 value of each code: its value times 2^-126 (a bf16 subnormal for the code 0.5) */
    float want[16];
    for (int c = 0; c < 16; c++) want[c] = ldexpf(moe__e2m1_to_f32((uint8_t)c), -126);
    long long bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static)
    for (int64_t hi = 0; hi < 65536; hi++)
        for (uint32_t lo = 0; lo < 65536; lo++) {
            const uint32_t w = (uint32_t)hi << 16 | lo;
            for (int t = 0; t < 4; t++) {
                const uint32_t p = fp4_pair(w, w >> 8, t);
                const int c0 = (w >> (4 * (3 - t))) & 15, c1 = (w >> (4 * (7 - t))) & 15;
                const float v0 = bf16_value(p & 0xFFFF), v1 = bf16_value(p >> 16);
                /* equal values and signs (a negative zero code stays a negative zero) */
                if (v0 != want[c0] || v1 != want[c1] || signbit(v0) != signbit(want[c0]) ||
                    signbit(v1) != signbit(want[c1]))
                    bad++;
            }
        }
    printf("fp4_pair: %lld mismatches over all 2^32 words\n", bad);
    return bad != 0;
}
