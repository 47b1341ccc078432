/* scalar.h — the host definitions of every scalar conversion (docs/formats.md §1), inline for the CPU loops.
 *
 * The narrow float encoders share one method, the one specs.md A3 verified against the hardware on every f32:
 * take E = max(floor(log2 |x|), emin), round |x| / 2^(E - mbits) to an integer with ties to even, and the
 * product is |x| rounded onto the format's grid (both steps are exact in f32 except the rounding itself).
 * A result above the largest finite value overflows. */
#ifndef MOE_FORMATS_SCALAR_H
#define MOE_FORMATS_SCALAR_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "moe.h"

static inline uint32_t moe__f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float moe__f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* A small binary float format: mbits mantissa bits, exponent bias, smallest normal exponent emin. */
typedef struct moe_minifloat {
    int mbits;
    int bias;
    int emin;
    float max_finite;
} moe_minifloat;

static const moe_minifloat MOE_E4M3 = {3, 7, -6, 448.0f};
static const moe_minifloat MOE_E5M2 = {2, 15, -14, 57344.0f};
static const moe_minifloat MOE_E2M1 = {1, 1, 0, 6.0f};
static const moe_minifloat MOE_F16 = {10, 15, -14, 65504.0f};

/* |x| rounded to the grid of f, ties to even; may exceed f.max_finite (the caller decides overflow).
 * x must be finite. */
static inline float moe__round_to_grid(float ax, const moe_minifloat *f) {
    if (ax == 0.0f) return 0.0f;
    int e;
    frexpf(ax, &e); /* ax = m * 2^e, m in [0.5, 1): floor(log2 ax) = e - 1 */
    int E = e - 1 < f->emin ? f->emin : e - 1;
    float ulp = ldexpf(1.0f, E - f->mbits);
    return rintf(ax / ulp) * ulp;
}

/* Bits (without sign) of a magnitude r that lies exactly on the grid of f and is <= max_finite. */
static inline uint32_t moe__grid_bits(float r, const moe_minifloat *f) {
    if (r == 0.0f) return 0;
    int e;
    frexpf(r, &e);
    int E = e - 1;
    if (E < f->emin) /* subnormal: exponent field 0, mantissa = r / 2^(emin - mbits) */
        return (uint32_t)(r / ldexpf(1.0f, f->emin - f->mbits));
    uint32_t mant = (uint32_t)((r / ldexpf(1.0f, E) - 1.0f) * (float)(1 << f->mbits));
    return ((uint32_t)(E + f->bias) << f->mbits) | mant;
}

/* Decodes sign-less bits of f (no NaN/Inf handling: callers check their own special codes). */
static inline float moe__grid_value(uint32_t bits, const moe_minifloat *f) {
    uint32_t exp = bits >> f->mbits, mant = bits & ((1u << f->mbits) - 1);
    if (exp == 0) return ldexpf((float)mant, f->emin - f->mbits);
    return ldexpf(1.0f + (float)mant / (float)(1 << f->mbits), (int)exp - f->bias);
}

/* ---- bf16 ---- */

static inline uint16_t moe__bf16_from_f32(float x) {
    uint32_t u = moe__f32_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFF;
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even on the 16 dropped bits; carries into the exponent */
    return (uint16_t)(u >> 16);
}

static inline float moe__bf16_to_f32(uint16_t b) {
    return moe__f32_from_bits((uint32_t)b << 16);
}

/* ---- f16 ---- */

static inline uint16_t moe__f16_from_f32(float x) {
    if (isnan(x)) return 0x7FFF;
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    float ax = fabsf(x);
    if (isinf(ax)) return sign | 0x7C00;
    float r = moe__round_to_grid(ax, &MOE_F16);
    if (r > MOE_F16.max_finite) return sign | 0x7C00;
    return (uint16_t)(sign | moe__grid_bits(r, &MOE_F16));
}

static inline float moe__f16_to_f32(uint16_t h) {
    float sign = (h & 0x8000) ? -1.0f : 1.0f;
    uint32_t mag = h & 0x7FFF;
    if (mag >= 0x7C00) return mag == 0x7C00 ? sign * INFINITY : NAN;
    return sign * moe__grid_value(mag, &MOE_F16);
}

/* ---- FP8 ---- */

/* Shared by E4M3 and E5M2: nan_code is returned for NaN input; overflow gives sat_code (saturating) or
 * over_code (non-saturating), each with the sign bit of x. */
static inline uint8_t moe__fp8_from_f32(float x, const moe_minifloat *f, int saturate, uint8_t sat_code,
                                        uint8_t over_code) {
    if (isnan(x)) return 0x7F;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float ax = fabsf(x);
    float r = isinf(ax) ? INFINITY : moe__round_to_grid(ax, f);
    if (r > f->max_finite) return sign | (saturate ? sat_code : over_code);
    return (uint8_t)(sign | moe__grid_bits(r, f));
}

static inline uint8_t moe__e4m3_from_f32(float x, int saturate) {
    return moe__fp8_from_f32(x, &MOE_E4M3, saturate, 0x7E, 0x7F);
}

static inline uint8_t moe__e5m2_from_f32(float x, int saturate) {
    return moe__fp8_from_f32(x, &MOE_E5M2, saturate, 0x7B, 0x7C);
}

static inline float moe__e4m3_to_f32(uint8_t b) {
    if ((b & 0x7F) == 0x7F) return NAN;
    float v = moe__grid_value(b & 0x7F, &MOE_E4M3);
    return (b & 0x80) ? -v : v;
}

static inline float moe__e5m2_to_f32(uint8_t b) {
    uint32_t mag = b & 0x7F;
    if (mag >= 0x7C) return mag == 0x7C ? ((b & 0x80) ? -INFINITY : INFINITY) : NAN;
    float v = moe__grid_value(mag, &MOE_E5M2);
    return (b & 0x80) ? -v : v;
}

/* ---- FP4 E2M1 ---- */

static inline uint8_t moe__e2m1_from_f32(float x) {
    if (isnan(x)) return 0x7;
    uint8_t sign = signbit(x) ? 0x8 : 0;
    float ax = fabsf(x);
    float r = isinf(ax) ? MOE_E2M1.max_finite : moe__round_to_grid(ax, &MOE_E2M1);
    if (r > MOE_E2M1.max_finite) r = MOE_E2M1.max_finite;
    return (uint8_t)(sign | moe__grid_bits(r, &MOE_E2M1));
}

static inline float moe__e2m1_to_f32(uint8_t nibble) {
    float v = moe__grid_value(nibble & 0x7, &MOE_E2M1);
    return (nibble & 0x8) ? -v : v;
}

/* ---- E8M0 ---- */

/* rz: largest E with 2^(E-127) <= |x|; rp: smallest E with 2^(E-127) >= |x|; both clamped below at 0;
 * E = 255 (too large, or Inf) becomes 0xFE when saturating. NaN -> 0xFF. */
static inline uint8_t moe__e8m0_from_f32(float x, moe_round round, int saturate) {
    if (isnan(x)) return 0xFF;
    float a = fabsf(x);
    int E;
    if (isinf(a)) {
        E = 255;
    } else if (a == 0.0f) {
        E = 0;
    } else {
        int e;
        float m = frexpf(a, &e);                   /* a = m * 2^e, m in [0.5, 1) */
        int floor_log2 = e - 1;                    /* exact for subnormals too */
        int ceil_log2 = m == 0.5f ? e - 1 : e;     /* a is a power of two iff m == 0.5 */
        E = (round == MOE_ROUND_ZERO ? floor_log2 : ceil_log2) + 127;
        if (E < 0) E = 0;
        if (E > 255) E = 255;
    }
    if (E == 255) return saturate ? 0xFE : 0xFF;
    return (uint8_t)E;
}

static inline float moe__e8m0_to_f32(uint8_t b) {
    return b == 0xFF ? NAN : ldexpf(1.0f, (int)b - 127);
}

#endif /* MOE_FORMATS_SCALAR_H */
