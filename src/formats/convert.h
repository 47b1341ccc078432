/* convert.h — backends of moe_convert: n elements of src decoded to f32 and encoded as dst's dtype. */
#ifndef MOE_FORMATS_CONVERT_H
#define MOE_FORMATS_CONVERT_H

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

moe_status moe__cpu_convert(moe_ctx *ctx, const moe_tensor *src, moe_tensor *dst, const moe_convert_options *o,
                            int64_t n);
#ifdef MOE_WITH_CUDA
moe_status moe__cuda_convert(moe_ctx *ctx, const moe_tensor *src, moe_tensor *dst, const moe_convert_options *o,
                             int64_t n, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_FORMATS_CONVERT_H */
