/* swizzle.cu — block scales between the linear layout and the 128x4 tiled layout (docs/formats.md §3).
 * Forward: one thread per swizzled byte (padding written as 0), so the writes are coalesced; reverse: one thread
 * per linear byte. Grid-stride loops over 64-bit indices. */
#include "cuda/common/cuda.cuh"
#include "formats/swizzle.h"

namespace {

__global__ void swizzle_kernel(const uint8_t *linear, uint8_t *swizzled, int64_t batch, int64_t rows, int64_t cols) {
    const int64_t cp = (cols + 3) / 4 * 4, per_matrix = (rows + 127) / 128 * 128 * cp, n = batch * per_matrix;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += stride) {
        /* invert the offset formula: row tile, column tile, then the 512-byte atom */
        const int64_t b = o / per_matrix, in = o % per_matrix, tile_row_bytes = (cp / 4) * 512;
        const int64_t a = in % 512;
        const int64_t r = in / tile_row_bytes * 128 + (a % 16) / 4 * 32 + a / 16;
        const int64_t c = in % tile_row_bytes / 512 * 4 + a % 4;
        swizzled[o] = r < rows && c < cols ? linear[(b * rows + r) * cols + c] : 0;
    }
}

__global__ void unswizzle_kernel(uint8_t *linear, const uint8_t *swizzled, int64_t batch, int64_t rows, int64_t cols) {
    const int64_t cp = (cols + 3) / 4 * 4, per_matrix = (rows + 127) / 128 * 128 * cp, n = batch * rows * cols;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t b = i / (rows * cols), r = i / cols % rows, c = i % cols;
        linear[i] = swizzled[b * per_matrix + moe__swizzle_offset(r, c, cp)];
    }
}

} // namespace

extern "C" moe_status moe__cuda_scale_swizzle(moe_ctx *ctx, void *linear, void *swizzled, int64_t batch,
                                              int64_t rows, int64_t cols, int reverse, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    const int64_t n = reverse ? batch * rows * cols : batch * moe_scale_swizzled_bytes(rows, cols);
    if (n == 0) return MOE_OK;
    const unsigned grid = moe__grid_for(ctx, n, 256);
    if (reverse)
        unswizzle_kernel<<<grid, 256, 0, st>>>((uint8_t *)linear, (const uint8_t *)swizzled, batch, rows, cols);
    else
        swizzle_kernel<<<grid, 256, 0, st>>>((const uint8_t *)linear, (uint8_t *)swizzled, batch, rows, cols);
    MOE_CUDA_LAUNCHED(ctx, "swizzle kernel");
    return MOE_OK;
}
