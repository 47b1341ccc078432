/* quantize_cpu.c — the CPU reference of every block format (docs/formats.md §2), written from the
 * definitions: plain loops, one block at a time, threads over blocks. */
#include <float.h>
#include <stdlib.h>

#include "formats/qformat.h"
#include "formats/scalar.h"

static const float MOE_RCP_6 = 0x1.555556p-3f; /* RN(1/6) = 0x3E2AAAAB, as vLLM's reference multiplies */

static inline float moe_load(const void *base, moe_dtype dtype, int64_t i) {
    switch (dtype) {
    case MOE_DTYPE_BF16: return moe__bf16_to_f32(((const uint16_t *)base)[i]);
    case MOE_DTYPE_F16: return moe__f16_to_f32(((const uint16_t *)base)[i]);
    default: return ((const float *)base)[i];
    }
}

static inline void moe_store(void *base, moe_dtype dtype, int64_t i, float v) {
    switch (dtype) {
    case MOE_DTYPE_BF16: ((uint16_t *)base)[i] = moe__bf16_from_f32(v); break;
    case MOE_DTYPE_F16: ((uint16_t *)base)[i] = moe__f16_from_f32(v); break;
    default: ((float *)base)[i] = v; break;
    }
}

/* Elements: FP8 one byte each; E2M1 two per byte, element 2i in the low nibble. */
static inline void moe_store_elem(uint8_t *data, moe_dtype elem, int64_t i, float v) {
    if (elem == MOE_DTYPE_E2M1) {
        uint8_t code = moe__e2m1_from_f32(v);
        uint8_t *p = &data[i / 2];
        *p = (i % 2) ? (uint8_t)((*p & 0x0F) | (code << 4)) : (uint8_t)((*p & 0xF0) | code);
    } else {
        data[i] = elem == MOE_DTYPE_E4M3 ? moe__e4m3_from_f32(v, 1) : moe__e5m2_from_f32(v, 1);
    }
}

static inline float moe_load_elem(const uint8_t *data, moe_dtype elem, int64_t i) {
    if (elem == MOE_DTYPE_E2M1) return moe__e2m1_to_f32((uint8_t)(data[i / 2] >> (4 * (i % 2))));
    return elem == MOE_DTYPE_E4M3 ? moe__e4m3_to_f32(data[i]) : moe__e5m2_to_f32(data[i]);
}

/* §2.1: amax over the rectangle [r0, r1) x [c0, c1) of matrix b; NaN ignored, then min(., FLT_MAX). */
static float moe_amax(const moe_qlayout *l, const moe_tensor *x, int64_t b, int64_t r0, int64_t r1, int64_t c0,
                      int64_t c1) {
    float a = 0.0f;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++) {
            float v = fabsf(moe_load(x->data, x->dtype, (b * l->rows + r) * l->cols + c));
            if (v > a) a = v; /* false for NaN */
        }
    return a < FLT_MAX ? a : FLT_MAX;
}

/* The scale of one block: stored representation and how its elements are encoded. */
typedef struct moe_block_scale {
    float value;    /* the dequantisation multiplier as f32 (NVFP4: dec(sf), times g_dec separately) */
    uint8_t byte;   /* the stored byte (E8M0 or E4M3 storage) */
    int divide;     /* F32 rule: q = enc(x / value) */
    float mul;      /* otherwise: q = enc(x * mul) */
} moe_block_scale;

/* §2.2 and §2.3: a block's scale from its amax a (already floored). */
static moe_block_scale moe_scale_from_amax(const moe_qlayout *l, float a) {
    moe_block_scale s = {0};
    if (l->f.rule == MOE_SCALE_F32) {
        s.value = a / l->elem_max;
        if (s.value == 0.0f) s.value = 1.0f;
        s.divide = 1;
        return s;
    }
    int k;
    if (l->f.rule == MOE_SCALE_UE8M0_RCEIL) {
        k = (int)moe__e8m0_from_f32(a / l->elem_max, MOE_ROUND_UP, 1) - 127;
    } else if (a == 0.0f) {
        k = -127;
    } else {
        int e;
        float m = frexpf(a, &e); /* floor(log2 a) = e - 1; ceil = e - 1 only when a is a power of two */
        int log2a = l->f.rule == MOE_SCALE_UE8M0_FLOOR || m == 0.5f ? e - 1 : e;
        k = log2a - l->elem_emax;
    }
    k = k < -127 ? -127 : k > 127 ? 127 : k;
    s.value = ldexpf(1.0f, k);
    s.mul = ldexpf(1.0f, -k);
    s.byte = (uint8_t)(k + 127);
    return s;
}

/* §2.4: an NVFP4 block's scale; g_enc and g_dec are the per-tensor pair. */
static moe_block_scale moe_nvfp4_scale(float a, float g_enc, float g_dec) {
    moe_block_scale s = {0};
    s.byte = moe__e4m3_from_f32(g_enc * (a * MOE_RCP_6), 1);
    s.value = moe__e4m3_to_f32(s.byte);
    float p = s.value * g_dec;
    s.mul = p == 0.0f ? 0.0f : 1.0f / p;
    return s;
}

static void moe_store_scale(const moe_qlayout *l, void *scale, int64_t index, const moe_block_scale *s) {
    if (l->scale_bytes_each == 4)
        ((float *)scale)[index] = s->value;
    else
        ((uint8_t *)scale)[index] = s->byte;
}

/* The stored scale at index decoded to f32 (F32, E8M0 or E4M3 storage). */
static float moe_load_scale(const moe_qlayout *l, const void *scale, int64_t index) {
    if (l->f.scale_dtype == MOE_DTYPE_F32) return ((const float *)scale)[index];
    uint8_t byte = ((const uint8_t *)scale)[index];
    return l->f.scale_dtype == MOE_DTYPE_E8M0 ? moe__e8m0_to_f32(byte) : moe__e4m3_to_f32(byte);
}

/* Encodes the rectangle [r0, r1) x [c0, c1) of matrix b with one block scale. */
static void moe_encode_block(const moe_qlayout *l, const moe_tensor *x, uint8_t *data, int64_t b, int64_t r0,
                             int64_t r1, int64_t c0, int64_t c1, const moe_block_scale *s) {
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++) {
            int64_t i = (b * l->rows + r) * l->cols + c;
            float v = moe_load(x->data, x->dtype, i);
            moe_store_elem(data, l->f.elem, i, s->divide ? v / s->value : v * s->mul);
        }
}

/* The per-tensor NVFP4 pair (g_enc, g_dec) from the stored global scale, per its convention. */
static void moe_nvfp4_pair(const moe_qlayout *l, float stored, float *g_enc, float *g_dec) {
    if (l->f.global == MOE_NVFP4_GLOBAL_ENCODE) {
        *g_enc = stored;
        *g_dec = 1.0f / stored;
    } else {
        *g_dec = stored;
        *g_enc = 1.0f / stored;
    }
}

moe_status moe__cpu_quantize(moe_ctx *ctx, const moe_qlayout *l, const moe_tensor *x, moe_qtensor *q) {
    const moe_qformat_kind kind = l->f.kind;
    uint8_t *data = q->data;
    float g_enc = 1.0f, g_dec = 1.0f;

    /* Per-tensor numbers first: the FP8_TENSOR scale and the NVFP4 global scale. */
    moe_block_scale tensor_scale = {0};
    if (kind == MOE_QFORMAT_FP8_TENSOR || kind == MOE_QFORMAT_NVFP4) {
        float a = 0.0f;
        if (!l->f.static_scale) {
#pragma omp parallel for num_threads(ctx->n_threads) schedule(static) reduction(max : a)
            for (int64_t row = 0; row < l->batch * l->rows; row++) {
                float ar = moe_amax(l, x, row / l->rows, row % l->rows, row % l->rows + 1, 0, l->cols);
                if (ar > a) a = ar;
            }
        }
        if (kind == MOE_QFORMAT_FP8_TENSOR) {
            if (l->f.static_scale) {
                tensor_scale.value = moe_load_scale(l, q->scale, 0); /* the caller's scale, as it is */
                tensor_scale.divide = 1;
            } else {
                tensor_scale = moe_scale_from_amax(l, a > l->f.amax_floor ? a : l->f.amax_floor);
                moe_store_scale(l, q->scale, 0, &tensor_scale);
            }
        } else {
            float stored = *q->global_scale;
            if (!l->f.static_scale) {
                stored = l->f.global == MOE_NVFP4_GLOBAL_ENCODE ? 2688.0f / a : a / 2688.0f;
                if (!(isfinite(stored) && stored > 0.0f && isfinite(1.0f / stored))) stored = 1.0f;
                *q->global_scale = stored;
            }
            moe_nvfp4_pair(l, stored, &g_enc, &g_dec);
        }
    }

    const int64_t n_blocks = l->batch * l->scale_rows * l->scale_cols;
    /* Zero the swizzle padding: the layout promises zeros there. */
    if (l->f.layout == MOE_SCALE_SWIZZLED_128X4) memset(q->scale, 0, l->scale_bytes);
    if (kind == MOE_QFORMAT_FP8_TENSOR) {
#pragma omp parallel for num_threads(ctx->n_threads) schedule(static)
        for (int64_t row = 0; row < l->batch * l->rows; row++)
            moe_encode_block(l, x, data, row / l->rows, row % l->rows, row % l->rows + 1, 0, l->cols, &tensor_scale);
        return MOE_OK;
    }
#pragma omp parallel for num_threads(ctx->n_threads) schedule(static)
    for (int64_t blk = 0; blk < n_blocks; blk++) {
        int64_t b = blk / (l->scale_rows * l->scale_cols);
        int64_t sr = blk / l->scale_cols % l->scale_rows, sc = blk % l->scale_cols;
        int64_t r0 = sr * l->block_rows, r1 = r0 + l->block_rows < l->rows ? r0 + l->block_rows : l->rows;
        int64_t c0 = sc * l->block_cols, c1 = c0 + l->block_cols < l->cols ? c0 + l->block_cols : l->cols;
        float a = moe_amax(l, x, b, r0, r1, c0, c1);
        if (a < l->f.amax_floor) a = l->f.amax_floor;
        moe_block_scale s = kind == MOE_QFORMAT_NVFP4 ? moe_nvfp4_scale(a, g_enc, g_dec) : moe_scale_from_amax(l, a);
        moe_store_scale(l, q->scale, moe__scale_index(l, b, sr, sc), &s);
        moe_encode_block(l, x, data, b, r0, r1, c0, c1, &s);
    }
    return MOE_OK;
}

void moe__cpu_dequantize_row(const moe_qlayout *l, const void *data, const void *scale, const float *global,
                             int64_t b, int64_t r, float *out) {
    float g_enc = 1.0f, g_dec = 1.0f;
    if (l->f.kind == MOE_QFORMAT_NVFP4) moe_nvfp4_pair(l, *global, &g_enc, &g_dec);
    const bool tensor = l->f.kind == MOE_QFORMAT_FP8_TENSOR;
    const float tensor_scale = tensor ? moe_load_scale(l, scale, 0) : 0.0f;
    const int64_t row = b * l->rows + r;
    for (int64_t c = 0; c < l->cols; c++) {
        float s = tensor ? tensor_scale
                         : moe_load_scale(l, scale, moe__scale_index(l, b, r / l->block_rows, c / l->block_cols));
        float v = moe_load_elem(data, l->f.elem, row * l->cols + c) * s;
        out[c] = l->f.kind == MOE_QFORMAT_NVFP4 ? v * g_dec : v;
    }
}

moe_status moe__cpu_dequantize(moe_ctx *ctx, const moe_qlayout *l, const moe_qtensor *q, moe_tensor *y) {
    const int64_t n_rows = l->batch * l->rows, R = l->rows ? l->rows : 1;
    int failed = 0;
#pragma omp parallel num_threads(ctx->n_threads)
    {
        float *buf = malloc(sizeof(float) * (size_t)(l->cols + 1));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t row = 0; row < n_rows; row++) {
                moe__cpu_dequantize_row(l, q->data, q->scale, q->global_scale, row / R, row % R, buf);
                for (int64_t c = 0; c < l->cols; c++) moe_store(y->data, y->dtype, row * l->cols + c, buf[c]);
            }
        }
        free(buf);
    }
    if (failed) return moe__error(ctx, MOE_ERR_OOM, "moe_dequantize: no memory for a row buffer");
    return MOE_OK;
}
