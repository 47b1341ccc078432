/* runtime.cu — the CUDA backend of a context: device choice, stream, memory, pointer checks, errors. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda/common/cuda.cuh"

#ifndef MOE_CUDA_ARCHS
#define MOE_CUDA_ARCHS "unknown"
#endif

extern "C" const char *moe_cuda_archs(void) {
    return MOE_CUDA_ARCHS;
}

bool moe__cuda_pdl(const moe_ctx *ctx) {
    static const bool off = getenv("MOE_NO_PDL") != NULL;
    return ctx->cuda.cc_major >= 9 && !off;
}

extern "C" moe_status moe__cuda_fail(moe_ctx *ctx, cudaError_t err, const char *what, const char *file, int line) {
    cudaGetLastError(); /* clear a non-sticky error so the context stays usable */
    moe_status status = err == cudaErrorMemoryAllocation ? MOE_ERR_OOM : MOE_ERR_CUDA;
    if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
        err == cudaErrorUnsupportedPtxVersion) {
        return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                          "no kernel of this libmoe build runs on this GPU (sm_%d%d); it has code for: %s (%s in %s at "
                          "%s:%d)",
                          ctx ? ctx->cuda.cc_major : 0, ctx ? ctx->cuda.cc_minor : 0, moe_cuda_archs(),
                          cudaGetErrorName(err), what, file, line);
    }
    return moe__error(ctx, status, "%s (%s) in %s at %s:%d", cudaGetErrorName(err), cudaGetErrorString(err), what,
                      file, line);
}

/* A kernel that does nothing: launching it proves this build has code for the device. */
static __global__ void moe_probe_kernel(int *never) {
    if (never) *never = 0;
}

extern "C" moe_status moe__cuda_init(moe_ctx *ctx, int device) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        return moe__error(ctx, MOE_ERR_NO_DEVICE, "no CUDA device (%s)",
                          e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    }
    if (device < 0 || device >= count)
        return moe__error(ctx, MOE_ERR_NO_DEVICE, "CUDA device %d does not exist (%d present)", device, count);
    cudaDeviceProp prop;
    MOE_CUDA_TRY(ctx, cudaSetDevice(device));
    MOE_CUDA_TRY(ctx, cudaGetDeviceProperties(&prop, device));
    ctx->cuda.device = device;
    ctx->cuda.cc_major = prop.major;
    ctx->cuda.cc_minor = prop.minor;
    ctx->cuda.sm_count = prop.multiProcessorCount;
    moe_probe_kernel<<<1, 1>>>(NULL);
    MOE_CUDA_TRY(ctx, cudaGetLastError());
    MOE_CUDA_TRY(ctx, cudaDeviceSynchronize());
    cudaStream_t stream;
    MOE_CUDA_TRY(ctx, cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ctx->cuda.stream = stream;
    snprintf(ctx->describe, sizeof ctx->describe, "cuda:%d %s (sm_%d%d, %d SMs, %.0f GiB)", device, prop.name,
             prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    return MOE_OK;
}

extern "C" void moe__cuda_destroy(moe_ctx *ctx) {
    cudaSetDevice(ctx->cuda.device);
    if (ctx->cuda.stream) {
        cudaStreamSynchronize((cudaStream_t)ctx->cuda.stream);
        cudaStreamDestroy((cudaStream_t)ctx->cuda.stream);
    }
    ctx->cuda.stream = NULL;
}

extern "C" moe_status moe__cuda_alloc(moe_ctx *ctx, size_t bytes, void **ptr) {
    moe__cuda_enter(ctx, NULL);
    cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *ptr = NULL;
        return moe__error(ctx, e == cudaErrorMemoryAllocation ? MOE_ERR_OOM : MOE_ERR_CUDA,
                          "moe_alloc: %zu bytes of GPU memory: %s", bytes, cudaGetErrorString(e));
    }
    return MOE_OK;
}

extern "C" void moe__cuda_free(moe_ctx *ctx, void *ptr) {
    moe__cuda_enter(ctx, NULL);
    cudaFree(ptr);
}

extern "C" moe_status moe__cuda_memcpy(moe_ctx *ctx, void *dst, const void *src, size_t bytes, moe_copy_kind kind,
                                       void *stream) {
    static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice};
    cudaStream_t s = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaMemcpyAsync(dst, src, bytes, kinds[kind], s));
    return MOE_OK;
}

extern "C" moe_status moe__cuda_memset(moe_ctx *ctx, void *dst, int value, size_t bytes, void *stream) {
    cudaStream_t s = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaMemsetAsync(dst, value, bytes, s));
    return MOE_OK;
}

extern "C" moe_status moe__cuda_sync(moe_ctx *ctx, void *stream) {
    cudaStream_t s = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaStreamSynchronize(s));
    return MOE_OK;
}

extern "C" moe_status moe__cuda_check_pointer(moe_ctx *ctx, const void *ptr, const char *name) {
    cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, ptr);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return moe__error(ctx, MOE_ERR_INVALID_ARG, "%s (%p) is not device memory: %s", name, ptr,
                          cudaGetErrorString(e));
    }
    if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
        return moe__error(ctx, MOE_ERR_INVALID_ARG, "%s (%p) is not device memory of this GPU (pass pointers from "
                          "moe_alloc or cudaMalloc)", name, ptr);
    if (a.type == cudaMemoryTypeDevice && a.device != ctx->cuda.device)
        return moe__error(ctx, MOE_ERR_INVALID_ARG, "%s (%p) is memory of GPU %d, not of this context's GPU %d", name,
                          ptr, a.device, ctx->cuda.device);
    return MOE_OK;
}

/* ---- graphs ---- */

struct moe_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

extern "C" moe_status moe__cuda_graph_begin(moe_ctx *ctx, void *stream) {
    cudaStream_t s = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    return MOE_OK;
}

extern "C" moe_status moe__cuda_graph_end(moe_ctx *ctx, void *stream, moe_graph **out) {
    cudaStream_t s = moe__cuda_enter(ctx, stream);
    moe_graph g;
    MOE_CUDA_TRY(ctx, cudaStreamEndCapture(s, &g.graph));
    cudaError_t e = cudaGraphInstantiate(&g.exec, g.graph, 0);
    if (e != cudaSuccess) {
        cudaGraphDestroy(g.graph);
        return moe__cuda_fail(ctx, e, "cudaGraphInstantiate", __FILE__, __LINE__);
    }
    *out = (moe_graph *)malloc(sizeof g);
    if (!*out) {
        cudaGraphExecDestroy(g.exec);
        cudaGraphDestroy(g.graph);
        return moe__error(ctx, MOE_ERR_OOM, "moe_graph_end: out of host memory");
    }
    **out = g;
    return MOE_OK;
}

extern "C" moe_status moe__cuda_graph_replay(moe_ctx *ctx, moe_graph *g, void *stream) {
    cudaStream_t s = moe__cuda_enter(ctx, stream);
    MOE_CUDA_TRY(ctx, cudaGraphLaunch(g->exec, s));
    return MOE_OK;
}

extern "C" void moe__cuda_graph_destroy(moe_ctx *ctx, moe_graph *g) {
    moe__cuda_enter(ctx, NULL);
    cudaGraphExecDestroy(g->exec);
    cudaGraphDestroy(g->graph);
    free(g);
}
