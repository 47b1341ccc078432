/* ep_eplb.c — EPLB in the loop (docs/ep.md): the replica tables, the mapping of routed ids to slots in the
 * forward, and the rebalance step (load over the ranks -> moe_eplb_plan -> expert weights moved to their new
 * slots, checked by checksums). */
#include <stdlib.h>
#include <string.h>

#include "ep/ep.h"

/* log2phy (E, X) -1 padded and logcnt (E) from phy2log (R), slots in ascending order. */
static void ep_tables(int E, int R, int X, const int32_t *phy2log, int32_t *log2phy, int32_t *logcnt) {
    for (int e = 0; e < E; e++) logcnt[e] = 0;
    for (int i = 0; i < E * X; i++) log2phy[i] = -1;
    for (int p = 0; p < R; p++) {
        const int e = phy2log[p];
        if (logcnt[e] < X) log2phy[e * X + logcnt[e]] = p;
        logcnt[e]++;
    }
}

moe_status moe__ep_placement_init(moe_ep *ep) {
    moe_ctx *ctx = ep->comm->ctx;
    const int E = ep->c.layer.router.n_experts, R = ep->R, X = ep->X;
    ep_tables(E, R, X, ep->phy2log, ep->log2phy_host, ep->logcnt_host);
    int identity = R == E;
    for (int p = 0; p < R && identity; p++) identity = ep->phy2log[p] == p;
    ep->mapped = !identity;
    MOE_TRY(moe_memcpy(ctx, ep->log2phy, ep->log2phy_host, sizeof(int32_t) * (size_t)(E * X), MOE_COPY_HOST_TO_CTX,
                       NULL));
    MOE_TRY(moe_memcpy(ctx, ep->logcnt, ep->logcnt_host, sizeof(int32_t) * (size_t)E, MOE_COPY_HOST_TO_CTX, NULL));
    return moe_sync(ctx, NULL);
}

moe_status moe__ep_map_ids(moe_ep *ep, const int32_t *ids, int64_t T, const int32_t **out, void *stream) {
    moe_ctx *ctx = ep->comm->ctx;
    const int E = ep->c.layer.router.n_experts, k = ep->c.layer.router.top_k;
    *out = ids;
    if (T == 0) return MOE_OK;
    MOE_TRY(moe_expert_stats_record(ctx, ep->stats, 0, ids, T * k, stream));
    if (!ep->mapped) return MOE_OK;
    MOE_TRY(moe_eplb_map(ctx, ep->log2phy, ep->logcnt, E, ep->X, ids, ep->ids_phys, T, k, k, stream));
    *out = ep->ids_phys;
    return MOE_OK;
}

moe_status moe__ep_checksum(moe_ep *ep, const void *base, int64_t stride, int64_t bytes, int n, uint64_t *out) {
    if (n == 0 || !base) return MOE_OK;
#ifdef MOE_WITH_CUDA
    moe_ctx *ctx = ep->comm->ctx;
    if (ctx->backend == MOE_BACKEND_CUDA) {
        void *dev = NULL;
        uint64_t *h = calloc((size_t)n, 8);
        moe_status s = h ? moe_alloc(ctx, (size_t)n * 8, &dev) : MOE_ERR_OOM;
        if (s == MOE_OK) s = moe_memset(ctx, dev, 0, (size_t)n * 8, NULL);
        if (s == MOE_OK) s = moe__cuda_ep_checksum(ctx, base, stride, bytes, n, dev, NULL);
        if (s == MOE_OK) s = moe_memcpy(ctx, h, dev, (size_t)n * 8, MOE_COPY_CTX_TO_HOST, NULL);
        if (s == MOE_OK) s = moe_sync(ctx, NULL);
        for (int i = 0; i < n && s == MOE_OK; i++) out[i] += h[i];
        moe_free(ctx, dev);
        free(h);
        return s;
    }
#endif
    (void)ep;
    for (int i = 0; i < n; i++) {
        const char *b = (const char *)base + i * stride;
        uint64_t acc = 0;
        for (int64_t j = 0; 4 * j < bytes; j++) {
            uint32_t w = 0; /* by memcpy: the block may be 2-byte aligned; the last word zero-padded */
            memcpy(&w, b + 4 * j, (size_t)(bytes - 4 * j < 4 ? bytes - 4 * j : 4));
            acc += (uint64_t)w * (uint64_t)(2 * j + 1);
        }
        out[i] += acc;
    }
    return MOE_OK;
}

/* The parts of an expert's weights: w13, w2, b13, b2 (absent biases have 0 bytes). */
typedef struct ep_parts {
    char *base[4];
    int64_t bytes[4], total;
} ep_parts;

static ep_parts ep_weight_parts(moe_ep *ep) {
    const moe_layer_config *c = &ep->c.layer;
    const moe_layer_weights *w = &ep->layer->w;
    const int64_t es = c->dtype == MOE_DTYPE_BF16 ? 2 : 4, H = c->hidden, I = c->intermediate;
    ep_parts p = {{(char *)w->w13, (char *)w->w2, (char *)w->b13, (char *)w->b2},
                  {2 * I * H * es, H * I * es, w->b13 ? 2 * I * 4 : 0, w->b2 ? H * 4 : 0}, 0};
    for (int i = 0; i < 4; i++) p.total += (p.bytes[i] + 15) / 16 * 16;
    return p;
}

/* Checksums of this rank's S slots, gathered: sums (R) host. */
static moe_status ep_slot_sums(moe_ep *ep, uint64_t *sums) {
    const ep_parts w = ep_weight_parts(ep);
    const int S = ep->S;
    uint64_t *mine = calloc((size_t)S, 8), *part = calloc((size_t)S, 8);
    moe_comm *comm = ep->comm;
    moe_status s = mine && part ? MOE_OK : moe__error(comm->ctx, MOE_ERR_OOM, "moe_ep_rebalance: out of host memory");
    for (int i = 0; i < 4 && s == MOE_OK; i++) {
        memset(part, 0, sizeof(uint64_t) * (size_t)S);
        s = moe__ep_checksum(ep, w.base[i], w.bytes[i], w.bytes[i], S, part);
        for (int j = 0; j < S; j++) mine[j] = mine[j] * 0x100000001b3ULL + part[j]; /* parts in order */
    }
    if (s == MOE_OK) s = moe__ep_allgather_host(comm, mine, (int64_t)S * 8, sums);
    free(mine), free(part);
    return s;
}

/* mean / max over ranks of sum over their slots of load[e] / replicas[e] */
static double ep_balance(const moe_ep *ep, const int32_t *phy2log, const double *load) {
    const int E = ep->c.layer.router.n_experts, N = ep->comm->size;
    int *cnt = calloc((size_t)E, sizeof(int));
    double *rank = calloc((size_t)N, sizeof(double)), sum = 0, max = 0;
    if (!cnt || !rank) {
        free(cnt), free(rank);
        return 0.0;
    }
    for (int p = 0; p < ep->R; p++) cnt[phy2log[p]]++;
    for (int p = 0; p < ep->R; p++) rank[p / ep->S] += load[phy2log[p]] / cnt[phy2log[p]];
    for (int r = 0; r < N; r++) sum += rank[r], max = rank[r] > max ? rank[r] : max;
    free(cnt), free(rank);
    return max > 0 ? sum / N / max : 1.0;
}

/* Gathers the counters of every rank and sums them (rank order, exact). */
static moe_status ep_global_load(moe_ep *ep, double *load, void *stream) {
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    const int E = ep->c.layer.router.n_experts, N = comm->size;
    int64_t *mine = malloc(sizeof(int64_t) * (size_t)E), *all = malloc(sizeof(int64_t) * (size_t)E * (size_t)N);
    moe_status s = mine && all ? MOE_OK : moe__error(ctx, MOE_ERR_OOM, "moe_ep_rebalance: out of host memory");
    if (s == MOE_OK) s = moe_expert_stats_read(ctx, ep->stats, mine, NULL, stream);
    if (s == MOE_OK) s = moe__ep_allgather_host(comm, mine, (int64_t)E * 8, all);
    for (int e = 0; e < E && s == MOE_OK; e++) {
        int64_t sum = 0;
        for (int r = 0; r < N; r++) sum += all[(int64_t)r * E + e];
        load[e] = (double)sum;
    }
    free(mine), free(all);
    return s;
}

/* Where new slot p's weights come from: -1 when they are already there, else the old slot that sends them (on
 * the receiving rank itself when it holds the expert, else the first rank that does). */
static int ep_source_slot(const moe_ep *ep, const int32_t *old, const int32_t *now, int p) {
    if (old[p] == now[p]) return -1;
    const int r = p / ep->S;
    for (int q = r * ep->S; q < (r + 1) * ep->S; q++)
        if (old[q] == now[p]) return q;
    for (int q = 0; q < ep->R; q++)
        if (old[q] == now[p]) return q;
    return -2; /* nobody holds it: cannot happen, EPLB places every expert */
}

/* Moves the weights from the old placement to the new one: an all-to-all of whole experts (sender order: new
 * slot ascending), local moves through a staging copy; then the new slots are written. */
static moe_status ep_move(moe_ep *ep, const int32_t *old, const int32_t *now, void *stream) {
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    const int N = comm->size, me = comm->rank, S = ep->S;
    const ep_parts w = ep_weight_parts(ep);
    const int64_t B = w.total;
    int64_t *v = calloc((size_t)N * 4, sizeof(int64_t));
    int n_local = 0;
    if (!v) return moe__error(ctx, MOE_ERR_OOM, "moe_ep_rebalance: out of host memory");
    for (int p = 0; p < ep->R; p++) {
        const int q = ep_source_slot(ep, old, now, p);
        if (q == -2) {
            free(v);
            return moe__error(ctx, MOE_ERR_COMM, "moe_ep_rebalance: no rank holds expert %d", now[p]);
        }
        if (q < 0) continue;
        const int src = q / S, dst = p / S;
        if (src == me && dst != me) v[dst] += B;        /* send */
        if (dst == me && src != me) v[2 * N + src] += B; /* receive */
        if (src == me && dst == me) n_local++;
    }
    for (int p = 1; p < N; p++) v[N + p] = v[N + p - 1] + v[p - 1], v[3 * N + p] = v[3 * N + p - 1] + v[2 * N + p - 1];
    const int64_t send_total = v[N + N - 1] + v[N - 1], recv_total = v[3 * N + N - 1] + v[3 * N - 1];
    void *send = NULL, *recv = NULL, *stage = NULL;
    moe_status s = moe_alloc(ctx, (size_t)send_total + 16, &send);
    if (s == MOE_OK) s = moe_alloc(ctx, (size_t)recv_total + 16, &recv);
    if (s == MOE_OK) s = moe_alloc(ctx, (size_t)(n_local * B) + 16, &stage);
    /* pack what we send and stage our local moves: every copy reads the old slots before any is written */
    int64_t at_send = 0, at_stage = 0;
    for (int p = 0; p < ep->R && s == MOE_OK; p++) {
        const int q = ep_source_slot(ep, old, now, p);
        if (q < 0 || q / S != me) continue;
        const int dst = p / S;
        char *to = dst == me ? (char *)stage + at_stage : (char *)send + at_send;
        int64_t o = 0;
        for (int i = 0; i < 4 && s == MOE_OK; i++) {
            if (w.bytes[i]) s = moe_memcpy(ctx, to + o, w.base[i] + (q % S) * w.bytes[i], (size_t)w.bytes[i],
                                           MOE_COPY_CTX_TO_CTX, stream);
            o += (w.bytes[i] + 15) / 16 * 16;
        }
        if (dst == me) at_stage += B;
        else at_send += B;
    }
    if (s == MOE_OK) s = comm->ops->alltoallv(comm, send, v, v + N, recv, v + 2 * N, v + 3 * N, stream);
    /* write the new slots: from the staging copy or from what arrived (per source, in slot order) */
    int64_t *from = calloc((size_t)N, sizeof(int64_t));
    at_stage = 0;
    for (int p = me * S; p < (me + 1) * S && s == MOE_OK && from; p++) {
        const int q = ep_source_slot(ep, old, now, p);
        if (q < 0) continue;
        const int src = q / S;
        const char *blob = src == me ? (const char *)stage + at_stage : (const char *)recv + v[3 * N + src] + from[src];
        if (src == me) at_stage += B;
        else from[src] += B;
        int64_t o = 0;
        for (int i = 0; i < 4 && s == MOE_OK; i++) {
            if (w.bytes[i]) s = moe_memcpy(ctx, w.base[i] + (p % S) * w.bytes[i], blob + o, (size_t)w.bytes[i],
                                           MOE_COPY_CTX_TO_CTX, stream);
            o += (w.bytes[i] + 15) / 16 * 16;
        }
    }
    if (!from && s == MOE_OK) s = moe__error(ctx, MOE_ERR_OOM, "moe_ep_rebalance: out of host memory");
    if (s == MOE_OK) s = moe_sync(ctx, stream);
    free(from), free(v);
    moe_free(ctx, send), moe_free(ctx, recv), moe_free(ctx, stage);
    return s;
}

moe_status moe_ep_rebalance(moe_ep *ep, double *balance_before, double *balance_after, void *stream) {
    if (!ep) return MOE_ERR_INVALID_ARG;
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    moe__clear_error(ctx);
    const int E = ep->c.layer.router.n_experts, R = ep->R, N = comm->size, X = ep->X;
    double *load = malloc(sizeof(double) * (size_t)E);
    int32_t *now = malloc(sizeof(int32_t) * (size_t)(R + E * X + E));
    uint64_t *before = calloc((size_t)R, 8), *after = calloc((size_t)R, 8);
    moe_status s = load && now && before && after ? MOE_OK : moe__error(ctx, MOE_ERR_OOM, "moe_ep_rebalance: out of host memory");
    if (s == MOE_OK) s = moe_sync(ctx, stream);
    if (s == MOE_OK) s = ep_global_load(ep, load, stream);
    if (s == MOE_OK) {
        const moe_eplb_config ec = {1, E, R, 1, 1, N};
        s = moe_eplb_plan(ctx, &ec, load, now, now + R, now + R + E * X);
    }
    if (s == MOE_OK && balance_before) *balance_before = ep_balance(ep, ep->phy2log, load);
    if (s == MOE_OK && balance_after) *balance_after = ep_balance(ep, now, load);
    if (s == MOE_OK) s = ep_slot_sums(ep, before);
    if (s == MOE_OK) s = ep_move(ep, ep->phy2log, now, stream);
    if (s == MOE_OK) s = ep_slot_sums(ep, after);
    /* every slot must now hold exactly what its expert's first slot held before the move */
    for (int p = 0; p < R && s == MOE_OK; p++) {
        int q = 0;
        while (q < R && ep->phy2log[q] != now[p]) q++;
        if (q == R || after[p] != before[q])
            s = moe__error(ctx, MOE_ERR_COMM,
                           "moe_ep_rebalance: slot %d (rank %d) should hold expert %d, but its checksum %016llx is not "
                           "the expert's %016llx: weights were lost in the move",
                           p, p / ep->S, now[p], (unsigned long long)after[p],
                           (unsigned long long)(q < R ? before[q] : 0));
    }
    if (s == MOE_OK) {
        memcpy(ep->phy2log, now, sizeof(int32_t) * (size_t)R);
        s = moe__ep_placement_init(ep);
    }
    if (s == MOE_OK) s = moe_expert_stats_reset(ctx, ep->stats, stream);
    free(load), free(now), free(before), free(after);
    return s;
}

moe_status moe_ep_placement(moe_ep *ep, int32_t *phy2log) {
    if (!ep) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ep->comm->ctx);
    MOE_CHECK_ARG(ep->comm->ctx, phy2log, "moe_ep_placement: phy2log is NULL");
    memcpy(phy2log, ep->phy2log, sizeof(int32_t) * (size_t)ep->R);
    return MOE_OK;
}
