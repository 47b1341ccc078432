/* qformat.cuh — device side of the block formats: the kernel parameter block, block scales (docs/formats.md
 * §2.2–2.4) and the scale layouts (§3), shared by quantize.cu and dequantize.cu. */
#ifndef MOE_CUDA_FORMATS_QFORMAT_CUH
#define MOE_CUDA_FORMATS_QFORMAT_CUH

#include <float.h>

#include "cuda/common/cuda.cuh"
#include "formats/qformat.h"

/* Everything a format kernel reads, by value. Shapes as in moe_qlayout. */
struct moe_qparams {
    const void *x;          /* unquantised tensor (quantise: input; dequantise: output) */
    uint8_t *data;          /* elements */
    void *scale;            /* block scales as stored */
    float *global;          /* NVFP4 global scale, or the FP8_TENSOR amax scratch */
    int64_t batch, rows, cols;
    int64_t block_rows, block_cols;
    int64_t scale_rows, scale_cols, scale_rows_pad, scale_cols_pad;
    moe_qformat_kind kind;
    moe_dtype elem, scale_dtype;
    moe_scale_rule rule;
    moe_scale_layout layout;
    moe_nvfp4_global global_conv;
    float elem_max, amax_floor;
    int elem_emax;
    bool vec;               /* cols % 8 == 0 and the pointers allow 16-byte accesses */
    bool vec16;             /* cols % 16 == 0 and data is 16-byte aligned: 16 elements' codes in one store */
    moe_divmod by_scale_cols, by_rows, by_groups; /* index maths without divide instructions */
};

static inline moe_qparams moe__qparams(const moe_qlayout *l, const void *x, const moe_qtensor *q) {
    moe_qparams p;
    p.x = x;
    p.data = (uint8_t *)q->data;
    p.scale = q->scale;
    p.global = q->global_scale;
    p.batch = l->batch;
    p.rows = l->rows;
    p.cols = l->cols;
    p.block_rows = l->block_rows;
    p.block_cols = l->block_cols;
    p.scale_rows = l->scale_rows;
    p.scale_cols = l->scale_cols;
    p.scale_rows_pad = l->scale_rows_pad;
    p.scale_cols_pad = l->scale_cols_pad;
    p.kind = l->f.kind;
    p.elem = l->f.elem;
    p.scale_dtype = l->f.scale_dtype;
    p.rule = l->f.rule;
    p.layout = l->f.layout;
    p.global_conv = l->f.global;
    p.elem_max = l->elem_max;
    p.amax_floor = l->f.amax_floor;
    p.elem_emax = l->elem_emax;
    p.vec = l->cols % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)q->data % 8 == 0;
    p.vec16 = p.vec && l->cols % 16 == 0 && (uintptr_t)q->data % 16 == 0;
    const int64_t total_rows = l->batch * l->rows, groups = (l->cols + 7) / 8;
    p.by_scale_cols = moe_divmod::make(l->scale_cols, total_rows * l->scale_cols);
    p.by_rows = moe_divmod::make(l->rows, total_rows);
    p.by_groups = moe_divmod::make(groups, total_rows * groups);
    return p;
}

/* One block's scale: the dequantisation multiplier, the stored byte, and how elements are encoded. */
struct moe_block_scale {
    float value;  /* f32 rule: s; UE8M0: 2^k; NVFP4: dec(sf) */
    float mul;    /* UE8M0: 2^-k; NVFP4: 1 / (dec(sf) * g_dec), or 0 */
    uint8_t byte; /* E8M0 or E4M3 storage */
    bool divide;  /* f32 rule: q = enc(x / value) */
};

/* The block amax after NaN skipping (fmaxf drops NaN): saturated to FLT_MAX, raised to the floor. */
__device__ __forceinline__ float moe_finish_amax(float a, float floor_) {
    return fmaxf(fminf(a, FLT_MAX), floor_);
}

/* x / s for the elements of one block, bit-identical to IEEE division. When the block is ordinary (amax a
 * below 2^126 and s at least 2^-60) a correctly rounded reciprocal and one FMA correction give the correctly
 * rounded quotient (Markstein) for every |x| >= 2^-100, whose remainder x - q*s is exact; smaller |x| give
 * |x / s| < 2^-40, which every FP8 encoding sends to a signed zero either way. Otherwise: IEEE division. */
struct moe_divider {
    float s, rcp;
    bool fast;
};

__device__ __forceinline__ moe_divider moe_make_divider(float s, float a) {
    moe_divider d = {s, __frcp_rn(s), a < 0x1p126f && s >= 0x1p-60f};
    return d;
}

/* The quotient of an ordinary block (d.fast): a product and one correction; the sign is x's for x = -0 too. */
__device__ __forceinline__ float moe_divide_fast(const moe_divider &d, float x) {
    const float q = __fmul_rn(x, d.rcp);
    return copysignf(__fmaf_rn(__fmaf_rn(-q, d.s, x), d.rcp, q), x);
}

__device__ __forceinline__ float moe_divide(const moe_divider &d, float x) {
    return d.fast ? moe_divide_fast(d, x) : __fdiv_rn(x, d.s);
}

/* N values of one block scaled for encoding: divided by the f32 scale (the block's kind decided once, outside
 * the loop), or multiplied by the power-of-two or NVFP4 multiplier. */
template <bool DIVIDE, int N>
__device__ __forceinline__ void moe_scale_values(float (&v)[N], const moe_block_scale &s, const moe_divider &d) {
    if (!DIVIDE) {
#pragma unroll
        for (int j = 0; j < N; j++) v[j] = __fmul_rn(v[j], s.mul);
    } else if (d.fast) {
#pragma unroll
        for (int j = 0; j < N; j++) v[j] = moe_divide_fast(d, v[j]);
    } else {
#pragma unroll
        for (int j = 0; j < N; j++) v[j] = __fdiv_rn(v[j], d.s);
    }
}

/* RN(a / elem_max) for a block amax a in [0, FLT_MAX] (the f32 rule's scale, RCEIL's ratio): the divider's fast
 * path with the divisor's rounded reciprocal, IEEE division below 2^-100 where the fast path's remainder
 * argument does not reach. */
__device__ __forceinline__ float moe_amax_over_max(const moe_qparams &p, float a) {
    const moe_divider d = {p.elem_max, __frcp_rn(p.elem_max), a >= 0x1p-100f && a < 0x1p126f};
    return moe_divide(d, a);
}

/* §2.2 / §2.3: the scale of a block with amax a. */
__device__ __forceinline__ moe_block_scale moe_scale_from_amax(const moe_qparams &p, float a) {
    moe_block_scale s;
    if (p.rule == MOE_SCALE_F32) {
        s.value = moe_amax_over_max(p, a);
        if (s.value == 0.0f) s.value = 1.0f;
        s.mul = 0.0f;
        s.byte = 0;
        s.divide = true;
        return s;
    }
    int k;
    if (p.rule == MOE_SCALE_UE8M0_RCEIL) {
        /* ceil(log2 v) for v = a / max: exponent field plus one unless v is a power of two; subnormal v lies in
         * (2^-127, 2^-126) -> k = -126 when above 2^-127 (mantissa > 0x400000), else -127 */
        const uint32_t v = __float_as_uint(moe_amax_over_max(p, a));
        const int e = (int)(v >> 23), m = (int)(v & 0x7FFFFF);
        k = e == 0 ? (m > 0x400000 ? -126 : -127) : e - 127 + (m != 0);
    } else {
        uint32_t bits = __float_as_uint(a);
        int e = (int)(bits >> 23); /* a >= 0 */
        /* zero or subnormal: log2 a < -126, so k clamps to -127 whatever the rule */
        int log2a = e - 127 + (p.rule == MOE_SCALE_UE8M0_CEIL && (bits & 0x7FFFFF) ? 1 : 0);
        k = e == 0 ? -127 : log2a - p.elem_emax;
    }
    k = min(max(k, -127), 127);
    s.value = moe_exp2i(k);
    s.mul = moe_exp2i(-k);
    s.byte = (uint8_t)(k + 127);
    s.divide = false;
    return s;
}

/* The NVFP4 per-tensor pair (g_enc, g_dec) from the stored global scale (§2.4). */
__device__ __forceinline__ void moe_nvfp4_pair(const moe_qparams &p, float stored, float &g_enc, float &g_dec) {
    if (p.global_conv == MOE_NVFP4_GLOBAL_ENCODE) {
        g_enc = stored;
        g_dec = __frcp_rn(stored);
    } else {
        g_dec = stored;
        g_enc = __frcp_rn(stored);
    }
}

/* §2.4: an NVFP4 block scale. */
__device__ __forceinline__ moe_block_scale moe_nvfp4_scale(float a, float g_enc, float g_dec) {
    const float rcp6 = 0x1.555556p-3f; /* RN(1/6) */
    moe_block_scale s;
    s.byte = __nv_cvt_float_to_fp8(__fmul_rn(g_enc, __fmul_rn(a, rcp6)), __NV_SATFINITE, __NV_E4M3);
    s.value = moe_decode(s.byte, MOE_DTYPE_E4M3);
    float prod = __fmul_rn(s.value, g_dec);
    s.mul = prod == 0.0f ? 0.0f : __frcp_rn(prod);
    s.divide = false;
    return s;
}

/* Index of scale (sr, sc) of matrix b in the stored buffer, in scale elements (§3). */
__device__ __forceinline__ int64_t moe_scale_index(const moe_qparams &p, int64_t b, int64_t sr, int64_t sc) {
    int64_t base = b * p.scale_rows_pad * p.scale_cols_pad;
    if (p.layout == MOE_SCALE_SWIZZLED_128X4) return base + moe__swizzle_offset(sr, sc, p.scale_cols_pad);
    return base + sr * p.scale_cols + sc;
}

__device__ __forceinline__ void moe_store_scale(const moe_qparams &p, int64_t index, const moe_block_scale &s) {
    if (p.scale_dtype == MOE_DTYPE_F32)
        static_cast<float *>(p.scale)[index] = s.value;
    else
        static_cast<uint8_t *>(p.scale)[index] = s.byte;
}

/* The stored scale at index as f32 (F32, E8M0 or E4M3 storage). */
__device__ __forceinline__ float moe_load_scale(const moe_qparams &p, int64_t index) {
    if (p.scale_dtype == MOE_DTYPE_F32) return static_cast<const float *>(p.scale)[index];
    return moe_decode(static_cast<const uint8_t *>(p.scale)[index], p.scale_dtype);
}

/* Scales 8 values by a block scale (divide or multiply, one IEEE operation each). */
__device__ __forceinline__ void moe_apply_scale(float (&v)[8], const moe_block_scale &s) {
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = s.divide ? __fdiv_rn(v[j], s.value) : __fmul_rn(v[j], s.mul);
}

/* Stores the 8 encoded values of elements [i, i + count) (count even for E2M1). */
__device__ __forceinline__ void moe_store_codes(const moe_qparams &p, int64_t i, int count, bool vec,
                                                const float (&v)[8]) {
    uint2 w = moe_encode8(v, p.elem);
    if (p.elem == MOE_DTYPE_E2M1) {
        if (vec && count == 8) {
            *reinterpret_cast<uint32_t *>(p.data + i / 2) = w.x;
        } else {
            for (int j = 0; j < count; j += 2) p.data[(i + j) / 2] = (uint8_t)(w.x >> (4 * j));
        }
    } else if (vec && count == 8) {
        *reinterpret_cast<uint2 *>(p.data + i) = w;
    } else {
        for (int j = 0; j < count; j++) p.data[i + j] = (uint8_t)((j < 4 ? w.x : w.y) >> (8 * (j % 4)));
    }
}

#endif /* MOE_CUDA_FORMATS_QFORMAT_CUH */
