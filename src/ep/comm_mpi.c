/* comm_mpi.c — ranks that are MPI processes (MPI_COMM_WORLD). CPU contexts: the collectives are MPI's own
 * (non-blocking, polled against the comm's timeout). CUDA contexts: MPI only bootstraps NCCL (rank 0's unique id
 * broadcast to all), NCCL moves the data (cuda/ep/comm_nccl.cu). Built when the build finds mpicc (MOE_WITH_MPI). */
#include <stdlib.h>
#include <time.h>

#include "ep/comm.h"

#ifndef MOE_WITH_MPI

int moe_built_with_mpi(void) {
    return 0;
}

void moe__mpi_finalize(void) {}

moe_status moe_comm_create_mpi(moe_ctx *ctx, moe_comm **comm) {
    if (!ctx || !comm) return MOE_ERR_INVALID_ARG;
    *comm = NULL;
    return moe__error(ctx, MOE_ERR_UNSUPPORTED, "moe_comm_create_mpi: this libmoe was built without MPI");
}

#else

#include <mpi.h>

int moe_built_with_mpi(void) {
    return 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Polls req until done or the timeout passes: MPI cannot cancel a collective, so a timed-out comm is dead. */
static moe_status mpi_finish(moe_comm *c, MPI_Request *req, int rc, const char *what) {
    if (rc != MPI_SUCCESS) return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: MPI %s failed (%d)", c->rank, what, rc);
    const double until = now_s() + c->timeout_s;
    for (;;) {
        int done = 0;
        rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: MPI %s failed (%d)", c->rank, what, rc);
        if (done) return MOE_OK;
        if (now_s() > until) {
            c->impl = (void *)1; /* failed: later calls refuse at once */
            return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: MPI %s did not complete within %.1f s (a peer died or hangs)",
                              c->rank, what, c->timeout_s);
        }
        struct timespec pause = {0, 20000};
        nanosleep(&pause, NULL);
    }
}

#define MPI_LIVE(c)                                                                                                    \
    do {                                                                                                               \
        if ((c)->impl) return moe__error((c)->ctx, MOE_ERR_COMM, "rank %d: the comm failed earlier", (c)->rank);       \
    } while (0)

/* MPI counts are int: the byte counts go as multiples of 64-byte units when they fit, else fail. */
static moe_status mpi_alltoallv(moe_comm *c, const void *send, const int64_t *send_bytes, const int64_t *send_off,
                                void *recv, const int64_t *recv_bytes, const int64_t *recv_off, void *stream) {
    (void)stream;
    MPI_LIVE(c);
    const int n = c->size;
    int *v = malloc(sizeof(int) * 4 * (size_t)n);
    if (!v) return moe__error(c->ctx, MOE_ERR_OOM, "alltoallv: out of host memory");
    for (int p = 0; p < n; p++) {
        const int64_t q[4] = {send_bytes[p], send_off[p], recv_bytes[p], recv_off[p]};
        for (int i = 0; i < 4; i++) {
            if (q[i] > INT32_MAX) {
                free(v);
                return moe__error(c->ctx, MOE_ERR_UNSUPPORTED, "alltoallv: %lld bytes is past MPI's int counts",
                                  (long long)q[i]);
            }
            v[i * n + p] = (int)q[i];
        }
    }
    MPI_Request req;
    const int rc = MPI_Ialltoallv(send, v, v + n, MPI_BYTE, recv, v + 2 * n, v + 3 * n, MPI_BYTE, MPI_COMM_WORLD, &req);
    const moe_status s = mpi_finish(c, &req, rc, "alltoallv");
    free(v);
    return s;
}

static moe_status mpi_allgather(moe_comm *c, const void *send, int64_t bytes, void *recv, void *stream) {
    (void)stream;
    MPI_LIVE(c);
    if (bytes > INT32_MAX) return moe__error(c->ctx, MOE_ERR_UNSUPPORTED, "allgather: %lld bytes", (long long)bytes);
    MPI_Request req;
    const int rc = MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD, &req);
    return mpi_finish(c, &req, rc, "allgather");
}

static moe_status mpi_reduce_scatter(moe_comm *c, const float *send, int64_t n, float *recv, void *stream) {
    (void)stream;
    MPI_LIVE(c);
    if (n / c->size > INT32_MAX) return moe__error(c->ctx, MOE_ERR_UNSUPPORTED, "reduce_scatter: %lld", (long long)n);
    MPI_Request req;
    const int rc = MPI_Ireduce_scatter_block(send, recv, (int)(n / c->size), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
    return mpi_finish(c, &req, rc, "reduce_scatter");
}

static moe_status mpi_wait(moe_comm *c, void *stream) {
    (void)c, (void)stream;
    return MOE_OK;
}

static void mpi_destroy(moe_comm *c) {
    (void)c;
}

void moe__mpi_finalize(void) {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

static const moe_comm_ops mpi_ops = {mpi_alltoallv, mpi_allgather, mpi_reduce_scatter, mpi_wait, mpi_destroy};

moe_status moe_comm_create_mpi(moe_ctx *ctx, moe_comm **comm) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, comm, "moe_comm_create_mpi: comm is NULL");
    *comm = NULL;
    int inited = 0, owns = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return moe__error(ctx, MOE_ERR_COMM, "moe_comm_create_mpi: MPI_Init_thread failed");
        owns = 1;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    moe_comm *c = moe__comm_new(ctx, rank, size);
    if (!c) return moe__error(ctx, MOE_ERR_OOM, "moe_comm_create_mpi: out of host memory");
    c->owns_mpi = owns;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        unsigned char id[128] = {0};
        size_t bytes = 0;
        moe_status s = rank == 0 ? moe__nccl_unique_id(ctx, id, &bytes) : MOE_OK;
        int ok = s == MOE_OK, all_ok = 0;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (all_ok) MPI_Bcast(id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
        if (all_ok) s = moe__nccl_init_rank(c, id); /* sets ops and impl */
        else if (s == MOE_OK) s = moe__error(ctx, MOE_ERR_COMM, "moe_comm_create_mpi: rank 0 could not make an NCCL id");
        if (s != MOE_OK) {
            free(c);
            if (owns) moe__mpi_finalize();
            return s;
        }
        *comm = c;
        return MOE_OK;
    }
#endif
    c->ops = &mpi_ops;
    *comm = c;
    return MOE_OK;
}

#endif /* MOE_WITH_MPI */
