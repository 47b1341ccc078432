/* internal.h — what the library's own files share: the context, error reporting, backend entry points.
 * Nothing here is public; internal non-static names start with moe__. */
#ifndef MOE_INTERNAL_H
#define MOE_INTERNAL_H

#include "moe.h"

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_ERROR_CAP 512

/* Small pure functions shared by host code and kernels (index arithmetic only, never the maths under test). */
#ifdef __CUDACC__
#define MOE_HD __host__ __device__
#else
#define MOE_HD
#endif

/* The CUDA state of a context; filled by moe__cuda_init (src/cuda/runtime.cu). */
typedef struct moe_cuda_state {
    int device;
    int cc_major, cc_minor; /* compute capability */
    int sm_count;
    void *stream;           /* cudaStream_t owned by the context */
} moe_cuda_state;

struct moe_ctx {
    moe_backend backend;      /* CPU or CUDA after creation, never AUTO */
    int n_threads;            /* CPU threads */
    moe_log_fn log;
    void *log_user;
    int log_level;
    moe_cuda_state cuda;
    char describe[384];
    char error[MOE_ERROR_CAP];
};

/* Records the message (printf-style) as the context's last error and returns status. ctx may be NULL. */
moe_status moe__error(moe_ctx *ctx, moe_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void moe__log(const moe_ctx *ctx, moe_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Clears the last error at the start of a public call. */
static inline void moe__clear_error(moe_ctx *ctx) {
    if (ctx) ctx->error[0] = '\0';
}

/* Evaluates a moe_status expression and returns it from the calling function when it is not MOE_OK. */
#define MOE_TRY(expr)                         \
    do {                                      \
        moe_status moe_try_s_ = (expr);       \
        if (moe_try_s_ != MOE_OK) return moe_try_s_; \
    } while (0)

/* Argument checks for public entry points: return MOE_ERR_INVALID_ARG with a message naming the problem. */
#define MOE_CHECK_ARG(ctx, cond, ...)                                   \
    do {                                                                \
        if (!(cond)) return moe__error((ctx), MOE_ERR_INVALID_ARG, __VA_ARGS__); \
    } while (0)

/* ptr (may be NULL) aligned to its type's size T, as its loads need (the GPU faults on a misaligned one, the CPU
 * reads one in undefined behaviour); else the error naming it. */
#define MOE_CHECK_ALIGNED(ctx, ptr, T, what)                                                                        \
    MOE_CHECK_ARG(ctx, (uintptr_t)(const void *)(ptr) % sizeof(T) == 0, "%s is not %d-byte aligned", what,           \
                  (int)sizeof(T))

/* Product of the first n entries of shape; -1 when a dimension is negative or the product overflows. */
int64_t moe__shape_numel(int rank, const int64_t *shape);
/* Checks a tensor view: non-NULL data (unless empty), known dtype, rank 1..4, dims >= 0. name is for messages. */
moe_status moe__check_tensor(moe_ctx *ctx, const moe_tensor *t, const char *name);
/* Splits a shape into (batch, rows, cols): rank 1 -> (1, 1, n); rank r -> (prod of leading, r-2, r-1). */
void moe__shape_matrices(int rank, const int64_t *shape, int64_t *batch, int64_t *rows, int64_t *cols);

#ifdef MOE_WITH_CUDA
/* CUDA backend (src/cuda/runtime.cu). moe__cuda_init fails with MOE_ERR_NO_DEVICE when no GPU is usable. */
moe_status moe__cuda_init(moe_ctx *ctx, int device);
void moe__cuda_destroy(moe_ctx *ctx);
moe_status moe__cuda_alloc(moe_ctx *ctx, size_t bytes, void **ptr);
void moe__cuda_free(moe_ctx *ctx, void *ptr);
moe_status moe__cuda_memcpy(moe_ctx *ctx, void *dst, const void *src, size_t bytes, moe_copy_kind kind,
                            void *stream);
moe_status moe__cuda_memset(moe_ctx *ctx, void *dst, int value, size_t bytes, void *stream);
moe_status moe__cuda_sync(moe_ctx *ctx, void *stream);
/* MOE_OK when every pointer is device-accessible memory of the context's device (names go to the message). */
moe_status moe__cuda_check_pointer(moe_ctx *ctx, const void *ptr, const char *name);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_INTERNAL_H */
