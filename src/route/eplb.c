/* eplb.c — DeepSeek's expert-parallel load balancer (docs/routing.md §4, specs.md C1–C4): replicas and
 * placement on the host; the replica choice at dispatch on either backend. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_eplb_map(moe_ctx *ctx, const int32_t *log2phy, const int32_t *logcnt, int n_logical,
                              int max_replicas, const int32_t *ids, int32_t *out, int64_t n_tokens, int k_total,
                              int k_routed, void *stream);
#endif

/* Puts the n items of w into m packs of n / m items each: heaviest first (a stable sort: equal weights keep index
 * order), each into the lightest pack that is not full (lowest index on equal totals). pack and rank get each
 * item's pack and its position in it. */
static void moe_balanced_packing(const double *w, int n, int m, int *pack, int *rank, int *order, double *load,
                                 int *items) {
    const int per = n / m;
    if (per == 1) {
        for (int i = 0; i < n; i++) pack[i] = i, rank[i] = 0;
        return;
    }
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort, descending and stable */
        int v = order[i], j = i;
        for (; j > 0 && w[order[j - 1]] < w[v]; j--) order[j] = order[j - 1];
        order[j] = v;
    }
    for (int p = 0; p < m; p++) load[p] = 0, items[p] = 0;
    for (int i = 0; i < n; i++) {
        int best = -1;
        for (int p = 0; p < m; p++)
            if (items[p] < per && (best < 0 || load[p] < load[best])) best = p;
        pack[order[i]] = best;
        rank[order[i]] = items[best]++;
        load[best] += w[order[i]];
    }
}

/* Fills n_phy slots with n_log experts: one each, then each extra slot to the expert with the largest
 * weight / replicas (lowest index on ties). */
static void moe_replicate(const double *w, int n_log, int n_phy, int *phy2log, int *rank, int *cnt) {
    for (int i = 0; i < n_log; i++) phy2log[i] = i, rank[i] = 0, cnt[i] = 1;
    for (int i = n_log; i < n_phy; i++) {
        int best = 0;
        for (int e = 1; e < n_log; e++)
            if (w[e] / cnt[e] > w[best] / cnt[best]) best = e;
        phy2log[i] = best;
        rank[i] = cnt[best]++;
    }
}

/* One layer of the hierarchical policy (specs.md C3): groups to nodes, replicas within nodes, slots to GPUs. */
/* Scratch of one layer: iscr holds 2G + 3E + 7R ints, dscr G + E + 2R doubles (R >= E). */
static void moe_eplb_layer(const double *w, int E, int R, int G, int N, int M, int32_t *phy2log_out,
                           int *phyrank_out, int32_t *logcnt_out, int *iscr, double *dscr) {
    const int gs = E / G, gpn = G / N, en = E / N, rn = R / N, per_gpu = R / M;
    int *gpack = iscr, *grank = gpack + G, *log2mlog = grank + G, *mlog2log = log2mlog + E;
    int *phy2mlog = mlog2log + E, *phyrank = phy2mlog + R, *mlogcnt = phyrank + R, *pack = mlogcnt + E;
    int *prank = pack + R, *pphy2phy = prank + R, *order = pphy2phy + R, *items = order + R;
    double *gw = dscr, *mw = gw + G, *pw = mw + E, *load = pw + R;

    for (int g = 0; g < G; g++) {
        gw[g] = 0;
        for (int o = 0; o < gs; o++) gw[g] += w[g * gs + o];
    }
    moe_balanced_packing(gw, G, N, gpack, grank, order, load, items);
    for (int e = 0; e < E; e++) {
        const int g = e / gs;
        log2mlog[e] = (gpack[g] * gpn + grank[g]) * gs + e % gs;
        mlog2log[log2mlog[e]] = e;
    }
    for (int node = 0; node < N; node++) {
        for (int i = 0; i < en; i++) mw[i] = w[mlog2log[node * en + i]];
        int *p2m = phy2mlog + node * rn, *pr = phyrank + node * rn, *cnt = mlogcnt + node * en;
        moe_replicate(mw, en, rn, p2m, pr, cnt);
        for (int p = 0; p < rn; p++) pw[p] = mw[p2m[p]] / cnt[p2m[p]];
        moe_balanced_packing(pw, rn, M / N, pack + node * rn, prank + node * rn, order, load, items);
        for (int p = 0; p < rn; p++) pphy2phy[node * rn + pack[node * rn + p] * per_gpu + prank[node * rn + p]] = p;
    }
    for (int node = 0; node < N; node++)
        for (int q = 0; q < rn; q++) {
            const int p = pphy2phy[node * rn + q];
            phy2log_out[node * rn + q] = mlog2log[node * en + phy2mlog[node * rn + p]];
            phyrank_out[node * rn + q] = phyrank[node * rn + p];
        }
    for (int e = 0; e < E; e++) logcnt_out[e] = mlogcnt[log2mlog[e]];
}

moe_status moe_eplb_plan(moe_ctx *ctx, const moe_eplb_config *c, const double *load, int32_t *phy2log,
                         int32_t *log2phy, int32_t *logcnt) {
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, c && load && phy2log && log2phy && logcnt, "moe_eplb_plan: NULL argument");
    const int L = c->n_layers, E = c->n_logical, R = c->n_physical, M = c->n_gpus;
    MOE_CHECK_ARG(ctx, L >= 1 && E >= 1 && R >= E && R <= MOE_EPLB_MAX_SLOTS,
                  "moe_eplb_plan: %d layers, %d logical experts, %d physical slots (E <= R <= %d)", L, E, R,
                  MOE_EPLB_MAX_SLOTS);
    MOE_CHECK_ARG(ctx, c->n_nodes >= 1 && M >= 1 && M % c->n_nodes == 0 && R % M == 0,
                  "moe_eplb_plan: n_physical (%d) must be a multiple of n_gpus (%d), itself a multiple of n_nodes (%d)", R,
                  M, c->n_nodes);
    MOE_CHECK_ARG(ctx, c->n_groups >= 1 && E % c->n_groups == 0,
                  "moe_eplb_plan: n_logical (%d) must be a multiple of n_groups (%d)", E, c->n_groups);
    for (int64_t i = 0; i < (int64_t)L * E; i++)
        MOE_CHECK_ARG(ctx, load[i] >= 0 && load[i] < 1e300, "moe_eplb_plan: load[%lld] = %g is not a finite load >= 0",
                      (long long)i, load[i]);
    /* hierarchical when groups split evenly over nodes, else the global policy */
    const int hier = c->n_groups % c->n_nodes == 0;
    const int G = hier ? c->n_groups : 1, N = hier ? c->n_nodes : 1;
    MOE_CHECK_ARG(ctx, M % N == 0 && (R / N) % (M / N) == 0, "moe_eplb_plan: slots do not split over GPUs");
    const int X = R - E + 1;
    int *iscr = malloc(sizeof(int) * (size_t)(2 * G + 3 * E + 8 * R));
    double *dscr = malloc(sizeof(double) * (size_t)(G + E + 2 * R));
    moe_status st = iscr && dscr ? MOE_OK : moe__error(ctx, MOE_ERR_OOM, "moe_eplb_plan: out of host memory");
    int *phyrank = iscr ? iscr + 2 * G + 3 * E + 7 * R : NULL;
    for (int l = 0; st == MOE_OK && l < L; l++) {
        int32_t *p2l = phy2log + (int64_t)l * R, *l2p = log2phy + (int64_t)l * E * X;
        moe_eplb_layer(load + (int64_t)l * E, E, R, G, N, M, p2l, phyrank, logcnt + (int64_t)l * E, iscr, dscr);
        for (int64_t i = 0; i < (int64_t)E * X; i++) l2p[i] = -1;
        for (int p = 0; p < R; p++) l2p[(int64_t)p2l[p] * X + phyrank[p]] = p;
    }
    free(iscr);
    free(dscr);
    return st;
}

moe_status moe_eplb_map(moe_ctx *ctx, const int32_t *log2phy, const int32_t *logcnt, int n_logical, int max_replicas,
                        const int32_t *ids, int32_t *out, int64_t n_tokens, int k_total, int k_routed, void *stream) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, log2phy && logcnt && n_logical >= 1 && max_replicas >= 1,
                  "moe_eplb_map: needs log2phy (E, max_replicas) and logcnt (E)");
    MOE_CHECK_ARG(ctx, n_tokens >= 0 && k_total >= 1 && k_routed >= 0 && k_routed <= k_total,
                  "moe_eplb_map: %lld tokens, k_total %d, k_routed %d", (long long)n_tokens, k_total, k_routed);
    MOE_CHECK_ARG(ctx, (ids && out) || n_tokens == 0, "moe_eplb_map: ids and out must not be NULL");
    MOE_CHECK_ALIGNED(ctx, log2phy, int32_t, "moe_eplb_map: log2phy");
    MOE_CHECK_ALIGNED(ctx, logcnt, int32_t, "moe_eplb_map: logcnt");
    MOE_CHECK_ALIGNED(ctx, ids, int32_t, "moe_eplb_map: ids");
    MOE_CHECK_ALIGNED(ctx, out, int32_t, "moe_eplb_map: out");
    MOE_CHECK_ARG(ctx, n_tokens <= INT64_MAX / k_total, "moe_eplb_map: %lld tokens of %d ids pass 64-bit sizes",
                  (long long)n_tokens, k_total);
    if (n_tokens == 0) return MOE_OK;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_TRY(moe__cuda_check_pointer(ctx, log2phy, "log2phy"));
        MOE_TRY(moe__cuda_check_pointer(ctx, logcnt, "logcnt"));
        MOE_TRY(moe__cuda_check_pointer(ctx, ids, "ids"));
        MOE_TRY(moe__cuda_check_pointer(ctx, out, "out"));
        return moe__cuda_eplb_map(ctx, log2phy, logcnt, n_logical, max_replicas, ids, out, n_tokens, k_total,
                                  k_routed, stream);
    }
#endif
    (void)stream;
    for (int64_t p = 0; p < n_tokens * k_total; p++) {
        const int32_t id = ids[p];
        if (p % k_total >= k_routed || id == -1) {
            out[p] = id;
        } else if (id < 0 || id >= n_logical || logcnt[id] < 1 || logcnt[id] > max_replicas) {
            out[p] = -1;
        } else {
            out[p] = log2phy[(int64_t)id * max_replicas + p % logcnt[id]];
        }
    }
    return MOE_OK;
}
