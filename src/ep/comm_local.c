/* comm_local.c — ranks that are threads of one process, on CPU contexts: collectives through shared memory.
 * Each rank publishes its send buffer, all meet at a barrier, each copies what peers hold for it, all meet
 * again (so no buffer is reused early). The barrier waits at most the comm's timeout: a rank that never comes
 * makes the others fail with MOE_ERR_COMM, and the group stays failed. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep/comm.h"

typedef struct local_post {
    const void *send;
    const int64_t *send_bytes, *send_off; /* alltoallv; NULL: allgather of send_bytes_all bytes */
    int64_t bytes;
} local_post;

typedef struct local_group {
    int n, refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    unsigned long generation;
    int failed;
    local_post *posts;
    float *reduce; /* reduce_scatter: the ranks' buffers summed in rank order */
} local_group;

static moe_status local_barrier(moe_comm *c) {
    local_group *g = c->impl;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    const double t = until.tv_sec + until.tv_nsec * 1e-9 + c->timeout_s;
    until.tv_sec = (time_t)t, until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&g->mu);
    if (g->failed) {
        pthread_mutex_unlock(&g->mu);
        return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: the group failed earlier (a rank timed out)", c->rank);
    }
    const unsigned long gen = g->generation;
    if (++g->arrived == g->n) {
        g->arrived = 0, g->generation++;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (gen == g->generation && !g->failed)
            if (pthread_cond_timedwait(&g->cv, &g->mu, &until) == ETIMEDOUT) {
                g->failed = 1;
                pthread_cond_broadcast(&g->cv);
            }
    }
    const int failed = g->failed && gen == g->generation;
    pthread_mutex_unlock(&g->mu);
    if (failed)
        return moe__error(c->ctx, MOE_ERR_COMM, "rank %d: a peer did not join the collective within %.1f s", c->rank,
                          c->timeout_s);
    return MOE_OK;
}

static moe_status local_alltoallv(moe_comm *c, const void *send, const int64_t *send_bytes, const int64_t *send_off,
                                  void *recv, const int64_t *recv_bytes, const int64_t *recv_off, void *stream) {
    (void)stream;
    local_group *g = c->impl;
    g->posts[c->rank] = (local_post){send, send_bytes, send_off, 0};
    MOE_TRY(local_barrier(c));
    moe_status st = MOE_OK;
    for (int p = 0; p < c->size; p++) {
        const local_post *q = &g->posts[p];
        if (q->send_bytes[c->rank] != recv_bytes[p]) {
            st = moe__error(c->ctx, MOE_ERR_COMM, "rank %d expects %lld bytes from rank %d, which sends %lld", c->rank,
                            (long long)recv_bytes[p], p, (long long)q->send_bytes[c->rank]);
            break;
        }
        if (recv_bytes[p])
            memcpy((char *)recv + recv_off[p], (const char *)q->send + q->send_off[c->rank], (size_t)recv_bytes[p]);
    }
    const moe_status b = local_barrier(c);
    return st != MOE_OK ? st : b;
}

static moe_status local_allgather(moe_comm *c, const void *send, int64_t bytes, void *recv, void *stream) {
    (void)stream;
    local_group *g = c->impl;
    g->posts[c->rank] = (local_post){send, NULL, NULL, bytes};
    MOE_TRY(local_barrier(c));
    moe_status st = MOE_OK;
    for (int p = 0; p < c->size; p++) {
        if (g->posts[p].bytes != bytes) {
            st = moe__error(c->ctx, MOE_ERR_COMM, "allgather: rank %d gives %lld bytes, rank %d %lld", p,
                            (long long)g->posts[p].bytes, c->rank, (long long)bytes);
            break;
        }
        memcpy((char *)recv + p * bytes, g->posts[p].send, (size_t)bytes);
    }
    const moe_status b = local_barrier(c);
    return st != MOE_OK ? st : b;
}

/* The sum in rank order, element by element, so that every transport and run gives the same bits. */
static moe_status local_reduce_scatter(moe_comm *c, const float *send, int64_t n, float *recv, void *stream) {
    (void)stream;
    local_group *g = c->impl;
    g->posts[c->rank] = (local_post){send, NULL, NULL, n};
    MOE_TRY(local_barrier(c));
    const int64_t part = n / c->size, at = part * c->rank;
    for (int64_t i = 0; i < part; i++) {
        float s = ((const float *)g->posts[0].send)[at + i];
        for (int p = 1; p < c->size; p++) s += ((const float *)g->posts[p].send)[at + i];
        recv[i] = s;
    }
    return local_barrier(c);
}

static moe_status local_wait(moe_comm *c, void *stream) {
    (void)c, (void)stream;
    return MOE_OK;
}

static void local_destroy(moe_comm *c) {
    local_group *g = c->impl;
    pthread_mutex_lock(&g->mu);
    const int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->posts);
        free(g);
    }
}

static const moe_comm_ops local_ops = {local_alltoallv, local_allgather, local_reduce_scatter, local_wait,
                                       local_destroy};

moe_status moe__comm_local_create(moe_ctx *const *ctxs, int n, moe_comm **comms) {
    local_group *g = calloc(1, sizeof *g);
    local_post *posts = calloc((size_t)n, sizeof *posts);
    if (!g || !posts) {
        free(g), free(posts);
        return moe__error(ctxs[0], MOE_ERR_OOM, "moe_comm_create_local: out of host memory");
    }
    g->n = n, g->posts = posts;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    for (int i = 0; i < n; i++) {
        comms[i] = moe__comm_new(ctxs[i], i, n);
        if (!comms[i]) {
            if (i == 0) {
                pthread_mutex_destroy(&g->mu), pthread_cond_destroy(&g->cv);
                free(posts), free(g);
            }
            for (int j = 0; j < i; j++) moe_comm_destroy(comms[j]), comms[j] = NULL; /* the last frees g */
            return moe__error(ctxs[0], MOE_ERR_OOM, "moe_comm_create_local: out of host memory");
        }
        comms[i]->ops = &local_ops, comms[i]->impl = g, comms[i]->in_process = 1;
        g->refs++;
    }
    return MOE_OK;
}
