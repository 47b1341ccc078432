/* ep_forward.c — the forward of expert parallelism's three backends (docs/ep.md).
 *
 * All-to-all, on rank r with T tokens (N ranks, S expert slots a rank, k slots a token):
 *   route           ids, weights (T, k), the layer's own router; with replicas each id mapped to a slot
 *   plan            dst (T, k) = rank of each slot; tok_dst (T, N) = d when some slot goes to d
 *                   by-rank permutation of the slots (slot_row: each slot's row in that order) and of the
 *                   tokens (tok_rowsrc: a row per (token, destination), token order inside a destination)
 *   counts          all-gather [T, tok_off (N + 1), slot_off (N + 1)]: every rank learns what it sends,
 *                   receives and returns; one wait for the device (the host sizes the exchange)
 *   dispatch        a record per (token, destination): x (or FP8 codes + scales), ids, weights
 *   experts         on the received tokens, with this rank's experts; each (token, slot) of ours gives a row
 *   return          the rows, in (token, slot) order per source rank: exactly the source's by-rank order
 *   combine         out_t = sum over slots j in order of w_tj y[slot_row[t, j]] (+ shared experts): the
 *                   single-device combine over the same rows, hence the same bits
 * The experts pick their kernels from the step's total tokens (plan_tokens), as one device would. */
#include <stdlib.h>
#include <string.h>

#include "ep/ep.h"

/* ---- forward ---- */

/* The host's view of a step after the count exchange. */
typedef struct ep_plan {
    int64_t T_total, T_max, n_recv, n_ret;
    int64_t *send_bytes, *send_off, *recv_bytes, *recv_off; /* (N) each, bytes of the current exchange */
    const int64_t *all;                                     /* (N, 2N + 3): T, tok_off, slot_off per rank */
} ep_plan;

static int64_t hdr_at(const ep_plan *p, int N, int rank, int field) {
    return p->all[(int64_t)rank * (2 * N + 3) + field];
}
/* what `from` sends `to`: tokens (tok_off difference) and slots (slot_off difference) */
static int64_t tok_count(const ep_plan *p, int N, int from, int to) {
    return hdr_at(p, N, from, 1 + to + 1) - hdr_at(p, N, from, 1 + to);
}
static int64_t slot_count(const ep_plan *p, int N, int from, int to) {
    return hdr_at(p, N, from, N + 2 + to + 1) - hdr_at(p, N, from, N + 2 + to);
}

static moe_status ep_counts(moe_ep *ep, int64_t T, ep_plan *p, void *stream) {
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    const int N = comm->size, me = comm->rank;
    const int64_t n = 2 * N + 3;
    int64_t *mine = ep->hdr_send, *all_dev = ep->hdr_recv, *all = ep->host;
    /* mine = [T, tok_off (N + 1), slot_off (N + 1)] in the context's memory */
    MOE_TRY(moe_memcpy(ctx, mine, &T, 8, MOE_COPY_HOST_TO_CTX, stream));
    MOE_TRY(moe_memcpy(ctx, mine + 1, ep->tok_off, (size_t)(N + 1) * 8, MOE_COPY_CTX_TO_CTX, stream));
    MOE_TRY(moe_memcpy(ctx, mine + N + 2, ep->slot_off, (size_t)(N + 1) * 8, MOE_COPY_CTX_TO_CTX, stream));
    MOE_TRY(comm->ops->allgather(comm, mine, n * 8, all_dev, stream));
    MOE_TRY(moe_memcpy(ctx, all, all_dev, (size_t)(n * N) * 8, MOE_COPY_CTX_TO_HOST, stream));
    MOE_TRY(comm->ops->wait(comm, stream)); /* the host needs the counts to size the exchange */
    p->all = all;
    p->send_bytes = all + n * N, p->send_off = p->send_bytes + N;
    p->recv_bytes = p->send_off + N, p->recv_off = p->recv_bytes + N;
    p->T_total = p->T_max = p->n_recv = p->n_ret = 0;
    for (int s = 0; s < N; s++) {
        const int64_t Ts = hdr_at(p, N, s, 0);
        p->T_total += Ts, p->T_max = Ts > p->T_max ? Ts : p->T_max;
        p->n_recv += tok_count(p, N, s, me), p->n_ret += slot_count(p, N, s, me);
    }
    return MOE_OK;
}

/* Plans the byte counts of an exchange: to rank d count_out(d) units, from rank s count_in(s) units. */
static void ep_bytes(ep_plan *p, int N, int me, int64_t unit, int64_t (*count)(const ep_plan *, int, int, int)) {
    int64_t so = 0, ro = 0;
    for (int d = 0; d < N; d++) {
        p->send_bytes[d] = count(p, N, me, d) * unit, p->send_off[d] = so, so += p->send_bytes[d];
        p->recv_bytes[d] = count(p, N, d, me) * unit, p->recv_off[d] = ro, ro += p->recv_bytes[d];
    }
}
static void ep_bytes_back(ep_plan *p, int N, int me, int64_t unit) {
    int64_t so = 0, ro = 0; /* rows go back: to s what s sent us, from d what we sent d */
    for (int d = 0; d < N; d++) {
        p->send_bytes[d] = slot_count(p, N, d, me) * unit, p->send_off[d] = so, so += p->send_bytes[d];
        p->recv_bytes[d] = slot_count(p, N, me, d) * unit, p->recv_off[d] = ro, ro += p->recv_bytes[d];
    }
}

/* bytes this rank sends to other ranks in the planned exchange */
static int64_t ep_sent(const ep_plan *p, int N, int me) {
    int64_t b = 0;
    for (int d = 0; d < N; d++) b += d == me ? 0 : p->send_bytes[d];
    return b;
}

/* Routes this rank's T tokens and plans their travel (both all-to-all backends): ids and weights into the layer
 * scratch, *rids their slots; the rank of each slot (dst) and the ranks of each token (tok_dst); the by-rank
 * permutations of the slots (slot_off, slot_row) and of the (token, rank) pairs (tok_off, tok_rowsrc); and what
 * goes on the wire: *xw = x, or its FP8 1x128 codes with *scales. */
static moe_status ep_route_plan(moe_ep *ep, const moe_layer_io *io, const int32_t **rids, const void **xw,
                                const void **scales, void *stream) {
    moe_ctx *ctx = ep->comm->ctx;
    moe_layer *l = ep->layer;
    const moe_layer_scratch *ls = &ep->ls;
    const int N = ep->comm->size, k = ep->c.layer.router.top_k;
    const int64_t T = io->x->shape[0], H = ep->c.layer.hidden;
    const int32_t *ids = (const int32_t *)(ep->scratch + ls->ids);
    *rids = ids, *xw = io->x->data, *scales = NULL;
    if (T > 0) {
        MOE_TRY(moe__layer_route(l, io, ls, ep->scratch, stream));
        MOE_TRY(moe__ep_map_ids(ep, ids, T, rids, stream));
        MOE_TRY(moe__ep_rank_of(ep, *rids, T * k, ep->dst, stream));
        MOE_TRY(moe__ep_token_dst(ep, ep->dst, T, ep->tok_dst, stream));
    }
    const moe_permute_config by_slot = {N, 0, N, k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_config by_token = {N, 0, N, N, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_outputs so = {ep->slot_counts, ep->slot_off, ep->slot_rowsrc, ep->slot_row, NULL, NULL};
    const moe_permute_outputs to = {ep->tok_counts, ep->tok_off, ep->tok_rowsrc, ep->tok_slot_row, NULL, NULL};
    MOE_TRY(moe_permute(ctx, &by_slot, ep->dst, T, &so, ep->permute, ep->permute_bytes, stream));
    MOE_TRY(moe_permute(ctx, &by_token, ep->tok_dst, T, &to, ep->permute, ep->permute_bytes, stream));
    moe__ep_mark(ep, EP_PHASE_ROUTE, stream);
    if (ep->c.wire == MOE_DTYPE_E4M3 && T > 0) {
        moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_FP8_1X128), 2, {T, H}, ep->xq, ep->xs_scales, NULL};
        MOE_TRY(moe_quantize(ctx, io->x, &q, stream));
        *xw = ep->xq, *scales = ep->xs_scales;
    }
    return MOE_OK;
}

/* GPU: the shared experts of this rank's tokens forked onto the layer's side stream, beside the routed work, their
 * kernels chosen for the step's plan_tokens (the CPU computes them in the combine). A failed fork is joined. */
static moe_status ep_shared_fork(moe_ep *ep, const moe_layer_io *io, int64_t plan_tokens, void *stream) {
#ifdef MOE_WITH_CUDA
    const int64_t T = io->x->shape[0];
    if (ep->comm->ctx->backend == MOE_BACKEND_CUDA && ep->c.layer.n_shared && T > 0) {
        const moe_status ss = moe__cuda_layer_shared(ep->layer, io->x->data, T, plan_tokens, 0, &ep->ls, ep->scratch,
                                                     stream);
        if (ss != MOE_OK) moe__cuda_layer_join(ep->layer, stream);
        return ss;
    }
#endif
    (void)ep, (void)io, (void)plan_tokens, (void)stream;
    return MOE_OK;
}

/* Joins what ep_shared_fork forked, always; returns s, or the join's failure when s was MOE_OK. */
static moe_status ep_shared_join(moe_ep *ep, const moe_layer_io *io, moe_status s, void *stream) {
#ifdef MOE_WITH_CUDA
    if (ep->comm->ctx->backend == MOE_BACKEND_CUDA && ep->c.layer.n_shared && io->x->shape[0] > 0) {
        const moe_status js = moe__cuda_layer_join(ep->layer, stream);
        if (s == MOE_OK) s = js;
    }
#endif
    (void)ep, (void)io, (void)stream;
    return s;
}

/* out = the layer's own combine over the rows in y_home (slot_row: each (token, slot)'s row there) plus the shared
 * experts: the single-device layer's bits. */
static moe_status ep_combine(moe_ep *ep, const moe_layer_io *io, const int32_t *slot_row, void *stream) {
    const moe_layer_config *c = &ep->c.layer;
    const moe_layer_scratch *ls = &ep->ls;
    const int64_t T = io->x->shape[0];
    const float *wts = (const float *)(ep->scratch + ls->weights);
#ifdef MOE_WITH_CUDA
    if (ep->comm->ctx->backend == MOE_BACKEND_CUDA)
        return moe__cuda_layer_combine(ep->layer, ep->y_home, slot_row, wts, 0, T,
                                       c->n_shared ? ep->scratch + ls->shared_y : NULL, NULL, /* bf16 shared */
                                       c->shared_gate ? (const float *)(ep->scratch + ls->shared_scale) : NULL,
                                       io->out->data, stream);
#endif
    (void)c, (void)stream;
    return moe__cpu_layer_combine(ep->layer, io->x->data, T, ep->y_home, slot_row, wts, io->out->data);
}

static moe_status ep_experts(moe_ep *ep, const ep_plan *p, void *stream);
static moe_status ep_allgather_forward(moe_ep *ep, const moe_layer_io *io, void *stream);
static moe_status ep_low_latency_forward(moe_ep *ep, const moe_layer_io *io, void *stream);

moe_status moe_ep_forward(moe_ep *ep, const moe_layer_io *io, void *stream) {
    if (!ep) return MOE_ERR_INVALID_ARG;
    moe_ctx *ctx = ep->comm->ctx;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, io && io->x && io->out, "moe_ep_forward: io, x and out must not be NULL");
    MOE_TRY(moe__check_tensor(ctx, io->x, "moe_ep_forward x"));
    MOE_TRY(moe__check_tensor(ctx, io->out, "moe_ep_forward out"));
    const moe_layer_config *c = &ep->c.layer;
    const int64_t T = io->x->shape[0], H = c->hidden;
    const int N = ep->comm->size, me = ep->comm->rank, E = c->router.n_experts;
    MOE_CHECK_ARG(ctx, io->x->rank == 2 && io->x->shape[1] == H && io->x->dtype == c->dtype,
                  "moe_ep_forward: x must be (T, %lld) %s", (long long)H, moe_dtype_name(c->dtype));
    MOE_CHECK_ARG(ctx, io->out->rank == 2 && io->out->shape[0] == T && io->out->shape[1] == H &&
                           io->out->dtype == c->dtype,
                  "moe_ep_forward: out must be (%lld, %lld) %s like x", (long long)T, (long long)H,
                  moe_dtype_name(c->dtype));
    MOE_CHECK_ARG(ctx, T <= ep->c.max_tokens, "moe_ep_forward: %lld tokens, more than max_tokens %lld",
                  (long long)T, (long long)ep->c.max_tokens);
    MOE_CHECK_ARG(ctx, !io->logits || (io->logits->rank == 2 && io->logits->shape[0] == T && io->logits->shape[1] == E),
                  "moe_ep_forward: logits must be (%lld, %d)", (long long)T, E);
    MOE_CHECK_ARG(ctx, io->logits || ep->layer->w.gate || (c->router.kind == MOE_ROUTER_HASH && !c->router.score),
                  "moe_ep_forward: no logits given and the layer has no gate weight");
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA && T > 0) {
        MOE_TRY(moe__cuda_check_pointer(ctx, io->x->data, "x"));
        MOE_TRY(moe__cuda_check_pointer(ctx, io->out->data, "out"));
        MOE_CHECK_ARG(ctx, (uintptr_t)io->x->data % 16 == 0 && (uintptr_t)io->out->data % 16 == 0,
                      "moe_ep_forward: x and out must be 16-byte aligned on the GPU");
    }
#endif
    memset(&ep->last, 0, sizeof ep->last);
    if (ep->c.backend == MOE_EP_ALLGATHER) return ep_allgather_forward(ep, io, stream);
    if (ep->c.backend == MOE_EP_LOW_LATENCY) return ep_low_latency_forward(ep, io, stream);

    const moe_layer_scratch *ls = &ep->ls;
    float *wts = (float *)(ep->scratch + ls->weights);
    moe__ep_mark(ep, EP_PHASE_START, stream);

    const int32_t *rids;
    const void *xw, *scales;
    MOE_TRY(ep_route_plan(ep, io, &rids, &xw, &scales, stream));

    /* the records, before the counts are known on the host (rows past tok_off[N] are not written) */
    if (T > 0)
        MOE_TRY(moe__ep_pack(ep, ep->tok_rowsrc, N, ep->tok_off + N, T * N, xw, scales, rids, wts, ep->send, stream));
    moe__ep_mark(ep, EP_PHASE_PACK, stream);

    /* counts, then the tokens */
    ep_plan p;
    MOE_TRY(ep_counts(ep, T, &p, stream));
    moe__ep_mark(ep, EP_PHASE_COUNTS, stream);
    ep_bytes(&p, N, me, ep->rec.bytes, tok_count);
    ep->last.dispatch_bytes = ep_sent(&p, N, me), ep->last.tokens_in = p.n_recv;
    MOE_TRY(ep->comm->ops->alltoallv(ep->comm, ep->send, p.send_bytes, p.send_off, ep->recv, p.recv_bytes,
                                     p.recv_off, stream));
    moe__ep_mark(ep, EP_PHASE_DISPATCH, stream);

    /* shared experts of our tokens beside the routed work (GPU: side stream), chosen from the step's tokens */
    MOE_TRY(ep_shared_fork(ep, io, p.T_total, stream));
    moe_status s = ep_experts(ep, &p, stream);
    moe__ep_mark(ep, EP_PHASE_EXPERTS, stream);

    /* the expert rows go home */
    if (s == MOE_OK) {
        ep_bytes_back(&p, N, me, H * ep->ybytes);
        ep->last.combine_bytes = ep_sent(&p, N, me);
        s = ep->comm->ops->alltoallv(ep->comm, ep->y_ret, p.send_bytes, p.send_off, ep->y_home, p.recv_bytes,
                                     p.recv_off, stream);
    }
    moe__ep_mark(ep, EP_PHASE_COMBINE, stream);
    s = ep_shared_join(ep, io, s, stream);
    if (s == MOE_OK && T > 0) s = ep_combine(ep, io, ep->slot_row, stream);
    moe__ep_mark(ep, EP_PHASE_FINISH, stream);
    return s;
}

/* The received tokens through this rank's experts; y_ret gets a row per (token, slot of ours), in (token, slot)
 * order: per source rank, the order of its by-rank permutation. */
static moe_status ep_experts(moe_ep *ep, const ep_plan *p, void *stream) {
    moe_ctx *ctx = ep->comm->ctx;
    moe_layer *l = ep->layer;
    const int k = ep->c.layer.router.top_k, N = ep->comm->size;
    const int64_t n = p->n_recv, H = ep->c.layer.hidden;
    if (n == 0) return MOE_OK;
    void *x = ep->recv_x;
    if (ep->c.wire == MOE_DTYPE_E4M3) {
        MOE_TRY(moe__ep_unpack(ep, ep->recv, n, ep->recv_q, ep->recv_scales, ep->recv_ids, ep->recv_w, stream));
        moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_FP8_1X128), 2, {n, H}, ep->recv_q, ep->recv_scales, NULL};
        moe_tensor xt = moe_tensor_2d(x, ep->c.layer.dtype, n, H);
        MOE_TRY(moe_dequantize(ctx, &q, &xt, stream));
    } else {
        MOE_TRY(moe__ep_unpack(ep, ep->recv, n, x, NULL, ep->recv_ids, ep->recv_w, stream));
    }
    /* the rows to return, in (token, slot) order: a one-group permutation of our slots */
    MOE_TRY(moe__ep_rank_of(ep, ep->recv_ids, n * k, ep->recv_dst, stream));
    const moe_permute_config ours = {N, ep->comm->rank, 1, k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_outputs ro = {ep->ret_counts, ep->ret_off, ep->ret_rowsrc, ep->ret_slot_row, NULL, NULL};
    MOE_TRY(moe_permute(ctx, &ours, ep->recv_dst, n, &ro, ep->permute, ep->permute_bytes, stream));
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        char *ws = ep->experts_scratch;
        MOE_TRY(moe__cuda_layer_experts(l, x, n, ep->recv_ids, ep->recv_w, p->T_total, 0, 0, &ep->xs, ws, stream));
        return moe__ep_gather(ep, ws + ep->xs.y, (const int32_t *)(ws + ep->xs.slot_row), ep->ret_rowsrc,
                              ep->ret_off + 1, n * k, H * 2, ep->y_ret, stream);
    }
#endif
    (void)p;
    /* CPU: the experts write each row straight to its place in the return order */
    return moe__cpu_layer_experts(l, x, n, ep->recv_ids, ep->recv_w, ep->ret_slot_row, ep->y_ret);
}

/* All-gather backend: every rank's tokens (T_max records a rank, padding rows with ids -1) to every rank; our
 * experts' partial sums over all of them, f32; reduce-scatter gives each rank the sums of its own tokens; then
 * the shared experts and the rounding. The sums add the ranks' partials in the transport's order, not the
 * slot order: equal to the layer within rounding. */
static moe_status ep_allgather_forward(moe_ep *ep, const moe_layer_io *io, void *stream) {
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    moe_layer *l = ep->layer;
    const moe_layer_config *c = &ep->c.layer;
    const moe_layer_scratch *ls = &ep->ls;
    const int N = comm->size;
    const int64_t T = io->x->shape[0], H = c->hidden;
    int32_t *ids = (int32_t *)(ep->scratch + ls->ids);
    float *wts = (float *)(ep->scratch + ls->weights);
    moe__ep_mark(ep, EP_PHASE_START, stream);
    const int32_t *rids = ids;
    if (T > 0) MOE_TRY(moe__layer_route(l, io, ls, ep->scratch, stream));
    if (T > 0) MOE_TRY(moe__ep_map_ids(ep, ids, T, &rids, stream));
    MOE_TRY(moe_memset(ctx, ep->tok_off, 0, (size_t)(N + 1) * 8, stream));
    MOE_TRY(moe_memset(ctx, ep->slot_off, 0, (size_t)(N + 1) * 8, stream));
    moe__ep_mark(ep, EP_PHASE_ROUTE, stream);
    ep_plan p;
    MOE_TRY(ep_counts(ep, T, &p, stream));
    moe__ep_mark(ep, EP_PHASE_COUNTS, stream);
    const int64_t Tm = p.T_max, R = ep->rec.bytes;
    if (Tm == 0) return MOE_OK;
    /* our T records, then padding records of all-ones bytes (ids -1: no expert reads them) */
    if (T > 0) MOE_TRY(moe__ep_pack(ep, NULL, 1, NULL, T, io->x->data, NULL, rids, wts, ep->send, stream));
    if (Tm > T) MOE_TRY(moe_memset(ctx, (char *)ep->send + T * R, 0xFF, (size_t)((Tm - T) * R), stream));
    moe__ep_mark(ep, EP_PHASE_PACK, stream);
    MOE_TRY(comm->ops->allgather(comm, ep->send, Tm * R, ep->recv, stream));
    moe__ep_mark(ep, EP_PHASE_DISPATCH, stream);
    p.n_recv = N * Tm;
    ep->last.dispatch_bytes = Tm * R * (N - 1), ep->last.tokens_in = p.n_recv;
    ep->last.combine_bytes = (N - 1) * Tm * H * 4;
    MOE_TRY(ep_shared_fork(ep, io, p.T_total, stream));
    /* partial sums of our experts' rows, a row per gathered token (zero when none of its slots is ours) */
    moe_status s = ep_experts(ep, &p, stream);
    moe__ep_mark(ep, EP_PHASE_EXPERTS, stream);
    if (s == MOE_OK) s = moe__ep_partial(ep, ep->y_ret, ep->ret_slot_row, ep->recv_w, p.n_recv, ep->ag_part, stream);
    if (s == MOE_OK) s = comm->ops->reduce_scatter_f32(comm, ep->ag_part, p.n_recv * H, ep->ag_sum, stream);
    moe__ep_mark(ep, EP_PHASE_COMBINE, stream);
    s = ep_shared_join(ep, io, s, stream);
    if (s == MOE_OK && T > 0) s = moe__ep_finish(ep, io->x->data, ep->ag_sum, T, ls, io->out->data, stream);
    moe__ep_mark(ep, EP_PHASE_FINISH, stream);
    return s;
}

/* Low latency: the all-to-all with blocks of fixed size, so that the host sizes nothing from the device.
 *   dispatch  block d of the N M records: the count_d tokens for d, then records with ids -1
 *   experts   on all N M received records (those of -1 ids take no row), kernels chosen for N M tokens
 *   return    the rows for source s go to block s of M k rows, in (token, slot) order: a permutation of our slots
 *             by source, each row moved into its source's block (remap)
 *   combine   slot_row of the by-rank permutation moved into rank d's block of M k rows (remap), then the combine
 * The exchanges carry whole blocks: N M records and N M k rows each way, whatever the counts. */
static moe_status ep_low_latency_forward(moe_ep *ep, const moe_layer_io *io, void *stream) {
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    moe_layer *l = ep->layer;
    const moe_layer_config *c = &ep->c.layer;
    const moe_layer_scratch *ls = &ep->ls;
    const int N = comm->size, me = comm->rank, k = c->router.top_k;
    const int64_t T = io->x->shape[0], H = c->hidden, M = ep->c.max_tokens, NM = N * M;
    float *wts = (float *)(ep->scratch + ls->weights);
#ifdef MOE_WITH_CUDA
    if (ep->p2p && *(volatile int *)ep->p2p_error)
        return moe__error(ctx, MOE_ERR_COMM, "rank %d: rank %d did not hand over its part of an earlier step within %.1f s",
                          me, *(volatile int *)ep->p2p_error - 1, comm->timeout_s);
    char *const *peer_recv = (char *const *)ep->p2p_ptrs, *const *peer_home = peer_recv + N;
    int64_t *const *peer_flags = (int64_t *const *)(peer_recv + 2 * N);
    if (ep->p2p) MOE_TRY(moe__cuda_p2p_step(ctx, ep->p2p_flags, N, stream));
#endif
    moe__ep_mark(ep, EP_PHASE_START, stream);
    const int32_t *rids;
    const void *xw, *scales;
    MOE_TRY(ep_route_plan(ep, io, &rids, &xw, &scales, stream));
    const moe_permute_config by_rank = {N, 0, N, k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    int64_t *plan = ep->host + (int64_t)(2 * N + 3) * N, *bytes = plan, *off = plan + N;
    ep->last.tokens_in = NM;
#ifdef MOE_WITH_CUDA
    if (ep->p2p) { /* straight into the peers' buffers, then the flags */
        MOE_TRY(moe__cuda_p2p_dispatch(ctx, &ep->rec, ep->tok_rowsrc, N, ep->tok_off, N, M, me, xw, scales, rids, wts,
                                       peer_recv, stream));
        moe__ep_mark(ep, EP_PHASE_PACK, stream);
        MOE_TRY(moe__cuda_p2p_signal(ctx, 0, me, N, ep->tok_off, peer_flags, ep->p2p_flags, stream));
        MOE_TRY(moe__cuda_p2p_wait(ctx, 0, N, ep->p2p_flags, comm->timeout_s, ep->p2p_error_dev, stream));
        MOE_TRY(moe__cuda_p2p_mask(ctx, &ep->rec, ep->recv, ep->p2p_flags, N, M, stream));
        moe__ep_mark(ep, EP_PHASE_DISPATCH, stream);
    } else
#endif
    {
        MOE_TRY(moe__ep_pack_fixed(ep, ep->tok_rowsrc, N, ep->tok_off, xw, scales, rids, wts, ep->send, stream));
        moe__ep_mark(ep, EP_PHASE_PACK, stream);
        /* fixed blocks both ways */
        for (int d = 0; d < N; d++) bytes[d] = M * ep->rec.bytes, off[d] = d * M * ep->rec.bytes;
        ep->last.dispatch_bytes = (N - 1) * M * ep->rec.bytes;
        MOE_TRY(comm->ops->alltoallv(comm, ep->send, bytes, off, ep->recv, bytes, off, stream));
        moe__ep_mark(ep, EP_PHASE_DISPATCH, stream);
    }
    MOE_TRY(ep_shared_fork(ep, io, NM, stream));
    /* experts on the N M records; each row of ours into its source's block */
#ifdef MOE_WITH_CUDA
    const int gpu = ctx->backend == MOE_BACKEND_CUDA;
#endif
    moe_status s = MOE_OK;
    void *x = ep->recv_x;
    if (ep->c.wire == MOE_DTYPE_E4M3) {
        s = moe__ep_unpack(ep, ep->recv, NM, ep->recv_q, ep->recv_scales, ep->recv_ids, ep->recv_w, stream);
        moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_FP8_1X128), 2, {NM, H}, ep->recv_q, ep->recv_scales, NULL};
        moe_tensor xt = moe_tensor_2d(x, c->dtype, NM, H);
        if (s == MOE_OK) s = moe_dequantize(ctx, &q, &xt, stream);
    } else {
        s = moe__ep_unpack(ep, ep->recv, NM, x, NULL, ep->recv_ids, ep->recv_w, stream);
    }
    const moe_permute_outputs ro = {ep->ret_counts, ep->ret_off, ep->ret_rowsrc, ep->ret_slot_row, NULL, NULL};
    if (s == MOE_OK) s = moe__ep_source_of(ep, ep->recv_ids, NM, M, ep->recv_dst, stream);
    if (s == MOE_OK) s = moe_permute(ctx, &by_rank, ep->recv_dst, NM, &ro, ep->permute, ep->permute_bytes, stream);
    if (s == MOE_OK) s = moe__ep_remap(ep, ep->ret_slot_row, ep->recv_dst, ep->ret_off, NM * k, M * k, ep->ll_pos, stream);
#ifdef MOE_WITH_CUDA
    if (s == MOE_OK && gpu) {
        char *ws = ep->experts_scratch;
        s = moe__cuda_layer_experts(l, x, NM, ep->recv_ids, ep->recv_w, NM, 0, 0, &ep->xs, ws, stream);
        moe__ep_mark(ep, EP_PHASE_EXPERTS, stream); /* moving the rows counts as the combine */
        if (s == MOE_OK && ep->p2p) /* the rows straight into their home ranks' y_home */
            s = moe__cuda_p2p_scatter(ctx, ws + ep->xs.y, (const int32_t *)(ws + ep->xs.slot_row), ep->ll_pos, NM * k,
                                      H * 2, M * k, me, peer_home, stream);
        else if (s == MOE_OK)
            s = moe__ep_scatter(ep, ws + ep->xs.y, (const int32_t *)(ws + ep->xs.slot_row), ep->ll_pos, NM * k, H * 2,
                                ep->y_ret, stream);
    }
    if (s == MOE_OK && !gpu)
#else
    if (s == MOE_OK)
#endif
    {
        s = moe__cpu_layer_experts(l, x, NM, ep->recv_ids, ep->recv_w, ep->ll_pos, ep->y_ret);
        moe__ep_mark(ep, EP_PHASE_EXPERTS, stream);
    }
#ifdef MOE_WITH_CUDA
    if (s == MOE_OK && ep->p2p) {
        s = moe__cuda_p2p_signal(ctx, 1, me, N, NULL, peer_flags, ep->p2p_flags, stream);
        if (s == MOE_OK) s = moe__cuda_p2p_wait(ctx, 1, N, ep->p2p_flags, comm->timeout_s, ep->p2p_error_dev, stream);
    } else
#endif
    if (s == MOE_OK) {
        for (int d = 0; d < N; d++) bytes[d] = M * k * H * ep->ybytes, off[d] = d * M * k * H * ep->ybytes;
        ep->last.combine_bytes = (N - 1) * M * k * H * ep->ybytes;
        s = comm->ops->alltoallv(comm, ep->y_ret, bytes, off, ep->y_home, bytes, off, stream);
    }
    moe__ep_mark(ep, EP_PHASE_COMBINE, stream);
    if (s == MOE_OK && T > 0) s = moe__ep_remap(ep, ep->slot_row, ep->dst, ep->slot_off, T * k, M * k, ep->ll_slot_row, stream);
    s = ep_shared_join(ep, io, s, stream);
    if (s == MOE_OK && T > 0) s = ep_combine(ep, io, ep->ll_slot_row, stream);
    moe__ep_mark(ep, EP_PHASE_FINISH, stream);
    (void)me;
    return s;
}

