/* convert.c — elementwise dtype conversion through f32 (docs/formats.md §1). */
#include <string.h>

#include "formats/convert.h"
#include "formats/scalar.h"

static bool moe_convertible(moe_dtype d) {
    return d == MOE_DTYPE_F32 || d == MOE_DTYPE_F16 || d == MOE_DTYPE_BF16 || d == MOE_DTYPE_E4M3 ||
           d == MOE_DTYPE_E5M2 || d == MOE_DTYPE_E2M1 || d == MOE_DTYPE_E8M0;
}

static float moe_decode(const void *src, moe_dtype d, int64_t i) {
    const uint8_t *b = src;
    switch (d) {
    case MOE_DTYPE_F32: return ((const float *)src)[i];
    case MOE_DTYPE_F16: return moe__f16_to_f32(((const uint16_t *)src)[i]);
    case MOE_DTYPE_BF16: return moe__bf16_to_f32(((const uint16_t *)src)[i]);
    case MOE_DTYPE_E4M3: return moe__e4m3_to_f32(b[i]);
    case MOE_DTYPE_E5M2: return moe__e5m2_to_f32(b[i]);
    case MOE_DTYPE_E2M1: return moe__e2m1_to_f32((uint8_t)(b[i / 2] >> (4 * (i % 2))));
    default: return moe__e8m0_to_f32(b[i]);
    }
}

/* E2M1 is written a pair at a time by the caller, so one thread owns each byte. */
static void moe_encode(void *dst, moe_dtype d, int64_t i, float v, const moe_convert_options *o) {
    uint8_t *b = dst;
    switch (d) {
    case MOE_DTYPE_F32: ((float *)dst)[i] = v; break;
    case MOE_DTYPE_F16: ((uint16_t *)dst)[i] = moe__f16_from_f32(v); break;
    case MOE_DTYPE_BF16: ((uint16_t *)dst)[i] = moe__bf16_from_f32(v); break;
    case MOE_DTYPE_E4M3: b[i] = moe__e4m3_from_f32(v, o->saturate); break;
    case MOE_DTYPE_E5M2: b[i] = moe__e5m2_from_f32(v, o->saturate); break;
    case MOE_DTYPE_E2M1: {
        uint8_t code = moe__e2m1_from_f32(v);
        b[i / 2] = (i % 2) ? (uint8_t)((b[i / 2] & 0x0F) | (code << 4)) : code;
        break;
    }
    default: b[i] = moe__e8m0_from_f32(v, o->round, o->saturate); break;
    }
}

moe_status moe__cpu_convert(moe_ctx *ctx, const moe_tensor *src, moe_tensor *dst, const moe_convert_options *o,
                            int64_t n) {
#pragma omp parallel for num_threads(ctx->n_threads) schedule(static)
    for (int64_t p = 0; p < (n + 1) / 2; p++)
        for (int64_t i = 2 * p; i < 2 * p + 2 && i < n; i++) moe_encode(dst->data, dst->dtype, i, moe_decode(src->data, src->dtype, i), o);
    return MOE_OK;
}

moe_status moe_convert(moe_ctx *ctx, const moe_tensor *src, moe_tensor *dst, const moe_convert_options *options,
                       void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_TRY(moe__check_tensor(ctx, src, "moe_convert src"));
    MOE_TRY(moe__check_tensor(ctx, dst, "moe_convert dst"));
    MOE_CHECK_ARG(ctx, moe_convertible(src->dtype) && moe_convertible(dst->dtype),
                  "moe_convert: no conversion from %s to %s (float and low-precision float types only)",
                  moe_dtype_name(src->dtype), moe_dtype_name(dst->dtype));
    int64_t n = moe_tensor_numel(src);
    MOE_CHECK_ARG(ctx, n == moe_tensor_numel(dst), "moe_convert: src has %lld elements, dst %lld", (long long)n,
                  (long long)moe_tensor_numel(dst));
    moe_convert_options o = {dst->dtype == MOE_DTYPE_E8M0 ? MOE_ROUND_UP : MOE_ROUND_NEAREST_EVEN, 1};
    if (options) o = *options;
    if (dst->dtype == MOE_DTYPE_E8M0)
        MOE_CHECK_ARG(ctx, o.round == MOE_ROUND_ZERO || o.round == MOE_ROUND_UP,
                      "moe_convert: e8m0 rounds toward zero or toward +Inf, not to nearest");
    else
        MOE_CHECK_ARG(ctx, o.round == MOE_ROUND_NEAREST_EVEN, "moe_convert: %s rounds to nearest even only",
                      moe_dtype_name(dst->dtype));
    if (n == 0) return MOE_OK;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_TRY(moe__cuda_check_pointer(ctx, src->data, "src"));
        MOE_TRY(moe__cuda_check_pointer(ctx, dst->data, "dst"));
        return moe__cuda_convert(ctx, src, dst, &o, n, stream);
    }
#endif
    (void)stream;
    return moe__cpu_convert(ctx, src, dst, &o, n);
}
