/* quantize.c — public entry points of the block formats: one validation, then the backend. */
#include <string.h>

#include "formats/qformat.h"

static bool moe_is_float_dtype(moe_dtype d) {
    return d == MOE_DTYPE_F32 || d == MOE_DTYPE_BF16 || d == MOE_DTYPE_F16;
}

/* Checks the unquantised tensor t against q and q's buffers; fills the layout. */
static moe_status moe_check_pair(moe_ctx *ctx, const char *fn, const moe_tensor *t, const moe_qtensor *q,
                                 moe_qlayout *l) {
    MOE_CHECK_ARG(ctx, q, "%s: quantised tensor is NULL", fn);
    MOE_TRY(moe__check_tensor(ctx, t, fn));
    MOE_CHECK_ARG(ctx, moe_is_float_dtype(t->dtype), "%s: the unquantised tensor must be f32, bf16 or f16, not %s", fn,
                  moe_dtype_name(t->dtype));
    MOE_CHECK_ARG(ctx, t->rank == q->rank && memcmp(t->shape, q->shape, sizeof(int64_t) * (size_t)t->rank) == 0,
                  "%s: the tensor's shape differs from the quantised tensor's shape", fn);
    MOE_TRY(moe__qlayout(ctx, &q->format, q->rank, q->shape, l));
    MOE_CHECK_ARG(ctx, l->data_bytes == 0 || q->data, "%s: quantised data is NULL", fn);
    MOE_CHECK_ARG(ctx, l->scale_bytes == 0 || q->scale, "%s: scale buffer is NULL", fn);
    MOE_CHECK_ARG(ctx, l->global_bytes == 0 || q->global_scale, "%s: nvfp4 needs a global_scale buffer", fn);
    MOE_CHECK_ARG(ctx, l->scale_bytes_each != 4 || (uintptr_t)q->scale % 4 == 0, "%s: the f32 scales are not 4-byte "
                  "aligned", fn);
    MOE_CHECK_ALIGNED(ctx, q->global_scale, float, "global_scale");
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        if (l->data_bytes) MOE_TRY(moe__cuda_check_pointer(ctx, t->data, "tensor data"));
        if (l->data_bytes) MOE_TRY(moe__cuda_check_pointer(ctx, q->data, "quantised data"));
        if (l->scale_bytes) MOE_TRY(moe__cuda_check_pointer(ctx, q->scale, "scale"));
        if (l->global_bytes) MOE_TRY(moe__cuda_check_pointer(ctx, q->global_scale, "global_scale"));
    }
#endif
    return MOE_OK;
}

moe_status moe_quantize(moe_ctx *ctx, const moe_tensor *x, moe_qtensor *q, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    moe_qlayout l;
    MOE_TRY(moe_check_pair(ctx, "moe_quantize", x, q, &l));
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_quantize(ctx, &l, x, q, stream);
#endif
    (void)stream;
    return moe__cpu_quantize(ctx, &l, x, q);
}

moe_status moe_dequantize(moe_ctx *ctx, const moe_qtensor *q, moe_tensor *y, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    moe_qlayout l;
    MOE_TRY(moe_check_pair(ctx, "moe_dequantize", y, q, &l));
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_dequantize(ctx, &l, q, y, stream);
#endif
    (void)stream;
    return moe__cpu_dequantize(ctx, &l, q, y);
}
