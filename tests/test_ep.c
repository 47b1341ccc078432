/* test_ep.c — expert parallelism against the single layer: the all-to-all backend gives the same bits (CPU
 * ranks as threads, MPI processes, GPUs over NCCL), FP8 on the wire equals the layer on the FP8-rounded input,
 * the all-gather backend agrees within rounding; skewed routing, idle ranks, T = 0; bad configs and hung peers
 * give errors, not hangs. */
#include <stdlib.h>
#include <string.h>

#include "ep/comm.h"
#include "ep_cases.h"

/* Small layers of five router families; E = 12 splits over 1-4 ranks. */
static moe_layer_config ep_config(int kind, int H, int I) {
    moe_layer_config c = {0};
    static const char *presets[] = {"qwen3-30b-a3b", "deepseek-v3", "gpt-oss-20b", "llama4-scout", "qwen2-moe"};
    moe_router_preset(presets[kind], &c.router);
    c.router.n_experts = 12, c.router.top_k = kind == 3 ? 1 : 4;
    c.hidden = H, c.intermediate = I, c.activation = MOE_ACT_SILU_GLU, c.dtype = MOE_DTYPE_F32;
    if (kind == 1) {
        c.router.n_groups = 4, c.router.topk_groups = 2;
        c.router.bias = (const float *)1; /* drawn by layer_problem_random */
        c.n_shared = 1, c.shared_intermediate = I;
    }
    if (kind == 2) {
        c.activation = MOE_ACT_GPTOSS_GLU, c.act_alpha = 1.702f, c.act_limit = 7.0f;
        c.w13_layout = MOE_W13_INTERLEAVED;
    }
    if (kind == 3) c.n_shared = 1, c.shared_intermediate = I;
    if (kind == 4) c.n_shared = 1, c.shared_intermediate = 2 * I, c.shared_gate = 1;
    return c;
}

static const char *ep_kind_name[] = {"qwen3", "deepseek-v3", "gpt-oss", "llama4", "qwen2-moe"};

/* Exact comparison (bits of the f32 view; NaN as NaN); prints the first difference. */
static int ep_same(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!test_same_f32(a[i], b[i])) {
            fprintf(stderr, "    %s: element %lld is %.9g, the layer gives %.9g\n", what, (long long)i, a[i], b[i]);
            return 0;
        }
    return 1;
}

static int ep_jobs_ok(const ep_job *jobs, int n) {
    int ok = 1;
    for (int r = 0; r < n; r++)
        if (jobs[r].status != MOE_OK) {
            fprintf(stderr, "    rank %d: %s: %s\n", r, moe_status_string(jobs[r].status), jobs[r].message);
            ok = 0;
        }
    return ok;
}

/* n CPU ranks of one thread each, and a local comm over them; 1 on success. */
static int ep_cpu_ranks(int n, moe_ctx **ctxs, moe_comm **comms) {
    moe_ctx_options o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CPU, o.n_threads = 1;
    for (int r = 0; r < n; r++)
        if (moe_ctx_create(&o, &ctxs[r]) != MOE_OK) return 0;
    return moe_comm_create_local(ctxs, n, comms) == MOE_OK;
}

static void ep_cpu_ranks_free(int n, moe_ctx **ctxs, moe_comm **comms) {
    for (int r = 0; r < n; r++) moe_comm_destroy(comms[r]), moe_ctx_destroy(ctxs[r]);
}

/* Runs p over the n ranks of comms (threads) and compares with the layer on ref. The all-to-all backend must give
 * the same bits, unless tol > 0 (then: relative error); the all-gather backend is within rounding. */
static int ep_check_on(moe_ctx *ref, moe_comm **comms, int n, const layer_problem *p, const int64_t *split,
                       moe_dtype dt, moe_ep_backend backend, moe_dtype wire, int use_logits, double tol,
                       const char *what, const layer_problem *ref_problem /* NULL: p */, int capture) {
    const int64_t TH = p->T * p->c.hidden;
    float *out = calloc((size_t)TH + 1, sizeof(float)), *want = calloc((size_t)TH + 1, sizeof(float));
    ep_job jobs[4];
    ep_jobs_make(jobs, comms, n, p, split, out);
    for (int r = 0; r < n; r++)
        jobs[r].dtype = dt, jobs[r].backend = backend, jobs[r].use_logits = use_logits, jobs[r].wire = wire,
        jobs[r].capture = capture;
    ep_jobs_run_threads(jobs, n);
    int ok = ep_jobs_ok(jobs, n);
    if (ok) ok = layer_run(ref, ref_problem ? ref_problem : p, dt, use_logits, want, 0) == MOE_OK;
    if (ok) {
        char label[200];
        static const char *names[] = {"all-to-all", "all-gather", "low latency"};
        snprintf(label, sizeof label, "%s, %d ranks, %s, %s%s, T %lld", what, n, moe_dtype_name(dt), names[backend],
                 capture ? " (graph)" : "", (long long)p->T);
        if (backend == MOE_EP_ALLGATHER && tol == 0) tol = dt == MOE_DTYPE_F32 ? 1e-5 : 1e-2;
        if (tol == 0) {
            ok = ep_same(out, want, TH, label);
        } else {
            const double err = test_rel_l2(out, want, TH);
            if (err > tol) fprintf(stderr, "    %s: relative error %.3g > %.0e\n", label, err, tol), ok = 0;
        }
    }
    free(out), free(want);
    return ok;
}

/* The same over n CPU ranks, threads of this process. */
static int ep_check_cpu(test_env *env, const layer_problem *p, int n, const int64_t *split, moe_dtype dt,
                        moe_ep_backend backend, int use_logits, const char *what) {
    moe_ctx *ctxs[4] = {0};
    moe_comm *comms[4] = {0};
    int ok = ep_cpu_ranks(n, ctxs, comms);
    if (ok) ok = ep_check_on(env->cpu, comms, n, p, split, dt, backend, 0, use_logits, 0, what, NULL, 0);
    ep_cpu_ranks_free(n, ctxs, comms);
    return ok;
}

TEST_IMPL(ep_cpu_exact) {
    uint64_t seed = env->seed;
    for (int kind = 0; kind < 5; kind++) {
        moe_layer_config c = ep_config(kind, 40, 24);
        layer_problem p;
        layer_problem_random(&p, &c, 37, 1, seed++);
        for (int n = 1; n <= 4; n++) {
            ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_F32, MOE_EP_ALL_TO_ALL, 1, ep_kind_name[kind]),
                       "%s over %d ranks (f32, given logits) differs from the layer", ep_kind_name[kind], n);
            ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_BF16, MOE_EP_ALL_TO_ALL, 0, ep_kind_name[kind]),
                       "%s over %d ranks (bf16, gate) differs from the layer", ep_kind_name[kind], n);
            ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_BF16, MOE_EP_LOW_LATENCY, 1, ep_kind_name[kind]),
                       "%s over %d ranks (low latency) differs from the layer", ep_kind_name[kind], n);
        }
        /* uneven parts, an idle rank */
        const int64_t split[3] = {30, 0, 7};
        ASSERT_MSG(ep_check_cpu(env, &p, 3, split, MOE_DTYPE_BF16, MOE_EP_ALL_TO_ALL, 1, ep_kind_name[kind]),
                   "%s with parts 30, 0, 7 differs", ep_kind_name[kind]);
        ASSERT_MSG(ep_check_cpu(env, &p, 3, split, MOE_DTYPE_F32, MOE_EP_LOW_LATENCY, 0, ep_kind_name[kind]),
                   "%s with parts 30, 0, 7 (low latency) differs", ep_kind_name[kind]);
        layer_problem_free(&p);
    }
    return TEST_OK;
}

/* Every token to rank 0's experts; a step with no tokens anywhere. */
TEST_IMPL(ep_cpu_skewed) {
    moe_layer_config c = ep_config(0, 32, 16);
    layer_problem p;
    layer_problem_random(&p, &c, 50, 1, env->seed);
    for (int64_t t = 0; t < p.T; t++)
        for (int e = 0; e < 12; e++) p.logits[t * 12 + e] = e < 3 ? 10.0f + (float)e : -10.0f;
    for (int n = 2; n <= 4; n++) {
        ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_BF16, MOE_EP_ALL_TO_ALL, 1, "skewed"),
                   "every token to rank 0, %d ranks", n);
        ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_BF16, MOE_EP_LOW_LATENCY, 1, "skewed"),
                   "every token to rank 0, %d ranks (low latency)", n);
    }
    layer_problem_free(&p);
    layer_problem_random(&p, &c, 0, 1, env->seed);
    ASSERT(ep_check_cpu(env, &p, 3, NULL, MOE_DTYPE_BF16, MOE_EP_ALL_TO_ALL, 1, "T = 0"));
    ASSERT(ep_check_cpu(env, &p, 3, NULL, MOE_DTYPE_BF16, MOE_EP_ALLGATHER, 1, "T = 0"));
    ASSERT(ep_check_cpu(env, &p, 3, NULL, MOE_DTYPE_BF16, MOE_EP_LOW_LATENCY, 1, "T = 0"));
    layer_problem_free(&p);
    return TEST_OK;
}

/* Hash routing (a token's experts from a table by its token id): with a softmax score over the table's experts and
 * without a score (weights 1/k, no logits at all). */
TEST_IMPL(ep_cpu_hash) {
    for (int score = 0; score < 2; score++) {
        moe_layer_config c = ep_config(0, 40, 24);
        c.router.kind = MOE_ROUTER_HASH, c.router.score = score ? MOE_SCORE_SOFTMAX : MOE_SCORE_NONE;
        c.router.hash_vocab = 97, c.router.renormalize = 0;
        layer_problem p;
        layer_problem_random(&p, &c, 41, score, env->seed + (uint64_t)score);
        if (p.logits) /* no all-NaN rows: a hashed token always has its experts */
            for (int64_t i = 0; i < p.T * 12; i++)
                if (p.logits[i] != p.logits[i]) p.logits[i] = 0.5f;
        const char *what = score ? "hash, softmax" : "hash, no score";
        for (int n = 1; n <= 3; n++)
            for (int b = MOE_EP_ALL_TO_ALL; b <= MOE_EP_LOW_LATENCY; b++)
                ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_BF16, (moe_ep_backend)b, score, what),
                           "%s, %d ranks, backend %d", what, n, b);
        layer_problem_free(&p);
    }
    return TEST_OK;
}

/* FP8 on the wire: the routed experts see x rounded through FP8 1x128 (f32 scales) and back to bf16; the router
 * and the shared experts see the rank's own x. Without shared experts: the same bits as the layer on the rounded
 * x; with them (Qwen2-MoE): within bf16 rounding of the layer. */
static int ep_fp8_input(moe_ctx *ctx, const layer_problem *p, float *xr) {
    const int64_t T = p->T, H = p->c.hidden, n = T * H;
    float *xb = malloc(sizeof(float) * (size_t)n + 4);
    uint16_t *back = malloc(2 * (size_t)n + 4);
    moe_qformat f = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    moe_qsizes qs;
    int ok = moe_qtensor_sizes(ctx, &f, 2, (int64_t[]){T, H}, &qs) == MOE_OK;
    void *data = malloc(qs.data_bytes + 4), *scale = malloc(qs.scale_bytes + 4);
    for (int64_t i = 0; i < n; i++) xb[i] = moe_bf16_to_f32(moe_bf16_from_f32(p->x[i]));
    moe_tensor xt = moe_tensor_2d(xb, MOE_DTYPE_F32, T, H), bt = moe_tensor_2d(back, MOE_DTYPE_BF16, T, H);
    moe_qtensor q = {f, 2, {T, H}, data, scale, NULL};
    ok = ok && moe_quantize(ctx, &xt, &q, NULL) == MOE_OK && moe_dequantize(ctx, &q, &bt, NULL) == MOE_OK;
    for (int64_t i = 0; i < n && ok; i++) xr[i] = moe_bf16_to_f32(back[i]);
    free(xb), free(back), free(data), free(scale);
    return ok;
}

TEST_IMPL(ep_cpu_fp8_wire) {
    for (int kind = 0; kind < 5; kind += 2) {
        moe_layer_config c = ep_config(kind, 264, 24); /* H = 2 x 128 + 8: a partial 1x128 group */
        layer_problem p;
        layer_problem_random(&p, &c, 21, 1, env->seed + (uint64_t)kind);
        moe_ctx *ctxs[2] = {0};
        moe_comm *comms[2] = {0};
        ASSERT(ep_cpu_ranks(2, ctxs, comms));
        const int64_t TH = p.T * 264;
        float *out = calloc((size_t)TH, sizeof(float)), *want = calloc((size_t)TH, sizeof(float));
        ep_job jobs[2];
        ep_jobs_make(jobs, comms, 2, &p, NULL, out);
        for (int r = 0; r < 2; r++) jobs[r].dtype = MOE_DTYPE_BF16, jobs[r].wire = MOE_DTYPE_E4M3, jobs[r].use_logits = 1;
        ep_jobs_run_threads(jobs, 2);
        ASSERT(ep_jobs_ok(jobs, 2));
        layer_problem q = p;
        float *xr = malloc(sizeof(float) * (size_t)TH);
        ASSERT(ep_fp8_input(env->cpu, &p, xr));
        q.x = xr;
        ASSERT_OK(env->cpu, layer_run(env->cpu, &q, MOE_DTYPE_BF16, 1, want, 0));
        if (!c.n_shared)
            ASSERT_MSG(ep_same(out, want, TH, ep_kind_name[kind]), "%s: FP8 wire differs from the layer on FP8 input",
                       ep_kind_name[kind]);
        /* and the wire's rounding is visible: it is not the bf16 result */
        ASSERT_OK(env->cpu, layer_run(env->cpu, &p, MOE_DTYPE_BF16, 1, want, 0));
        ASSERT(test_rel_l2(out, want, TH) > 0 && test_rel_l2(out, want, TH) < 0.1);
        ep_cpu_ranks_free(2, ctxs, comms);
        free(out), free(want), free(xr);
        layer_problem_free(&p);
    }
    return TEST_OK;
}

TEST_IMPL(ep_cpu_allgather) {
    uint64_t seed = env->seed + 100;
    for (int kind = 0; kind < 5; kind++) {
        moe_layer_config c = ep_config(kind, 40, 24);
        layer_problem p;
        layer_problem_random(&p, &c, 29, 1, seed++);
        const int64_t split[3] = {20, 0, 9};
        for (int n = 1; n <= 4; n++)
            ASSERT_MSG(ep_check_cpu(env, &p, n, NULL, MOE_DTYPE_F32, MOE_EP_ALLGATHER, 1, ep_kind_name[kind]),
                       "%s all-gather over %d ranks", ep_kind_name[kind], n);
        ASSERT(ep_check_cpu(env, &p, 3, split, MOE_DTYPE_BF16, MOE_EP_ALLGATHER, 0, ep_kind_name[kind]));
        layer_problem_free(&p);
    }
    return TEST_OK;
}

/* EPLB in the loop: two hot experts (10 and 11: not among the replicas of the first placement, p mod E), E + N
 * slots; the forward before and after a rebalance equals the layer bit
 * for bit (the moved weights arrive whole: the rebalance checks their checksums too), the hot experts get
 * replicas, the balance does not get worse. */
static int ep_check_eplb(test_env *env, moe_comm **comms, int n, const layer_problem *p, moe_ep_backend backend,
                         moe_ctx *ref, const char *what) {
    const int64_t TH = p->T * p->c.hidden;
    const int E = p->c.router.n_experts;
    float *out = calloc((size_t)TH + 1, sizeof(float)), *want = calloc((size_t)TH + 1, sizeof(float));
    ep_job jobs[4];
    ep_jobs_make(jobs, comms, n, p, NULL, out);
    for (int r = 0; r < n; r++)
        jobs[r].dtype = MOE_DTYPE_BF16, jobs[r].backend = backend, jobs[r].use_logits = 1,
        jobs[r].n_physical = E + (n < 2 ? 2 : n), jobs[r].rebalance = 1; /* room for both hot experts' replicas */
    ep_jobs_run_threads(jobs, n);
    int ok = ep_jobs_ok(jobs, n) && layer_run(ref, p, MOE_DTYPE_BF16, 1, want, 0) == MOE_OK;
    if (ok) ok = ep_same(out, want, TH, what);
    int replicas[2] = {0, 0};
    for (int q = 0; ok && q < jobs[0].n_physical; q++)
        if (jobs[0].placement[q] >= 10) replicas[jobs[0].placement[q] - 10]++;
    if (ok && (replicas[0] < 2 || replicas[1] < 2 || jobs[0].balance[1] < jobs[0].balance[0])) {
        fprintf(stderr, "    %s: hot experts have %d and %d slots; balance %.3f -> %.3f\n", what, replicas[0],
                replicas[1], jobs[0].balance[0], jobs[0].balance[1]);
        ok = 0;
    }
    (void)env;
    free(out), free(want);
    return ok;
}

TEST_IMPL(ep_cpu_eplb) {
    for (int kind = 0; kind < 3; kind++) {
        moe_layer_config c = ep_config(kind, 40, 24);
        layer_problem p;
        layer_problem_random(&p, &c, 48, 1, env->seed + (uint64_t)kind);
        for (int64_t t = 0; t < p.T; t++) p.logits[t * 12 + 10] += 4.0f, p.logits[t * 12 + 11] += 4.0f;
        for (int n = 2; n <= 4; n++) {
            moe_ctx *ctxs[4] = {0};
            moe_comm *comms[4] = {0};
            ASSERT(ep_cpu_ranks(n, ctxs, comms));
            for (int b = MOE_EP_ALL_TO_ALL; b <= MOE_EP_LOW_LATENCY; b += 2)
                ASSERT_MSG(ep_check_eplb(env, comms, n, &p, (moe_ep_backend)b, env->cpu, ep_kind_name[kind]),
                           "%s, %d ranks, EPLB", ep_kind_name[kind], n);
            ep_cpu_ranks_free(n, ctxs, comms);
        }
        layer_problem_free(&p);
    }
    return TEST_OK;
}

/* Random layers over random CPU ranks against the single layer: 1-4 ranks, each router family of ep_config with E
 * from 4 to 32 (a multiple of the ranks; DeepSeek's 4 groups of 2 or more) and k from 1 to 4, widths 8-64, T of 0-41
 * split at random (idle ranks included), f32 or bf16, given logits or the gate, each backend: the all-to-all and
 * low-latency backends the same bits, the all-gather within rounding. */
TEST_IMPL(ep_cpu_random) {
    uint64_t st = env->seed ^ 0xE9E9ull;
    int cases = 0;
    for (int it = 0; it < 40; it++) {
        const int n = 1 + (int)(test_splitmix64(&st) % 4), kind = (int)(test_splitmix64(&st) % 5);
        static const int Hs[] = {8, 16, 40, 64}, Is[] = {8, 24, 32}, Es[] = {4, 8, 12, 16, 24, 32};
        static const int Ts[] = {0, 1, 5, 17, 41};
        moe_layer_config c = ep_config(kind, Hs[test_splitmix64(&st) % 4], Is[test_splitmix64(&st) % 3]);
        int E = 0;
        for (int tries = 0; tries < 20 && (E == 0 || E % n || (kind == 1 && E % 8)); tries++)
            E = Es[test_splitmix64(&st) % 6];
        if (E % n || (kind == 1 && E % 8)) continue; /* DeepSeek: 4 groups of 2 or more (its top-2 group score) */
        c.router.n_experts = E;
        c.router.top_k = kind == 3 ? 1 : 1 + (int)(test_splitmix64(&st) % (E < 4 ? (uint64_t)E : 4));
        if (kind == 1) c.router.topk_groups = 2 + (int)(test_splitmix64(&st) % 3); /* 2-4 of the 4 groups */
        if (kind == 1 && c.router.topk_groups * (E / 4) < c.router.top_k) c.router.topk_groups = 4;
        const int64_t T = Ts[test_splitmix64(&st) % 5];
        int64_t split[4] = {0, 0, 0, 0}, left = T;
        for (int r = 0; r < n - 1; r++)
            split[r] = left ? (int64_t)(test_splitmix64(&st) % (uint64_t)(left + 1)) : 0, left -= split[r];
        split[n - 1] = left;
        const moe_dtype dt = test_splitmix64(&st) % 2 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32;
        const moe_ep_backend b = (moe_ep_backend)(test_splitmix64(&st) % 3);
        const int use_logits = (int)(test_splitmix64(&st) % 2);
        layer_problem p;
        layer_problem_random(&p, &c, T, 1, test_splitmix64(&st));
        moe_ctx *ctxs[4] = {0};
        moe_comm *comms[4] = {0};
        ASSERT(ep_cpu_ranks(n, ctxs, comms));
        char what[96];
        snprintf(what, sizeof what, "%s E %d k %d H %d I %d", ep_kind_name[kind], E, c.router.top_k, c.hidden,
                 c.intermediate);
        const int ok = ep_check_on(env->cpu, comms, n, &p, split, dt, b, 0, use_logits, 0, what, NULL, 0);
        ep_cpu_ranks_free(n, ctxs, comms);
        layer_problem_free(&p);
        ASSERT_MSG(ok, "%s over %d ranks (parts %lld %lld %lld %lld, %s, backend %d, logits %d) differs", what, n,
                   (long long)split[0], (long long)split[1], (long long)split[2], (long long)split[3],
                   moe_dtype_name(dt), (int)b, use_logits);
        cases++;
    }
    ASSERT(cases >= 20);
    return TEST_OK;
}

/* A rank whose config differs: every rank fails at creation, naming the field. A rank that never joins the
 * forward: the others fail with MOE_ERR_COMM after the timeout. Bad arguments. */
TEST_IMPL(ep_errors) {
    moe_layer_config c = ep_config(0, 32, 16);
    layer_problem p;
    layer_problem_random(&p, &c, 10, 1, env->seed);
    moe_ctx *ctxs[3];
    moe_comm *comms[3];
    moe_ctx_options o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CPU, o.n_threads = 1;
    for (int r = 0; r < 3; r++) ASSERT(moe_ctx_create(&o, &ctxs[r]) == MOE_OK);
    float *out = calloc(10 * 32, sizeof(float));
    ep_job jobs[3];

    ASSERT(moe_comm_create_local(ctxs, 3, comms) == MOE_OK);
    ep_jobs_make(jobs, comms, 3, &p, NULL, out);
    jobs[2].intermediate = 24;
    ep_jobs_run_threads(jobs, 3);
    for (int r = 0; r < 3; r++)
        ASSERT_MSG(jobs[r].status == MOE_ERR_INVALID_ARG && strstr(jobs[r].message, "intermediate"),
                   "rank %d: %s", r, jobs[r].message);
    for (int r = 0; r < 3; r++) moe_comm_destroy(comms[r]);

    ASSERT(moe_comm_create_local(ctxs, 3, comms) == MOE_OK);
    /* timeouts the deadlines could not hold (seconds to time_t, to the GPU wait's nanoseconds) are capped;
     * zero, negative and NaN leave the timeout as it was */
    const double asked[] = {INFINITY, 1e300, 2.0, NAN, -1.0, 0.0, 5.0};
    const double kept[] = {MOE_COMM_TIMEOUT_MAX_S, MOE_COMM_TIMEOUT_MAX_S, 2.0, 2.0, 2.0, 2.0, 5.0};
    for (int i = 0; i < 7; i++) {
        moe_comm_set_timeout(comms[0], asked[i]);
        ASSERT_MSG(comms[0]->timeout_s == kept[i], "asked %g: %g", asked[i], comms[0]->timeout_s);
    }
    for (int r = 0; r < 3; r++) moe_comm_set_timeout(comms[r], 0.3);
    ep_jobs_make(jobs, comms, 3, &p, NULL, out);
    jobs[1].skip_forward = 1;
    const double t0 = test_now_ms();
    ep_jobs_run_threads(jobs, 3);
    ASSERT(test_now_ms() - t0 < 5000);
    ASSERT(jobs[1].status == MOE_OK);
    for (int r = 0; r < 3; r += 2)
        ASSERT_MSG(jobs[r].status == MOE_ERR_COMM && strstr(jobs[r].message, "did not join"), "rank %d: %s", r,
                   jobs[r].message);
    for (int r = 0; r < 3; r++) moe_comm_destroy(comms[r]);

    /* 12 experts do not split over 5 ranks; max_tokens 0; FP8 wire on an f32 layer; T > max_tokens */
    moe_ctx *five[5] = {ctxs[0], ctxs[1], ctxs[2], ctxs[0], ctxs[1]};
    moe_comm *c5[5];
    ASSERT(moe_comm_create_local(five, 5, c5) == MOE_ERR_INVALID_ARG); /* a context is one rank's */
    ASSERT(strstr(moe_last_error(ctxs[0]), "ranks 0 and 3 share a context"));
    ASSERT(moe_ctx_create(&o, &five[3]) == MOE_OK && moe_ctx_create(&o, &five[4]) == MOE_OK);
    ASSERT(moe_comm_create_local(five, 5, c5) == MOE_OK);
    moe_ep_config ec = {c, MOE_EP_ALL_TO_ALL, 0, 16, 0};
    moe_layer_weights w = {.w13 = p.w13, .w2 = p.w2};
    moe_ep *ep = NULL;
    ASSERT(moe_ep_create(c5[0], &ec, &w, &ep) == MOE_ERR_INVALID_ARG && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "do not split evenly"));
    for (int r = 0; r < 5; r++) moe_comm_destroy(c5[r]);
    moe_ctx_destroy(five[3]), moe_ctx_destroy(five[4]);
    ASSERT(moe_comm_create_local(ctxs, 1, comms) == MOE_OK);
    ec.max_tokens = 0;
    ASSERT(moe_ep_create(comms[0], &ec, &w, &ep) == MOE_ERR_INVALID_ARG);
    ec.max_tokens = INT64_MAX; /* its rows' product once wrapped before the int32 test */
    ASSERT(moe_ep_create(comms[0], &ec, &w, &ep) == MOE_ERR_INVALID_ARG && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "too many for int32 row ids"));
    ec.max_tokens = 4, ec.wire = MOE_DTYPE_E4M3;
    ASSERT(moe_ep_create(comms[0], &ec, &w, &ep) == MOE_ERR_INVALID_ARG);
    ASSERT(strstr(moe_last_error(ctxs[0]), "e4m3"));
    ec.wire = 0;
    ec.n_physical = MOE_EPLB_MAX_SLOTS + 12; /* past the slot tables' int sizes */
    ASSERT(moe_ep_create(comms[0], &ec, &w, &ep) == MOE_ERR_INVALID_ARG && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "expert slots"));
    ec.n_physical = 0;
    moe_ep_config qec = ec; /* a router config moe_route would refuse: at create */
    qec.layer.router.top_k = 0;
    ASSERT(moe_ep_create(comms[0], &qec, &w, &ep) == MOE_ERR_INVALID_ARG && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "top_k 0"));
    qec = ec; /* quantised experts: not under expert parallelism yet */
    qec.layer.expert_format = moe_qformat_preset(MOE_QFORMAT_MXFP4);
    ASSERT(moe_ep_create(comms[0], &qec, &w, &ep) == MOE_ERR_UNSUPPORTED && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "expert_format mxfp4"));
    qec.layer.expert_format.kind = MOE_QFORMAT_COUNT_; /* no format at all: a bad argument */
    ASSERT(moe_ep_create(comms[0], &qec, &w, &ep) == MOE_ERR_INVALID_ARG && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "expert_format kind"));
    qec = ec, qec.layer.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128); /* nor W8A8 */
    ASSERT(moe_ep_create(comms[0], &qec, &w, &ep) == MOE_ERR_UNSUPPORTED && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "act_format fp8_1x128"));
    qec = ec, qec.layer.n_shared = 1, qec.layer.shared_intermediate = 16; /* nor quantised shared experts */
    qec.layer.shared_format = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    ASSERT(moe_ep_create(comms[0], &qec, &w, &ep) == MOE_ERR_UNSUPPORTED && !ep);
    ASSERT(strstr(moe_last_error(ctxs[0]), "shared_format fp8_128x128"));
    ASSERT_OK(ctxs[0], moe_ep_create(comms[0], &ec, &w, &ep));
    moe_tensor xt = moe_tensor_2d(p.x, MOE_DTYPE_F32, 10, 32), yt = moe_tensor_2d(out, MOE_DTYPE_F32, 10, 32),
               lt = moe_tensor_2d(p.logits, MOE_DTYPE_F32, 10, 12);
    moe_layer_io io = {&xt, &lt, &yt, NULL, NULL, 0};
    ASSERT(moe_ep_forward(ep, &io, NULL) == MOE_ERR_INVALID_ARG);
    ASSERT(strstr(moe_last_error(ctxs[0]), "max_tokens"));
    io.logits = NULL; /* and no gate */
    xt.shape[0] = yt.shape[0] = 4;
    ASSERT(moe_ep_forward(ep, &io, NULL) == MOE_ERR_INVALID_ARG);
    moe_ep_destroy(ep);
    /* the plain all-to-all: blocks whose offsets would wrap (a size_t past int64) and NULL buffers */
    char blk[8] = {0}, got[8];
    ASSERT(moe_comm_alltoall(comms[0], blk, SIZE_MAX, got, NULL) == MOE_ERR_INVALID_ARG);
    ASSERT(strstr(moe_last_error(ctxs[0]), "64-bit offsets"));
    ASSERT(moe_comm_alltoall(comms[0], NULL, 8, got, NULL) == MOE_ERR_INVALID_ARG);
    ASSERT_OK(ctxs[0], moe_comm_alltoall(comms[0], blk, 8, got, NULL));
    moe_comm_destroy(comms[0]);
    ASSERT(moe_comm_create_local(ctxs, 0, comms) == MOE_ERR_INVALID_ARG);
    for (int r = 0; r < 3; r++) moe_ctx_destroy(ctxs[r]);
    free(out);
    layer_problem_free(&p);
    return TEST_OK;
}

/* One rank's share of p over comm against the layer on ref (this rank's rows only): all-to-all exact, all-gather
 * within bf16 rounding, low latency exact on the CPU and where every rank has max_tokens tokens. */
static int ep_check_rank(moe_ctx *ref, moe_comm *comm, const layer_problem *p, int use_logits, const char *what) {
    const int n = moe_comm_size(comm), me = moe_comm_rank(comm);
    const int64_t TH = p->T * p->c.hidden;
    float *out = calloc((size_t)TH + 1, sizeof(float)), *want = calloc((size_t)TH + 1, sizeof(float));
    int ok = n <= 4 && layer_run(ref, p, MOE_DTYPE_BF16, use_logits, want, 0) == MOE_OK;
    const int exact_ll = moe_ctx_backend(ref) == MOE_BACKEND_CPU || p->T % n == 0;
    for (int b = MOE_EP_ALL_TO_ALL; b <= MOE_EP_LOW_LATENCY && ok; b++) {
        moe_comm *all[4] = {comm, comm, comm, comm};
        ep_job jobs[4];
        ep_jobs_make(jobs, all, n, p, NULL, out);
        ep_job j = jobs[me];
        j.dtype = MOE_DTYPE_BF16, j.use_logits = use_logits, j.backend = (moe_ep_backend)b;
        ep_job_run(&j);
        if (j.status != MOE_OK) fprintf(stderr, "    rank %d: %s\n", me, j.message), ok = 0;
        const int64_t a = j.t0 * p->c.hidden, m = j.T * p->c.hidden;
        if (ok && (b == MOE_EP_ALL_TO_ALL || (b == MOE_EP_LOW_LATENCY && exact_ll))) ok = ep_same(out + a, want + a, m, what);
        else if (ok && m) ok = test_rel_l2(out + a, want + a, m) < 1e-2;
    }
    free(out), free(want);
    return ok;
}

/* Under `mpirun -np N` (N = 1..4): a process per rank over MPI, the same problem on every rank (MOE_TEST_SEED
 * must be set so that all ranks draw it); with GPUs, also a GPU a rank (the local rank's) over NCCL bootstrapped
 * through MPI. Outside mpirun: skipped. */
TEST_IMPL(ep_mpi) {
    if (!moe_built_with_mpi()) SKIP("built without MPI");
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE")) SKIP("not under mpirun (make test runs it there)");
    ASSERT_MSG(getenv("MOE_TEST_SEED"), "under mpirun every rank needs the same MOE_TEST_SEED");
    /* the GPU comm first: the first comm initialises MPI and finalises it when destroyed, so it goes last */
    moe_ctx *gpu = NULL;
    moe_comm *gcomm = NULL, *comm = NULL;
    if (env->gpu) {
        moe_ctx_options o = moe_ctx_options_default();
        const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
        o.backend = MOE_BACKEND_CUDA, o.device = lr ? atoi(lr) : 0;
        ASSERT(moe_ctx_create(&o, &gpu) == MOE_OK);
        ASSERT_OK(gpu, moe_comm_create_mpi(gpu, &gcomm));
    }
    ASSERT_OK(env->cpu, moe_comm_create_mpi(env->cpu, &comm));
    const int n = moe_comm_size(comm), me = moe_comm_rank(comm);
    int ok = 1;
    for (int kind = 0; kind < 5 && ok; kind++) {
        moe_layer_config c = ep_config(kind, 40, 24);
        layer_problem p;
        layer_problem_random(&p, &c, 33, 1, env->seed + (uint64_t)kind);
        ok = ep_check_rank(env->cpu, comm, &p, kind % 2, ep_kind_name[kind]);
        layer_problem_free(&p);
    }
    moe_comm_destroy(comm);
    for (int kind = 0; kind < 5 && ok && gcomm; kind++) {
        moe_layer_config c = ep_config(kind, 264, 96);
        layer_problem p;
        layer_problem_random(&p, &c, 300, 1, env->seed + (uint64_t)kind);
        ok = ep_check_rank(gpu, gcomm, &p, 1, ep_kind_name[kind]);
        layer_problem_free(&p);
    }
    moe_comm_destroy(gcomm);
    moe_ctx_destroy(gpu);
    ASSERT_MSG(ok, "rank %d of %d: expert parallelism over MPI%s differs from the layer", me, n,
               gpu ? " (and NCCL)" : "");
    return TEST_OK;
}

/* GPUs of this machine (up to 2) as ranks over NCCL, threads of this process: the same bits as the layer on one
 * GPU given the router logits (decode and prefill sizes, idle rank); from the gate weight within bf16 rounding
 * (the gate's split over H follows the rank's own T); FP8 on the wire; the all-gather backend; the low-latency
 * backend captured in a CUDA graph and replayed. */
TEST_IMPL(gpu_ep) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *ctxs[2] = {env->gpu, NULL};
    moe_ctx_options o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CUDA, o.device = 1;
    const int n = moe_ctx_create(&o, &ctxs[1]) == MOE_OK ? 2 : 1;
    moe_comm *comms[2];
    ASSERT_OK(env->gpu, moe_comm_create_local(ctxs, n, comms));
    printf("    gpu_ep: %d GPU rank%s over NCCL\n", n, n > 1 ? "s" : "");
    uint64_t seed = env->seed;
    int bad = 0;
    const int64_t sizes[] = {3, 300};
    for (int kind = 0; kind < 5; kind++)
        for (int si = 0; si < 2; si++) {
            moe_layer_config c = ep_config(kind, 264, 96);
            c.dtype = MOE_DTYPE_BF16;
            layer_problem p;
            layer_problem_random(&p, &c, sizes[si], 1, seed++);
            const char *w = ep_kind_name[kind];
            const moe_dtype B = MOE_DTYPE_BF16;
            bad += !ep_check_on(env->gpu, comms, n, &p, NULL, B, MOE_EP_ALL_TO_ALL, 0, 1, 0, w, NULL, 0);
            bad += !ep_check_on(env->gpu, comms, n, &p, NULL, B, MOE_EP_ALL_TO_ALL, 0, 0, 1e-2, w, NULL, 0);
            bad += !ep_check_on(env->gpu, comms, n, &p, NULL, B, MOE_EP_ALLGATHER, 0, 1, 0, w, NULL, 0);
            /* low latency, captured in a graph: every rank at max_tokens (T split evenly) picks the layer's
             * kernels; an idle rank makes the kernels those of 2 T tokens (within rounding) */
            bad += !ep_check_on(env->gpu, comms, n, &p, NULL, B, MOE_EP_LOW_LATENCY, 0, 1, 0, w, NULL, 1);
            if (n == 2) {
                const int64_t split[2] = {0, p.T};
                bad += !ep_check_on(env->gpu, comms, n, &p, split, B, MOE_EP_ALL_TO_ALL, 0, 1, 0, w, NULL, 0);
                bad += !ep_check_on(env->gpu, comms, n, &p, split, B, MOE_EP_LOW_LATENCY, 0, 1, 1e-2, w, NULL, 1);
            }
            if (si == 1 && kind < 3) { /* EPLB: two hot experts, replicas, weights moved between the GPUs */
                layer_problem h = p;
                float *lg = malloc(sizeof(float) * (size_t)(p.T * 12));
                memcpy(lg, p.logits, sizeof(float) * (size_t)(p.T * 12));
                for (int64_t t = 0; t < p.T; t++) lg[t * 12 + 10] += 4.0f, lg[t * 12 + 11] += 4.0f;
                h.logits = lg;
                bad += !ep_check_eplb(env, comms, n, &h, MOE_EP_ALL_TO_ALL, env->gpu, w);
                free(lg);
            }
            if (!c.n_shared) { /* FP8 wire: the layer on the FP8-rounded x */
                layer_problem q = p;
                float *xr = malloc(sizeof(float) * (size_t)(p.T * 264));
                ASSERT(ep_fp8_input(env->cpu, &p, xr));
                q.x = xr;
                bad += !ep_check_on(env->gpu, comms, n, &p, NULL, B, MOE_EP_ALL_TO_ALL, MOE_DTYPE_E4M3, 1, 0, w, &q, 0);
                bad += !ep_check_on(env->gpu, comms, n, &p, NULL, B, MOE_EP_LOW_LATENCY, MOE_DTYPE_E4M3, 1, 0, w, &q, 1);
                free(xr);
            }
            layer_problem_free(&p);
        }
    /* low latency over peer access: a peer that never comes (but keeps its buffers) makes the wait give up after
     * the timeout, and the next forward says so. (Over NCCL the low-latency backend has no host wait to time out:
     * see docs/ep.md.) */
    const char *p2p_env = getenv("MOE_EP_P2P");
    if (n == 2 && !(p2p_env && !strcmp(p2p_env, "0"))) {
        moe_layer_config c = ep_config(0, 264, 96);
        c.dtype = MOE_DTYPE_BF16;
        layer_problem p;
        layer_problem_random(&p, &c, 20, 1, seed++);
        float *out = calloc((size_t)(20 * 264), sizeof(float));
        ep_job jobs[2];
        for (int r = 0; r < 2; r++) moe_comm_set_timeout(comms[r], 0.3);
        ep_jobs_make(jobs, comms, 2, &p, NULL, out);
        for (int r = 0; r < 2; r++) jobs[r].dtype = MOE_DTYPE_BF16, jobs[r].backend = MOE_EP_LOW_LATENCY, jobs[r].use_logits = 1;
        jobs[0].again = 1, jobs[1].skip_forward = 1, jobs[1].linger_ms = 2000;
        ep_jobs_run_threads(jobs, 2);
        ASSERT_MSG(jobs[0].status == MOE_ERR_COMM && strstr(jobs[0].message, "did not hand over"), "rank 0: %s (%s)",
                   moe_status_string(jobs[0].status), jobs[0].message);
        free(out);
        layer_problem_free(&p);
    }
    for (int r = 0; r < n; r++) moe_comm_destroy(comms[r]);
    if (ctxs[1]) moe_ctx_destroy(ctxs[1]);
    ASSERT_MSG(bad == 0, "%d expert-parallel runs differ from the layer", bad);
    return TEST_OK;
}
