/* act_quant.cuh — W8A8 inputs (docs/layer.md §6) quantised in 1x128 FP8 groups: as bf16 values for the kernels
 * that read bf16 A (the SMALL and MEDIUM tiles, other GPUs), or as codes and scales for the FP8 decode kernel. */
#ifndef MOE_CUDA_MOE_ACT_QUANT_CUH
#define MOE_CUDA_MOE_ACT_QUANT_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/internal.h"

#ifdef __CUDACC__
#include "cuda/formats/qformat.cuh"

/* Four values of a row from bf16 or f32 (8- or 16-byte aligned). */
__device__ __forceinline__ void moe_load4(const __nv_bfloat16 *x, float (&v)[4]) {
    const uint2 raw = *reinterpret_cast<const uint2 *>(x);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.y));
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}
__device__ __forceinline__ void moe_load4(const float *x, float (&v)[4]) {
    const float4 a = *reinterpret_cast<const float4 *>(x);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
}

/* One 1x128 group quantised by a warp, four columns a lane: v the lane's columns 4 lane .. 4 lane + 3 of the group
 * (zeros where they lie past the row). Every lane of the warp calls it (shuffles). The group's amax (from 0, NaN
 * dropped, Inf kept: docs/formats.md §2.1, as moe_quantize takes it) raised to amax_floor gives the scale by
 * `rule`; each value is divided (f32 rule) or multiplied (powers of two) by it and rounded to E4M3 with
 * saturation. Returns the lane's four codes (column 4 lane in the low byte) and the group's scale in *scale, the
 * same on every lane. */
__device__ __forceinline__ uint32_t moe_act_quant_group(const float (&v)[4], moe_scale_rule rule, float amax_floor,
                                                        float *scale) {
    moe_qparams q;
    q.rule = rule, q.elem_max = 448.0f, q.elem_emax = 8;
    float m = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; e++) m = fmaxf(m, fabsf(v[e])); /* fmaxf drops NaN */
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const moe_block_scale s = moe_scale_from_amax(q, moe_finish_amax(m, amax_floor));
    const moe_divider d = moe_make_divider(s.value, m);
    uint32_t q4 = 0;
#pragma unroll
    for (int e = 0; e < 4; e++)
        q4 |= (uint32_t)moe_encode(s.divide ? moe_divide(d, v[e]) : __fmul_rn(v[e], s.mul), MOE_DTYPE_E4M3) << (8 * e);
    *scale = s.value;
    return q4;
}
#endif

/* out (rows, cols) = bf16(dequant(quant(x))) group by group: each row's 1x128 groups get their scale by `rule`
 * from the group's amax (raised to amax_floor), E4M3 codes, then code * scale rounded once to bf16. x is bf16 or
 * f32 (x_dtype). rows: the rows to cover; live_rows: a device count that may cut them short (the permutation's
 * offsets[E]), or NULL. cols a multiple of 8, rows 16-byte aligned. */
moe_status moe__cuda_act_fake_quant(moe_ctx *ctx, const void *x, moe_dtype x_dtype, __nv_bfloat16 *out, int64_t rows,
                                    const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                                    cudaStream_t stream);

/* The same groups as codes: codes (rows, cols) E4M3 and scales[(c / 128) * scale_ld + r] f32 (the W8A8 GEMMs' A
 * layout for rows that are not gathered). */
moe_status moe__cuda_act_quant(moe_ctx *ctx, const float *x, uint8_t *codes, float *scales, int64_t scale_ld,
                               int64_t rows, const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                               cudaStream_t stream);

#endif /* MOE_CUDA_MOE_ACT_QUANT_CUH */
