/* dequantize.cu — y = dec(q) x scale for every block format (docs/formats.md §2), rounded to the output dtype.
 * A warp walks a row; each lane decodes groups of 8 elements, which share one block scale: blocks are 16, 32 or
 * 128 elements wide, a whole row, or the whole tensor. Kernels are compiled per element type and scale kind. */
#include "cuda/formats/qformat.cuh"

namespace {

constexpr int kThreads = 256;

/* The codes of 8 elements [i, i + count): FP8 8 bytes, E2M1 4 bytes; missing ones are 0. */
template <moe_dtype ELEM> __device__ __forceinline__ uint2 load_codes8(const uint8_t *data, int64_t i, int count, bool vec) {
    uint32_t w[2] = {0, 0};
    if (ELEM == MOE_DTYPE_E2M1) {
        if (vec) {
            w[0] = __ldg(reinterpret_cast<const uint32_t *>(data + i / 2));
        } else {
#pragma unroll
            for (int j = 0; j < 8; j += 2) /* compile-time indices keep w in registers */
                if (j < count) w[0] |= (uint32_t)data[(i + j) / 2] << (4 * j);
        }
    } else if (vec) {
        return __ldg(reinterpret_cast<const uint2 *>(data + i));
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < count) w[j / 4] |= (uint32_t)data[i + j] << (8 * (j % 4));
    }
    return make_uint2(w[0], w[1]);
}

/* Decodes 8 codes. E2M1 through a table of the f16 values' high bytes (0, 0.5, 1, 1.5, 2, 3, 4, 6: a low byte of
 * zero each), looked up by byte permutes: the 3 magnitude bits of 4 codes select 4 bytes at once (prmt reads a
 * selector nibble's top bit as "replicate the sign", so the sign bits are masked off first), two more permutes a
 * pair place them as the high bytes of an f16x2 word, and a third and an AND-OR add the two signs (code bits 3 and
 * 7 of each byte, brought to f16 bit 15 and 31). Exact: the f16 values are the codes' values, -0 included. */
template <moe_dtype ELEM> __device__ __forceinline__ void decode8(uint2 c, float (&v)[8]) {
    if (ELEM == MOE_DTYPE_E2M1) {
        constexpr uint32_t kLow = 0x3E3C3800u, kHigh = 0x46444240u; /* high bytes of codes 0-3 and 4-7 */
        const uint32_t mag = c.x & 0x77777777u, low4 = c.x << 4;      /* low4: each low nibble's sign at bit 7 */
        const uint32_t hb[2] = {__byte_perm(kLow, kHigh, mag), __byte_perm(kLow, kHigh, mag >> 16)};
#pragma unroll
        for (int j = 0; j < 4; j++) { /* elements 2j, 2j + 1: byte j of the codes */
            const uint32_t w = __byte_perm(hb[j / 2], 0u, j % 2 ? 0x3424u : 0x1404u);
            const uint32_t sign = __byte_perm(low4, c.x, (uint32_t)((4 + j) << 12 | j << 4));
            const uint32_t h = w | (sign & 0x80008000u);
            const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&h));
            v[2 * j] = f.x;
            v[2 * j + 1] = f.y;
        }
    } else {
        const __nv_fp8_interpretation_t t = ELEM == MOE_DTYPE_E4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            const uint32_t w = j < 4 ? c.x : c.y;
            const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> (8 * (j % 4))), t));
            const float2 f = __half22float2(h);
            v[j] = f.x;
            v[j + 1] = f.y;
        }
    }
}

/* How a kernel reads the block scales: one f32 for the tensor, f32 per block, E8M0 per block, or NVFP4's E4M3
 * per block times the decode global scale. */
enum { kTensor = 0, kF32 = 1, kE8M0 = 2, kNvfp4 = 3 };

template <int SK> __device__ __forceinline__ float load_scale(const moe_qparams &p, int64_t index) {
    if (SK == kF32) return static_cast<const float *>(p.scale)[index];
    return moe_decode(static_cast<const uint8_t *>(p.scale)[index], SK == kE8M0 ? MOE_DTYPE_E8M0 : MOE_DTYPE_E4M3);
}

/* 8 codes times their block scale (and NVFP4's decode global scale after it), each product rounded once. */
template <moe_dtype ELEM, int SK>
__device__ __forceinline__ void decode_scaled8(uint2 codes, float scale, float g_dec, float (&v)[8]) {
    decode8<ELEM>(codes, v);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        v[j] = __fmul_rn(v[j], scale);
        if (SK == kNvfp4) v[j] = __fmul_rn(v[j], g_dec);
    }
}

/* One step of a warp along a row, any layout, any alignment, the row's end checked a part at a time (the tail of a
 * row, unaligned rows, swizzled scales; dequantize_step_linear takes the rest): H parts of 256 elements, lane l
 * taking the 8 at 256 h + 8 l, so every load and store instruction of the warp covers one contiguous stretch; the
 * loads of all H parts come first. The scale column of element c is c >> block_shift, or 0 when the block is the
 * whole row (block_shift < 0); srow is the row's first scale in a linear layout. */
template <typename T, moe_dtype ELEM, int SK, int H>
__device__ __forceinline__ void dequantize_step(const moe_qparams &p, T *y, int64_t row, int64_t c0, int lane,
                                                int block_shift, bool linear, int64_t b, int64_t sr, int64_t srow,
                                                float tensor_scale, float g_dec) {
    uint2 codes[H];
    float scale[H];
#pragma unroll
    for (int h = 0; h < H; h++) {
        const int64_t c = c0 + h * 256 + lane * 8;
        const int count = (int)max((int64_t)0, min((int64_t)8, p.cols - c));
        codes[h] = load_codes8<ELEM>(p.data, row * p.cols + c, count, p.vec && count == 8);
        scale[h] = tensor_scale;
        if (SK != kTensor && count > 0) {
            const int64_t sc = block_shift < 0 ? 0 : c >> block_shift;
            scale[h] = load_scale<SK>(p, linear ? srow + sc : moe_scale_index(p, b, sr, sc));
        }
    }
#pragma unroll
    for (int h = 0; h < H; h++) {
        const int64_t c = c0 + h * 256 + lane * 8;
        const int count = (int)max((int64_t)0, min((int64_t)8, p.cols - c));
        if (count == 0) continue;
        float v[8];
        decode_scaled8<ELEM, SK>(codes[h], scale[h], g_dec, v);
        moe_store8(y, row * p.cols + c, count, p.vec && count == 8, v);
    }
}

/* A step inside the row with linear scales and aligned rows (the common case): the
 * lane's first codes, scale and outputs are located once (codes, scales, out), and part h lies at constant offsets
 * from them: h x 256 elements, h x sstep scales (256 >> the block's shift, or 0 for one scale a row), so the step
 * holds no 64-bit index arithmetic per part. */
template <typename T, moe_dtype ELEM, int SK, int H>
__device__ __forceinline__ void dequantize_step_linear(const uint8_t *codes, const void *scales, int sstep, T *out,
                                                       float tensor_scale, float g_dec) {
    constexpr int kCodeBytes = ELEM == MOE_DTYPE_E2M1 ? 128 : 256; /* a part's codes, the warp's 256 elements */
    uint2 c[H];
    float scale[H];
#pragma unroll
    for (int h = 0; h < H; h++) {
        if (ELEM == MOE_DTYPE_E2M1)
            c[h] = make_uint2(__ldg(reinterpret_cast<const uint32_t *>(codes + h * kCodeBytes)), 0u);
        else
            c[h] = __ldg(reinterpret_cast<const uint2 *>(codes + h * kCodeBytes));
        scale[h] = tensor_scale;
        if (SK == kF32) scale[h] = __ldg(static_cast<const float *>(scales) + h * sstep);
        else if (SK != kTensor)
            scale[h] = moe_decode(__ldg(static_cast<const uint8_t *>(scales) + h * sstep),
                                  SK == kE8M0 ? MOE_DTYPE_E8M0 : MOE_DTYPE_E4M3);
    }
#pragma unroll
    for (int h = 0; h < H; h++) {
        float v[8];
        decode_scaled8<ELEM, SK>(c[h], scale[h], g_dec, v);
        moe_store8(out + h * 256, 0, 8, true, v);
    }
}

/* A warp walks a row in steps of H x 256 elements (dequantize_step). */
template <typename T, moe_dtype ELEM, int SK>
__device__ __forceinline__ void dequantize_rows(const moe_qparams &p, int block_shift) {
    constexpr int H = 8, STEP = 256 * H;
    T *y = static_cast<T *>(const_cast<void *>(p.x));
    const int lane = threadIdx.x % 32;
    float g_dec = 1.0f, g_enc, tensor_scale = 0.0f;
    if (SK == kNvfp4) moe_nvfp4_pair(p, *p.global, g_enc, g_dec);
    if (SK == kTensor) tensor_scale = *static_cast<const float *>(p.scale);
    const bool linear = p.layout != MOE_SCALE_SWIZZLED_128X4;
    const int64_t total_rows = p.batch * p.rows, n_warps = (int64_t)gridDim.x * (kThreads / 32);
    for (int64_t row = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; row < total_rows; row += n_warps) {
        const int64_t b = p.by_rows.div(row), r = row - b * p.rows, sr = p.block_rows == 1 ? r : r / 128;
        const int64_t srow = linear ? moe_scale_index(p, b, sr, 0) : 0;
        int64_t c0 = 0;
        if (p.vec && linear && block_shift <= 8) { /* blocks of 16, 32 or 128, or a scale a row */
            const int sstep = block_shift < 0 ? 0 : 256 >> block_shift, scale_bytes = SK == kF32 ? 4 : 1;
            for (; c0 + STEP <= p.cols; c0 += STEP) {
                const int64_t i = row * p.cols + c0 + lane * 8;
                const int64_t sc = block_shift < 0 ? 0 : (c0 + lane * 8) >> block_shift;
                dequantize_step_linear<T, ELEM, SK, H>(p.data + (ELEM == MOE_DTYPE_E2M1 ? i / 2 : i),
                                                       static_cast<const char *>(p.scale) + (srow + sc) * scale_bytes,
                                                       sstep, y + i, tensor_scale, g_dec);
            }
        }
        for (; c0 < p.cols; c0 += STEP)
            dequantize_step<T, ELEM, SK, H>(p, y, row, c0, lane, block_shift, linear, b, sr, srow,
                                                   tensor_scale, g_dec);
    }
}

template <typename T, moe_dtype ELEM, int SK>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(moe_qparams p, int block_shift) {
    dequantize_rows<T, ELEM, SK>(p, block_shift);
}

/* FP8 codes with E8M0 scales, with room kept for 3 CTAs an SM: left to itself ptxas held this one at 64 registers
 * by spilling 4 bytes (scripts/check_spills.sh). */
template <typename T, moe_dtype ELEM>
__global__ void __launch_bounds__(kThreads, 3) dequantize_fp8_e8m0_kernel(moe_qparams p, int block_shift) {
    dequantize_rows<T, ELEM, kE8M0>(p, block_shift);
}

/* FP8 elements: a per-tensor scale, or block scales in f32 or E8M0. */
template <typename T, moe_dtype ELEM>
void launch_fp8(const moe_qlayout *l, const moe_qparams &p, int shift, unsigned grid, cudaStream_t st) {
    if (l->f.kind == MOE_QFORMAT_FP8_TENSOR)
        dequantize_kernel<T, ELEM, kTensor><<<grid, kThreads, 0, st>>>(p, shift);
    else if (l->f.scale_dtype == MOE_DTYPE_F32)
        dequantize_kernel<T, ELEM, kF32><<<grid, kThreads, 0, st>>>(p, shift);
    else
        dequantize_fp8_e8m0_kernel<T, ELEM><<<grid, kThreads, 0, st>>>(p, shift);
}

template <typename T> void launch(const moe_qlayout *l, const moe_qparams &p, unsigned grid, cudaStream_t st) {
    int shift = -1;
    if (l->f.kind != MOE_QFORMAT_FP8_ROW && l->f.kind != MOE_QFORMAT_FP8_TENSOR)
        for (shift = 0; ((int64_t)1 << shift) < l->block_cols; shift++) {}
    if (l->f.elem == MOE_DTYPE_E4M3)
        launch_fp8<T, MOE_DTYPE_E4M3>(l, p, shift, grid, st);
    else if (l->f.elem == MOE_DTYPE_E5M2)
        launch_fp8<T, MOE_DTYPE_E5M2>(l, p, shift, grid, st);
    else if (l->f.kind == MOE_QFORMAT_NVFP4)
        dequantize_kernel<T, MOE_DTYPE_E2M1, kNvfp4><<<grid, kThreads, 0, st>>>(p, shift);
    else
        dequantize_kernel<T, MOE_DTYPE_E2M1, kE8M0><<<grid, kThreads, 0, st>>>(p, shift);
}

} // namespace

extern "C" moe_status moe__cuda_dequantize(moe_ctx *ctx, const moe_qlayout *l, const moe_qtensor *q, moe_tensor *y,
                                           void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (l->batch * l->rows * l->cols == 0) return MOE_OK;
    moe_qparams p = moe__qparams(l, y->data, q);
    const unsigned grid = moe__grid_for(ctx, l->batch * l->rows * 32, kThreads); /* a warp per row */
    switch (y->dtype) {
    case MOE_DTYPE_F32: launch<float>(l, p, grid, st); break;
    case MOE_DTYPE_BF16: launch<__nv_bfloat16>(l, p, grid, st); break;
    default: launch<__half>(l, p, grid, st); break;
    }
    MOE_CUDA_LAUNCHED(ctx, "dequantize_kernel");
    return MOE_OK;
}
