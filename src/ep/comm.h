/* comm.h — a group of ranks and the two collectives expert parallelism needs, over one of three transports:
 * MPI (host buffers, comm_mpi.c), shared memory between the threads of one process (comm_local.c) and NCCL
 * (device buffers, cuda/ep/comm_nccl.cu). */
#ifndef MOE_EP_COMM_H
#define MOE_EP_COMM_H

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_comm_ops {
    /* Rank p receives send_bytes[p] bytes from send + send_off[p]; this rank receives recv_bytes[p] bytes from p
     * at recv + recv_off[p]. Buffers in the context's memory; CPU: done on return, CUDA: ordered on stream. */
    moe_status (*alltoallv)(moe_comm *c, const void *send, const int64_t *send_bytes, const int64_t *send_off,
                            void *recv, const int64_t *recv_bytes, const int64_t *recv_off, void *stream);
    /* recv (size x bytes) = every rank's `bytes` bytes, in rank order; context memory, like alltoallv. */
    moe_status (*allgather)(moe_comm *c, const void *send, int64_t bytes, void *recv, void *stream);
    /* recv (n f32) = sum over ranks of send: rank p receives elements [p n / size, (p + 1) n / size) of the sum
     * (n a multiple of size); context memory. */
    moe_status (*reduce_scatter_f32)(moe_comm *c, const float *send, int64_t n, float *recv, void *stream);
    /* Waits until this rank's collectives on stream are done or the timeout passes (then MOE_ERR_COMM). */
    moe_status (*wait)(moe_comm *c, void *stream);
    void (*destroy)(moe_comm *c); /* the transport's state; the comm itself is freed by moe_comm_destroy */
} moe_comm_ops;

struct moe_comm {
    moe_ctx *ctx;
    int rank, size;
    double timeout_s;
    const moe_comm_ops *ops;
    void *impl;
    int owns_mpi;   /* MPI was initialised by this comm: finalise it on destroy */
    int in_process; /* the ranks are threads of this process (a device pointer means the same on every rank) */
};

/* A comm with ctx, rank, size and the timeout from the environment; ops and impl to be set by the transport. */
moe_comm *moe__comm_new(moe_ctx *ctx, int rank, int size);

void moe__mpi_finalize(void); /* comm_mpi.c; nothing without MPI */
moe_status moe__comm_local_create(moe_ctx *const *ctxs, int n, moe_comm **comms);
#ifdef MOE_WITH_CUDA
/* NCCL: an id made by rank 0 (bytes of ncclUniqueId, at most 128) and the comm of each rank. */
moe_status moe__nccl_unique_id(moe_ctx *ctx, void *id, size_t *bytes);
moe_status moe__nccl_init_rank(moe_comm *c, const void *id);
moe_status moe__nccl_init_all(moe_ctx *const *ctxs, int n, moe_comm **comms);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_EP_COMM_H */
