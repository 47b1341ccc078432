/* cuda.cuh — what every CUDA file of libmoe shares: error mapping, launch geometry, 8-element loads and stores,
 * and the scalar conversions as the CUDA toolkit implements them (hardware cvt where the GPU has it). The CPU
 * reference (src/formats/scalar.h) is written independently from the definitions; tests compare the two. */
#ifndef MOE_CUDA_COMMON_CUDA_CUH
#define MOE_CUDA_COMMON_CUDA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "core/internal.h"

/* Records a failed CUDA call as the context's error and returns the matching status. */
extern "C" moe_status moe__cuda_fail(moe_ctx *ctx, cudaError_t err, const char *what, const char *file, int line);

#define MOE_CUDA_TRY(ctx, expr)                                                         \
    do {                                                                                \
        cudaError_t moe_cuda_e_ = (expr);                                               \
        if (moe_cuda_e_ != cudaSuccess) return moe__cuda_fail((ctx), moe_cuda_e_, #expr, __FILE__, __LINE__); \
    } while (0)

/* After a kernel launch: a launch error (no kernel image for this GPU, bad configuration) becomes a status. */
#define MOE_CUDA_LAUNCHED(ctx, kernel_name) MOE_CUDA_TRY((ctx), cudaGetLastError())

/* Makes the context's device current on this thread and resolves the stream (NULL: the context's). */
static inline cudaStream_t moe__cuda_enter(moe_ctx *ctx, void *stream) {
    cudaSetDevice(ctx->cuda.device);
    return (cudaStream_t)(stream ? stream : ctx->cuda.stream);
}

/* Blocks for a grid-stride loop over n items of threads each: enough to fill the GPU, never past the limits. */
static inline unsigned moe__grid_for(const moe_ctx *ctx, int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    int64_t cap = (int64_t)ctx->cuda.sm_count * 16;
    if (blocks > cap) blocks = cap;
    return blocks < 1 ? 1u : (unsigned)blocks;
}

/* ---- element types of the unquantised side ---- */

__device__ __forceinline__ float moe_to_f32(float x) { return x; }
__device__ __forceinline__ float moe_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float moe_to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T moe_from_f32(float x);
template <> __device__ __forceinline__ float moe_from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 moe_from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half moe_from_f32<__half>(float x) { return __float2half_rn(x); }

/* Loads elements [i, i + 8) of p as f32; only the first `count` exist (the rest read as 0). vec: the 8 are
 * 16-byte aligned and all exist, so whole vectors are loaded. */
template <typename T>
__device__ __forceinline__ void moe_load8(const T *p, int64_t i, int count, bool vec, float (&v)[8]) {
    if (vec) {
        constexpr int per = 16 / sizeof(T); /* elements per 16-byte load */
#pragma unroll
        for (int h = 0; h < 8 / per; h++) {
            uint4 raw = __ldg(reinterpret_cast<const uint4 *>(p + i) + h);
            const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
            for (int j = 0; j < per; j++) v[h * per + j] = moe_to_f32(e[j]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = j < count ? moe_to_f32(p[i + j]) : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ void moe_store8(T *p, int64_t i, int count, bool vec, const float (&v)[8]) {
    if (vec) {
        constexpr int per = 16 / sizeof(T);
#pragma unroll
        for (int h = 0; h < 8 / per; h++) {
            uint4 raw;
            T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
            for (int j = 0; j < per; j++) e[j] = moe_from_f32<T>(v[h * per + j]);
            reinterpret_cast<uint4 *>(p + i)[h] = raw;
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < count) p[i + j] = moe_from_f32<T>(v[j]);
    }
}

/* ---- narrow formats through the CUDA toolkit's conversions ---- */

/* f32 -> E4M3/E5M2 (satfinite or not) / E2M1 (always saturating); code in the low bits. */
__device__ __forceinline__ uint8_t moe_encode(float x, moe_dtype elem, bool saturate = true) {
    __nv_saturation_t sat = saturate ? __NV_SATFINITE : __NV_NOSAT;
    switch (elem) {
    case MOE_DTYPE_E4M3: return __nv_cvt_float_to_fp8(x, sat, __NV_E4M3);
    case MOE_DTYPE_E5M2: return __nv_cvt_float_to_fp8(x, sat, __NV_E5M2);
    default: return __nv_cvt_float_to_fp4(x, __NV_E2M1, cudaRoundNearest) & 0xF;
    }
}

__device__ __forceinline__ float moe_decode(uint8_t code, moe_dtype elem) {
    switch (elem) {
    case MOE_DTYPE_E4M3: return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E4M3)));
    case MOE_DTYPE_E5M2: return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E5M2)));
    case MOE_DTYPE_E8M0: return __bfloat162float(__nv_bfloat16(__nv_cvt_e8m0_to_bf16raw(code)));
    default: return __half2float(__half(__nv_cvt_fp4_to_halfraw(code & 0xF, __NV_E2M1)));
    }
}

/* Eight values encoded: FP8 into 8 bytes, E2M1 into 4 bytes (element 2i in the low nibble). */
__device__ __forceinline__ uint2 moe_encode8(const float (&v)[8], moe_dtype elem) {
    uint32_t w[2] = {0, 0};
    if (elem == MOE_DTYPE_E2M1) {
#pragma unroll
        for (int j = 0; j < 8; j += 2)
            w[0] |= (uint32_t)__nv_cvt_float2_to_fp4x2(make_float2(v[j], v[j + 1]), __NV_E2M1, cudaRoundNearest)
                    << (4 * j);
    } else {
        __nv_fp8_interpretation_t t = elem == MOE_DTYPE_E4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
        for (int j = 0; j < 8; j += 2)
            w[j / 4] |= (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(v[j], v[j + 1]), __NV_SATFINITE, t)
                        << (8 * (j % 4));
    }
    return make_uint2(w[0], w[1]);
}

/* E8M0 of |x| rounded toward zero or +Inf. */
__device__ __forceinline__ uint8_t moe_e8m0(float x, bool round_up, bool saturate) {
    return __nv_cvt_float_to_e8m0(x, saturate ? __NV_SATFINITE : __NV_NOSAT,
                                  round_up ? cudaRoundPosInf : cudaRoundZero);
}

/* 2^e as f32 for e in [-127, 127] (2^-127 is subnormal). */
__device__ __forceinline__ float moe_exp2i(int e) {
    return e == -127 ? __int_as_float(0x00400000) : __int_as_float((e + 127) << 23);
}

#endif /* MOE_CUDA_COMMON_CUDA_CUH */
