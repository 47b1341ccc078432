/* act_quant.cu — W8A8 inputs in 1x128 FP8 groups, as bf16 values or as codes: a warp per group, four columns a
 * lane. */
#include "cuda/common/cuda.cuh"
#include "cuda/formats/qformat.cuh"
#include "cuda/moe/act_quant.cuh"

namespace {

constexpr int kWarps = 8;

/* Where a kernel's groups go: bf16 values (out), or codes and scales (codes set). */
struct quant_out {
    __nv_bfloat16 *out;
    uint8_t *codes;
    float *scales;
    int64_t scale_ld;
};

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    fake_quant_kernel(const T *x, quant_out dst, int64_t rows, const int64_t *live_rows, int cols, moe_scale_rule rule,
                      float amax_floor) {
    moe_pdl_wait();
    moe_pdl_launch_next();
    if (live_rows && *live_rows < rows) rows = *live_rows;
    const int groups = (cols + 127) / 128, lane = threadIdx.x & 31;
    for (int64_t g = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5); g < rows * groups;
         g += (int64_t)gridDim.x * kWarps) {
        const int64_t r = g / groups;
        const int c = (int)(g - r * groups) * 128 + 4 * lane;
        const bool in = c < cols; /* cols % 8 == 0: four columns are all in or all out */
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (in) moe_load4(x + r * cols + c, v);
        float scale;
        const uint32_t q4 = moe_act_quant_group(v, rule, amax_floor, &scale);
        if (dst.codes && lane == 0) dst.scales[(c >> 7) * dst.scale_ld + r] = scale;
        if (!in) continue;
        if (dst.codes) {
            *reinterpret_cast<uint32_t *>(dst.codes + r * cols + c) = q4;
            continue;
        }
#pragma unroll
        for (int e = 0; e < 4; e++) v[e] = __fmul_rn(moe_decode((uint8_t)(q4 >> (8 * e)), MOE_DTYPE_E4M3), scale);
        const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
        uint2 raw;
        raw.x = *reinterpret_cast<const uint32_t *>(&a), raw.y = *reinterpret_cast<const uint32_t *>(&b);
        *reinterpret_cast<uint2 *>(dst.out + r * cols + c) = raw;
    }
}

} // namespace

static moe_status quant(moe_ctx *ctx, const void *x, moe_dtype x_dtype, const quant_out &o, int64_t rows,
                        const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                        cudaStream_t stream) {
    if (rows <= 0) return MOE_OK;
    const int64_t warps = rows * ((cols + 127) / 128), cap = (int64_t)ctx->cuda.sm_count * 8;
    const int64_t blocks = (warps + kWarps - 1) / kWarps;
    const dim3 grid((unsigned)(blocks < cap ? blocks : cap));
    const bool pdl = moe__cuda_pdl(ctx);
    if (x_dtype == MOE_DTYPE_F32)
        MOE_CUDA_TRY(ctx, moe_launch(pdl, fake_quant_kernel<float>, grid, kWarps * 32, 0, stream, (const float *)x, o,
                                     rows, live_rows, cols, rule, amax_floor));
    else
        MOE_CUDA_TRY(ctx, moe_launch(pdl, fake_quant_kernel<__nv_bfloat16>, grid, kWarps * 32, 0, stream,
                                     (const __nv_bfloat16 *)x, o, rows, live_rows, cols, rule, amax_floor));
    return MOE_OK;
}

moe_status moe__cuda_act_fake_quant(moe_ctx *ctx, const void *x, moe_dtype x_dtype, __nv_bfloat16 *out, int64_t rows,
                                    const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                                    cudaStream_t stream) {
    return quant(ctx, x, x_dtype, {out, nullptr, nullptr, 0}, rows, live_rows, cols, rule, amax_floor, stream);
}

moe_status moe__cuda_act_quant(moe_ctx *ctx, const float *x, uint8_t *codes, float *scales, int64_t scale_ld,
                               int64_t rows, const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                               cudaStream_t stream) {
    return quant(ctx, x, MOE_DTYPE_F32, {nullptr, codes, scales, scale_ld}, rows, live_rows, cols, rule, amax_floor,
                 stream);
}
