/* comm.c — the public face of a comm: create (local), destroy, rank, size, timeout. */
#include <stdlib.h>

#include "ep/comm.h"

/* A timeout as the transports can use it: fallback unless positive (NaN is not), at most MOE_COMM_TIMEOUT_MAX_S,
 * so that deadlines in seconds, nanoseconds (the GPU's wait kernel) and time_t stay finite and in range. */
static double comm_timeout(double seconds, double fallback) {
    if (!(seconds > 0)) return fallback;
    return seconds < MOE_COMM_TIMEOUT_MAX_S ? seconds : MOE_COMM_TIMEOUT_MAX_S;
}

moe_comm *moe__comm_new(moe_ctx *ctx, int rank, int size) {
    moe_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ctx = ctx, c->rank = rank, c->size = size;
    const char *t = getenv("MOE_COMM_TIMEOUT_S");
    c->timeout_s = comm_timeout(t ? atof(t) : 0.0, 60.0);
    return c;
}

moe_status moe_comm_create_local(moe_ctx *const *ctxs, int n, moe_comm **comms) {
    if (!ctxs || n < 1 || !comms) return MOE_ERR_INVALID_ARG;
    for (int i = 0; i < n; i++) {
        if (!ctxs[i]) return MOE_ERR_INVALID_ARG;
        comms[i] = NULL;
    }
    for (int i = 0; i < n; i++) moe__clear_error(ctxs[i]);
    for (int i = 1; i < n; i++) /* a context is one thread's: ranks run at once, each on a thread of its own */
        for (int j = 0; j < i; j++)
            if (ctxs[i] == ctxs[j])
                return moe__error(ctxs[i], MOE_ERR_INVALID_ARG,
                                  "moe_comm_create_local: ranks %d and %d share a context (each rank needs its own)", j, i);
    for (int i = 1; i < n; i++)
        if (ctxs[i]->backend != ctxs[0]->backend) {
            for (int j = 0; j < n; j++)
                moe__error(ctxs[j], MOE_ERR_INVALID_ARG, "moe_comm_create_local: rank %d is on %s, rank 0 on %s", i,
                           ctxs[i]->backend == MOE_BACKEND_CUDA ? "CUDA" : "the CPU",
                           ctxs[0]->backend == MOE_BACKEND_CUDA ? "CUDA" : "the CPU");
            return MOE_ERR_INVALID_ARG;
        }
#ifdef MOE_WITH_CUDA
    if (ctxs[0]->backend == MOE_BACKEND_CUDA) return moe__nccl_init_all(ctxs, n, comms);
#endif
    return moe__comm_local_create(ctxs, n, comms);
}

void moe_comm_destroy(moe_comm *c) {
    if (!c) return;
    if (c->ops) c->ops->destroy(c);
    const int finalize = c->owns_mpi;
    free(c);
    if (finalize) moe__mpi_finalize();
}

int moe_comm_rank(const moe_comm *c) {
    return c ? c->rank : -1;
}

int moe_comm_size(const moe_comm *c) {
    return c ? c->size : 0;
}

moe_ctx *moe_comm_ctx(const moe_comm *c) {
    return c ? c->ctx : NULL;
}

void moe_comm_set_timeout(moe_comm *c, double seconds) {
    if (c) c->timeout_s = comm_timeout(seconds, c->timeout_s);
}

moe_status moe_comm_alltoall(moe_comm *c, const void *send, size_t bytes, void *recv, void *stream) {
    if (!c) return MOE_ERR_INVALID_ARG;
    moe__clear_error(c->ctx);
    MOE_CHECK_ARG(c->ctx, (send && recv) || bytes == 0, "moe_comm_alltoall: send and recv must not be NULL");
    MOE_CHECK_ARG(c->ctx, bytes <= (size_t)(INT64_MAX / c->size),
                  "moe_comm_alltoall: %zu bytes a block for %d ranks is past 64-bit offsets", bytes, c->size);
    int64_t *v = malloc(sizeof(int64_t) * 4 * (size_t)c->size);
    if (!v) return moe__error(c->ctx, MOE_ERR_OOM, "moe_comm_alltoall: out of host memory");
    for (int p = 0; p < c->size; p++) v[p] = (int64_t)bytes, v[c->size + p] = (int64_t)bytes * p;
    const moe_status s = c->ops->alltoallv(c, send, v, v + c->size, recv, v, v + c->size, stream);
    free(v);
    return s;
}
