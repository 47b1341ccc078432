/* scripts/check_expf.c — the argument behind moe__expf's ends (src/route/route_math.h), checked on every f32 input:
 * the exponential as it was first written, which picked Inf above 88.72283935546875, 0 below -103.972076416015625
 * and split n as n / 2, gives the same bits as the landed one, which leaves both ends to the clamped computation
 * (x in [-104, 89]: p 2^n rounds to Inf or 0 there by itself) and splits n by an arithmetic shift. The CPU
 * reference and the kernels compile the same function (no FTZ, no contraction on either side), so this covers both.
 * Not a test (about a minute on two cores):
 *   gcc -O2 -fopenmp -std=c11 -Isrc -Iinclude scripts/check_expf.c -o /tmp/check_expf -lm && /tmp/check_expf */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "route/route_math.h"

static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* the first version: the same reduction and polynomial, the ends selected */
static float expf_selected(float x) {
    const float xc = fminf(fmaxf(x, -104.0f), 89.0f);
    const float n = rintf(xc * 1.44269502f);
    float r = fmaf(-n, 0.693145751953125f, xc);
    r = fmaf(-n, 1.428606765330187e-06f, r);
    float p = 1.98412698e-4f;
    p = fmaf(p, r, 1.38888889e-3f);
    p = fmaf(p, r, 8.33333333e-3f);
    p = fmaf(p, r, 4.16666667e-2f);
    p = fmaf(p, r, 1.66666667e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const int ni = (int)n, n1 = ni / 2;
    const float y = (p * moe__pow2i(n1)) * moe__pow2i(ni - n1);
    return x != x ? x : x > 88.72283935546875f ? INFINITY : x < -103.972076416015625f ? 0.0f : y;
}

int main(void) {
    uint64_t differ = 0;
#pragma omp parallel for reduction(+ : differ) schedule(static, 1 << 20)
    for (int64_t i = 0; i < (1LL << 32); i++) {
        const float x = from_bits((uint32_t)i);
        const uint32_t want = bits(expf_selected(x)), got = bits(moe__expf(x));
        if (want != got) {
            differ++;
            if (differ < 5) printf("x = %a (0x%08x): 0x%08x against 0x%08x\n", x, (uint32_t)i, got, want);
        }
    }
    printf("moe__expf: %llu of 2^32 inputs differ from the selected ends\n", (unsigned long long)differ);
    return differ != 0;
}
