/* swizzle.c — block scales between the linear layout and the 128x4 tiled layout (docs/formats.md §3). */
#include <string.h>

#include "formats/swizzle.h"

int64_t moe_scale_swizzled_bytes(int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 0 || rows > INT64_MAX - 127 || cols > INT64_MAX - 3) return -1;
    const int64_t r = (rows + 127) / 128 * 128, c = (cols + 3) / 4 * 4;
    return c != 0 && r > INT64_MAX / c ? -1 : r * c; /* past int64: too large */
}

/* Validates a (batch..., rows, cols) one-byte scale tensor and the swizzled pointer. */
static moe_status moe_check_swizzle(moe_ctx *ctx, const char *fn, const moe_tensor *linear, const void *swizzled,
                                    int64_t *batch, int64_t *rows, int64_t *cols) {
    MOE_TRY(moe__check_tensor(ctx, linear, fn));
    MOE_CHECK_ARG(ctx, moe_dtype_bits(linear->dtype) == 8,
                  "%s: swizzling is for one-byte scales (e8m0, e4m3, u8), not %s", fn, moe_dtype_name(linear->dtype));
    moe__shape_matrices(linear->rank, linear->shape, batch, rows, cols);
    const int64_t per = moe_scale_swizzled_bytes(*rows, *cols);
    MOE_CHECK_ARG(ctx, per >= 0 && (per == 0 || *batch <= INT64_MAX / per),
                  "%s: the swizzled layout of %lld x %lld x %lld scales is too large", fn, (long long)*batch,
                  (long long)*rows, (long long)*cols);
    MOE_CHECK_ARG(ctx, swizzled || *batch * per == 0, "%s: swizzled is NULL", fn);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA && *batch * *rows * *cols > 0) {
        MOE_TRY(moe__cuda_check_pointer(ctx, linear->data, "linear scales"));
        MOE_TRY(moe__cuda_check_pointer(ctx, swizzled, "swizzled scales"));
    }
#endif
    return MOE_OK;
}

moe_status moe__cpu_scale_swizzle(moe_ctx *ctx, const uint8_t *linear, uint8_t *swizzled, int64_t batch,
                                  int64_t rows, int64_t cols, int reverse) {
    const int64_t rp = (rows + 127) / 128 * 128, cp = (cols + 3) / 4 * 4;
    if (!reverse) memset(swizzled, 0, (size_t)(batch * rp * cp));
#pragma omp parallel for num_threads(ctx->n_threads) schedule(static)
    for (int64_t br = 0; br < batch * rows; br++) {
        int64_t b = br / rows, r = br % rows;
        for (int64_t c = 0; c < cols; c++) {
            int64_t s = moe__swizzle_offset(r, c, cp) + b * rp * cp, i = br * cols + c;
            if (reverse)
                ((uint8_t *)linear)[i] = swizzled[s];
            else
                swizzled[s] = linear[i];
        }
    }
    return MOE_OK;
}

moe_status moe_scale_swizzle(moe_ctx *ctx, const moe_tensor *linear, void *swizzled, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    int64_t batch, rows, cols;
    MOE_TRY(moe_check_swizzle(ctx, "moe_scale_swizzle", linear, swizzled, &batch, &rows, &cols));
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA)
        return moe__cuda_scale_swizzle(ctx, linear->data, swizzled, batch, rows, cols, 0, stream);
#endif
    (void)stream;
    return moe__cpu_scale_swizzle(ctx, linear->data, swizzled, batch, rows, cols, 0);
}

moe_status moe_scale_unswizzle(moe_ctx *ctx, const void *swizzled, moe_tensor *linear, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    int64_t batch, rows, cols;
    MOE_TRY(moe_check_swizzle(ctx, "moe_scale_unswizzle", linear, swizzled, &batch, &rows, &cols));
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA)
        return moe__cuda_scale_swizzle(ctx, linear->data, (void *)swizzled, batch, rows, cols, 1, stream);
#endif
    (void)stream;
    return moe__cpu_scale_swizzle(ctx, linear->data, (void *)swizzled, batch, rows, cols, 1);
}
