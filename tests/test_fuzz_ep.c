/* test_fuzz_ep.c — the expert-parallel layer's API fed random configs and inputs on one rank (fuzz.h): a layer
 * of fuzz.c with a backend, a wire dtype, max_tokens and physical slots (replicas) picked at random, some of them
 * invalid; then forwards, EPLB rebalances, the placement and the timings. Checked: every failure names its
 * problem; the placement holds logical experts; and on the CPU, where the layer's bits are the contract (the
 * all-to-all and low-latency backends, the tokens on the wire in the layer's dtype), a forward gives the bits of
 * moe_layer_forward over the same weights, before and after a rebalance moved the experts between slots. */
#include <stdlib.h>

#include "fuzz.h"

/* The layer's output for io on the CPU, into out (context memory); nonzero when the layer refused it. */
static int layer_reference(fuzz *f, const moe_layer_config *c, const moe_layer_weights *w, const moe_layer_io *io,
                           void *out) {
    moe_layer *l = NULL;
    size_t ws_bytes = 0;
    if (moe_layer_create(f->ctx, c, w, &l) != MOE_OK) return 1;
    moe_tensor ot = *io->out;
    ot.data = out;
    const moe_layer_io lio = {io->x, io->logits, &ot, io->token_ids, NULL, 0};
    int bad = moe_layer_workspace_size(l, io->x->shape[0], &ws_bytes) != MOE_OK ||
              moe_layer_forward(l, &lio, fz_buf(f, ws_bytes, NULL), ws_bytes, NULL) != MOE_OK;
    moe_layer_destroy(l);
    return bad;
}

void fuzz_ep(fuzz *f) {
    moe_ep_config ec;
    memset(&ec, 0, sizeof ec);
    const fz_dims d = fz_layer_config(f, &ec.layer);
    const moe_layer_config *c = &ec.layer;
    if (fz_next(f) % 4) /* mostly what expert parallelism takes: unquantised experts and inputs */
        memset(&ec.layer.expert_format, 0, sizeof ec.layer.expert_format),
        memset(&ec.layer.act_format, 0, sizeof ec.layer.act_format),
        memset(&ec.layer.shared_format, 0, sizeof ec.layer.shared_format);
    ec.backend = (moe_ep_backend)PICK(f, MOE_EP_ALL_TO_ALL, MOE_EP_ALL_TO_ALL, MOE_EP_ALLGATHER, MOE_EP_LOW_LATENCY, 3);
    ec.wire = fz_next(f) % 4 ? 0 : (moe_dtype)PICK(f, MOE_DTYPE_E4M3, MOE_DTYPE_BF16, MOE_DTYPE_F32, MOE_DTYPE_E2M1);
    ec.max_tokens = fz_next(f) % 6 ? PICK(f, 1, 3, 17) : PICK(f, -1, 0);
    const int E = (int)d.E;
    ec.n_physical = fz_next(f) % 3 ? 0 : PICK(f, E, 2 * E, E + 1, E + 3, -1);
    const int64_t slots = ec.n_physical > E ? ec.n_physical : E;
    moe_layer_weights w;
    fz_layer_weights(f, c, &d, slots, &w);
    moe_ep *ep = NULL;
    moe_status s = moe_ep_create(f->comm, &ec, &w, &ep);
    fz_status(f, s, "moe_ep_create");
    if (s != MOE_OK) {
        if (ep) fprintf(stderr, "  moe_ep_create failed and gave an ep\n"), f->bad++;
        fz_release(f);
        return;
    }
    if (fz_next(f) % 3 == 0) fz_status(f, moe_ep_set_profiling(ep, (int)(fz_next(f) % 2)), "moe_ep_set_profiling");
    const int64_t M = ec.max_tokens;
    const int exact = !f->gpu && ec.backend != MOE_EP_ALLGATHER && (!ec.wire || ec.wire == c->dtype);
    /* the reference layer's experts: a copy, since a rebalance rewrites the slots' buffers (host memory: CPU only) */
    moe_layer_weights wr = w;
    if (exact) {
        const size_t vb = c->dtype == MOE_DTYPE_F32 ? 4 : 2;
        wr.w13 = w.w13 ? fz_buf(f, (size_t)(d.E * 2 * d.I * d.H) * vb, w.w13) : NULL;
        wr.w2 = w.w2 ? fz_buf(f, (size_t)(d.E * d.H * d.I) * vb, w.w2) : NULL;
        wr.b13 = w.b13 ? fz_buf(f, 4 * (size_t)(d.E * 2 * d.I), w.b13) : NULL;
        wr.b2 = w.b2 ? fz_buf(f, 4 * (size_t)(d.E * d.H), w.b2) : NULL;
    }
    int rebalanced = 0;
    for (int step = 0; step < 3; step++) {
        const int64_t T = fz_next(f) % 6 ? (int64_t)(fz_next(f) % (uint64_t)(M + 1)) : M + 1;
        fz_inputs in;
        fz_layer_inputs(f, c, &d, T, fz_next(f) % 12 ? d.H : d.H + 1, &in);
        int stats_layer;
        moe_expert_stats *st = fz_stats(f, &d, &stats_layer);
        const moe_layer_io io = {&in.x, fz_next(f) % 2 || !w.gate ? &in.logits : NULL, &in.out, in.token_ids, st,
                                 stats_layer};
        s = moe_ep_forward(ep, &io, NULL);
        fz_status(f, s, "moe_ep_forward");
        if (f->gpu) moe_sync(f->ctx, NULL); /* the counters' memory is freed next */
        moe_expert_stats_destroy(f->ctx, st);
        const size_t out_bytes = (size_t)(T * d.H) * (c->dtype == MOE_DTYPE_F32 ? 4 : 2);
        void *ref = fz_buf(f, out_bytes, NULL);
        if (s == MOE_OK && exact && ref && !layer_reference(f, c, &wr, &io, ref)) {
            f->ep_compared++;
            if (fz_same(f, "moe_ep_forward out (against moe_layer_forward)", in.out.data, ref, out_bytes))
                fprintf(stderr, "    router %d E %d k %d H %lld I %lld shared %d dtype %s activation %d; backend %d, wire %s, "
                                "max_tokens %lld, n_physical %d; forward %d of T %lld, %s, %d rebalances\n",
                        (int)c->router.kind, E, c->router.top_k, (long long)d.H, (long long)d.I, c->n_shared,
                        moe_dtype_name(c->dtype), (int)c->activation, (int)ec.backend, moe_dtype_name(ec.wire),
                        (long long)M, ec.n_physical, step, (long long)T, io.logits ? "logits" : "gate", rebalanced);
        }
        if (s == MOE_OK && fz_next(f) % 3 == 0) {
            double before = -1, after = -1;
            s = moe_ep_rebalance(ep, fz_next(f) % 2 ? &before : NULL, &after, NULL);
            fz_status(f, s, "moe_ep_rebalance");
            rebalanced += s == MOE_OK;
            if (s == MOE_OK && !(after >= 0 && after <= 1))
                fprintf(stderr, "  moe_ep_rebalance: balance after %g is outside [0, 1]\n", after), f->bad++;
        }
        moe_ep_timing t;
        fz_status(f, moe_ep_last_timing(ep, fz_next(f) % 8 ? &t : NULL), "moe_ep_last_timing");
    }
    int32_t *p2l = malloc(4 * (size_t)slots);
    s = moe_ep_placement(ep, fz_next(f) % 8 ? p2l : NULL);
    fz_status(f, s, "moe_ep_placement");
    for (int64_t p = 0; s == MOE_OK && p < slots; p++)
        if (p2l[p] < 0 || p2l[p] >= E) {
            fprintf(stderr, "  moe_ep_placement: slot %lld holds expert %d of %d\n", (long long)p, p2l[p], E);
            f->bad++;
            break;
        }
    free(p2l);
    moe_ep_destroy(ep);
    fz_release(f);
}
