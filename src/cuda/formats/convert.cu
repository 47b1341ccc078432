/* convert.cu — elementwise dtype conversion through f32 with the CUDA toolkit's conversions (the CPU
 * reference in src/formats/ is written independently). Each thread converts a pair, so E2M1 bytes have one
 * writer. */
#include "cuda/common/cuda.cuh"
#include "formats/convert.h"

namespace {

__device__ float decode_at(const void *src, moe_dtype t, int64_t i) {
    const uint8_t *b = static_cast<const uint8_t *>(src);
    switch (t) {
    case MOE_DTYPE_F32: return static_cast<const float *>(src)[i];
    case MOE_DTYPE_F16: return __half2float(static_cast<const __half *>(src)[i]);
    case MOE_DTYPE_BF16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(src)[i]);
    case MOE_DTYPE_E2M1: return moe_decode((uint8_t)(b[i / 2] >> (4 * (i % 2))), MOE_DTYPE_E2M1);
    default: return moe_decode(b[i], t);
    }
}

/* Encodes v as element i of dst; E2M1 returns the nibble for the caller to pack. */
__device__ uint8_t encode_at(void *dst, moe_dtype t, int64_t i, float v, moe_convert_options o) {
    uint8_t *b = static_cast<uint8_t *>(dst);
    switch (t) {
    case MOE_DTYPE_F32: static_cast<float *>(dst)[i] = v; return 0;
    case MOE_DTYPE_F16: static_cast<__half *>(dst)[i] = __float2half_rn(v); return 0;
    case MOE_DTYPE_BF16: static_cast<__nv_bfloat16 *>(dst)[i] = __float2bfloat16_rn(v); return 0;
    case MOE_DTYPE_E2M1: return moe_encode(v, MOE_DTYPE_E2M1);
    case MOE_DTYPE_E8M0: b[i] = moe_e8m0(v, o.round == MOE_ROUND_UP, o.saturate != 0); return 0;
    default: b[i] = moe_encode(v, t, o.saturate != 0); return 0;
    }
}

__global__ void convert_kernel(const void *src, moe_dtype st, void *dst, moe_dtype dt, int64_t n,
                               moe_convert_options o) {
    const int64_t pairs = (n + 1) / 2, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += stride) {
        uint8_t lo = encode_at(dst, dt, 2 * p, decode_at(src, st, 2 * p), o), hi = 0;
        if (2 * p + 1 < n) hi = encode_at(dst, dt, 2 * p + 1, decode_at(src, st, 2 * p + 1), o);
        if (dt == MOE_DTYPE_E2M1) static_cast<uint8_t *>(dst)[p] = (uint8_t)(lo | (hi << 4));
    }
}

} // namespace

extern "C" moe_status moe__cuda_convert(moe_ctx *ctx, const moe_tensor *src, moe_tensor *dst,
                                        const moe_convert_options *o, int64_t n, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    convert_kernel<<<moe__grid_for(ctx, (n + 1) / 2, 256), 256, 0, st>>>(src->data, src->dtype, dst->data, dst->dtype,
                                                                         n, *o);
    MOE_CUDA_LAUNCHED(ctx, "convert_kernel");
    return MOE_OK;
}
