/* ep_cases.c — running a layer problem over the ranks of a comm (ep_cases.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep_cases.h"

void ep_job_run(ep_job *j) {
    const layer_problem *p = j->p;
    const moe_layer_config *c = &p->c;
    moe_ctx *ctx = NULL;
    const int N = moe_comm_size(j->comm), r = moe_comm_rank(j->comm);
    const int64_t H = c->hidden, I = c->intermediate, E = c->router.n_experts, S = c->n_shared,
                  Is = c->shared_intermediate, T = j->T;
    const int64_t R = j->n_physical ? j->n_physical : E, Sl = R / N; /* slots, slots a rank */
    const moe_dtype F = MOE_DTYPE_F32, dt = j->dtype;
    ctx = moe_comm_ctx(j->comm);
    moe_ep_config ec = {c[0], j->backend, j->wire, j->max_tokens, j->n_physical};
    ec.layer.dtype = dt;
    if (j->intermediate) ec.layer.intermediate = j->intermediate;
    void *bufs[16] = {0};
    int nb = 0;
#define UP(src, n, d) (bufs[nb++] = layer_upload_as(ctx, (src), (n), (d)))
    ec.layer.router.bias = UP(p->bias, E, F);
    void *table = p->hash_table ? test_upload(ctx, p->hash_table, sizeof(int32_t) * (size_t)(c->router.hash_vocab *
                                                                                            c->router.top_k))
                                : NULL;
    void *tok = p->token_ids && T ? test_upload(ctx, p->token_ids + j->t0, sizeof(int32_t) * (size_t)T) : NULL;
    ec.layer.router.hash_table = table;
    moe_layer_weights w = {0};
    /* this rank's slots r Sl .. (r+1) Sl - 1 hold experts (slot mod E) */
    const float *src[4] = {p->w13, p->w2, p->b13, p->b2};
    const int64_t per[4] = {2 * I * H, H * I, 2 * I, H};
    float *slots[4] = {0};
    for (int a = 0; a < 4; a++) {
        if (!src[a]) continue;
        slots[a] = malloc(sizeof(float) * (size_t)(Sl * per[a]));
        for (int64_t q = 0; q < Sl; q++)
            memcpy(slots[a] + q * per[a], src[a] + ((r * Sl + q) % E) * per[a], sizeof(float) * (size_t)per[a]);
    }
    w.w13 = UP(slots[0], Sl * per[0], dt);
    w.w2 = UP(slots[1], Sl * per[1], dt);
    w.b13 = slots[2] ? UP(slots[2], Sl * per[2], F) : NULL;
    w.b2 = slots[3] ? UP(slots[3], Sl * per[3], F) : NULL;
    for (int a = 0; a < 4; a++) free(slots[a]);
    w.gate = j->use_logits ? NULL : UP(p->gate, E * H, F);
    w.gate_bias = UP(p->gate_bias, E, F);
    w.shared_w13 = UP(p->sw13, S * 2 * Is * H, dt);
    w.shared_w2 = UP(p->sw2, S * H * Is, dt);
    w.shared_gate = UP(p->sgate, H, F);
    void *x = T ? UP(p->x + j->t0 * H, T * H, dt) : NULL;
    void *logits = T && j->use_logits ? UP(p->logits + j->t0 * E, T * E, F) : NULL;
#undef UP
    const size_t esize = dt == MOE_DTYPE_BF16 ? 2 : 4;
    void *y = NULL;
    moe_ep *ep = NULL;
    moe_status s = moe_alloc(ctx, (size_t)(T * H) * esize + 16, &y);
    if (s == MOE_OK) s = moe_ep_create(j->comm, &ec, &w, &ep);
    if (s == MOE_OK && !j->skip_forward) {
        moe_tensor xt = moe_tensor_2d(x, dt, T, H), yt = moe_tensor_2d(y, dt, T, H), lt = moe_tensor_2d(logits, F, T, E);
        moe_layer_io io = {&xt, j->use_logits ? &lt : NULL, &yt, tok, NULL, 0};
        if (!j->capture) {
            s = moe_ep_forward(ep, &io, NULL);
        } else {
            moe_graph *g = NULL;
            s = moe_graph_begin(ctx, NULL);
            if (s == MOE_OK) {
                const moe_status fs = moe_ep_forward(ep, &io, NULL);
                s = moe_graph_end(ctx, NULL, &g);
                if (fs != MOE_OK) s = fs;
            }
            if (s == MOE_OK) s = moe_graph_replay(ctx, g, NULL);
            if (s == MOE_OK) s = moe_graph_replay(ctx, g, NULL);
            moe_graph_destroy(ctx, g);
        }
        if (s == MOE_OK) s = moe_sync(ctx, NULL);
        if (s == MOE_OK && j->again) s = moe_ep_forward(ep, &io, NULL);
        if (s == MOE_OK && j->rebalance) {
            s = moe_ep_rebalance(ep, &j->balance[0], &j->balance[1], NULL);
            if (s == MOE_OK && R <= 64) s = moe_ep_placement(ep, j->placement);
            if (s == MOE_OK) s = moe_memset(ctx, y, 0xFF, (size_t)(T * H) * esize, NULL); /* poison */
            if (s == MOE_OK) s = moe_ep_forward(ep, &io, NULL);
            if (s == MOE_OK) s = moe_sync(ctx, NULL);
        }
    }
    if (s == MOE_OK && !j->skip_forward && T) {
        void *h = malloc((size_t)(T * H) * esize);
        if (test_download(ctx, h, y, (size_t)(T * H) * esize)) s = MOE_ERR_CUDA;
        for (int64_t i = 0; i < T * H && s == MOE_OK; i++)
            j->out[j->t0 * H + i] = dt == F ? ((float *)h)[i] : moe_bf16_to_f32(((uint16_t *)h)[i]);
        free(h);
    }
    if (j->skip_forward && j->linger_ms) {
        struct timespec pause = {j->linger_ms / 1000, (long)(j->linger_ms % 1000) * 1000000L};
        nanosleep(&pause, NULL);
    }
    j->status = s;
    snprintf(j->message, sizeof j->message, "%s", s == MOE_OK ? "" : moe_last_error(ctx));
    moe_ep_destroy(ep);
    for (int i = 0; i < nb; i++) moe_free(ctx, bufs[i]);
    moe_free(ctx, table), moe_free(ctx, tok);
    moe_free(ctx, y);
}

static void *ep_thread(void *arg) {
    ep_job_run(arg);
    return NULL;
}

void ep_jobs_run_threads(ep_job *jobs, int n) {
    pthread_t th[16];
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, ep_thread, &jobs[i]);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

void ep_jobs_make(ep_job *jobs, moe_comm **comms, int n, const layer_problem *p, const int64_t *split, float *out) {
    int64_t t0 = 0, most = 1;
    for (int r = 0; r < n; r++) {
        const int64_t T = split ? split[r] : p->T / n + (r < p->T % n);
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].comm = comms[r], jobs[r].p = p, jobs[r].dtype = MOE_DTYPE_F32, jobs[r].backend = MOE_EP_ALL_TO_ALL;
        jobs[r].t0 = t0, jobs[r].T = T, jobs[r].out = out;
        t0 += T, most = T > most ? T : most;
    }
    for (int r = 0; r < n; r++) jobs[r].max_tokens = most;
}
