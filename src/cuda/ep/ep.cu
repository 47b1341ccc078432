/* ep.cu — the data movement steps of expert parallelism on the GPU (ep/ep.h): slot and token destinations,
 * packing tokens into records and back, gathering expert rows into their return order, and the all-gather
 * backend's partial sums and finish. Memory-bound copies: a CTA a record (or row), 16-byte moves where a part
 * allows them; row counts that live on the device are read there (grids are sized from bounds). */
#include "cuda/common/cuda.cuh"
#include "ep/ep.h"

namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxGrid = 1 << 20; /* CTAs of the copy kernels; they stride past it */

__global__ void rank_of_kernel(const int32_t *ids, int64_t n, int per_rank, int32_t *dst) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = ids[i] >= 0 ? ids[i] / per_rank : -1;
}

__global__ void token_dst_kernel(const int32_t *dst, int64_t T, int k, int n_ranks, int32_t *tok_dst) {
    const int64_t n = T * n_ranks;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / n_ranks;
        const int d = (int)(i - t * n_ranks);
        bool any = false;
        for (int j = 0; j < k; j++) any |= dst[t * k + j] == d;
        tok_dst[i] = any ? d : -1;
    }
}

__global__ void pack_kernel(const moe_ep_record r, const int32_t *rowsrc, int stride, const int64_t *n_rows,
                            int64_t n_max, const char *x, const char *scales, const char *ids, const char *w,
                            char *out) {
    const int64_t rows = n_rows ? *n_rows : n_max;
    for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
        const int64_t t = rowsrc ? rowsrc[i] / stride : i;
        char *o = out + i * r.bytes;
        moe_block_copy(o + r.x_off, x + t * r.x_bytes, r.x_bytes);
        if (r.s_bytes) moe_block_copy(o + r.s_off, scales + t * r.s_bytes, r.s_bytes);
        moe_block_copy(o + r.id_off, ids + t * r.id_bytes, r.id_bytes);
        moe_block_copy(o + r.w_off, w + t * r.id_bytes, r.id_bytes);
    }
}

__global__ void unpack_kernel(const moe_ep_record r, const char *in, int64_t n, char *x, char *scales, char *ids,
                              char *w) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const char *p = in + i * r.bytes;
        moe_block_copy(x + i * r.x_bytes, p + r.x_off, r.x_bytes);
        if (r.s_bytes) moe_block_copy(scales + i * r.s_bytes, p + r.s_off, r.s_bytes);
        moe_block_copy(ids + i * r.id_bytes, p + r.id_off, r.id_bytes);
        moe_block_copy(w + i * r.id_bytes, p + r.w_off, r.id_bytes);
    }
}

__global__ void gather_kernel(const char *y, const int32_t *slot_row, const int32_t *rowsrc, const int64_t *n_rows,
                              int64_t row_bytes, char *out) {
    const int64_t rows = *n_rows;
    for (int64_t i = blockIdx.x; i < rows; i += gridDim.x)
        moe_block_copy(out + i * row_bytes, y + (int64_t)slot_row[rowsrc[i]] * row_bytes, row_bytes);
}

/* N M records: block d holds the first count_d of its rows, the rest say "no expert" (ids -1) */
__global__ void pack_fixed_kernel(const moe_ep_record r, const int32_t *rowsrc, int stride, const int64_t *offsets,
                                  int n_ranks, int64_t cap, const char *x, const char *scales, const char *ids,
                                  const char *w, char *out) {
    const int64_t n = n_ranks * cap;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const int d = (int)(i / cap);
        const int64_t at = i - d * cap, count = offsets[d + 1] - offsets[d];
        char *o = out + i * r.bytes;
        if (at >= count) {
            for (int64_t e = threadIdx.x; e < r.id_bytes / 4; e += blockDim.x)
                reinterpret_cast<int32_t *>(o + r.id_off)[e] = -1;
            continue;
        }
        const int64_t t = rowsrc[offsets[d] + at] / stride;
        moe_block_copy(o + r.x_off, x + t * r.x_bytes, r.x_bytes);
        if (r.s_bytes) moe_block_copy(o + r.s_off, scales + t * r.s_bytes, r.s_bytes);
        moe_block_copy(o + r.id_off, ids + t * r.id_bytes, r.id_bytes);
        moe_block_copy(o + r.w_off, w + t * r.id_bytes, r.id_bytes);
    }
}

__global__ void source_of_kernel(const int32_t *ids, int64_t n, int k, int per_rank, int me, int64_t per_source,
                                 int32_t *dst) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = ids[i] >= 0 && ids[i] / per_rank == me ? (int32_t)(i / k / per_source) : -1;
}

__global__ void remap_kernel(const int32_t *row, const int32_t *group, const int64_t *offsets, int64_t n, int64_t cap,
                             int32_t *out) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = row[i] >= 0 ? (int32_t)(group[i] * cap + row[i] - offsets[group[i]]) : -1;
}

__global__ void scatter_kernel(const char *y, const int32_t *src_row, const int32_t *pos, int64_t n,
                               int64_t row_bytes, char *out) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x)
        if (pos[i] >= 0) moe_block_copy(out + (int64_t)pos[i] * row_bytes, y + (int64_t)src_row[i] * row_bytes, row_bytes);
}

__global__ void checksum_kernel(const char *base, int64_t stride, int64_t words, unsigned long long *out) {
    const uint32_t *w = reinterpret_cast<const uint32_t *>(base + blockIdx.y * stride);
    unsigned long long acc = 0;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < words; j += (int64_t)gridDim.x * blockDim.x)
        acc += (unsigned long long)w[j] * (unsigned long long)(2 * j + 1);
    atomicAdd(&out[blockIdx.y], acc); /* a sum mod 2^64: the same whatever the order */
}

constexpr int kRowThreads = 64; /* x 8 columns */

/* part[t, h..h+8) = sum over slots in order of coef_j y[slot_row[t, j]] (f32) */
__global__ void partial_kernel(const __nv_bfloat16 *y, const int32_t *slot_row, const float *w, int k,
                               bool weight_on_input, int H, float *part) {
    const int64_t t = blockIdx.x;
    const int h = (blockIdx.y * kRowThreads + threadIdx.x) * 8;
    if (h >= H) return;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, v[8];
    for (int j = 0; j < k; j++) {
        const int32_t r = slot_row[t * k + j];
        if (r < 0) continue;
        const float coef = weight_on_input ? 1.0f : w[t * k + j];
        moe_load8(y, (int64_t)r * H + h, 8, true, v);
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] += coef * v[e];
    }
    moe_store8(part, t * H + h, 8, true, acc);
}

/* out[t] = bf16(sum[t] + g_t sum_s shared_y[s, t]) */
__global__ void finish_kernel(const float *sum, const __nv_bfloat16 *shared_y, int n_shared, const float *shared_scale,
                              int64_t T, int H, __nv_bfloat16 *out) {
    const int64_t t = blockIdx.x;
    const int h = (blockIdx.y * kRowThreads + threadIdx.x) * 8;
    if (h >= H) return;
    float acc[8], sh[8] = {0, 0, 0, 0, 0, 0, 0, 0}, v[8];
    moe_load8(sum, t * H + h, 8, true, acc);
    if (n_shared) {
        for (int s = 0; s < n_shared; s++) {
            moe_load8(shared_y, ((int64_t)s * T + t) * H + h, 8, true, v);
#pragma unroll
            for (int e = 0; e < 8; e++) sh[e] += v[e];
        }
        const float g = shared_scale ? shared_scale[t] : 1.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] += g * sh[e];
    }
    moe_store8(out, t * H + h, 8, true, acc);
}

unsigned copy_grid(int64_t n) {
    return (unsigned)(n < 1 ? 1 : n < kMaxGrid ? n : kMaxGrid);
}

} // namespace

extern "C" moe_status moe__cuda_ep_rank_of(moe_ctx *ctx, const int32_t *ids, int64_t n, int per_rank, int32_t *dst,
                                           void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    rank_of_kernel<<<moe__grid_for(ctx, n, 256), 256, 0, st>>>(ids, n, per_rank, dst);
    MOE_CUDA_LAUNCHED(ctx, "rank_of_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_token_dst(moe_ctx *ctx, const int32_t *dst, int64_t T, int k, int n_ranks,
                                             int32_t *tok_dst, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (T == 0) return MOE_OK;
    token_dst_kernel<<<moe__grid_for(ctx, T * n_ranks, 256), 256, 0, st>>>(dst, T, k, n_ranks, tok_dst);
    MOE_CUDA_LAUNCHED(ctx, "token_dst_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_pack(moe_ctx *ctx, const moe_ep_record *rec, const int32_t *rowsrc, int stride,
                                        const int64_t *n_rows, int64_t n_max, const void *x, const void *scales,
                                        const int32_t *ids, const float *w, void *out, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n_max == 0) return MOE_OK;
    pack_kernel<<<copy_grid(n_max), kThreads, 0, st>>>(*rec, rowsrc, stride, n_rows, n_max, (const char *)x,
                                                      (const char *)scales, (const char *)ids, (const char *)w,
                                                      (char *)out);
    MOE_CUDA_LAUNCHED(ctx, "pack_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_unpack(moe_ctx *ctx, const moe_ep_record *rec, const void *in, int64_t n, void *x,
                                          void *scales, int32_t *ids, float *w, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    unpack_kernel<<<copy_grid(n), kThreads, 0, st>>>(*rec, (const char *)in, n, (char *)x, (char *)scales,
                                                    (char *)ids, (char *)w);
    MOE_CUDA_LAUNCHED(ctx, "unpack_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_gather(moe_ctx *ctx, const void *y, const int32_t *slot_row, const int32_t *rowsrc,
                                          const int64_t *n_rows, int64_t n_max, int64_t row_bytes, void *out,
                                          void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n_max == 0) return MOE_OK;
    gather_kernel<<<copy_grid(n_max), kThreads, 0, st>>>((const char *)y, slot_row, rowsrc, n_rows, row_bytes,
                                                        (char *)out);
    MOE_CUDA_LAUNCHED(ctx, "gather_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_partial(moe_ctx *ctx, const void *y, const int32_t *slot_row, const float *w,
                                           int k, int weight_on_input, int64_t n, int H, float *part, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    const dim3 grid((unsigned)n, (unsigned)((H + kRowThreads * 8 - 1) / (kRowThreads * 8)));
    partial_kernel<<<grid, kRowThreads, 0, st>>>((const __nv_bfloat16 *)y, slot_row, w, k, weight_on_input != 0, H,
                                                 part);
    MOE_CUDA_LAUNCHED(ctx, "partial_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_finish(moe_ctx *ctx, const float *sum, const void *shared_y, int n_shared,
                                          const float *shared_scale, int64_t T, int H, void *out, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (T == 0) return MOE_OK;
    const dim3 grid((unsigned)T, (unsigned)((H + kRowThreads * 8 - 1) / (kRowThreads * 8)));
    finish_kernel<<<grid, kRowThreads, 0, st>>>(sum, (const __nv_bfloat16 *)shared_y, n_shared, shared_scale, T, H,
                                                (__nv_bfloat16 *)out);
    MOE_CUDA_LAUNCHED(ctx, "finish_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_events(moe_ctx *ctx, int n, void **events) {
    moe__cuda_enter(ctx, nullptr);
    for (int i = 0; i < n; i++) {
        cudaEvent_t e;
        MOE_CUDA_TRY(ctx, cudaEventCreate(&e));
        events[i] = e;
    }
    return MOE_OK;
}

extern "C" void moe__cuda_ep_events_destroy(moe_ctx *ctx, int n, void **events) {
    moe__cuda_enter(ctx, nullptr);
    for (int i = 0; i < n; i++)
        if (events[i]) cudaEventDestroy((cudaEvent_t)events[i]), events[i] = nullptr;
}

extern "C" moe_status moe__cuda_ep_record(moe_ctx *ctx, void *event, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaEventRecord((cudaEvent_t)event, st));
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_elapsed(moe_ctx *ctx, void *a, void *b, double *ms) {
    moe__cuda_enter(ctx, nullptr);
    MOE_CUDA_TRY(ctx, cudaEventSynchronize((cudaEvent_t)b));
    float f = 0.0f;
    MOE_CUDA_TRY(ctx, cudaEventElapsedTime(&f, (cudaEvent_t)a, (cudaEvent_t)b));
    *ms = f;
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_pack_fixed(moe_ctx *ctx, const moe_ep_record *rec, const int32_t *rowsrc,
                                              int stride, const int64_t *offsets, int n_ranks, int64_t cap,
                                              const void *x, const void *scales, const int32_t *ids, const float *w,
                                              void *out, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    pack_fixed_kernel<<<copy_grid(n_ranks * cap), kThreads, 0, st>>>(
        *rec, rowsrc, stride, offsets, n_ranks, cap, (const char *)x, (const char *)scales, (const char *)ids,
        (const char *)w, (char *)out);
    MOE_CUDA_LAUNCHED(ctx, "pack_fixed_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_source_of(moe_ctx *ctx, const int32_t *ids, int64_t n, int k, int per_rank, int me,
                                             int64_t per_source, int32_t *dst, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    source_of_kernel<<<moe__grid_for(ctx, n * k, 256), 256, 0, st>>>(ids, n * k, k, per_rank, me, per_source, dst);
    MOE_CUDA_LAUNCHED(ctx, "source_of_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_remap(moe_ctx *ctx, const int32_t *row, const int32_t *group, const int64_t *offsets,
                                         int64_t n, int64_t cap, int32_t *out, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    remap_kernel<<<moe__grid_for(ctx, n, 256), 256, 0, st>>>(row, group, offsets, n, cap, out);
    MOE_CUDA_LAUNCHED(ctx, "remap_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_scatter(moe_ctx *ctx, const void *y, const int32_t *src_row, const int32_t *pos,
                                           int64_t n, int64_t row_bytes, void *out, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    scatter_kernel<<<copy_grid(n), kThreads, 0, st>>>((const char *)y, src_row, pos, n, row_bytes, (char *)out);
    MOE_CUDA_LAUNCHED(ctx, "scatter_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_ep_checksum(moe_ctx *ctx, const void *base, int64_t stride, int64_t bytes, int n,
                                           unsigned long long *out, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0 || bytes == 0) return MOE_OK;
    const int64_t words = bytes / 4, per = (words + 255) / 256;
    const dim3 grid((unsigned)(per < 256 ? per : 256), (unsigned)n);
    checksum_kernel<<<grid, 256, 0, st>>>((const char *)base, stride, words, out);
    MOE_CUDA_LAUNCHED(ctx, "checksum_kernel");
    return MOE_OK;
}
