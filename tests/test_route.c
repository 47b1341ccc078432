/* test_route.c — routing on the CPU: the oracle's golden cases, specs.md's EPLB vectors, properties of every
 * router on random logits, permute sentinels and edge cases, load statistics, and bad input. */
#include <stdlib.h>

#include "route_cases.h"

TEST_IMPL(route_golden) {
    int bad = route_run_golden_routers(env, env->cpu);
    ASSERT_MSG(bad == 0, "%d router cases differ from the oracle", bad);
    bad = route_run_golden_eplbmap(env, env->cpu) + route_run_golden_waterfill(env, env->cpu) +
          route_run_golden_permute(env, env->cpu) + route_run_golden_eplb(env);
    ASSERT_MSG(bad == 0, "%d EPLB / waterfill / permute cases differ from the oracle", bad);
    return TEST_OK;
}

/* specs.md C4, typed in from the document. */
TEST_IMPL(eplb_spec_vectors) {
    (void)env;
    const double w[2][12] = {{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                             {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
    static const int want_h[2][16] = {{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1},
                                      {7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}};
    static const int cnt_h[2][12] = {{1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1}, {1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1}};
    static const int l2p0[12][2] = {{12, -1}, {15, 13}, {11, -1}, {6, -1}, {7, 5},  {0, 2},
                                    {1, -1},  {3, -1},  {4, -1},  {9, -1}, {8, 10}, {14, -1}};
    static const int want_g[2][16] = {{10, 6, 10, 7, 0, 2, 11, 4, 5, 9, 5, 4, 8, 3, 1, 1},
                                      {1, 10, 2, 4, 5, 11, 5, 0, 6, 7, 6, 3, 8, 8, 9, 7}};
    static const int cnt_g[2][12] = {{1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1}, {1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1}};
    static const int want_n[2][12] = {{5, 3, 7, 4, 8, 6, 10, 11, 2, 1, 0, 9}, {6, 9, 11, 8, 7, 10, 5, 3, 4, 1, 2, 0}};
    int32_t p2l[32], l2p[2 * 12 * 5], cnt[24];
    moe_eplb_config c = {2, 12, 16, 4, 2, 8};
    ASSERT(moe_eplb_plan(NULL, &c, &w[0][0], p2l, l2p, cnt) == MOE_OK);
    for (int l = 0; l < 2; l++) {
        for (int p = 0; p < 16; p++) ASSERT_MSG(p2l[l * 16 + p] == want_h[l][p], "hierarchical layer %d slot %d", l, p);
        for (int e = 0; e < 12; e++) ASSERT_MSG(cnt[l * 12 + e] == cnt_h[l][e], "hierarchical logcnt %d %d", l, e);
    }
    for (int e = 0; e < 12; e++) ASSERT(l2p[e * 5] == l2p0[e][0] && l2p[e * 5 + 1] == l2p0[e][1] && l2p[e * 5 + 2] == -1);
    c.n_groups = 3; /* 3 % 2 != 0: global policy */
    ASSERT(moe_eplb_plan(NULL, &c, &w[0][0], p2l, l2p, cnt) == MOE_OK);
    for (int l = 0; l < 2; l++) {
        for (int p = 0; p < 16; p++) ASSERT_MSG(p2l[l * 16 + p] == want_g[l][p], "global layer %d slot %d", l, p);
        for (int e = 0; e < 12; e++) ASSERT_MSG(cnt[l * 12 + e] == cnt_g[l][e], "global logcnt %d %d", l, e);
    }
    moe_eplb_config n = {2, 12, 12, 4, 2, 4};
    ASSERT(moe_eplb_plan(NULL, &n, &w[0][0], p2l, l2p, cnt) == MOE_OK);
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 12; p++) ASSERT_MSG(p2l[l * 12 + p] == want_n[l][p], "no redundancy layer %d slot %d", l, p);
    moe_eplb_config bad = {2, 12, 15, 4, 2, 8};
    ASSERT(moe_eplb_plan(NULL, &bad, &w[0][0], p2l, l2p, cnt) == MOE_ERR_INVALID_ARG);
    return TEST_OK;
}

/* Random logits: normal values with a few NaN and +-Inf, deterministic per seed. */
static void random_logits(float *x, int64_t n, uint64_t seed, int specials) {
    uint64_t st = seed;
    for (int64_t i = 0; i < n; i++) {
        uint64_t r = test_splitmix64(&st);
        x[i] = (float)((double)(r >> 11) * 0x1p-53 * 8.0 - 4.0);
        if (specials && r % 211 == 0) x[i] = NAN;
        if (specials && r % 307 == 1) x[i] = (r & 2) ? INFINITY : -INFINITY;
    }
}

/* Properties of every router on random logits: distinct ids in range, -1 only when fewer selectable experts
 * remain, selection order (scores non-increasing for TOPK), renormalised sums, the scaling factor once. */
TEST_IMPL(route_properties) {
    moe_ctx *ctx = env->cpu;
    const char *models[] = {"mixtral-8x7b", "qwen3-30b-a3b", "olmoe", "deepseek-v2", "deepseek-v3", "gpt-oss-120b",
                            "llama4-scout", "qwen2-moe"};
    enum { T = 333 };
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        moe_router_config c;
        ASSERT(moe_router_preset(models[m], &c) == MOE_OK);
        float bias[512];
        for (int e = 0; e < c.n_experts; e++) bias[e] = (float)(e % 7) * 0.01f - 0.03f;
        if (c.kind == MOE_ROUTER_GROUPED && c.score == MOE_SCORE_SIGMOID) c.bias = bias;
        float *x = malloc(sizeof(float) * T * (size_t)c.n_experts), *w = malloc(sizeof(float) * T * (size_t)c.top_k);
        int32_t *ids = malloc(sizeof(int32_t) * T * (size_t)c.top_k), invalid = 0;
        random_logits(x, (int64_t)T * c.n_experts, env->seed + m, 0);
        moe_tensor l = moe_tensor_2d(x, MOE_DTYPE_F32, T, c.n_experts);
        moe_route_args a = {&l, NULL, T, ids, w, &invalid, NULL, 0};
        ASSERT_OK(ctx, moe_route(ctx, &c, &a, NULL));
        ASSERT_MSG(invalid == 0, "%s: %d invalid rows on finite logits", models[m], invalid);
        for (int t = 0; t < T; t++) {
            float sum = 0;
            for (int j = 0; j < c.top_k; j++) {
                const int32_t e = ids[t * c.top_k + j];
                ASSERT_MSG(e >= 0 && e < c.n_experts, "%s token %d slot %d: id %d", models[m], t, j, e);
                for (int i = 0; i < j; i++) ASSERT_MSG(ids[t * c.top_k + i] != e, "%s: repeated expert", models[m]);
                if (c.kind == MOE_ROUTER_TOPK && !c.bias && j > 0)
                    ASSERT_MSG(x[t * c.n_experts + e] <= x[t * c.n_experts + ids[t * c.top_k + j - 1]],
                               "%s: slot order", models[m]);
                ASSERT(w[t * c.top_k + j] >= 0);
                sum += w[t * c.top_k + j];
            }
            if (c.renormalize || c.kind == MOE_ROUTER_TOPK_SOFTMAX)
                ASSERT_MSG(fabsf(sum - c.scaling_factor) <= 1e-5f * c.scaling_factor, "%s: weights sum to %g, not %g",
                           models[m], sum, c.scaling_factor);
        }
        /* the scaling factor is applied once: scale 1 gives weights exactly scale times smaller or equal */
        moe_router_config one = c;
        one.scaling_factor = 1.0f;
        float *w1 = malloc(sizeof(float) * T * (size_t)c.top_k);
        moe_route_args a1 = {&l, NULL, T, ids, w1, NULL, NULL, 0};
        ASSERT_OK(ctx, moe_route(ctx, &one, &a1, NULL));
        for (int i = 0; i < T * c.top_k; i++)
            ASSERT_MSG(w[i] == w1[i] * c.scaling_factor, "%s: scaling applied %g vs %g", models[m], w[i], w1[i]);
        free(x), free(w), free(w1), free(ids);
    }
    return TEST_OK;
}

/* NaN rows, k = E, ties, E = 1, T = 0. */
TEST_IMPL(route_edges) {
    moe_ctx *ctx = env->cpu;
    moe_router_config c;
    memset(&c, 0, sizeof c);
    c.kind = MOE_ROUTER_TOPK;
    c.score = MOE_SCORE_SOFTMAX;
    c.n_experts = 4;
    c.top_k = 3;
    c.renormalize = 1;
    c.scaling_factor = 1;
    float x[4 * 4] = {NAN, NAN, NAN, NAN, /* all NaN */
                      1, NAN, 2, NAN,     /* two selectable */
                      3, 3, 3, 3,         /* ties: lower index first */
                      -INFINITY, INFINITY, 0, INFINITY};
    int32_t ids[12], invalid = 0;
    float w[12];
    moe_tensor l = moe_tensor_2d(x, MOE_DTYPE_F32, 4, 4);
    moe_route_args a = {&l, NULL, 4, ids, w, &invalid, NULL, 0};
    ASSERT_OK(ctx, moe_route(ctx, &c, &a, NULL));
    ASSERT(ids[0] == -1 && ids[1] == -1 && ids[2] == -1 && w[0] == 0);
    ASSERT(ids[3] == 2 && ids[4] == 0 && ids[5] == -1 && w[5] == 0);
    ASSERT(ids[6] == 0 && ids[7] == 1 && ids[8] == 2 && w[6] == w[7]);
    ASSERT(ids[9] == 1 && ids[10] == 3 && ids[11] == 0 && w[9] == 0.5f && w[10] == 0.5f && w[11] == 0.0f);
    ASSERT_EQ_I64(invalid, 2);
    c.top_k = 4; /* k = E: a permutation */
    int32_t all[16];
    float wa[16];
    moe_route_args b = {&l, NULL, 4, all, wa, NULL, NULL, 0};
    ASSERT_OK(ctx, moe_route(ctx, &c, &b, NULL));
    ASSERT(all[8] == 0 && all[9] == 1 && all[10] == 2 && all[11] == 3);
    moe_route_args empty = {&l, NULL, 0, NULL, NULL, NULL, NULL, 0};
    moe_tensor l0 = moe_tensor_2d(NULL, MOE_DTYPE_F32, 0, 4);
    empty.logits = &l0;
    ASSERT_OK(ctx, moe_route(ctx, &c, &empty, NULL));
    c.n_experts = 1, c.top_k = 1;
    float one[2] = {0.3f, -2};
    moe_tensor l1 = moe_tensor_2d(one, MOE_DTYPE_F32, 2, 1);
    moe_route_args e1 = {&l1, NULL, 2, ids, w, NULL, NULL, 0};
    ASSERT_OK(ctx, moe_route(ctx, &c, &e1, NULL));
    ASSERT(ids[0] == 0 && ids[1] == 0 && w[0] == 1.0f && w[1] == 1.0f);
    return TEST_OK;
}

/* Permute with sentinel payloads: every (token, slot) lands in its expert's segment exactly once, in token order,
 * padding rows are -1; edge cases from T = 0 to T = 65537 and E = 512. */
static int check_permute(moe_ctx *ctx, const moe_permute_config *c, const int32_t *ids, int64_t T) {
    const int64_t n = T * c->top_k, rows = moe_permute_rows(c, T);
    int32_t *counts = malloc(4 * (size_t)c->n_experts), *row_src = malloc(4 * (size_t)rows + 4),
            *slot_row = malloc(4 * (size_t)n + 4), invalid = -1, dropped = -1;
    int64_t *off = malloc(8 * (size_t)(c->n_experts + 1));
    moe_permute_outputs o = {counts, off, row_src, slot_row, &invalid, &dropped};
    for (int64_t r = 0; r < rows; r++) row_src[r] = -7;
    int bad = moe_permute(ctx, c, ids, T, &o, NULL, 0, NULL) != MOE_OK;
    int64_t seen = 0, expect_invalid = 0;
    for (int64_t i = 0; !bad && i < n; i++) {
        const int32_t id = ids[i], e = id - c->expert_begin;
        expect_invalid += id < -1 || id >= c->n_experts_global;
        const int local = id >= c->expert_begin && e < c->n_experts;
        const int64_t r = slot_row[i];
        if (!local) {
            bad |= r != -1;
            continue;
        }
        const int64_t lo = c->layout == MOE_PERMUTE_CONTIGUOUS ? off[e] : (int64_t)e * c->max_rows;
        const int64_t hi = c->layout == MOE_PERMUTE_CONTIGUOUS ? off[e] + counts[e] : lo + c->max_rows;
        if (r < 0) {
            bad |= c->layout != MOE_PERMUTE_MASKED; /* only the masked layout drops */
            continue;
        }
        bad |= r < lo || r >= hi || row_src[r] != i;
        if (r > lo) bad |= row_src[r - 1] >= i; /* token order inside the expert */
        seen++;
    }
    for (int64_t e = 0; !bad && e < c->n_experts && c->layout == MOE_PERMUTE_CONTIGUOUS; e++) {
        bad |= off[e] % c->tile_m != 0 || off[e + 1] - off[e] != (counts[e] + c->tile_m - 1) / c->tile_m * c->tile_m;
        for (int64_t r = off[e] + counts[e]; r < off[e + 1]; r++) bad |= row_src[r] != -1;
    }
    bad |= invalid != expect_invalid || seen + dropped > n;
    if (bad) fprintf(stderr, "  permute T=%lld k=%d E=%d M=%d layout=%d: wrong (%s)\n", (long long)T, c->top_k,
                     c->n_experts, c->tile_m, (int)c->layout, moe_last_error(ctx));
    free(counts), free(row_src), free(slot_row), free(off);
    return bad;
}

TEST_IMPL(permute_sentinels) {
    moe_ctx *ctx = env->cpu;
    uint64_t st = env->seed;
    const struct {
        int64_t T;
        int k, E, M, layout, one_expert;
    } cases[] = {{0, 8, 128, 128, 0, 0},   {1, 8, 128, 128, 0, 0}, {7, 2, 8, 16, 0, 0},  {100, 1, 1, 4, 0, 0},
                 {33, 16, 16, 1, 0, 0},    {500, 8, 64, 64, 0, 1}, {513, 16, 512, 128, 0, 0},
                 {65537, 8, 256, 128, 0, 0}, {300, 4, 32, 1, 1, 0}, {300, 4, 32, 1, 1, 1}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t T = cases[ci].T, n = T * cases[ci].k;
        moe_permute_config c = {cases[ci].E * 2, cases[ci].E / 2, cases[ci].E, cases[ci].k, cases[ci].M,
                                cases[ci].layout ? MOE_PERMUTE_MASKED : MOE_PERMUTE_CONTIGUOUS, 20};
        int32_t *ids = malloc(4 * (size_t)n + 4);
        for (int64_t i = 0; i < n; i++) {
            const uint64_t r = test_splitmix64(&st);
            ids[i] = cases[ci].one_expert ? c.expert_begin + 3 % c.n_experts : (int32_t)(r % (uint64_t)(2 * cases[ci].E + 2)) - 1;
            if (r % 101 == 0) ids[i] = -5; /* invalid */
        }
        ASSERT_MSG(check_permute(ctx, &c, ids, T) == 0, "case %zu", ci);
        free(ids);
    }
    moe_permute_config bad = {8, 4, 8, 2, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    int32_t dummy[4] = {0};
    int32_t counts[8];
    int64_t off[9];
    moe_permute_outputs o = {counts, off, dummy, dummy, NULL, NULL};
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "bad config", moe_permute(ctx, &bad, dummy, 1, &o, NULL, 0, NULL));
    return TEST_OK;
}

TEST_IMPL(expert_stats_cpu) {
    moe_ctx *ctx = env->cpu;
    moe_expert_stats *s = NULL;
    ASSERT_OK(ctx, moe_expert_stats_create(ctx, 2, 4, &s));
    const int32_t ids[8] = {0, 1, 1, 3, -1, 7, 1, 2};
    ASSERT_OK(ctx, moe_expert_stats_record(ctx, s, 1, ids, 8, NULL));
    int64_t counts[8], invalid[2];
    ASSERT_OK(ctx, moe_expert_stats_read(ctx, s, counts, invalid, NULL));
    const int64_t want[8] = {0, 0, 0, 0, 1, 3, 1, 1};
    for (int i = 0; i < 8; i++) ASSERT_EQ_I64(counts[i], want[i]);
    ASSERT_EQ_I64(invalid[1], 1);
    ASSERT(fabs(moe_balancedness(counts + 4, 4) - 0.5) < 1e-12);
    ASSERT(moe_balancedness(counts, 4) == 1.0);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "layer 2", moe_expert_stats_record(ctx, s, 2, ids, 8, NULL));
    ASSERT_OK(ctx, moe_expert_stats_reset(ctx, s, NULL));
    ASSERT_OK(ctx, moe_expert_stats_read(ctx, s, counts, NULL, NULL));
    for (int i = 0; i < 8; i++) ASSERT_EQ_I64(counts[i], 0);
    moe_expert_stats_destroy(ctx, s);
    return TEST_OK;
}

TEST_IMPL(route_errors) {
    moe_ctx *ctx = env->cpu;
    moe_router_config c;
    ASSERT(moe_router_preset("deepseek-v3", &c) == MOE_OK);
    ASSERT(moe_router_preset("no-such-model", &c) == MOE_ERR_INVALID_ARG);
    float x[256];
    int32_t ids[8];
    float w[8];
    moe_tensor l = moe_tensor_2d(x, MOE_DTYPE_F32, 1, 256);
    moe_route_args a = {&l, NULL, 1, ids, w, NULL, NULL, 0};
    moe_router_config b = c;
    b.top_k = 300;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "top_k 300", moe_route(ctx, &b, &a, NULL));
    b = c;
    b.n_groups = 7;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "multiple of n_groups", moe_route(ctx, &b, &a, NULL));
    b = c;
    b.topk_groups = 0;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "topk_groups", moe_route(ctx, &b, &a, NULL));
    b = c;
    b.kind = (moe_router_kind)42;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "unknown router kind", moe_route(ctx, &b, &a, NULL));
    moe_tensor wrong = moe_tensor_2d(x, MOE_DTYPE_F32, 1, 128);
    a.logits = &wrong;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "logits must be", moe_route(ctx, &c, &a, NULL));
    a.logits = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "logits are NULL", moe_route(ctx, &c, &a, NULL));
    b = c;
    b.kind = MOE_ROUTER_HASH;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "hash_table", moe_route(ctx, &b, &a, NULL));
    /* an unscored hash router takes logits of any shape and never reads them (the CPU once read T x E of them
     * unchecked: here a NULL buffer) */
    const int32_t table[2 * 8] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 300, 13, 14, 15}, token = 1;
    b.score = MOE_SCORE_NONE, b.hash_table = table, b.hash_vocab = 2, b.bias = NULL, b.renormalize = 0;
    b.scaling_factor = 1.0f;
    moe_tensor unread = moe_tensor_2d(NULL, MOE_DTYPE_F16, 5, 3);
    a.logits = &unread, a.token_ids = &token;
    ASSERT_OK(ctx, moe_route(ctx, &b, &a, NULL));
    for (int j = 0; j < 8; j++)
        ASSERT_MSG(ids[j] == (j == 4 ? -1 : 8 + j) && w[j] == (j == 4 ? 0.0f : 0.125f), "slot %d: %d %g", j, ids[j], w[j]);
    a.logits = NULL, a.token_ids = NULL;
    /* permute sizes past int64 are -1 (they once overflowed), and such a permute fails */
    moe_permute_config pc = {8, 0, 8, 2, 1 << 30, MOE_PERMUTE_CONTIGUOUS, 0};
    ASSERT_EQ_I64(moe_permute_rows(&pc, INT64_MAX / 2), -1);
    pc.layout = MOE_PERMUTE_MASKED, pc.max_rows = (int64_t)1 << 62;
    ASSERT_EQ_I64(moe_permute_rows(&pc, 5), -1);
    int32_t counts[8], row_src[8], slot_row[16];
    const moe_permute_outputs po = {counts, NULL, row_src, slot_row, NULL, NULL};
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "int32 row ids", moe_permute(ctx, &pc, ids, 4, &po, NULL, 0, NULL));
    moe_waterfill_config wf = {256, 3, 0, 8, 2.5f, 0, 0, 64};
    int64_t load[3];
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "multiple of world", moe_waterfill(ctx, &wf, ids, w, 1, load, ids, w, NULL));
    return TEST_OK;
}

/* moe_route_permute on the CPU: the two ops' results exactly, and both ops' checks plus its own. */
TEST_IMPL(route_permute_cpu) {
    moe_ctx *ctx = env->cpu;
    moe_router_config c;
    ASSERT(moe_router_preset("qwen3-30b-a3b", &c) == MOE_OK);
    enum { T = 37, E = 128, K = 8 };
    static float x[T * E];
    uint64_t st = env->seed;
    for (int i = 0; i < T * E; i++) x[i] = (float)(test_splitmix64(&st) % 1000) * 1e-2f;
    const moe_permute_config pc = {E, 32, 64, K, 16, MOE_PERMUTE_CONTIGUOUS, 0};
    const int64_t rows = moe_permute_rows(&pc, T);
    static int32_t ids[2][T * K], counts[2][64], row_src[2][T * K + 64 * 15], slot_row[2][T * K];
    static float w[2][T * K];
    int64_t offsets[2][65];
    moe_tensor l = moe_tensor_2d(x, MOE_DTYPE_F32, T, E);
    for (int v = 0; v < 2; v++) {
        moe_route_args a = {&l, NULL, T, ids[v], w[v], NULL, NULL, 0};
        moe_permute_outputs o = {counts[v], offsets[v], row_src[v], slot_row[v], NULL, NULL};
        if (v == 0) {
            ASSERT_OK(ctx, moe_route(ctx, &c, &a, NULL));
            ASSERT_OK(ctx, moe_permute(ctx, &pc, ids[0], T, &o, NULL, 0, NULL));
        } else {
            ASSERT_OK(ctx, moe_route_permute(ctx, &c, &a, &pc, &o, NULL, 0, NULL));
        }
    }
    ASSERT(!memcmp(ids[0], ids[1], sizeof ids[0]) && !memcmp(w[0], w[1], sizeof w[0]));
    ASSERT(!memcmp(counts[0], counts[1], sizeof counts[0]) && !memcmp(offsets[0], offsets[1], sizeof offsets[0]));
    ASSERT(!memcmp(row_src[0], row_src[1], 4 * (size_t)offsets[0][64]));
    ASSERT(!memcmp(slot_row[0], slot_row[1], sizeof slot_row[0]));
    ASSERT(rows >= offsets[0][64]);
    moe_route_args a = {&l, NULL, T, ids[1], w[1], NULL, NULL, 0};
    moe_permute_outputs o = {counts[1], offsets[1], row_src[1], slot_row[1], NULL, NULL};
    moe_permute_config bad = pc;
    bad.top_k = 4;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "top_k", moe_route_permute(ctx, &c, &a, &bad, &o, NULL, 0, NULL));
    bad = pc;
    bad.n_experts_global = 96, bad.n_experts = 32;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "n_experts_global", moe_route_permute(ctx, &c, &a, &bad, &o, NULL, 0, NULL));
    o.row_src = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "row_src", moe_route_permute(ctx, &c, &a, &pc, &o, NULL, 0, NULL));
    a.logits = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "logits are NULL", moe_route_permute(ctx, &c, &a, &pc, &o, NULL, 0, NULL));
    return TEST_OK;
}
