/* route_math.h — the arithmetic every router shares, written once for host and device (MOE_HD) so that the
 * CPU reference and the CUDA kernels produce the same bits (docs/routing.md §1): exp, sigmoid, the selection
 * order, and the fixed summation order over experts. Compile device code with -fmad=false (the Makefile does). */
#ifndef MOE_ROUTE_MATH_H
#define MOE_ROUTE_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/internal.h"

static inline MOE_HD float moe__pow2i(int e) { /* 2^e for e in [-126, 127] */
    uint32_t bits = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* e^x: n = rint(x log2 e); r = x - n ln2 with ln2 in two parts (the first has 16 significant bits, so n * hi is
 * exact); e^r by its degree-7 Taylor polynomial (|r| <= 0.347: truncation below 0.2 ulp) in Horner form with
 * FMA; times 2^n in two steps, the first exact (n in [-150, 128], halves in [-75, 64]; >> on a negative int
 * shifts in the sign, as every compiler this builds with defines it), so the result is p 2^n rounded once.
 * Within 2 ulp of the true value. */
static inline MOE_HD float moe__expf(float x) {
    /* branch-free: x clamped to [-104, 89], where that rounding itself gives Inf from 88.72... up and 0 below
     * -103.97... (the same bits as selecting them, on all 2^32 inputs: scripts/check_expf.c); only NaN is picked */
    const float xc = fminf(fmaxf(x, -104.0f), 89.0f);
    const float n = rintf(xc * 1.44269502f);
    float r = fmaf(-n, 0.693145751953125f, xc);
    r = fmaf(-n, 1.428606765330187e-06f, r);
    float p = 1.98412698e-4f; /* 1/5040 */
    p = fmaf(p, r, 1.38888889e-3f);
    p = fmaf(p, r, 8.33333333e-3f);
    p = fmaf(p, r, 4.16666667e-2f);
    p = fmaf(p, r, 1.66666667e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const int ni = (int)n, n1 = ni >> 1;
    const float y = (p * moe__pow2i(n1)) * moe__pow2i(ni - n1);
    return x != x ? x : y;
}

static inline MOE_HD float moe__sigmoidf(float x) {
    return 1.0f / (1.0f + moe__expf(-x));
}

/* The selection order: a valid candidate beats an invalid one; then the larger value; then the lower index. */
static inline MOE_HD int moe__better(int valid_a, float va, int ia, int valid_b, float vb, int ib) {
    if (valid_a != valid_b) return valid_a;
    if (!valid_a) return ia < ib;
    return va > vb || (va == vb && ia < ib);
}

/* softmax numerator of x against the row max m (docs §1): NaN -> 0; infinite m -> 1 for entries equal to m. */
static inline MOE_HD float moe__softmax_term(float x, float m) {
    if (x != x) return 0.0f;
    if (isinf(m)) return x == m ? 1.0f : 0.0f;
    return moe__expf(x - m);
}

#endif /* MOE_ROUTE_MATH_H */
