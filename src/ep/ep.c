/* ep.c — expert parallelism (docs/ep.md): creation (a config check across ranks, buffers for max_tokens) and
 * the forward of both backends.
 *
 * All-to-all, on rank r with T tokens (N ranks, E/N experts a rank, k slots a token):
 *   route           ids, weights (T, k)                                  the layer's own router
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
#include <time.h>

#include "ep/ep.h"

static size_t ep_align(size_t n) {
    return (n + 255) / 256 * 256;
}

static int64_t align16(int64_t n) {
    return (n + 15) / 16 * 16;
}

/* ---- the config must be the same on every rank ---- */

typedef struct ep_field {
    const char *name;
    int64_t value;
} ep_field;

static int64_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int ep_fields(const moe_ep_config *c, ep_field *f) {
    const moe_layer_config *l = &c->layer;
    const moe_router_config *r = &l->router;
    int n = 0;
#define EP_FIELD(name_, v) f[n++] = (ep_field){name_, (int64_t)(v)}
    EP_FIELD("hidden", l->hidden);
    EP_FIELD("intermediate", l->intermediate);
    EP_FIELD("router.n_experts", r->n_experts);
    EP_FIELD("router.top_k", r->top_k);
    EP_FIELD("router.kind", r->kind);
    EP_FIELD("router.score", r->score);
    EP_FIELD("router.n_groups", r->n_groups);
    EP_FIELD("router.topk_groups", r->topk_groups);
    EP_FIELD("router.group_score", r->group_score);
    EP_FIELD("router.group_mask", r->group_mask);
    EP_FIELD("router.renormalize", r->renormalize);
    EP_FIELD("router.scaling_factor", f32_bits(r->scaling_factor));
    EP_FIELD("router.bias (set or not)", r->bias != NULL);
    EP_FIELD("router.weight_on_input", r->weight_on_input);
    EP_FIELD("activation", l->activation);
    EP_FIELD("act_alpha", f32_bits(l->act_alpha));
    EP_FIELD("act_limit", f32_bits(l->act_limit));
    EP_FIELD("w13_layout", l->w13_layout);
    EP_FIELD("dtype", l->dtype);
    EP_FIELD("n_shared", l->n_shared);
    EP_FIELD("shared_intermediate", l->shared_intermediate);
    EP_FIELD("shared_gate", l->shared_gate);
    EP_FIELD("backend", c->backend);
    EP_FIELD("wire", c->wire);
    EP_FIELD("max_tokens", c->max_tokens);
    EP_FIELD("n_physical", c->n_physical ? c->n_physical : r->n_experts);
#undef EP_FIELD
    return n;
}

enum { EP_MAX_FIELDS = 32 };

/* All-gathers a host array of n int64 through the comm (via the context's memory); waits. */
static moe_status ep_allgather_host(moe_comm *comm, const int64_t *mine, int64_t n, int64_t *all, void *dev,
                                    void *stream) {
    moe_ctx *ctx = comm->ctx;
    if (ctx->backend == MOE_BACKEND_CPU) return comm->ops->allgather(comm, mine, n * 8, all, stream);
    int64_t *d_mine = dev, *d_all = d_mine + n;
    MOE_TRY(moe_memcpy(ctx, d_mine, mine, (size_t)n * 8, MOE_COPY_HOST_TO_CTX, stream));
    MOE_TRY(comm->ops->allgather(comm, d_mine, n * 8, d_all, stream));
    MOE_TRY(moe_memcpy(ctx, all, d_all, (size_t)n * 8 * comm->size, MOE_COPY_CTX_TO_HOST, stream));
    return comm->ops->wait(comm, stream);
}

static moe_status ep_check_same(moe_ep *ep) {
    moe_comm *comm = ep->comm;
    ep_field f[EP_MAX_FIELDS];
    const int n = ep_fields(&ep->c, f);
    int64_t mine[EP_MAX_FIELDS], *all = malloc(sizeof(int64_t) * EP_MAX_FIELDS * (size_t)comm->size);
    if (!all) return moe__error(comm->ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
    for (int i = 0; i < n; i++) mine[i] = f[i].value;
    for (int i = n; i < EP_MAX_FIELDS; i++) mine[i] = 0;
    moe_status s = ep_allgather_host(comm, mine, EP_MAX_FIELDS, all, ep->hdr_send, NULL);
    for (int p = 0; p < comm->size && s == MOE_OK; p++)
        for (int i = 0; i < n; i++)
            if (all[p * EP_MAX_FIELDS + i] != mine[i]) {
                s = moe__error(comm->ctx, MOE_ERR_INVALID_ARG,
                               "moe_ep_create: the ranks' configs differ: %s is %lld on rank %d and %lld on rank %d",
                               f[i].name, (long long)mine[i], comm->rank, (long long)all[p * EP_MAX_FIELDS + i], p);
                break;
            }
    free(all);
    return s;
}

/* ---- buffers ---- */

/* Offsets of every buffer for M tokens a rank (a bump allocator; sizing and carving share it). */
static size_t ep_layout(moe_ep *ep, char *base) {
    const int64_t M = ep->c.max_tokens, N = ep->comm->size, k = ep->c.layer.router.top_k;
    const int64_t H = ep->c.layer.hidden, NM = N * M;
    const int fp8 = ep->c.wire == MOE_DTYPE_E4M3;
    const int64_t xdt = ep->c.layer.dtype == MOE_DTYPE_BF16 ? 2 : 4;
    size_t at = 0;
#define EP_BUF(field, bytes)                                                                                           \
    do {                                                                                                               \
        if (base) *(void **)&ep->field = base + at;                                                                   \
        at += ep_align((size_t)(bytes));                                                                               \
    } while (0)
    EP_BUF(scratch, ep->ls.bytes);
    EP_BUF(experts_scratch, ep->xs.bytes);
    EP_BUF(xq, fp8 ? M * H : 0);
    EP_BUF(xs_scales, fp8 ? M * ep->rec.s_bytes : 0);
    EP_BUF(dst, M * k * 4);
    EP_BUF(tok_dst, M * N * 4);
    EP_BUF(slot_counts, N * 4);
    EP_BUF(tok_counts, N * 4);
    EP_BUF(slot_off, (N + 1) * 8);
    EP_BUF(tok_off, (N + 1) * 8);
    EP_BUF(slot_rowsrc, M * k * 4);
    EP_BUF(slot_row, M * k * 4);
    EP_BUF(tok_rowsrc, M * N * 4);
    EP_BUF(tok_slot_row, M * N * 4);
    EP_BUF(permute, ep->permute_bytes);
    EP_BUF(send, M * N * ep->rec.bytes);
    EP_BUF(recv, NM * ep->rec.bytes);
    EP_BUF(recv_x, NM * H * xdt);
    EP_BUF(recv_q, fp8 ? NM * H : 0);
    EP_BUF(recv_scales, fp8 ? NM * ep->rec.s_bytes : 0);
    EP_BUF(recv_ids, NM * k * 4);
    EP_BUF(recv_dst, NM * k * 4);
    EP_BUF(recv_w, NM * k * 4);
    EP_BUF(ret_counts, N * 4);
    EP_BUF(ret_off, (N + 1) * 8);
    const int ll = ep->c.backend == MOE_EP_LOW_LATENCY;
    EP_BUF(ll_pos, ll ? NM * k * 4 : 0);
    EP_BUF(ll_slot_row, ll ? M * k * 4 : 0);
    EP_BUF(ret_rowsrc, NM * k * 4);
    EP_BUF(ret_slot_row, NM * k * 4);
    EP_BUF(y_ret, NM * k * H * ep->ybytes);
    EP_BUF(y_home, (ll ? NM : M) * k * H * ep->ybytes);
    EP_BUF(hdr_send, (2 * N + 3 + EP_MAX_FIELDS) * (N + 1) * 8);
    EP_BUF(hdr_recv, (2 * N + 3 + EP_MAX_FIELDS) * (N + 1) * 8);
    EP_BUF(p2p_flags, ll ? (3 * N + 1) * 8 : 0);
    EP_BUF(p2p_ptrs, ll ? 3 * N * 8 : 0);
    EP_BUF(log2phy, (int64_t)ep->c.layer.router.n_experts * ep->X * 4);
    EP_BUF(logcnt, ep->c.layer.router.n_experts * 4);
    EP_BUF(ids_phys, M * k * 4);
    EP_BUF(ag_part, ep->c.backend == MOE_EP_ALLGATHER ? NM * H * 4 : 0);
    EP_BUF(ag_sum, ep->c.backend == MOE_EP_ALLGATHER ? M * H * 4 : 0);
#undef EP_BUF
    return at;
}

static moe_status ep_check_config(moe_comm *comm, const moe_ep_config *c) {
    moe_ctx *ctx = comm->ctx;
    const int E = c->layer.router.n_experts, N = comm->size;
    MOE_CHECK_ARG(ctx, c->max_tokens >= 1, "moe_ep_create: max_tokens must be at least 1, not %lld",
                  (long long)c->max_tokens);
    const int R = c->n_physical ? c->n_physical : E;
    MOE_CHECK_ARG(ctx, R >= E && R % N == 0,
                  "moe_ep_create: %d expert slots (n_physical) for %d experts do not split evenly over %d ranks", R, E, N);
    MOE_CHECK_ARG(ctx, c->backend >= MOE_EP_ALL_TO_ALL && c->backend <= MOE_EP_LOW_LATENCY,
                  "moe_ep_create: unknown backend %d", (int)c->backend);
    const moe_dtype wire = c->wire ? c->wire : c->layer.dtype;
    MOE_CHECK_ARG(ctx, wire == c->layer.dtype || (wire == MOE_DTYPE_E4M3 && c->layer.dtype == MOE_DTYPE_BF16),
                  "moe_ep_create: tokens go on the wire as the layer's dtype or, for bf16 layers, e4m3 (not %s)",
                  moe_dtype_name(wire));
    MOE_CHECK_ARG(ctx, wire != MOE_DTYPE_E4M3 || c->backend != MOE_EP_ALLGATHER,
                  "moe_ep_create: FP8 on the wire is for the all-to-all backends");
    const int64_t M = c->max_tokens, k = c->layer.router.top_k;
    MOE_CHECK_ARG(ctx, (int64_t)N * M * (k > N ? k : N) + (int64_t)E * MOE_LAYER_MAX_TILE_M < INT32_MAX,
                  "moe_ep_create: max_tokens %lld x %d ranks is too many for int32 row ids", (long long)M, N);
    return MOE_OK;
}

#ifdef MOE_WITH_CUDA
/* Low latency over peer access, when the ranks are the GPUs of this process and every pair can reach each other
 * (MOE_EP_P2P=0 in the environment keeps NCCL): flags zeroed, then the buffers' addresses all-gathered. */
static moe_status ep_p2p_init(moe_ep *ep) {
    moe_comm *comm = ep->comm;
    moe_ctx *ctx = comm->ctx;
    const int N = comm->size;
    const char *env = getenv("MOE_EP_P2P");
    int64_t mine[3], *all = malloc(sizeof(int64_t) * 3 * (size_t)N);
    if (!all) return moe__error(ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
    mine[0] = ctx->cuda.device, mine[1] = 1;
    moe_status s = ep_allgather_host(comm, mine, 1, all, ep->hdr_send, NULL);
    for (int d = 0; d < N && s == MOE_OK; d++) {
        int ok = 0;
        s = moe__cuda_p2p_enable(ctx, (int)all[d], &ok);
        mine[1] &= ok;
    }
    if (env && !strcmp(env, "0")) mine[1] = 0;
    mine[0] = mine[1];
    if (s == MOE_OK) s = ep_allgather_host(comm, mine, 1, all, ep->hdr_send, NULL);
    int every = s == MOE_OK;
    for (int d = 0; d < N && every; d++) every &= all[d] == 1;
    if (every) {
        s = moe_memset(ctx, ep->p2p_flags, 0, (size_t)(3 * N + 1) * 8, NULL);
        if (s == MOE_OK) s = moe__cuda_p2p_host_flag(ctx, &ep->p2p_error, &ep->p2p_error_dev);
        if (s == MOE_OK) s = moe_sync(ctx, NULL);
        mine[0] = (int64_t)(uintptr_t)ep->recv, mine[1] = (int64_t)(uintptr_t)ep->y_home;
        mine[2] = (int64_t)(uintptr_t)ep->p2p_flags;
        if (s == MOE_OK) s = ep_allgather_host(comm, mine, 3, all, ep->hdr_send, NULL);
        void **ptrs = malloc(sizeof(void *) * 3 * (size_t)N);
        if (!ptrs && s == MOE_OK) s = moe__error(ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
        for (int d = 0; d < N && s == MOE_OK; d++)
            for (int j = 0; j < 3; j++) ptrs[j * N + d] = (void *)(uintptr_t)all[3 * d + j];
        if (s == MOE_OK) s = moe_memcpy(ctx, ep->p2p_ptrs, ptrs, sizeof(void *) * 3 * (size_t)N, MOE_COPY_HOST_TO_CTX, NULL);
        if (s == MOE_OK) s = moe_sync(ctx, NULL);
        free(ptrs);
        ep->p2p = s == MOE_OK;
    }
    free(all);
    return s;
}
#endif

moe_status moe_ep_create(moe_comm *comm, const moe_ep_config *config, const moe_layer_weights *weights,
                         moe_ep **out) {
    if (!comm) return MOE_ERR_INVALID_ARG;
    moe_ctx *ctx = comm->ctx;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, config && weights && out, "moe_ep_create: config, weights and ep must not be NULL");
    *out = NULL;
    MOE_TRY(ep_check_config(comm, config));
    moe_ep *ep = calloc(1, sizeof *ep);
    int64_t *host = NULL;
    if (!ep) return moe__error(ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
    ep->comm = comm;
    ep->c = *config;
    if (!ep->c.wire) ep->c.wire = config->layer.dtype;
    const int N = comm->size, E = config->layer.router.n_experts, k = config->layer.router.top_k;
    const int64_t M = config->max_tokens, H = config->layer.hidden;
    moe_status s = moe_layer_create(ctx, &config->layer, weights, &ep->layer);
    if (s != MOE_OK) goto fail;
    ep->R = config->n_physical ? config->n_physical : E, ep->S = ep->R / N, ep->X = ep->R - E + 1;
    ep->layer->n_local = ep->S, ep->layer->expert_begin = comm->rank * ep->S, ep->layer->n_global = ep->R;

    /* the record of a token */
    const int fp8 = ep->c.wire == MOE_DTYPE_E4M3;
    moe_ep_record *r = &ep->rec;
    r->x_bytes = H * (fp8 ? 1 : config->layer.dtype == MOE_DTYPE_BF16 ? 2 : 4);
    r->s_bytes = fp8 ? 4 * ((H + 127) / 128) : 0;
    r->id_bytes = 4 * k;
    r->x_off = 0, r->s_off = align16(r->x_bytes), r->id_off = r->s_off + align16(r->s_bytes);
    r->w_off = r->id_off + align16(r->id_bytes), r->bytes = r->w_off + align16(r->id_bytes);
    ep->ybytes = ctx->backend == MOE_BACKEND_CUDA ? 2 : 4;

    /* scratch: the layer's own for M tokens (route, shared experts); the GPU's routed experts for N M tokens;
     * moe_permute's for its three uses */
    ep->ls = moe__layer_scratch(ep->layer, M);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) ep->xs = moe__cuda_layer_experts_scratch(ep->layer, (int64_t)N * M);
#endif
    const moe_permute_config pcs[4] = {{N, 0, N, k, 1, MOE_PERMUTE_CONTIGUOUS, 0},
                                       {N, 0, N, N, 1, MOE_PERMUTE_CONTIGUOUS, 0},
                                       {N, comm->rank, 1, k, 1, MOE_PERMUTE_CONTIGUOUS, 0},
                                       {N, 0, N, k, 1, MOE_PERMUTE_CONTIGUOUS, 0}};
    const int64_t pts[4] = {M, M, (int64_t)N * M, (int64_t)N * M};
    for (int i = 0; i < 4; i++) {
        size_t b = 0;
        if ((s = moe_permute_workspace_size(ctx, &pcs[i], pts[i], &b)) != MOE_OK) goto fail;
        if (b > ep->permute_bytes) ep->permute_bytes = b;
    }
    ep->mem_bytes = ep_layout(ep, NULL);
    if ((s = moe_alloc(ctx, ep->mem_bytes, &ep->mem)) != MOE_OK) goto fail;
    ep_layout(ep, ep->mem);
    host = calloc((size_t)(2 * N + 3) * (size_t)(N + 1) + 8 * (size_t)N, sizeof(int64_t));
    if (!host) {
        s = moe__error(ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
        goto fail;
    }
    ep->host = host;
    if ((s = ep_check_same(ep)) != MOE_OK) goto fail;
    /* EPLB: slot p holds expert p mod E to begin with */
    ep->phy2log = malloc(sizeof(int32_t) * (size_t)(ep->R + E * ep->X + E));
    if (!ep->phy2log) {
        s = moe__error(ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
        goto fail;
    }
    ep->log2phy_host = ep->phy2log + ep->R, ep->logcnt_host = ep->log2phy_host + E * ep->X;
    for (int p = 0; p < ep->R; p++) ep->phy2log[p] = p % E;
    if ((s = moe__ep_placement_init(ep)) != MOE_OK) goto fail;
    if ((s = moe_expert_stats_create(ctx, 1, E, &ep->stats)) != MOE_OK) goto fail;
#ifdef MOE_WITH_CUDA
    if (config->backend == MOE_EP_LOW_LATENCY && ctx->backend == MOE_BACKEND_CUDA && comm->in_process &&
        (s = ep_p2p_init(ep)) != MOE_OK)
        goto fail;
#endif
    *out = ep;
    return MOE_OK;
fail:
    moe_ep_destroy(ep);
    return s;
}

void moe_ep_destroy(moe_ep *ep) {
    if (!ep) return;
#ifdef MOE_WITH_CUDA
    if (ep->comm->ctx->backend == MOE_BACKEND_CUDA) moe__cuda_ep_events_destroy(ep->comm->ctx, EP_MAX_MARKS, ep->events);
    if (ep->p2p_error) moe__cuda_p2p_host_flag_free(ep->comm->ctx, ep->p2p_error);
#endif
    if (ep->mem) moe_free(ep->layer ? ep->layer->ctx : ep->comm->ctx, ep->mem);
    moe_layer_destroy(ep->layer);
    if (ep->stats) moe_expert_stats_destroy(ep->comm->ctx, ep->stats);
    free(ep->phy2log);
    free(ep->host);
    free(ep);
}

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
    const int N = ep->comm->size, me = ep->comm->rank, k = c->router.top_k, E = c->router.n_experts;
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

    moe_layer *l = ep->layer;
    const moe_layer_scratch *ls = &ep->ls;
    int32_t *ids = (int32_t *)(ep->scratch + ls->ids);
    float *wts = (float *)(ep->scratch + ls->weights);
    moe__ep_mark(ep, EP_PHASE_START, stream);

    /* route (ids: the routed logical experts; rids: their slots) and plan */
    const int32_t *rids = ids;
    if (T > 0) {
        MOE_TRY(moe__layer_route(l, io, ls, ep->scratch, stream));
        MOE_TRY(moe__ep_map_ids(ep, ids, T, &rids, stream));
        MOE_TRY(moe__ep_rank_of(ep, rids, T * k, ep->dst, stream));
        MOE_TRY(moe__ep_token_dst(ep, ep->dst, T, ep->tok_dst, stream));
    }
    const moe_permute_config by_slot = {N, 0, N, k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_config by_token = {N, 0, N, N, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_outputs so = {ep->slot_counts, ep->slot_off, ep->slot_rowsrc, ep->slot_row, NULL, NULL};
    const moe_permute_outputs to = {ep->tok_counts, ep->tok_off, ep->tok_rowsrc, ep->tok_slot_row, NULL, NULL};
    MOE_TRY(moe_permute(ctx, &by_slot, ep->dst, T, &so, ep->permute, ep->permute_bytes, stream));
    MOE_TRY(moe_permute(ctx, &by_token, ep->tok_dst, T, &to, ep->permute, ep->permute_bytes, stream));
    moe__ep_mark(ep, EP_PHASE_ROUTE, stream);

    /* the records, before the counts are known on the host (rows past tok_off[N] are not written) */
    const void *xw = io->x->data, *scales = NULL;
    if (ep->c.wire == MOE_DTYPE_E4M3 && T > 0) {
        moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_FP8_1X128), 2, {T, H}, ep->xq, ep->xs_scales, NULL};
        MOE_TRY(moe_quantize(ctx, io->x, &q, stream));
        xw = ep->xq, scales = ep->xs_scales;
    }
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
#ifdef MOE_WITH_CUDA
    const int gpu = ctx->backend == MOE_BACKEND_CUDA;
    if (gpu && c->n_shared && T > 0) {
        const moe_status ss = moe__cuda_layer_shared(l, io->x->data, T, p.T_total, ls, ep->scratch, stream);
        if (ss != MOE_OK) {
            moe__cuda_layer_join(l, stream);
            return ss;
        }
    }
#endif
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
#ifdef MOE_WITH_CUDA
    if (gpu && c->n_shared && T > 0) {
        const moe_status js = moe__cuda_layer_join(l, stream);
        if (s == MOE_OK) s = js;
    }
    if (gpu && s == MOE_OK && T > 0)
        s = moe__cuda_layer_combine(l, ep->y_home, ep->slot_row, wts, T, c->n_shared ? ep->scratch + ls->shared_y : NULL,
                                    c->shared_gate ? (const float *)(ep->scratch + ls->shared_scale) : NULL,
                                    io->out->data, stream);
    if (!gpu && s == MOE_OK && T > 0)
#else
    if (s == MOE_OK && T > 0)
#endif
        s = moe__cpu_layer_combine(l, io->x->data, T, ep->y_home, ep->slot_row, wts, io->out->data);
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
        MOE_TRY(moe__cuda_layer_experts(l, x, n, ep->recv_ids, ep->recv_w, p->T_total, &ep->xs, ws, stream));
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
#ifdef MOE_WITH_CUDA
    const int gpu = ctx->backend == MOE_BACKEND_CUDA;
    if (gpu && c->n_shared && T > 0) {
        const moe_status ss = moe__cuda_layer_shared(l, io->x->data, T, p.T_total, ls, ep->scratch, stream);
        if (ss != MOE_OK) {
            moe__cuda_layer_join(l, stream);
            return ss;
        }
    }
#endif
    /* partial sums of our experts' rows, a row per gathered token (zero when none of its slots is ours) */
    moe_status s = ep_experts(ep, &p, stream);
    moe__ep_mark(ep, EP_PHASE_EXPERTS, stream);
    if (s == MOE_OK) s = moe__ep_partial(ep, ep->y_ret, ep->ret_slot_row, ep->recv_w, p.n_recv, ep->ag_part, stream);
    if (s == MOE_OK) s = comm->ops->reduce_scatter_f32(comm, ep->ag_part, p.n_recv * H, ep->ag_sum, stream);
    moe__ep_mark(ep, EP_PHASE_COMBINE, stream);
#ifdef MOE_WITH_CUDA
    if (gpu && c->n_shared && T > 0) {
        const moe_status js = moe__cuda_layer_join(l, stream);
        if (s == MOE_OK) s = js;
    }
#endif
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
    int32_t *ids = (int32_t *)(ep->scratch + ls->ids);
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
    const int32_t *rids = ids;
    if (T > 0) {
        MOE_TRY(moe__layer_route(l, io, ls, ep->scratch, stream));
        MOE_TRY(moe__ep_map_ids(ep, ids, T, &rids, stream));
        MOE_TRY(moe__ep_rank_of(ep, rids, T * k, ep->dst, stream));
        MOE_TRY(moe__ep_token_dst(ep, ep->dst, T, ep->tok_dst, stream));
    }
    const moe_permute_config by_rank = {N, 0, N, k, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_config by_token = {N, 0, N, N, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    const moe_permute_outputs so = {ep->slot_counts, ep->slot_off, ep->slot_rowsrc, ep->slot_row, NULL, NULL};
    const moe_permute_outputs to = {ep->tok_counts, ep->tok_off, ep->tok_rowsrc, ep->tok_slot_row, NULL, NULL};
    MOE_TRY(moe_permute(ctx, &by_rank, ep->dst, T, &so, ep->permute, ep->permute_bytes, stream));
    MOE_TRY(moe_permute(ctx, &by_token, ep->tok_dst, T, &to, ep->permute, ep->permute_bytes, stream));
    moe__ep_mark(ep, EP_PHASE_ROUTE, stream);
    const void *xw = io->x->data, *scales = NULL;
    if (ep->c.wire == MOE_DTYPE_E4M3 && T > 0) {
        moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_FP8_1X128), 2, {T, H}, ep->xq, ep->xs_scales, NULL};
        MOE_TRY(moe_quantize(ctx, io->x, &q, stream));
        xw = ep->xq, scales = ep->xs_scales;
    }
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
#ifdef MOE_WITH_CUDA
    const int gpu = ctx->backend == MOE_BACKEND_CUDA;
    if (gpu && c->n_shared && T > 0) {
        const moe_status ss = moe__cuda_layer_shared(l, io->x->data, T, NM, ls, ep->scratch, stream);
        if (ss != MOE_OK) {
            moe__cuda_layer_join(l, stream);
            return ss;
        }
    }
#endif
    /* experts on the N M records; each row of ours into its source's block */
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
        s = moe__cuda_layer_experts(l, x, NM, ep->recv_ids, ep->recv_w, NM, &ep->xs, ws, stream);
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
#ifdef MOE_WITH_CUDA
    if (gpu && c->n_shared && T > 0) {
        const moe_status js = moe__cuda_layer_join(l, stream);
        if (s == MOE_OK) s = js;
    }
    if (gpu && s == MOE_OK && T > 0)
        s = moe__cuda_layer_combine(l, ep->y_home, ep->ll_slot_row, wts, T,
                                    c->n_shared ? ep->scratch + ls->shared_y : NULL,
                                    c->shared_gate ? (const float *)(ep->scratch + ls->shared_scale) : NULL,
                                    io->out->data, stream);
    if (!gpu && s == MOE_OK && T > 0)
#else
    if (s == MOE_OK && T > 0)
#endif
        s = moe__cpu_layer_combine(l, io->x->data, T, ep->y_home, ep->ll_slot_row, wts, io->out->data);
    moe__ep_mark(ep, EP_PHASE_FINISH, stream);
    (void)me;
    return s;
}

/* ---- profiling ---- */

static double ep_host_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

void moe__ep_mark(moe_ep *ep, int phase, void *stream) {
    if (!ep->profiling) return;
    if (phase == EP_PHASE_START) ep->n_marks = 0;
    if (ep->n_marks >= EP_MAX_MARKS) return;
    const int i = ep->n_marks++;
    ep->mark_phase[i] = phase;
#ifdef MOE_WITH_CUDA
    if (ep->comm->ctx->backend == MOE_BACKEND_CUDA) {
        if (moe__cuda_ep_record(ep->comm->ctx, ep->events[i], stream) != MOE_OK) ep->n_marks = EP_MAX_MARKS + 1;
        return;
    }
#endif
    (void)stream;
    ep->host_ms[i] = ep_host_ms();
}

moe_status moe_ep_set_profiling(moe_ep *ep, int on) {
    if (!ep) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ep->comm->ctx);
#ifdef MOE_WITH_CUDA
    if (on && !ep->events[0] && ep->comm->ctx->backend == MOE_BACKEND_CUDA)
        MOE_TRY(moe__cuda_ep_events(ep->comm->ctx, EP_MAX_MARKS, ep->events));
#endif
    ep->profiling = on != 0, ep->n_marks = 0;
    return MOE_OK;
}

moe_status moe_ep_last_timing(moe_ep *ep, moe_ep_timing *t) {
    if (!ep) return MOE_ERR_INVALID_ARG;
    moe_ctx *ctx = ep->comm->ctx;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, t, "moe_ep_last_timing: timing is NULL");
    MOE_CHECK_ARG(ctx, ep->profiling && ep->n_marks >= 2 && ep->n_marks <= EP_MAX_MARKS,
                  "moe_ep_last_timing: no profiled forward (moe_ep_set_profiling first)");
    *t = ep->last;
    double *slot[] = {&t->route_ms, &t->pack_ms, &t->counts_ms, &t->dispatch_ms, &t->experts_ms, &t->combine_ms,
                      &t->finish_ms};
    for (int i = 0; i < 7; i++) *slot[i] = 0.0;
    for (int i = 1; i < ep->n_marks; i++) {
        double ms = ep->host_ms[i] - ep->host_ms[i - 1];
#ifdef MOE_WITH_CUDA
        if (ctx->backend == MOE_BACKEND_CUDA) MOE_TRY(moe__cuda_ep_elapsed(ctx, ep->events[i - 1], ep->events[i], &ms));
#endif
        *slot[ep->mark_phase[i]] += ms;
    }
    return MOE_OK;
}
