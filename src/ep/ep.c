/* ep.c — expert parallelism (docs/ep.md): creation (the config checked across ranks, the buffers for
 * max_tokens carved from one allocation, peer access for the low-latency backend), destruction and profiling.
 * The forwards are in ep_forward.c. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep/ep.h"
#include "route/permute.h"

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
    EP_FIELD("router.hash_vocab", r->hash_table ? r->hash_vocab : 0);
    EP_FIELD("activation", l->activation);
    EP_FIELD("act_alpha", f32_bits(l->act_alpha));
    EP_FIELD("act_limit", f32_bits(l->act_limit));
    EP_FIELD("w13_layout", l->w13_layout);
    EP_FIELD("dtype", l->dtype);
    EP_FIELD("n_shared", l->n_shared);
    EP_FIELD("shared_intermediate", l->shared_intermediate);
    EP_FIELD("shared_gate", l->shared_gate);
    EP_FIELD("gate_dtype", moe__layer_gate_dtype(l));
    EP_FIELD("backend", c->backend);
    EP_FIELD("wire", c->wire);
    EP_FIELD("max_tokens", c->max_tokens);
    EP_FIELD("n_physical", c->n_physical ? c->n_physical : r->n_experts);
#undef EP_FIELD
    return n;
}

enum { EP_MAX_FIELDS = 32 };

moe_status moe__ep_allgather_host(moe_comm *comm, const void *mine, int64_t bytes, void *all) {
    moe_ctx *ctx = comm->ctx;
    if (ctx->backend == MOE_BACKEND_CPU) return comm->ops->allgather(comm, mine, bytes, all, NULL);
    char *dev = NULL;
    moe_status s = moe_alloc(ctx, (size_t)(bytes * (comm->size + 1)), (void **)&dev);
    if (s == MOE_OK) s = moe_memcpy(ctx, dev, mine, (size_t)bytes, MOE_COPY_HOST_TO_CTX, NULL);
    if (s == MOE_OK) s = comm->ops->allgather(comm, dev, bytes, dev + bytes, NULL);
    if (s == MOE_OK) s = moe_memcpy(ctx, all, dev + bytes, (size_t)(bytes * comm->size), MOE_COPY_CTX_TO_HOST, NULL);
    if (s == MOE_OK) s = comm->ops->wait(comm, NULL);
    moe_free(ctx, dev);
    return s;
}

static moe_status ep_check_same(moe_ep *ep) {
    moe_comm *comm = ep->comm;
    ep_field f[EP_MAX_FIELDS];
    const int n = ep_fields(&ep->c, f);
    int64_t mine[EP_MAX_FIELDS], *all = malloc(sizeof(int64_t) * EP_MAX_FIELDS * (size_t)comm->size);
    if (!all) return moe__error(comm->ctx, MOE_ERR_OOM, "moe_ep_create: out of host memory");
    for (int i = 0; i < n; i++) mine[i] = f[i].value;
    for (int i = n; i < EP_MAX_FIELDS; i++) mine[i] = 0;
    moe_status s = moe__ep_allgather_host(comm, mine, EP_MAX_FIELDS * 8, all);
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
    EP_BUF(hdr_send, (2 * N + 3) * 8);
    EP_BUF(hdr_recv, (2 * N + 3) * N * 8);
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
    MOE_CHECK_ARG(ctx, R <= MOE_EPLB_MAX_SLOTS, "moe_ep_create: %d expert slots (n_physical), more than %d", R,
                  MOE_EPLB_MAX_SLOTS);
    if (ctx->backend == MOE_BACKEND_CUDA && R / N > MOE_PERMUTE_MAX_EXPERTS) /* a rank's rows go through one permute */
        return moe__error(ctx, MOE_ERR_UNSUPPORTED, "moe_ep_create: %d slots a rank on the GPU, more than %d", R / N,
                          MOE_PERMUTE_MAX_EXPERTS);
    MOE_CHECK_ARG(ctx, c->backend >= MOE_EP_ALL_TO_ALL && c->backend <= MOE_EP_LOW_LATENCY,
                  "moe_ep_create: unknown backend %d", (int)c->backend);
    const moe_dtype wire = c->wire ? c->wire : c->layer.dtype;
    MOE_CHECK_ARG(ctx, wire == c->layer.dtype || (wire == MOE_DTYPE_E4M3 && c->layer.dtype == MOE_DTYPE_BF16),
                  "moe_ep_create: tokens go on the wire as the layer's dtype or, for bf16 layers, e4m3 (not %s)",
                  moe_dtype_name(wire));
    MOE_CHECK_ARG(ctx, wire != MOE_DTYPE_E4M3 || c->backend != MOE_EP_ALLGATHER,
                  "moe_ep_create: FP8 on the wire is for the all-to-all backends");
    const int64_t M = c->max_tokens, k = c->layer.router.top_k;
    const int64_t room = INT32_MAX - 1 - (int64_t)E * MOE_LAYER_MAX_TILE_M; /* (no product that can wrap) */
    MOE_CHECK_ARG(ctx, room > 0 && M <= room / ((int64_t)N * (k > N ? k : N)),
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
    moe_status s = moe__ep_allgather_host(comm, mine, 8, all);
    for (int d = 0; d < N && s == MOE_OK; d++) {
        int ok = 0;
        s = moe__cuda_p2p_enable(ctx, (int)all[d], &ok);
        mine[1] &= ok;
    }
    if (env && !strcmp(env, "0")) mine[1] = 0;
    mine[0] = mine[1];
    if (s == MOE_OK) s = moe__ep_allgather_host(comm, mine, 8, all);
    int every = s == MOE_OK;
    for (int d = 0; d < N && every; d++) every &= all[d] == 1;
    if (every) {
        s = moe_memset(ctx, ep->p2p_flags, 0, (size_t)(3 * N + 1) * 8, NULL);
        if (s == MOE_OK) s = moe__cuda_p2p_host_flag(ctx, &ep->p2p_error, &ep->p2p_error_dev);
        if (s == MOE_OK) s = moe_sync(ctx, NULL);
        mine[0] = (int64_t)(uintptr_t)ep->recv, mine[1] = (int64_t)(uintptr_t)ep->y_home;
        mine[2] = (int64_t)(uintptr_t)ep->p2p_flags;
        if (s == MOE_OK) s = moe__ep_allgather_host(comm, mine, 3 * 8, all);
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
    const moe_qformat_kind kinds[3] = {config->layer.expert_format.kind, config->layer.shared_format.kind,
                                       config->layer.act_format.kind};
    static const char *const fields[3] = {"expert_format", "shared_format", "act_format"};
    for (int i = 0; i < 3; i++) /* a kind that is no format is a bad argument, not an unsupported format */
        MOE_CHECK_ARG(ctx, kinds[i] >= MOE_QFORMAT_INVALID && kinds[i] < MOE_QFORMAT_COUNT_,
                      "moe_ep_create: %s kind %d is not a format", fields[i], (int)kinds[i]);
    if (config->layer.expert_format.kind != MOE_QFORMAT_INVALID)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                          "moe_ep_create: quantised experts (expert_format %s) are not supported under expert "
                          "parallelism yet (the rebalance moves bf16/f32 expert weights)",
                          moe_qformat_kind_name(config->layer.expert_format.kind));
    if (config->layer.shared_format.kind != MOE_QFORMAT_INVALID && config->layer.n_shared > 0)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                          "moe_ep_create: quantised shared experts (shared_format %s) are not supported under expert "
                          "parallelism yet", moe_qformat_kind_name(config->layer.shared_format.kind));
    if (config->layer.act_format.kind != MOE_QFORMAT_INVALID)
        return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                          "moe_ep_create: quantised expert inputs (act_format %s) are not supported under expert "
                          "parallelism yet (the FP8 wire format is ep.wire)",
                          moe_qformat_kind_name(config->layer.act_format.kind));
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
    if (ctx->backend == MOE_BACKEND_CUDA) ep->xs = moe__cuda_layer_experts_scratch(ep->layer, (int64_t)N * M, 0);
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
