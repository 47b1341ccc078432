/* dequantize.cu — y = dec(q) x scale for every block format (docs/formats.md §2), rounded to the output dtype.
 * Each thread owns 8 consecutive elements of a row; they share one block scale (blocks are 16, 32 or 128
 * elements wide, or a whole row, so 8-aligned groups never straddle two). */
#include "cuda/formats/qformat.cuh"

namespace {

constexpr int kThreads = 256;

/* Loads the codes of elements [i, i + count) of a row and decodes them. */
__device__ __forceinline__ void load_codes(const moe_qparams &p, int64_t i, int count, bool vec, float (&v)[8]) {
    uint32_t w[2] = {0, 0};
    if (p.elem == MOE_DTYPE_E2M1) {
        if (vec) {
            w[0] = *reinterpret_cast<const uint32_t *>(p.data + i / 2);
        } else {
            for (int j = 0; j < count; j += 2) w[0] |= (uint32_t)p.data[(i + j) / 2] << (4 * j);
        }
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = moe_decode((uint8_t)(w[0] >> (4 * j)) & 0xF, MOE_DTYPE_E2M1);
    } else {
        if (vec) {
            uint2 r = *reinterpret_cast<const uint2 *>(p.data + i);
            w[0] = r.x;
            w[1] = r.y;
        } else {
            for (int j = 0; j < count; j++) w[j / 4] |= (uint32_t)p.data[i + j] << (8 * (j % 4));
        }
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = moe_decode((uint8_t)(w[j / 4] >> (8 * (j % 4))), p.elem);
    }
}

template <typename T> __global__ void dequantize_kernel(moe_qparams p) {
    T *y = static_cast<T *>(const_cast<void *>(p.x));
    float g_dec = 1.0f, g_enc;
    if (p.kind == MOE_QFORMAT_NVFP4) moe_nvfp4_pair(p, *p.global, g_enc, g_dec);
    const float tensor_scale = p.kind == MOE_QFORMAT_FP8_TENSOR ? *static_cast<const float *>(p.scale) : 0.0f;
    const int64_t groups = (p.cols + 7) / 8, n_items = p.batch * p.rows * groups;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t item = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; item < n_items; item += stride) {
        const int64_t row = item / groups, c = item % groups * 8, i = row * p.cols + c;
        const int count = (int)min((int64_t)8, p.cols - c);
        const bool vec = p.vec && count == 8;
        float v[8];
        load_codes(p, i, count, vec, v);
        float s = tensor_scale;
        if (p.kind != MOE_QFORMAT_FP8_TENSOR) {
            const int64_t b = row / p.rows, r = row % p.rows;
            s = moe_load_scale(p, moe_scale_index(p, b, r / p.block_rows, c / p.block_cols));
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            v[j] = __fmul_rn(v[j], s);
            if (p.kind == MOE_QFORMAT_NVFP4) v[j] = __fmul_rn(v[j], g_dec);
        }
        moe_store8(y, i, count, vec, v);
    }
}

} // namespace

extern "C" moe_status moe__cuda_dequantize(moe_ctx *ctx, const moe_qlayout *l, const moe_qtensor *q, moe_tensor *y,
                                           void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const int64_t items = l->batch * l->rows * ((l->cols + 7) / 8);
    if (items == 0) return MOE_OK;
    moe_qparams p = moe__qparams(l, y->data, q);
    const unsigned grid = moe__grid_for(ctx, items, kThreads);
    switch (y->dtype) {
    case MOE_DTYPE_F32: dequantize_kernel<float><<<grid, kThreads, 0, st>>>(p); break;
    case MOE_DTYPE_BF16: dequantize_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(p); break;
    default: dequantize_kernel<__half><<<grid, kThreads, 0, st>>>(p); break;
    }
    MOE_CUDA_LAUNCHED(ctx, "dequantize_kernel");
    return MOE_OK;
}
