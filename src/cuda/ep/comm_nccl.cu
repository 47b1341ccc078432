/* comm_nccl.cu — the collectives of ep/comm.h over NCCL, on device buffers, ordered on the caller's stream.
 * All-to-all is NCCL's grouped point-to-point (a send and a receive per peer in one group). A rank that dies or
 * hangs shows as a stream that never finishes: `wait` polls the stream and NCCL's asynchronous error against the
 * comm's timeout and aborts the communicator (ncclCommAbort) when it passes, so no rank hangs for ever. */
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/common/cuda.cuh"
#include "ep/comm.h"

namespace {

struct nccl_state {
    ncclComm_t comm;
    bool failed;
};

nccl_state *state(moe_comm *c) {
    return (nccl_state *)c->impl;
}

moe_status nccl_fail(moe_comm *c, ncclResult_t r, const char *what) {
    return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: %s: %s (%s)", c->rank, what, ncclGetErrorString(r),
                      ncclGetLastError(state(c) ? state(c)->comm : nullptr));
}

#define NCCL_TRY(c, expr)                                                                                              \
    do {                                                                                                               \
        ncclResult_t r_ = (expr);                                                                                      \
        if (r_ != ncclSuccess) return nccl_fail((c), r_, #expr);                                                       \
    } while (0)

#define NCCL_LIVE(c)                                                                                                   \
    do {                                                                                                               \
        if (state(c)->failed)                                                                                          \
            return moe__error((c)->ctx, MOE_ERR_COMM, "rank %d: the NCCL communicator was aborted", (c)->rank);       \
    } while (0)

moe_status nccl_alltoallv(moe_comm *c, const void *send, const int64_t *send_bytes, const int64_t *send_off,
                          void *recv, const int64_t *recv_bytes, const int64_t *recv_off, void *stream) {
    NCCL_LIVE(c);
    cudaStream_t st = moe__cuda_enter(c->ctx, stream);
    ncclComm_t comm = state(c)->comm;
    NCCL_TRY(c, ncclGroupStart());
    for (int p = 0; p < c->size; p++) {
        if (send_bytes[p]) {
            const ncclResult_t r = ncclSend((const char *)send + send_off[p], (size_t)send_bytes[p], ncclUint8, p, comm, st);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, r, "ncclSend");
            }
        }
        if (recv_bytes[p]) {
            const ncclResult_t r = ncclRecv((char *)recv + recv_off[p], (size_t)recv_bytes[p], ncclUint8, p, comm, st);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(c, r, "ncclRecv");
            }
        }
    }
    NCCL_TRY(c, ncclGroupEnd());
    return MOE_OK;
}

moe_status nccl_allgather(moe_comm *c, const void *send, int64_t bytes, void *recv, void *stream) {
    NCCL_LIVE(c);
    cudaStream_t st = moe__cuda_enter(c->ctx, stream);
    NCCL_TRY(c, ncclAllGather(send, recv, (size_t)bytes, ncclUint8, state(c)->comm, st));
    return MOE_OK;
}

moe_status nccl_reduce_scatter(moe_comm *c, const float *send, int64_t n, float *recv, void *stream) {
    NCCL_LIVE(c);
    cudaStream_t st = moe__cuda_enter(c->ctx, stream);
    NCCL_TRY(c, ncclReduceScatter(send, recv, (size_t)(n / c->size), ncclFloat, ncclSum, state(c)->comm, st));
    return MOE_OK;
}

double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

moe_status nccl_wait(moe_comm *c, void *stream) {
    NCCL_LIVE(c);
    cudaStream_t st = moe__cuda_enter(c->ctx, stream);
    const double until = now_s() + c->timeout_s;
    for (;;) {
        const cudaError_t e = cudaStreamQuery(st);
        if (e == cudaSuccess) return MOE_OK;
        if (e != cudaErrorNotReady) return moe__cuda_fail(c->ctx, e, "cudaStreamQuery", __FILE__, __LINE__);
        ncclResult_t async = ncclSuccess;
        ncclCommGetAsyncError(state(c)->comm, &async);
        const bool late = now_s() > until;
        if (async != ncclSuccess || late) {
            state(c)->failed = true;
            ncclCommAbort(state(c)->comm);
            state(c)->comm = nullptr;
            if (async != ncclSuccess)
                return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: NCCL failed (%s); the communicator is aborted",
                                  c->rank, ncclGetErrorString(async));
            return moe__error(c->ctx, MOE_ERR_COMM,
                              "rank %d: the exchange did not finish within %.1f s (a peer died or hangs); the NCCL "
                              "communicator is aborted",
                              c->rank, c->timeout_s);
        }
        timespec pause = {0, 20000};
        nanosleep(&pause, nullptr);
    }
}

void nccl_destroy(moe_comm *c) {
    nccl_state *s = state(c);
    if (!s) return;
    moe__cuda_enter(c->ctx, nullptr);
    if (s->comm) ncclCommDestroy(s->comm);
    free(s);
    c->impl = nullptr;
}

const moe_comm_ops nccl_ops = {nccl_alltoallv, nccl_allgather, nccl_reduce_scatter, nccl_wait, nccl_destroy};

} // namespace

extern "C" moe_status moe__nccl_unique_id(moe_ctx *ctx, void *id, size_t *bytes) {
    static_assert(sizeof(ncclUniqueId) <= 128, "NCCL id size");
    ncclUniqueId u;
    const ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return moe__error(ctx, MOE_ERR_COMM, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
    *bytes = sizeof u;
    return MOE_OK;
}

extern "C" moe_status moe__nccl_init_rank(moe_comm *c, const void *id) {
    nccl_state *s = (nccl_state *)calloc(1, sizeof(nccl_state));
    if (!s) return moe__error(c->ctx, MOE_ERR_OOM, "NCCL init: out of host memory");
    moe__cuda_enter(c->ctx, nullptr);
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    const ncclResult_t r = ncclCommInitRank(&s->comm, c->size, u, c->rank);
    if (r != ncclSuccess) {
        free(s);
        return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: ncclCommInitRank: %s", c->rank, ncclGetErrorString(r));
    }
    c->impl = s, c->ops = &nccl_ops;
    return MOE_OK;
}

extern "C" moe_status moe__nccl_init_all(moe_ctx *const *ctxs, int n, moe_comm **comms) {
    ncclComm_t *raw = (ncclComm_t *)calloc((size_t)n, sizeof(ncclComm_t));
    int *devs = (int *)calloc((size_t)n, sizeof(int));
    if (!raw || !devs) {
        free(raw), free(devs);
        return moe__error(ctxs[0], MOE_ERR_OOM, "moe_comm_create_local: out of host memory");
    }
    for (int i = 0; i < n; i++) devs[i] = ctxs[i]->cuda.device;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (devs[i] == devs[j]) {
                free(raw), free(devs);
                return moe__error(ctxs[0], MOE_ERR_INVALID_ARG,
                                  "moe_comm_create_local: ranks %d and %d are both on GPU %d (NCCL needs a GPU a rank)",
                                  j, i, devs[i]);
            }
    const ncclResult_t r = ncclCommInitAll(raw, n, devs);
    free(devs);
    if (r != ncclSuccess) {
        free(raw);
        return moe__error(ctxs[0], MOE_ERR_COMM, "ncclCommInitAll: %s", ncclGetErrorString(r));
    }
    moe_status st = MOE_OK;
    for (int i = 0; i < n; i++) {
        comms[i] = moe__comm_new(ctxs[i], i, n);
        nccl_state *s = (nccl_state *)calloc(1, sizeof(nccl_state));
        if (!comms[i] || !s) {
            free(s);
            st = moe__error(ctxs[0], MOE_ERR_OOM, "moe_comm_create_local: out of host memory");
            break;
        }
        s->comm = raw[i], raw[i] = nullptr;
        comms[i]->impl = s, comms[i]->ops = &nccl_ops, comms[i]->in_process = 1;
    }
    if (st != MOE_OK) {
        for (int i = 0; i < n; i++) {
            if (raw[i]) ncclCommDestroy(raw[i]);
            moe_comm_destroy(comms[i]);
            comms[i] = nullptr;
        }
    }
    free(raw);
    return st;
}
