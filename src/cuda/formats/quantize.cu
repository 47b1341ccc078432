/* quantize.cu — quantisation kernels for every block format (docs/formats.md §2), bit-identical to the CPU
 * reference. Memory-bound: each thread owns 8 consecutive elements (one 16-byte load for bf16/f16, two for
 * f32); a block's threads meet through warp shuffles.
 *
 *   row blocks (1x128, MX 1x32, NVFP4 1x16): one pass; a block is 16, 4 or 2 neighbouring threads
 *   FP8_ROW:      one CTA per row, two passes over the row (the second from L2)
 *   FP8_128X128:  one CTA per tile, the tile held in registers between the amax and the encode
 *   FP8_TENSOR and the NVFP4 global scale: an amax pass (atomicMax) and a one-thread finalise first
 * No host synchronisation; 64-bit indices; grid-stride loops, so no grid dimension grows past its limit. */
#include "cuda/formats/qformat.cuh"

namespace {

constexpr int kThreads = 256;

/* Max of |x| over a CTA (NaN dropped), broadcast to every thread. All threads must call it. */
__device__ float cta_max(float a, float *shared) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = a;
    __syncthreads();
    a = shared[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) a = fmaxf(a, shared[w]);
    __syncthreads(); /* shared is reused by the next call */
    return a;
}

__device__ __forceinline__ float max_abs8(const float (&v)[8]) {
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) a = fmaxf(a, fabsf(v[j]));
    return a;
}

/* amax of the whole tensor into *slot (as uint bits: non-negative floats order like their bits). */
template <typename T> __global__ void amax_kernel(const T *x, int64_t n, bool vec, unsigned *slot) {
    __shared__ float shared[kThreads / 32];
    float a = 0.0f;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * 8;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += stride) {
        float v[8];
        int count = (int)min((int64_t)8, n - i);
        moe_load8(x, i, count, vec && count == 8, v);
        a = fmaxf(a, max_abs8(v));
    }
    a = cta_max(a, shared);
    if (threadIdx.x == 0) atomicMax(slot, __float_as_uint(a));
}

/* Turns the amax in *slot into the per-tensor number: the FP8_TENSOR scale or the NVFP4 global scale. */
__global__ void finalize_kernel(moe_qparams p) {
    float a = fminf(__uint_as_float(*reinterpret_cast<unsigned *>(p.global)), FLT_MAX);
    if (p.kind == MOE_QFORMAT_FP8_TENSOR) {
        *static_cast<float *>(p.scale) = moe_scale_from_amax(p, fmaxf(a, p.amax_floor)).value;
    } else {
        float g = p.global_conv == MOE_NVFP4_GLOBAL_ENCODE ? __fdiv_rn(2688.0f, a) : __fdiv_rn(a, 2688.0f);
        *p.global = isfinite(g) && g > 0.0f ? g : 1.0f;
    }
}

/* FP8_TENSOR: q = enc(x / s) with the one scale s. */
template <typename T> __global__ void quantize_tensor_kernel(moe_qparams p, int64_t n) {
    const T *x = static_cast<const T *>(p.x);
    const moe_block_scale s = {*static_cast<const float *>(p.scale), 0.0f, 0, true};
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * 8;
    const bool vec = p.vec && n % 8 == 0;
    for (int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n; i += stride) {
        float v[8];
        int count = (int)min((int64_t)8, n - i);
        moe_load8(x, i, count, vec, v);
        moe_apply_scale(v, s);
        moe_store_codes(p, i, count, vec, v);
    }
}

/* Blocks of 8 * TPB elements along rows (1x128: TPB 16, MX: 4, NVFP4: 2). Item = (row, block, lane). */
template <typename T, int TPB> __global__ void quantize_row_blocks_kernel(moe_qparams p) {
    const T *x = static_cast<const T *>(p.x);
    float g_enc = 1.0f, g_dec = 1.0f;
    if (p.kind == MOE_QFORMAT_NVFP4) moe_nvfp4_pair(p, *p.global, g_enc, g_dec);
    const int64_t n_items = p.batch * p.rows * p.scale_cols * TPB;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    /* base is uniform across the CTA, so whole warps run each iteration and the shuffles are safe */
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x; base < n_items; base += stride) {
        const int64_t item = base + threadIdx.x, blk = item / TPB, row = blk / p.scale_cols, bc = blk % p.scale_cols;
        const int lane = (int)(item % TPB);
        const int64_t c0 = bc * 8 * TPB + lane * 8, i = row * p.cols + c0;
        const int count = item < n_items ? (int)max((int64_t)0, min((int64_t)8, p.cols - c0)) : 0;
        float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (count > 0) moe_load8(x, i, count, p.vec && count == 8, v);
        float a = max_abs8(v);
#pragma unroll
        for (int o = TPB / 2; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        a = moe_finish_amax(a, p.amax_floor);
        if (item >= n_items) continue;
        moe_block_scale s = p.kind == MOE_QFORMAT_NVFP4 ? moe_nvfp4_scale(a, g_enc, g_dec) : moe_scale_from_amax(p, a);
        if (lane == 0) moe_store_scale(p, moe_scale_index(p, row / p.rows, row % p.rows, bc), s);
        if (count == 0) continue;
        moe_apply_scale(v, s);
        moe_store_codes(p, i, count, p.vec, v);
    }
}

/* FP8_ROW: one CTA per row; pass 1 finds the row's amax, pass 2 encodes. */
template <typename T> __global__ void quantize_rows_kernel(moe_qparams p) {
    __shared__ float shared[kThreads / 32];
    const T *x = static_cast<const T *>(p.x);
    for (int64_t row = blockIdx.x; row < p.batch * p.rows; row += gridDim.x) {
        const int64_t start = row * p.cols;
        float a = 0.0f;
        for (int64_t c = threadIdx.x * 8; c < p.cols; c += (int64_t)blockDim.x * 8) {
            float v[8];
            int count = (int)min((int64_t)8, p.cols - c);
            moe_load8(x, start + c, count, p.vec && count == 8, v);
            a = fmaxf(a, max_abs8(v));
        }
        a = moe_finish_amax(cta_max(a, shared), p.amax_floor);
        moe_block_scale s = moe_scale_from_amax(p, a);
        if (threadIdx.x == 0) moe_store_scale(p, moe_scale_index(p, row / p.rows, row % p.rows, 0), s);
        for (int64_t c = threadIdx.x * 8; c < p.cols; c += (int64_t)blockDim.x * 8) {
            float v[8];
            int count = (int)min((int64_t)8, p.cols - c);
            moe_load8(x, start + c, count, p.vec && count == 8, v);
            moe_apply_scale(v, s);
            moe_store_codes(p, start + c, count, p.vec, v);
        }
    }
}

/* FP8_128X128: one CTA (256 threads = 16 rows x 16 column groups of 8) per tile, 8 passes of 16 rows kept in
 * registers between the amax and the encode. */
template <typename T> __global__ void quantize_tiles_kernel(moe_qparams p) {
    __shared__ float shared[kThreads / 32];
    const T *x = static_cast<const T *>(p.x);
    const int64_t tiles = p.batch * p.scale_rows * p.scale_cols;
    const int cg = threadIdx.x % 16, rg = threadIdx.x / 16;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int64_t b = t / (p.scale_rows * p.scale_cols), tr = t / p.scale_cols % p.scale_rows,
                      tc = t % p.scale_cols;
        const int64_t c = tc * 128 + cg * 8;
        const int count = (int)max((int64_t)0, min((int64_t)8, p.cols - c));
        float v[8][8];
        float a = 0.0f;
#pragma unroll
        for (int pass = 0; pass < 8; pass++) {
            const int64_t r = tr * 128 + pass * 16 + rg;
#pragma unroll
            for (int j = 0; j < 8; j++) v[pass][j] = 0.0f;
            if (r < p.rows && count > 0) moe_load8(x, (b * p.rows + r) * p.cols + c, count, p.vec && count == 8, v[pass]);
            a = fmaxf(a, max_abs8(v[pass]));
        }
        a = moe_finish_amax(cta_max(a, shared), p.amax_floor);
        moe_block_scale s = moe_scale_from_amax(p, a);
        if (threadIdx.x == 0) moe_store_scale(p, moe_scale_index(p, b, tr, tc), s);
#pragma unroll
        for (int pass = 0; pass < 8; pass++) {
            const int64_t r = tr * 128 + pass * 16 + rg;
            if (r >= p.rows || count == 0) continue;
            moe_apply_scale(v[pass], s);
            moe_store_codes(p, (b * p.rows + r) * p.cols + c, count, p.vec, v[pass]);
        }
    }
}

template <typename T> moe_status launch(moe_ctx *ctx, const moe_qlayout *l, const moe_qparams &p, cudaStream_t st) {
    const int64_t n = p.batch * p.rows * p.cols;
    const moe_qformat_kind kind = l->f.kind;
    if ((kind == MOE_QFORMAT_FP8_TENSOR || kind == MOE_QFORMAT_NVFP4) && !l->f.static_scale) {
        /* the amax goes through the f32 slot that ends up holding the per-tensor number */
        moe_qparams pf = p;
        if (kind == MOE_QFORMAT_FP8_TENSOR) pf.global = static_cast<float *>(p.scale);
        unsigned *slot = reinterpret_cast<unsigned *>(pf.global);
        MOE_CUDA_TRY(ctx, cudaMemsetAsync(slot, 0, sizeof(unsigned), st));
        const bool vec = (uintptr_t)p.x % 16 == 0;
        amax_kernel<T><<<moe__grid_for(ctx, (n + 7) / 8, kThreads), kThreads, 0, st>>>(
            static_cast<const T *>(p.x), n, vec, slot);
        MOE_CUDA_LAUNCHED(ctx, "amax_kernel");
        if (kind == MOE_QFORMAT_FP8_TENSOR) {
            finalize_kernel<<<1, 1, 0, st>>>(pf);
        } else {
            finalize_kernel<<<1, 1, 0, st>>>(p);
        }
        MOE_CUDA_LAUNCHED(ctx, "finalize_kernel");
    }
    switch (kind) {
    case MOE_QFORMAT_FP8_TENSOR:
        quantize_tensor_kernel<T><<<moe__grid_for(ctx, (n + 7) / 8, kThreads), kThreads, 0, st>>>(p, n);
        break;
    case MOE_QFORMAT_FP8_ROW:
        quantize_rows_kernel<T><<<moe__grid_for(ctx, p.batch * p.rows * kThreads, kThreads), kThreads, 0, st>>>(p);
        break;
    case MOE_QFORMAT_FP8_128X128:
        quantize_tiles_kernel<T>
            <<<moe__grid_for(ctx, p.batch * p.scale_rows * p.scale_cols * kThreads, kThreads), kThreads, 0, st>>>(p);
        break;
    default: {
        const int64_t items = p.batch * p.rows * p.scale_cols * (l->block_cols / 8);
        const unsigned grid = moe__grid_for(ctx, items, kThreads);
        if (l->block_cols == 128)
            quantize_row_blocks_kernel<T, 16><<<grid, kThreads, 0, st>>>(p);
        else if (l->block_cols == 32)
            quantize_row_blocks_kernel<T, 4><<<grid, kThreads, 0, st>>>(p);
        else
            quantize_row_blocks_kernel<T, 2><<<grid, kThreads, 0, st>>>(p);
    }
    }
    MOE_CUDA_LAUNCHED(ctx, "quantize kernel");
    return MOE_OK;
}

} // namespace

extern "C" moe_status moe__cuda_quantize(moe_ctx *ctx, const moe_qlayout *l, const moe_tensor *x, moe_qtensor *q,
                                         void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (l->batch * l->rows * l->cols == 0) return MOE_OK;
    /* the swizzled layout promises zero padding */
    if (l->f.layout == MOE_SCALE_SWIZZLED_128X4) MOE_CUDA_TRY(ctx, cudaMemsetAsync(q->scale, 0, l->scale_bytes, st));
    moe_qparams p = moe__qparams(l, x->data, q);
    switch (x->dtype) {
    case MOE_DTYPE_F32: return launch<float>(ctx, l, p, st);
    case MOE_DTYPE_BF16: return launch<__nv_bfloat16>(ctx, l, p, st);
    default: return launch<__half>(ctx, l, p, st);
    }
}
