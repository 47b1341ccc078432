/* qformat.h — a quantised format resolved against a shape: block geometry, scale matrix, buffer sizes.
 * Shared by the CPU reference and the CUDA launchers, so both see one validation and one geometry. */
#ifndef MOE_FORMATS_QFORMAT_H
#define MOE_FORMATS_QFORMAT_H

#include "core/internal.h"
#include "formats/swizzle.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_qlayout {
    moe_qformat f;               /* validated, with MOE_SCALE_DEFAULT resolved (NVFP4 keeps DEFAULT) */
    int64_t batch, rows, cols;   /* the tensor as a batch of (rows, cols) matrices */
    int64_t block_rows;          /* 128 for FP8_128X128, else 1 */
    int64_t block_cols;          /* elements of a block along a row: 128, 32, 16; cols for FP8_ROW */
    int64_t scale_rows, scale_cols;     /* per matrix, linear */
    int64_t scale_rows_pad, scale_cols_pad; /* per matrix as stored (swizzled: padded to 128 x 4) */
    int scale_bytes_each;        /* 4 (f32) or 1 (E8M0, E4M3) */
    float elem_max;              /* 448, 57344, 6 */
    int elem_emax;               /* exponent of the largest normal element: 8, 15, 2 */
    size_t data_bytes, scale_bytes, global_bytes;
} moe_qlayout;

/* Validates format and shape (a message names the problem) and fills the layout. */
moe_status moe__qlayout(moe_ctx *ctx, const moe_qformat *format, int rank, const int64_t *shape, moe_qlayout *l);

/* Index of scale (r, c) of matrix b in the stored scale buffer, in scale elements. */
static inline int64_t moe__scale_index(const moe_qlayout *l, int64_t b, int64_t r, int64_t c) {
    int64_t per_matrix = l->scale_rows_pad * l->scale_cols_pad;
    if (l->f.layout == MOE_SCALE_SWIZZLED_128X4) return b * per_matrix + moe__swizzle_offset(r, c, l->scale_cols_pad);
    return b * per_matrix + r * l->scale_cols + c;
}

/* Whether a format's scales are powers of two chosen by one of the UE8M0 rules. */
static inline bool moe__rule_is_ue8m0(moe_scale_rule r) {
    return r == MOE_SCALE_UE8M0_FLOOR || r == MOE_SCALE_UE8M0_CEIL || r == MOE_SCALE_UE8M0_RCEIL;
}

/* CPU reference implementations (src/formats/quantize_cpu.c). */
moe_status moe__cpu_quantize(moe_ctx *ctx, const moe_qlayout *l, const moe_tensor *x, moe_qtensor *q);
moe_status moe__cpu_dequantize(moe_ctx *ctx, const moe_qlayout *l, const moe_qtensor *q, moe_tensor *y);
/* Row r of matrix b of a quantised tensor (data, scale, global as in moe_qtensor; global is read for NVFP4 only),
 * decoded to f32: out (cols) = elem * scale (* the NVFP4 decode global). The one definition of a dequantised value,
 * used by moe_dequantize and by the layer's reference over quantised experts. */
void moe__cpu_dequantize_row(const moe_qlayout *l, const void *data, const void *scale, const float *global,
                             int64_t b, int64_t r, float *out);

#ifdef MOE_WITH_CUDA
/* CUDA launchers (src/cuda/formats/). */
moe_status moe__cuda_quantize(moe_ctx *ctx, const moe_qlayout *l, const moe_tensor *x, moe_qtensor *q, void *stream);
moe_status moe__cuda_dequantize(moe_ctx *ctx, const moe_qlayout *l, const moe_qtensor *q, moe_tensor *y,
                                void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_FORMATS_QFORMAT_H */
