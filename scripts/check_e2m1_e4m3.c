/* scripts/check_e2m1_e4m3.c — the W4A8 decode kernel's code conversion (e4m3_even, e4m3_odd in
 * src/cuda/moe/grouped_gemm_rs_decode.cuh, copied here) checked on every 32-bit word of E2M1 codes against the CPU
 * definitions (src/formats/scalar.h): byte i of e4m3_even(w) is code 2i of w (the low nibble of byte i), byte i of
 * e4m3_odd(w) code 2i + 1 (the high nibble), each an E4M3 byte whose value is the code's value times 2^-6, exactly,
 * sign of zero included. Not a test (about a minute on two cores):
 *   gcc -O2 -march=native -fopenmp -std=c11 -Isrc -Iinclude scripts/check_e2m1_e4m3.c -o /tmp/check_e2m1_e4m3 -lm
 *   /tmp/check_e2m1_e4m3 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "formats/scalar.h"

static uint32_t e4m3_even(uint32_t w) { /* the kernel's */
    return (w & 0x07070707u) * 4u + (w & 0x08080808u) * 16u;
}
static uint32_t e4m3_odd(uint32_t w) {
    return ((w >> 2) & 0x1C1C1C1Cu) | (w & 0x80808080u);
}

int main(void) {
    /* per code: the expected value, and the value of every E4M3 byte */
    float want[16], e4m3[256];
    for (int c = 0; c < 16; c++) want[c] = ldexpf(moe__e2m1_to_f32((uint8_t)c), -6);
    for (int b = 0; b < 256; b++) e4m3[b] = moe__e4m3_to_f32((uint8_t)b);
    long long bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static)
    for (int64_t hi = 0; hi < 65536; hi++)
        for (uint32_t lo = 0; lo < 65536; lo++) {
            const uint32_t w = (uint32_t)hi << 16 | lo, even = e4m3_even(w), odd = e4m3_odd(w);
            for (int i = 0; i < 4; i++) {
                const int c0 = (w >> (8 * i)) & 15, c1 = (w >> (8 * i + 4)) & 15;
                const float v0 = e4m3[(even >> (8 * i)) & 0xFF], v1 = e4m3[(odd >> (8 * i)) & 0xFF];
                if (v0 != want[c0] || v1 != want[c1] || signbit(v0) != signbit(want[c0]) ||
                    signbit(v1) != signbit(want[c1]))
                    bad++;
            }
        }
    printf("e4m3_even, e4m3_odd: %lld mismatches over all 2^32 words\n", bad);
    return bad != 0;
}
