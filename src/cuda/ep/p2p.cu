/* p2p.cu — the low-latency backend between the GPUs of one process without NCCL calls: the kernels write the
 * records and the expert rows straight into the peers' buffers over NVLink (peer access; one process, so a
 * device pointer means the same memory on every GPU), then raise a flag in the peer's memory; the peer's next
 * kernel waits for the flags. Only real records and rows cross the link (the buffers keep their fixed blocks),
 * nothing waits for the host, and the whole forward is captured in a CUDA graph.
 *
 * Flags (int64, on each rank): [0, N) dispatch from rank s, [N, 2N) combine from rank s, [2N, 3N) the count of
 * records rank s sent, [3N] this rank's step. Every rank adds 1 to its step at the start of a forward, so the
 * ranks' steps agree; a flag holds the sender's step. Reuse is safe by stream order: a rank writes a peer's
 * buffers for step s + 1 only after the peer's flags for step s arrived, which the peer raised after it had read
 * what it needed of step s. A wait that lasts longer than the comm's timeout gives up and sets *error (host-mapped
 * memory, read at the next forward), so a dead peer is an error, not a hang. */
#include "cuda/common/cuda.cuh"
#include "ep/ep.h"

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ void store_release(int64_t *p, int64_t v) {
    asm volatile("st.release.sys.global.s64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ int64_t load_acquire(const int64_t *p) {
    int64_t v;
    asm volatile("ld.acquire.sys.global.s64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ uint64_t now_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

__global__ void step_kernel(int64_t *flags, int n_ranks) {
    flags[3 * n_ranks] += 1;
}

/* block d of rank d's receive buffer, at our place (me M): the first count_d records */
__global__ void dispatch_kernel(const moe_ep_record r, const int32_t *rowsrc, int stride, const int64_t *offsets,
                                int n_ranks, int64_t cap, int me, const char *x, const char *scales, const char *ids,
                                const char *w, char *const *recv) {
    const int64_t n = n_ranks * cap;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const int d = (int)(i / cap);
        const int64_t at = i - d * cap;
        if (at >= offsets[d + 1] - offsets[d]) continue;
        const int64_t t = rowsrc[offsets[d] + at] / stride;
        char *o = recv[d] + (me * cap + at) * r.bytes;
        moe_block_copy(o + r.x_off, x + t * r.x_bytes, r.x_bytes);
        if (r.s_bytes) moe_block_copy(o + r.s_off, scales + t * r.s_bytes, r.s_bytes);
        moe_block_copy(o + r.id_off, ids + t * r.id_bytes, r.id_bytes);
        moe_block_copy(o + r.w_off, w + t * r.id_bytes, r.id_bytes);
    }
}

/* thread d: rank d's flag `kind` for us (and, for the dispatch, our count for it) */
__global__ void signal_kernel(int kind, int me, int n_ranks, const int64_t *offsets, int64_t *const *flags,
                              const int64_t *my_flags) {
    const int d = threadIdx.x;
    if (d >= n_ranks) return;
    const int64_t step = my_flags[3 * n_ranks];
    __threadfence_system(); /* the data written before this kernel reach the peer before the flag */
    if (offsets) flags[d][2 * n_ranks + me] = offsets[d + 1] - offsets[d];
    __threadfence_system();
    store_release(&flags[d][kind * n_ranks + me], step);
}

__global__ void wait_kernel(int kind, int n_ranks, const int64_t *flags, uint64_t timeout_ns, int *error) {
    const int s = threadIdx.x;
    if (s >= n_ranks) return;
    const int64_t step = flags[3 * n_ranks];
    const uint64_t t0 = now_ns();
    while (load_acquire(&flags[kind * n_ranks + s]) < step) {
        if (now_ns() - t0 > timeout_ns) {
            atomicExch(error, 1 + s);
            return;
        }
    }
}

/* records past a source's count say "no expert" */
__global__ void mask_kernel(const moe_ep_record r, char *recv, const int64_t *flags, int n_ranks, int64_t cap) {
    const int64_t n = n_ranks * cap;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int s = (int)(i / cap);
        if (i - s * cap < flags[2 * n_ranks + s]) continue;
        int32_t *ids = reinterpret_cast<int32_t *>(recv + i * r.bytes + r.id_off);
        for (int j = 0; j < r.id_bytes / 4; j++) ids[j] = -1;
    }
}

/* expert row src_row[i] to the rank its place pos[i] names (block s of cap rows), at our block there */
__global__ void scatter_kernel(const char *y, const int32_t *src_row, const int32_t *pos, int64_t n, int64_t row_bytes,
                               int64_t cap, int me, char *const *home) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        if (pos[i] < 0) continue;
        const int s = (int)(pos[i] / cap);
        moe_block_copy(home[s] + (me * cap + pos[i] - s * cap) * row_bytes, y + (int64_t)src_row[i] * row_bytes,
                   row_bytes);
    }
}

unsigned grid_for(int64_t n) {
    return (unsigned)(n < 1 ? 1 : n < (1 << 20) ? n : (1 << 20));
}

} // namespace

extern "C" moe_status moe__cuda_p2p_enable(moe_ctx *ctx, int peer_device, int *ok) {
    moe__cuda_enter(ctx, nullptr);
    int can = 0;
    MOE_CUDA_TRY(ctx, cudaDeviceCanAccessPeer(&can, ctx->cuda.device, peer_device));
    *ok = can || peer_device == ctx->cuda.device;
    if (!can || peer_device == ctx->cuda.device) return MOE_OK;
    const cudaError_t e = cudaDeviceEnablePeerAccess(peer_device, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError(); /* clear it */
    else if (e != cudaSuccess) return moe__cuda_fail(ctx, e, "cudaDeviceEnablePeerAccess", __FILE__, __LINE__);
    return MOE_OK;
}

extern "C" moe_status moe__cuda_p2p_host_flag(moe_ctx *ctx, int **flag, int **flag_dev) {
    moe__cuda_enter(ctx, nullptr);
    MOE_CUDA_TRY(ctx, cudaHostAlloc((void **)flag, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
    **flag = 0;
    MOE_CUDA_TRY(ctx, cudaHostGetDevicePointer((void **)flag_dev, *flag, 0));
    return MOE_OK;
}

extern "C" void moe__cuda_p2p_host_flag_free(moe_ctx *ctx, int *flag) {
    moe__cuda_enter(ctx, nullptr);
    if (flag) cudaFreeHost(flag);
}

extern "C" moe_status moe__cuda_p2p_step(moe_ctx *ctx, int64_t *flags, int n_ranks, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    step_kernel<<<1, 1, 0, st>>>(flags, n_ranks);
    MOE_CUDA_LAUNCHED(ctx, "step_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_p2p_dispatch(moe_ctx *ctx, const moe_ep_record *rec, const int32_t *rowsrc, int stride,
                                             const int64_t *offsets, int n_ranks, int64_t cap, int me, const void *x,
                                             const void *scales, const int32_t *ids, const float *w,
                                             char *const *recv, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    dispatch_kernel<<<grid_for(n_ranks * cap), kThreads, 0, st>>>(*rec, rowsrc, stride, offsets, n_ranks, cap, me,
                                                                  (const char *)x, (const char *)scales,
                                                                  (const char *)ids, (const char *)w, recv);
    MOE_CUDA_LAUNCHED(ctx, "p2p dispatch_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_p2p_signal(moe_ctx *ctx, int kind, int me, int n_ranks, const int64_t *offsets,
                                           int64_t *const *flags, const int64_t *my_flags, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    signal_kernel<<<1, 32 * ((n_ranks + 31) / 32), 0, st>>>(kind, me, n_ranks, offsets, flags, my_flags);
    MOE_CUDA_LAUNCHED(ctx, "p2p signal_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_p2p_wait(moe_ctx *ctx, int kind, int n_ranks, const int64_t *flags, double timeout_s,
                                         int *error, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    wait_kernel<<<1, 32 * ((n_ranks + 31) / 32), 0, st>>>(kind, n_ranks, flags, (uint64_t)(timeout_s * 1e9), error);
    MOE_CUDA_LAUNCHED(ctx, "p2p wait_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_p2p_mask(moe_ctx *ctx, const moe_ep_record *rec, void *recv, const int64_t *flags,
                                         int n_ranks, int64_t cap, void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    mask_kernel<<<moe__grid_for(ctx, n_ranks * cap, 256), 256, 0, st>>>(*rec, (char *)recv, flags, n_ranks, cap);
    MOE_CUDA_LAUNCHED(ctx, "p2p mask_kernel");
    return MOE_OK;
}

extern "C" moe_status moe__cuda_p2p_scatter(moe_ctx *ctx, const void *y, const int32_t *src_row, const int32_t *pos,
                                            int64_t n, int64_t row_bytes, int64_t cap, int me, char *const *home,
                                            void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    if (n == 0) return MOE_OK;
    scatter_kernel<<<grid_for(n), kThreads, 0, st>>>((const char *)y, src_row, pos, n, row_bytes, cap, me, home);
    MOE_CUDA_LAUNCHED(ctx, "p2p scatter_kernel");
    return MOE_OK;
}
