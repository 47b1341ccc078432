/* ctx.c — contexts: backend choice, error messages, logging, memory on the backend. */
#include "core/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

const char *moe_version(void) {
    return "0.1.0";
}

const char *moe_status_string(moe_status status) {
    switch (status) {
#define MOE_STATUS_CASE_(name, value, text) \
    case name:                              \
        return text;
        MOE_STATUS_MAP(MOE_STATUS_CASE_)
#undef MOE_STATUS_CASE_
    }
    return "unknown status";
}

int moe_built_with_cuda(void) {
#ifdef MOE_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

#ifndef MOE_WITH_CUDA
const char *moe_cuda_archs(void) {
    return "";
}
#endif

static void moe_log_stderr(void *user, moe_log_level level, const char *message) {
    (void)user;
    static const char *names[] = {"debug", "info", "notice", "error"};
    fprintf(stderr, "moe: %s: %s\n", names[level <= MOE_LOG_ERROR ? level : MOE_LOG_ERROR], message);
}

void moe__log(const moe_ctx *ctx, moe_log_level level, const char *fmt, ...) {
    int min_level = ctx ? ctx->log_level : MOE_LOG_NOTICE;
    if ((int)level < min_level) return;
    char message[MOE_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    moe_log_fn log = ctx && ctx->log ? ctx->log : moe_log_stderr;
    log(ctx ? ctx->log_user : NULL, level, message);
}

moe_status moe__error(moe_ctx *ctx, moe_status status, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
    }
    return status;
}

moe_ctx_options moe_ctx_options_default(void) {
    moe_ctx_options o;
    memset(&o, 0, sizeof o);
    o.backend = MOE_BACKEND_AUTO;
    o.log_level = MOE_LOG_NOTICE;
    return o;
}

/* The CPU threads of a context: the request, or for 0 OpenMP's default (OMP_NUM_THREADS or the processors),
 * at most MOE_MAX_CPU_THREADS either way: the OpenMP runtime crashes when it cannot start a team (libgomp at
 * 100 000 threads), so an absurd count must fail here, not inside an op. */
static int moe_cpu_threads(int requested) {
#ifdef _OPENMP
    int available = omp_get_max_threads();
#else
    int available = 1;
#endif
    if (available > MOE_MAX_CPU_THREADS) available = MOE_MAX_CPU_THREADS;
    return requested > 0 ? requested : available;
}

moe_status moe_ctx_create(const moe_ctx_options *options, moe_ctx **out) {
    if (!out) return MOE_ERR_INVALID_ARG;
    *out = NULL;
    moe_ctx_options o = options ? *options : moe_ctx_options_default();
    if (o.backend != MOE_BACKEND_AUTO && o.backend != MOE_BACKEND_CPU && o.backend != MOE_BACKEND_CUDA) {
        moe_ctx logger = {.log = o.log, .log_user = o.log_user, .log_level = o.log_level};
        moe__log(&logger, MOE_LOG_ERROR, "moe_ctx_create: unknown backend %d", (int)o.backend);
        return MOE_ERR_INVALID_ARG;
    }
    if (o.n_threads < 0 || o.n_threads > MOE_MAX_CPU_THREADS) {
        moe_ctx logger = {.log = o.log, .log_user = o.log_user, .log_level = o.log_level};
        moe__log(&logger, MOE_LOG_ERROR, "moe_ctx_create: n_threads %d is outside 0..%d", o.n_threads,
                 MOE_MAX_CPU_THREADS);
        return MOE_ERR_INVALID_ARG;
    }
    moe_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return MOE_ERR_OOM;
    ctx->log = o.log;
    ctx->log_user = o.log_user;
    ctx->log_level = o.log_level;
    ctx->n_threads = moe_cpu_threads(o.n_threads);
    ctx->backend = MOE_BACKEND_CPU;

    if (o.backend != MOE_BACKEND_CPU) {
#ifdef MOE_WITH_CUDA
        moe_status s = moe__cuda_init(ctx, o.device);
        if (s == MOE_OK) {
            ctx->backend = MOE_BACKEND_CUDA;
        } else if (o.backend == MOE_BACKEND_CUDA) {
            moe__log(ctx, MOE_LOG_ERROR, "%s", ctx->error);
            free(ctx);
            return s;
        } else {
            moe__log(ctx, MOE_LOG_NOTICE, "no usable GPU (%s): running on the CPU", ctx->error);
        }
#else
        if (o.backend == MOE_BACKEND_CUDA) {
            moe__log(ctx, MOE_LOG_ERROR, "this libmoe was built without CUDA (no nvcc at build time)");
            free(ctx);
            return MOE_ERR_UNSUPPORTED;
        }
#endif
    }
    if (ctx->backend == MOE_BACKEND_CPU)
        snprintf(ctx->describe, sizeof ctx->describe, "cpu (%d thread%s)", ctx->n_threads,
                 ctx->n_threads == 1 ? "" : "s");
    moe__clear_error(ctx);
    *out = ctx;
    return MOE_OK;
}

void moe_ctx_destroy(moe_ctx *ctx) {
    if (!ctx) return;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) moe__cuda_destroy(ctx);
#endif
    free(ctx);
}

moe_backend moe_ctx_backend(const moe_ctx *ctx) {
    return ctx ? ctx->backend : MOE_BACKEND_CPU;
}

const char *moe_ctx_describe(const moe_ctx *ctx) {
    return ctx ? ctx->describe : "";
}

const char *moe_last_error(const moe_ctx *ctx) {
    return ctx ? ctx->error : "";
}

/* ---- memory ---- */

moe_status moe_alloc(moe_ctx *ctx, size_t bytes, void **ptr) {
    if (!ctx || !ptr) return moe__error(ctx, MOE_ERR_INVALID_ARG, "moe_alloc: ctx and ptr must not be NULL");
    moe__clear_error(ctx);
    *ptr = NULL;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_alloc(ctx, bytes, ptr);
#endif
    if (bytes > SIZE_MAX - 255) /* the rounding below would wrap to a small buffer */
        return moe__error(ctx, MOE_ERR_OOM, "moe_alloc: %zu bytes of host memory not available", bytes);
    size_t rounded = (bytes + 255) / 256 * 256;
    *ptr = aligned_alloc(256, rounded ? rounded : 256);
    if (!*ptr) return moe__error(ctx, MOE_ERR_OOM, "moe_alloc: %zu bytes of host memory not available", bytes);
    return MOE_OK;
}

void moe_free(moe_ctx *ctx, void *ptr) {
    if (!ctx || !ptr) return;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        moe__cuda_free(ctx, ptr);
        return;
    }
#endif
    free(ptr);
}

moe_status moe_memcpy(moe_ctx *ctx, void *dst, const void *src, size_t bytes, moe_copy_kind kind,
                      void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    if (bytes == 0) return MOE_OK;
    MOE_CHECK_ARG(ctx, dst && src, "moe_memcpy: dst and src must not be NULL");
    MOE_CHECK_ARG(ctx, kind >= MOE_COPY_HOST_TO_CTX && kind <= MOE_COPY_CTX_TO_CTX, "moe_memcpy: unknown copy kind %d",
                  (int)kind);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_memcpy(ctx, dst, src, bytes, kind, stream);
#endif
    (void)stream;
    memmove(dst, src, bytes);
    return MOE_OK;
}

moe_status moe_memset(moe_ctx *ctx, void *dst, int value, size_t bytes, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    if (bytes == 0) return MOE_OK;
    MOE_CHECK_ARG(ctx, dst, "moe_memset: dst must not be NULL");
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_memset(ctx, dst, value, bytes, stream);
#endif
    (void)stream;
    memset(dst, value, bytes);
    return MOE_OK;
}

moe_status moe_sync(moe_ctx *ctx, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) return moe__cuda_sync(ctx, stream);
#endif
    (void)stream;
    return MOE_OK;
}
