/* cmd_bench_ep.c — `moe bench ep`: one MoE layer split over the ranks of this process (every local GPU over
 * NCCL, or CPU ranks as threads), the all-to-all (or all-gather) backend timed phase by phase, and the transport's
 * plain all-to-all of the same bytes per peer timed in the same run: the yardstick of the dispatch and the
 * combine. Weights are a constant (their values do not change the traffic); x and the router logits are random,
 * so tokens spread over the experts as a balanced router spreads them. */
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *usage =
    "usage: moe bench ep [options]\n"
    "  --model NAME    a layer preset (default deepseek-v3 on GPUs, qwen3-30b-a3b on the CPU)\n"
    "  --tokens LIST   tokens a rank, e.g. 128,4096 (default 128,4096 on GPUs, 16 on the CPU)\n"
    "  --wire W        fp8 (1x128, default) or bf16\n"
    "  --ranks N       ranks (default: every GPU of this machine, or 2 CPU ranks)\n"
    "  --ep-backend B  all-to-all (default), all-gather or low-latency (also timed as CUDA-graph replays)\n"
    "  --reps N        timed forwards a token count (default 20 on GPUs, 2 on the CPU)\n"
    "  --skew X        add X to the router logits of the last E/16 experts (hot experts, on the last rank and\n"
    "                  not among the replicas of the first placement; default 0)\n"
    "  --eplb-interval K  EPLB in the loop: moe_ep_rebalance every K forwards (untimed), E/8 redundant slots\n"
    "  --backend B     auto (default), cpu, cuda\n"
    "  --json FILE     write the results as JSON\n";

enum { MAX_RANKS = 8, MAX_REPS = 256 };

typedef struct bench_rank {
    moe_ctx *ctx;
    moe_comm *comm;
    const moe_layer_config *c;
    moe_ep_config ec;
    int64_t T;
    int reps;
    uint64_t seed;
    moe_ep_timing t[MAX_REPS];
    double total_ms[MAX_REPS];
    double graph_ms[MAX_REPS];    /* low latency on a GPU: a replay of the captured forward */
    double skew;
    int eplb_interval, forwards;
    double balance0, balance;     /* before the first rebalance of a token count, after its last */
    int64_t a2a_bytes;            /* per peer, for the yardstick (pass 2) */
    double a2a_ms[MAX_REPS];
    moe_ep *ep;
    void *w[8], *x, *logits, *out, *send, *recv;
    moe_status status;
    char message[512];
} bench_rank;

static void quiet(void *user, moe_log_level level, const char *message) {
    (void)user, (void)level, (void)message;
}

static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            const double t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    return n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : 0.0;
}

#define RANK_TRY(r, expr)                                                                                              \
    do {                                                                                                               \
        if (((r)->status = (expr)) != MOE_OK) {                                                                       \
            snprintf((r)->message, sizeof (r)->message, "rank %d: %s", moe_comm_rank((r)->comm),                      \
                     moe_last_error((r)->ctx));                                                                        \
            return NULL;                                                                                               \
        }                                                                                                              \
    } while (0)

/* Pass 0: weights and the layer (once). */
static void *rank_setup(void *arg) {
    bench_rank *r = arg;
    const moe_layer_config *c = r->c;
    const int N = moe_comm_size(r->comm);
    const int64_t slots = r->ec.n_physical ? r->ec.n_physical : c->router.n_experts;
    const int64_t H = c->hidden, I = c->intermediate, El = slots / N, S = c->n_shared,
                  Is = c->shared_intermediate, E = c->router.n_experts;
    const size_t sizes[8] = {(size_t)(El * 2 * I * H * 2), (size_t)(El * H * I * 2), (size_t)(S * 2 * Is * H * 2 + 16),
                             (size_t)(S * H * Is * 2 + 16), (size_t)(El * 2 * I * 4), (size_t)(El * H * 4),
                             (size_t)(E * 4), (size_t)(H * 4)};
    for (int i = 0; i < 8; i++) {
        RANK_TRY(r, moe_alloc(r->ctx, sizes[i], &r->w[i]));
        /* bf16 0x3C3C = 0.0115 for the matrices; f32 biases 0x3C3C3C3C = 0.0115 too */
        RANK_TRY(r, moe_memset(r->ctx, r->w[i], i == 6 ? 0 : 0x3C, sizes[i], NULL));
    }
    moe_layer_weights w = {.w13 = r->w[0], .w2 = r->w[1], .shared_w13 = S ? r->w[2] : NULL,
                           .shared_w2 = S ? r->w[3] : NULL, .shared_gate = c->shared_gate ? r->w[7] : NULL};
    if (c->activation == MOE_ACT_GPTOSS_GLU) w.b13 = r->w[4], w.b2 = r->w[5];
    r->ec.layer.router.bias = c->router.bias ? r->w[6] : NULL;
    RANK_TRY(r, moe_ep_create(r->comm, &r->ec, &w, &r->ep));
    RANK_TRY(r, moe_ep_set_profiling(r->ep, 1));
    const int64_t M = r->ec.max_tokens;
    RANK_TRY(r, moe_alloc(r->ctx, (size_t)(M * H * 2), &r->x));
    RANK_TRY(r, moe_alloc(r->ctx, (size_t)(M * E * 4), &r->logits));
    RANK_TRY(r, moe_alloc(r->ctx, (size_t)(M * H * 2), &r->out));
    return NULL;
}

/* Pass 1: random x and logits for T tokens, warm-up, reps profiled forwards. */
static void *rank_forward(void *arg) {
    bench_rank *r = arg;
    const moe_layer_config *c = r->c;
    const int64_t T = r->T, H = c->hidden, E = c->router.n_experts;
    float *h = malloc(sizeof(float) * (size_t)(T * (H > E ? H : E) + 1));
    uint16_t *hb = malloc(2 * (size_t)(T * H + 1));
    if (!h || !hb) {
        free(h), free(hb);
        r->status = MOE_ERR_OOM;
        snprintf(r->message, sizeof r->message, "rank %d: no host memory for %lld tokens", moe_comm_rank(r->comm),
                 (long long)T);
        return NULL;
    }
    cli_random(h, T * H, "normal", r->seed);
    for (int64_t i = 0; i < T * H; i++) hb[i] = moe_bf16_from_f32(h[i]);
    RANK_TRY(r, moe_memcpy(r->ctx, r->x, hb, (size_t)(T * H * 2), MOE_COPY_HOST_TO_CTX, NULL));
    cli_random(h, T * E, "normal", r->seed + 1);
    for (int64_t t = 0; t < T; t++)
        for (int64_t e = E - (E + 15) / 16; e < E; e++) h[t * E + e] += (float)r->skew;
    RANK_TRY(r, moe_memcpy(r->ctx, r->logits, h, (size_t)(T * E * 4), MOE_COPY_HOST_TO_CTX, NULL));
    RANK_TRY(r, moe_sync(r->ctx, NULL));
    free(h), free(hb);
    moe_tensor xt = moe_tensor_2d(r->x, MOE_DTYPE_BF16, T, H), yt = moe_tensor_2d(r->out, MOE_DTYPE_BF16, T, H);
    moe_tensor lt = moe_tensor_2d(r->logits, MOE_DTYPE_F32, T, E);
    moe_layer_io io = {&xt, &lt, &yt, NULL, NULL, 0};
    for (int i = 0; i < 3; i++) RANK_TRY(r, moe_ep_forward(r->ep, &io, NULL));
    for (int i = 0; i < r->reps; i++) {
        if (r->eplb_interval && ++r->forwards % r->eplb_interval == 0) {
            double before = 0;
            RANK_TRY(r, moe_ep_rebalance(r->ep, &before, &r->balance, NULL));
            if (r->balance0 == 0) r->balance0 = before;
        }
        RANK_TRY(r, moe_sync(r->ctx, NULL));
        const double t0 = cli_now_ms();
        RANK_TRY(r, moe_ep_forward(r->ep, &io, NULL));
        RANK_TRY(r, moe_sync(r->ctx, NULL));
        r->total_ms[i] = cli_now_ms() - t0;
        RANK_TRY(r, moe_ep_last_timing(r->ep, &r->t[i]));
    }
    if (r->ec.backend == MOE_EP_LOW_LATENCY && moe_ctx_backend(r->ctx) == MOE_BACKEND_CUDA) {
        moe_graph *g = NULL;
        RANK_TRY(r, moe_ep_set_profiling(r->ep, 0));
        RANK_TRY(r, moe_graph_begin(r->ctx, NULL));
        const moe_status fs = moe_ep_forward(r->ep, &io, NULL);
        RANK_TRY(r, moe_graph_end(r->ctx, NULL, &g));
        RANK_TRY(r, fs);
        for (int i = 0; i < 3; i++) RANK_TRY(r, moe_graph_replay(r->ctx, g, NULL));
        for (int i = 0; i < r->reps; i++) {
            RANK_TRY(r, moe_sync(r->ctx, NULL));
            const double t0 = cli_now_ms();
            RANK_TRY(r, moe_graph_replay(r->ctx, g, NULL));
            RANK_TRY(r, moe_sync(r->ctx, NULL));
            r->graph_ms[i] = cli_now_ms() - t0;
        }
        moe_graph_destroy(r->ctx, g);
        RANK_TRY(r, moe_ep_set_profiling(r->ep, 1));
    }
    return NULL;
}

/* Pass 2: the transport's all-to-all of a2a_bytes a peer. */
static void *rank_alltoall(void *arg) {
    bench_rank *r = arg;
    const int N = moe_comm_size(r->comm);
    const size_t b = (size_t)(r->a2a_bytes + 15) / 16 * 16;
    moe_free(r->ctx, r->send), moe_free(r->ctx, r->recv);
    r->send = r->recv = NULL;
    RANK_TRY(r, moe_alloc(r->ctx, b * (size_t)N + 16, &r->send));
    RANK_TRY(r, moe_alloc(r->ctx, b * (size_t)N + 16, &r->recv));
    for (int i = 0; i < 3; i++) RANK_TRY(r, moe_comm_alltoall(r->comm, r->send, b, r->recv, NULL));
    for (int i = 0; i < r->reps; i++) {
        RANK_TRY(r, moe_sync(r->ctx, NULL));
        const double t0 = cli_now_ms();
        RANK_TRY(r, moe_comm_alltoall(r->comm, r->send, b, r->recv, NULL));
        RANK_TRY(r, moe_sync(r->ctx, NULL));
        r->a2a_ms[i] = cli_now_ms() - t0;
    }
    return NULL;
}

static int run_pass(bench_rank *ranks, int n, void *(*fn)(void *)) {
    pthread_t th[MAX_RANKS];
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, fn, &ranks[i]);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    int ok = 1;
    for (int i = 0; i < n; i++)
        if (ranks[i].status != MOE_OK) fprintf(stderr, "moe bench ep: %s\n", ranks[i].message), ok = 0;
    return ok;
}

int bench_ep(int argc, char **argv) {
    static const struct option opts[] = {{"model", 1, 0, 'm'},      {"tokens", 1, 0, 't'}, {"wire", 1, 0, 'w'},
                                         {"ranks", 1, 0, 'n'},      {"reps", 1, 0, 'r'},   {"backend", 1, 0, 'b'},
                                         {"ep-backend", 1, 0, 'e'}, {"json", 1, 0, 'j'},   {"help", 0, 0, 'h'},
                                         {"skew", 1, 0, 's'},       {"eplb-interval", 1, 0, 'i'}, {0, 0, 0, 0}};
    const char *model = NULL, *tokens = NULL, *wire = "fp8", *backend = "auto", *ep_backend = "all-to-all",
               *json_path = NULL;
    int n = 0, reps = 0, eplb_interval = 0;
    double skew = 0;
    optind = 1;
    for (int ch; (ch = getopt_long(argc, argv, "h", opts, NULL)) != -1;) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 't': tokens = optarg; break;
        case 'w': wire = optarg; break;
        case 'n':
            if (cli_int("--ranks", optarg, 0, MAX_RANKS, &n)) return CLI_USAGE;
            break;
        case 'r':
            if (cli_int("--reps", optarg, 0, MAX_REPS, &reps)) return CLI_USAGE;
            break;
        case 'b': backend = optarg; break;
        case 'e': ep_backend = optarg; break;
        case 'j': json_path = optarg; break;
        case 's':
            if (cli_real("--skew", optarg, -1e30, 1e30, &skew)) return CLI_USAGE;
            break;
        case 'i':
            if (cli_int("--eplb-interval", optarg, 0, 1000000, &eplb_interval)) return CLI_USAGE;
            break;
        case 'h': fputs(usage, stdout); return CLI_OK;
        default: fputs(usage, stderr); return CLI_USAGE;
        }
    }
    const moe_ep_backend eb = !strcmp(ep_backend, "all-gather")    ? MOE_EP_ALLGATHER
                              : !strcmp(ep_backend, "low-latency") ? MOE_EP_LOW_LATENCY
                                                                   : MOE_EP_ALL_TO_ALL;
    if ((strcmp(wire, "fp8") && strcmp(wire, "bf16")) || (eb == MOE_EP_ALL_TO_ALL && strcmp(ep_backend, "all-to-all"))) {
        fprintf(stderr, "moe bench ep: --wire fp8|bf16, --ep-backend all-to-all|all-gather|low-latency\n");
        return CLI_USAGE;
    }
    /* the ranks: every GPU (or --ranks of them), else CPU ranks */
    moe_ctx *ctxs[MAX_RANKS] = {0};
    moe_ctx *first = cli_ctx(backend, 0);
    if (!first) return CLI_FAIL;
    const int gpu = moe_ctx_backend(first) == MOE_BACKEND_CUDA;
    ctxs[0] = first;
    int have = 1;
    for (; have < (n ? n : MAX_RANKS); have++) {
        moe_ctx_options o = moe_ctx_options_default();
        o.backend = gpu ? MOE_BACKEND_CUDA : MOE_BACKEND_CPU, o.device = have;
        if (!n) o.log = quiet; /* probing for GPUs: the one past the last is no news */
        if (!gpu) o.n_threads = 1;
        if (!gpu && !n && have == 2) break;
        if (moe_ctx_create(&o, &ctxs[have]) != MOE_OK) break;
    }
    if (n && have < n) {
        fprintf(stderr, "moe bench ep: %d ranks asked for, %d %s here\n", n, have, gpu ? "GPUs" : "contexts");
        for (int i = 0; i < have; i++) moe_ctx_destroy(ctxs[i]);
        return CLI_FAIL;
    }
    n = have;
    if (!model) model = gpu ? "deepseek-v3" : "qwen3-30b-a3b";
    if (!tokens) tokens = gpu ? "128,4096" : "16";
    if (!reps) reps = gpu ? 20 : 2;
    moe_layer_config c;
    int64_t Ts[16];
    const int nT = cli_parse_tokens(tokens, Ts, 16);
    if (moe_layer_preset(model, &c) != MOE_OK || nT == 0 || c.router.n_experts % n) {
        if (nT)
            fprintf(stderr, "moe bench ep: unknown model '%s', or experts that do not split over %d ranks\n", model, n);
        for (int i = 0; i < n; i++) moe_ctx_destroy(ctxs[i]);
        return CLI_USAGE;
    }
    if (c.router.kind == MOE_ROUTER_GROUPED && c.router.bias == NULL) c.router.bias = (const float *)1; /* set per rank */
    moe_comm *comms[MAX_RANKS];
    if (moe_comm_create_local(ctxs, n, comms) != MOE_OK) {
        fprintf(stderr, "moe bench ep: %s\n", moe_last_error(ctxs[0]));
        for (int i = 0; i < n; i++) moe_ctx_destroy(ctxs[i]);
        return CLI_FAIL;
    }
    int64_t M = 1;
    for (int i = 0; i < nT; i++) M = Ts[i] > M ? Ts[i] : M;
    bench_rank *ranks = calloc((size_t)n, sizeof *ranks);
    if (!ranks) {
        fprintf(stderr, "moe bench ep: no host memory\n");
        for (int i = 0; i < n; i++) moe_comm_destroy(comms[i]), moe_ctx_destroy(ctxs[i]);
        return CLI_FAIL;
    }
    /* EPLB: E/8 redundant slots, rounded up to a multiple of the ranks */
    const int redundant = eplb_interval ? ((c.router.n_experts / 8 + n - 1) / n) * n : 0;
    for (int i = 0; i < n; i++) {
        ranks[i].ctx = ctxs[i], ranks[i].comm = comms[i], ranks[i].c = &c, ranks[i].reps = reps;
        ranks[i].skew = skew, ranks[i].eplb_interval = eplb_interval;
        ranks[i].ec = (moe_ep_config){c, eb, !strcmp(wire, "fp8") && eb != MOE_EP_ALLGATHER ? MOE_DTYPE_E4M3
                                                                                          : MOE_DTYPE_BF16, M,
                                      redundant ? c.router.n_experts + redundant : 0};
    }
    printf("moe bench ep: %s, %d ranks (%s), %s, %s on the wire, skew %g, EPLB %s (%d redundant slots), commit %s\n",
           model, n, moe_ctx_describe(ctxs[0]), ep_backend, wire, skew, eplb_interval ? "every K forwards" : "off",
           redundant, MOE_GIT_COMMIT);
    if (eplb_interval) printf("  K = %d\n", eplb_interval);
    int rc = run_pass(ranks, n, rank_setup) ? CLI_OK : CLI_FAIL;
    json_t *results = json_array();
    if (rc == CLI_OK)
        printf("%7s %8s %8s %8s %8s %9s %8s %9s %8s %9s | %9s %9s %9s %9s\n", "T/rank", "route", "pack", "counts",
               "dispatch", "experts", "combine", "finish", "total", "in/rank", "disp GB/s", "comb GB/s", "a2a GB/s",
               "a2a comb");
    for (int ti = 0; ti < nT && rc == CLI_OK; ti++) {
        for (int i = 0; i < n; i++)
            ranks[i].T = Ts[ti], ranks[i].seed = 1000 * (uint64_t)ti + (uint64_t)i, ranks[i].balance0 = 0;
        if (!run_pass(ranks, n, rank_forward)) {
            rc = CLI_FAIL;
            break;
        }
        /* rank 0's medians; bytes a peer from rank 0's dispatch and combine */
        bench_rank *r0 = &ranks[0];
        double ph[7][MAX_REPS], tot[MAX_REPS];
        for (int i = 0; i < reps; i++) {
            const moe_ep_timing *t = &r0->t[i];
            const double v[7] = {t->route_ms, t->pack_ms, t->counts_ms, t->dispatch_ms, t->experts_ms, t->combine_ms,
                                 t->finish_ms};
            for (int p = 0; p < 7; p++) ph[p][i] = v[p];
            tot[i] = r0->total_ms[i];
        }
        double med[7];
        for (int p = 0; p < 7; p++) med[p] = median(ph[p], reps);
        const double total = median(tot, reps), graph = median(r0->graph_ms, reps);
        const int64_t db = r0->t[0].dispatch_bytes, cb = r0->t[0].combine_bytes;
        const double disp_gbps = med[3] > 0 ? db / (med[3] * 1e6) : 0, comb_gbps = med[5] > 0 ? cb / (med[5] * 1e6) : 0;
        double a2a_gbps[2] = {0, 0}, a2a_us[2] = {0, 0};
        for (int which = 0; which < 2 && n > 1; which++) { /* the same bytes a peer, plain all-to-all */
            for (int i = 0; i < n; i++) ranks[i].a2a_bytes = (which ? cb : db) / (n - 1);
            if (!run_pass(ranks, n, rank_alltoall)) {
                rc = CLI_FAIL;
                break;
            }
            a2a_us[which] = median(r0->a2a_ms, reps) * 1e3;
            a2a_gbps[which] = a2a_us[which] > 0 ? (double)((which ? cb : db) / (n - 1) * (n - 1)) / (a2a_us[which] * 1e3) : 0;
        }
        printf("%7lld %8.1f %8.1f %8.1f %8.1f %9.1f %8.1f %9.1f %8.1f %9lld | %9.1f %9.1f %9.1f %9.1f\n",
               (long long)Ts[ti], med[0] * 1e3, med[1] * 1e3, med[2] * 1e3, med[3] * 1e3, med[4] * 1e3, med[5] * 1e3,
               med[6] * 1e3, total * 1e3, (long long)r0->t[0].tokens_in, disp_gbps, comb_gbps, a2a_gbps[0],
               a2a_gbps[1]);
        json_array_append_new(
            results, json_pack("{s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:I, s:f, s:f, s:f, s:f}",
                               "tokens_per_rank", (json_int_t)Ts[ti], "route_us", med[0] * 1e3, "pack_us", med[1] * 1e3,
                               "counts_us", med[2] * 1e3, "dispatch_us", med[3] * 1e3, "experts_us", med[4] * 1e3,
                               "combine_us", med[5] * 1e3, "finish_us", med[6] * 1e3, "total_us", total * 1e3,
                               "dispatch_bytes", (json_int_t)db, "combine_bytes", (json_int_t)cb, "tokens_in",
                               (json_int_t)r0->t[0].tokens_in, "dispatch_gbps", disp_gbps, "combine_gbps", comb_gbps,
                               "alltoall_dispatch_us", a2a_us[0], "alltoall_combine_us", a2a_us[1]));
        if (eplb_interval) {
            printf("        balance (mean / max rank load): %.3f before the first rebalance, %.3f after the last\n",
                   r0->balance0, r0->balance);
            json_t *last = json_array_get(results, json_array_size(results) - 1);
            json_object_set_new(last, "balance_before", json_real(r0->balance0));
            json_object_set_new(last, "balance_after", json_real(r0->balance));
        }
        if (graph > 0) {
            printf("        low latency, the forward as a CUDA-graph replay: %.1f µs\n", graph * 1e3);
            json_object_set_new(json_array_get(results, json_array_size(results) - 1), "graph_us",
                                json_real(graph * 1e3));
        }
    }
    if (rc == CLI_OK)
        printf("\nTimes in µs (rank 0, median of %d): dispatch and combine are the exchanges alone (packing, the FP8\n"
               "cast and the layouts are route/pack/experts/finish); GB/s count the bytes rank 0 sends to other ranks.\n"
               "a2a: the transport's plain all-to-all of the same bytes a peer, in the same run.\n", reps);
    if (json_path && rc == CLI_OK) {
        char date[32];
        cli_utc_date(date, sizeof date);
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:s, s:i, s:f, s:i, s:i, s:o}", "bench", "ep",
                                "device", moe_ctx_describe(ctxs[0]), "commit", MOE_GIT_COMMIT, "date", date, "model",
                                model, "ranks", n, "ep_backend", ep_backend, "wire", wire, "reps", reps, "skew", skew,
                                "eplb_interval", eplb_interval, "redundant_slots", redundant, "results", results);
        if (!doc || json_dump_file(doc, json_path, JSON_INDENT(2)) != 0) rc = CLI_FAIL;
        json_decref(doc);
    } else {
        json_decref(results);
    }
    for (int i = 0; i < n; i++) {
        moe_ep_destroy(ranks[i].ep);
        moe_free(ctxs[i], ranks[i].x), moe_free(ctxs[i], ranks[i].logits), moe_free(ctxs[i], ranks[i].out);
        moe_free(ctxs[i], ranks[i].send), moe_free(ctxs[i], ranks[i].recv);
        for (int k = 0; k < 8; k++) moe_free(ctxs[i], ranks[i].w[k]);
        moe_comm_destroy(comms[i]);
        moe_ctx_destroy(ctxs[i]);
    }
    free(ranks);
    return rc;
}
