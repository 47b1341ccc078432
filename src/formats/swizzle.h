/* swizzle.h — the 128x4 scale layout's offset (docs/formats.md §3) and the backends' swizzle entry points. */
#ifndef MOE_FORMATS_SWIZZLE_H
#define MOE_FORMATS_SWIZZLE_H

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Offset of scale (r, c) inside one matrix whose padded column count is cp (a multiple of 4): 128-row tiles
 * in row-tile order, 4-column tiles K-fastest inside, and in each 512-byte atom rows r, r+32, r+64, r+96
 * interleaved in 16-byte lines. */
static inline MOE_HD int64_t moe__swizzle_offset(int64_t r, int64_t c, int64_t cp) {
    return (r / 128) * (cp / 4) * 512 + (c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + (c % 4);
}

/* reverse = 0: linear -> swizzled (padding written as 0); 1: swizzled -> linear. */
moe_status moe__cpu_scale_swizzle(moe_ctx *ctx, const uint8_t *linear, uint8_t *swizzled, int64_t batch,
                                  int64_t rows, int64_t cols, int reverse);
#ifdef MOE_WITH_CUDA
moe_status moe__cuda_scale_swizzle(moe_ctx *ctx, void *linear, void *swizzled, int64_t batch, int64_t rows,
                                   int64_t cols, int reverse, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_FORMATS_SWIZZLE_H */
