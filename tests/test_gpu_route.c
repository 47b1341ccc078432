/* test_gpu_route.c — the CUDA routers, permute, replica map, waterfill and load counters against the CPU
 * reference, bit for bit, on fresh random inputs (with NaN and +-Inf logits), at sizes from 0 to 65537 tokens
 * and up to 512 experts and top 16. Skipped without a GPU. */
#include <stdlib.h>

#include "route_cases.h"

/* Routes T tokens with config c on both backends and compares ids, weights, invalid counts and load counters. */
static int compare_route(test_env *env, const moe_router_config *c, int64_t T, moe_dtype dtype, uint64_t seed,
                         const char *what) {
    moe_ctx *gpu = env->gpu, *cpu = env->cpu;
    const int E = c->n_experts, k = c->top_k;
    const size_t n = (size_t)(T * E);
    float *x = malloc(4 * n + 4);
    uint16_t *x16 = malloc(2 * n + 2);
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = test_splitmix64(&st);
        x[i] = (float)((double)(r >> 11) * 0x1p-53 * 10.0 - 5.0);
        if (r % 997 == 0) x[i] = NAN;
        if (r % 1499 == 1) x[i] = (r & 4) ? INFINITY : -INFINITY;
        if (r % 53 == 2 && i > 0) x[i] = x[i - 1]; /* exact ties */
        x16[i] = dtype == MOE_DTYPE_BF16 ? moe_bf16_from_f32(x[i]) : moe_f16_from_f32(x[i]);
    }
    if (T > 3) /* a row entirely NaN */
        for (int e = 0; e < E; e++) x[3 * (size_t)E + e] = NAN, x16[3 * (size_t)E + e] = 0x7FFF;
    const void *host_logits = dtype == MOE_DTYPE_F32 ? (const void *)x : (const void *)x16;
    const size_t lbytes = n * (dtype == MOE_DTYPE_F32 ? 4 : 2);
    int32_t *tok = malloc(4 * (size_t)T + 4), *table = NULL;
    for (int64_t t = 0; t < T; t++) tok[t] = (int32_t)(test_splitmix64(&st) % 1000) - 3;
    float bias[512];
    for (int e = 0; e < E; e++) bias[e] = (float)((int)(test_splitmix64(&st) % 200) - 100) * 1e-3f;
    moe_router_config cc = *c, gc = *c;
    if (c->bias) cc.bias = bias;
    if (c->kind == MOE_ROUTER_HASH) {
        table = malloc(4 * 997 * (size_t)k);
        for (int i = 0; i < 997 * k; i++) table[i] = (int32_t)(test_splitmix64(&st) % (uint64_t)(E + 2)) - 1;
        cc.hash_table = table;
        cc.hash_vocab = 997;
    }
    /* CPU */
    moe_expert_stats *cs = NULL, *gs = NULL;
    moe_expert_stats_create(cpu, 1, E, &cs);
    moe_expert_stats_create(gpu, 1, E, &gs);
    int32_t *ci = malloc(4 * (size_t)(T * k) + 4), *gi = malloc(4 * (size_t)(T * k) + 4), cinv = 0, ginv = 0;
    float *cw = malloc(4 * (size_t)(T * k) + 4), *gw = malloc(4 * (size_t)(T * k) + 4);
    moe_tensor cl = moe_tensor_2d((void *)host_logits, dtype, T, E);
    const int scored = !(c->kind == MOE_ROUTER_HASH && c->score == MOE_SCORE_NONE);
    moe_route_args ca = {scored ? &cl : NULL, tok, T, ci, cw, &cinv, cs, 0};
    int bad = moe_route(cpu, &cc, &ca, NULL) != MOE_OK;
    /* GPU */
    void *dl = test_upload(gpu, host_logits, lbytes), *dt = test_upload(gpu, tok, 4 * (size_t)T), *di = NULL, *dw = NULL,
         *dinv = test_upload(gpu, &ginv, 4);
    if (c->bias) gc.bias = test_upload(gpu, bias, 4 * (size_t)E);
    if (table) gc.hash_table = test_upload(gpu, table, 4 * 997 * (size_t)k), gc.hash_vocab = 997;
    moe_alloc(gpu, 4 * (size_t)(T * k) + 4, &di);
    moe_alloc(gpu, 4 * (size_t)(T * k) + 4, &dw);
    moe_memset(gpu, di, 0xA5, 4 * (size_t)(T * k), NULL);
    moe_memset(gpu, dw, 0xA5, 4 * (size_t)(T * k), NULL);
    moe_tensor gl = moe_tensor_2d(dl, dtype, T, E);
    moe_route_args ga = {scored ? &gl : NULL, dt, T, di, dw, dinv, gs, 0};
    if (!bad && (moe_route(gpu, &gc, &ga, NULL) != MOE_OK || test_download(gpu, gi, di, 4 * (size_t)(T * k)) ||
                 test_download(gpu, gw, dw, 4 * (size_t)(T * k)) || test_download(gpu, &ginv, dinv, 4))) {
        fprintf(stderr, "  %s: %s\n", what, moe_last_error(gpu));
        bad = 1;
    }
    for (int64_t i = 0; !bad && i < T * k; i++)
        if (ci[i] != gi[i] || test_f32_bits(cw[i]) != test_f32_bits(gw[i])) {
            fprintf(stderr, "  %s (%s, T=%lld): token %lld slot %lld: gpu %d %a, cpu %d %a\n", what,
                    moe_dtype_name(dtype), (long long)T, (long long)(i / k), (long long)(i % k), gi[i], gw[i], ci[i],
                    cw[i]);
            bad = 1;
        }
    if (!bad && cinv != ginv) {
        fprintf(stderr, "  %s: invalid rows gpu %d cpu %d\n", what, ginv, cinv);
        bad = 1;
    }
    int64_t *cc_counts = malloc(8 * (size_t)E), *gc_counts = malloc(8 * (size_t)E);
    moe_expert_stats_read(cpu, cs, cc_counts, NULL, NULL);
    moe_expert_stats_read(gpu, gs, gc_counts, NULL, NULL);
    if (!bad && memcmp(cc_counts, gc_counts, 8 * (size_t)E)) {
        fprintf(stderr, "  %s: load counters differ\n", what);
        bad = 1;
    }
    moe_expert_stats_destroy(cpu, cs);
    moe_expert_stats_destroy(gpu, gs);
    free(x), free(x16), free(tok), free(table), free(ci), free(gi), free(cw), free(gw), free(cc_counts), free(gc_counts);
    moe_free(gpu, dl), moe_free(gpu, dt), moe_free(gpu, di), moe_free(gpu, dw), moe_free(gpu, dinv);
    moe_free(gpu, (void *)gc.bias), moe_free(gpu, (void *)gc.hash_table);
    return bad;
}

TEST_IMPL(gpu_route_random) {
    SKIP_WITHOUT_GPU(env);
    const char *models[] = {"mixtral-8x7b", "qwen3-30b-a3b", "olmoe", "deepseek-v2", "deepseek-v3",
                            "gpt-oss-120b", "gpt-oss-20b", "llama4-scout", "llama4-maverick", "qwen2-moe"};
    const int64_t sizes[] = {0, 1, 5, 128, 1031, 8192};
    int bad = 0;
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            moe_router_config c;
            moe_router_preset(models[m], &c);
            if (c.kind == MOE_ROUTER_GROUPED && c.score == MOE_SCORE_SIGMOID) c.bias = (const float *)1; /* set inside */
            const moe_dtype dt = s % 3 == 0 ? MOE_DTYPE_F32 : s % 3 == 1 ? MOE_DTYPE_BF16 : MOE_DTYPE_F16;
            bad += compare_route(env, &c, sizes[s], dt, env->seed + 31 * m + s, models[m]);
            if (c.kind == MOE_ROUTER_GROUPED) { /* Hugging Face's zero mask too */
                c.group_mask = MOE_GROUP_MASK_ZERO;
                bad += compare_route(env, &c, sizes[s], dt, env->seed + 77 * m + s, "grouped, zero mask");
            }
        }
    /* every family the router compiles on its own (E = 32 x 2, 4, 8 experts a lane; route_warp.cuh), renormalised
     * or not, scaled, softmax and sigmoid, with a bias, and DeepSeek-V3's groups of 32 both masks */
    for (int e = 64; e <= 256; e *= 2)
        for (int f = 0; f < 4; f++) {
            const moe_router_kind kind = f == 2   ? MOE_ROUTER_TOPK_SOFTMAX
                                         : f == 3 ? MOE_ROUTER_GROUPED
                                                  : MOE_ROUTER_TOPK;
            const moe_score_func score = f == 0 ? MOE_SCORE_SOFTMAX : f == 2 ? MOE_SCORE_NONE : MOE_SCORE_SIGMOID;
            moe_router_config c = {kind, score, e, f == 3 ? 8 : 6, f == 3 ? e / 32 : 0, f == 3 ? e / 64 : 0,
                                   MOE_GROUP_SCORE_TOP2_SUM, (moe_group_mask)(e == 128), f != 2 && e != 64,
                                   f == 2 ? 1.0f : 2.5f, f == 1 || f == 3 ? (const float *)1 : NULL, NULL, 0, 0};
            bad += compare_route(env, &c, 1031, e == 128 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32, env->seed + 11 * e + f,
                                 "a family kernel");
        }
    /* the largest shapes the kernel takes, and hash routing */
    moe_router_config big = {MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 512, 16, 0, 0, 0, 0, 1, 1.0f, NULL, NULL, 0, 0};
    bad += compare_route(env, &big, 777, MOE_DTYPE_F32, env->seed + 5, "E=512 k=16");
    big.score = MOE_SCORE_SIGMOID;
    big.bias = (const float *)1;
    bad += compare_route(env, &big, 333, MOE_DTYPE_BF16, env->seed + 6, "E=512 k=16 sigmoid + bias");
    for (int e = 0; e < 2; e++) { /* k = 16 over 200 and 256 experts, many tokens, scaled */
        moe_router_config t = {MOE_ROUTER_TOPK, e ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX, e ? 256 : 200, 16, 0, 0, 0,
                               0, 1, 2.5f, e ? (const float *)1 : NULL, NULL, 0, 0};
        bad += compare_route(env, &t, 5000, e ? MOE_DTYPE_F16 : MOE_DTYPE_F32, env->seed + 9 + e,
                             e ? "E=256 k=16 sigmoid + bias" : "E=200 k=16");
    }
    moe_router_config grouped = {MOE_ROUTER_GROUPED, MOE_SCORE_SIGMOID, 512, 16, 32, 5, MOE_GROUP_SCORE_TOP2_SUM,
                                 MOE_GROUP_MASK_NEG_INF, 1, 2.5f, (const float *)1, NULL, 0, 0};
    bad += compare_route(env, &grouped, 300, MOE_DTYPE_F32, env->seed + 7, "grouped E=512 G=32");
    for (int score = 0; score < 3; score++) {
        moe_router_config h = {MOE_ROUTER_HASH, (moe_score_func)score, 64, 6, 0, 0, 0, 0, score == 2, 1.5f,
                               NULL, (const int32_t *)1, 997, 0};
        bad += compare_route(env, &h, 1000, MOE_DTYPE_F32, env->seed + 8 + score, "hash");
    }
    ASSERT_MSG(bad == 0, "%d router runs differ between GPU and CPU (seed %" PRIu64 ")", bad, env->seed);
    return TEST_OK;
}

TEST_IMPL(gpu_route_golden) {
    SKIP_WITHOUT_GPU(env);
    int bad = route_run_golden_routers(env, env->gpu);
    ASSERT_MSG(bad == 0, "%d router cases differ from the oracle on the GPU", bad);
    bad = route_run_golden_eplbmap(env, env->gpu) + route_run_golden_waterfill(env, env->gpu) +
          route_run_golden_permute(env, env->gpu);
    ASSERT_MSG(bad == 0, "%d EPLB map / waterfill / permute cases differ on the GPU", bad);
    return TEST_OK;
}

/* permute on both backends: every output array equal. */
static int compare_permute(test_env *env, const moe_permute_config *c, int64_t T, uint64_t seed, int skew) {
    moe_ctx *gpu = env->gpu, *cpu = env->cpu;
    const int64_t n = T * c->top_k, rows = moe_permute_rows(c, T);
    int32_t *ids = malloc(4 * (size_t)n + 4);
    uint64_t st = seed;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t r = test_splitmix64(&st);
        ids[i] = skew ? c->expert_begin + (int32_t)(r % 3) : (int32_t)(r % (uint64_t)(c->n_experts_global + 3)) - 2;
    }
    int32_t *h[2][5];
    int64_t *off[2];
    for (int b = 0; b < 2; b++) {
        h[b][0] = calloc((size_t)c->n_experts + 1, 4);
        h[b][1] = malloc(4 * (size_t)rows + 4);
        h[b][2] = malloc(4 * (size_t)n + 4);
        h[b][3] = calloc(1, 4);
        h[b][4] = calloc(1, 4);
        off[b] = calloc((size_t)c->n_experts + 1, 8);
        for (int64_t r = 0; r < rows; r++) h[b][1][r] = -9;
    }
    moe_permute_outputs co = {h[0][0], off[0], h[0][1], h[0][2], h[0][3], h[0][4]};
    int bad = moe_permute(cpu, c, ids, T, &co, NULL, 0, NULL) != MOE_OK;
    size_t ws = 0;
    moe_permute_workspace_size(gpu, c, T, &ws);
    void *dws = NULL, *dids = test_upload(gpu, ids, 4 * (size_t)n);
    if (ws) moe_alloc(gpu, ws, &dws);
    moe_permute_outputs go;
    moe_alloc(gpu, 4 * (size_t)c->n_experts, (void **)&go.counts);
    moe_alloc(gpu, 8 * (size_t)(c->n_experts + 1), (void **)&go.offsets);
    moe_alloc(gpu, 4 * (size_t)rows + 4, (void **)&go.row_src);
    moe_alloc(gpu, 4 * (size_t)n + 4, (void **)&go.slot_row);
    moe_alloc(gpu, 4, (void **)&go.invalid);
    moe_alloc(gpu, 4, (void **)&go.dropped);
    moe_memset(gpu, go.row_src, 0xF7, 4 * (size_t)rows, NULL); /* poison: -9-ish bytes differ from any result */
    moe_memset(gpu, go.slot_row, 0xF7, 4 * (size_t)n, NULL);
    moe_memset(gpu, go.invalid, 0xF7, 4, NULL); /* the counters are written, not added to */
    moe_memset(gpu, go.dropped, 0xF7, 4, NULL);
    const int64_t used = c->layout == MOE_PERMUTE_CONTIGUOUS ? off[0][c->n_experts] : rows;
    if (!bad && (moe_permute(gpu, c, dids, T, &go, dws, ws, NULL) != MOE_OK ||
                 test_download(gpu, h[1][0], go.counts, 4 * (size_t)c->n_experts) ||
                 test_download(gpu, off[1], go.offsets, 8 * (size_t)(c->n_experts + 1)) ||
                 test_download(gpu, h[1][1], go.row_src, 4 * (size_t)used) ||
                 test_download(gpu, h[1][2], go.slot_row, 4 * (size_t)n) || test_download(gpu, h[1][3], go.invalid, 4) ||
                 test_download(gpu, h[1][4], go.dropped, 4))) {
        fprintf(stderr, "  permute: %s\n", moe_last_error(gpu));
        bad = 1;
    }
    const size_t sizes[5] = {4 * (size_t)c->n_experts, 4 * (size_t)used, 4 * (size_t)n, 4, 4};
    const char *names[5] = {"counts", "row_src", "slot_row", "invalid", "dropped"};
    for (int a = 0; !bad && a < 5; a++)
        if (memcmp(h[0][a], h[1][a], sizes[a])) {
            fprintf(stderr, "  permute T=%lld k=%d E=%d M=%d layout=%d: %s differs\n", (long long)T, c->top_k,
                    c->n_experts, c->tile_m, (int)c->layout, names[a]);
            bad = 1;
        }
    if (!bad && c->layout == MOE_PERMUTE_CONTIGUOUS && memcmp(off[0], off[1], 8 * (size_t)(c->n_experts + 1))) {
        fprintf(stderr, "  permute: offsets differ\n");
        bad = 1;
    }
    for (int b = 0; b < 2; b++) {
        for (int a = 0; a < 5; a++) free(h[b][a]);
        free(off[b]);
    }
    free(ids);
    moe_free(gpu, dws), moe_free(gpu, dids), moe_free(gpu, go.counts), moe_free(gpu, go.offsets);
    moe_free(gpu, go.row_src), moe_free(gpu, go.slot_row), moe_free(gpu, go.invalid), moe_free(gpu, go.dropped);
    return bad;
}

TEST_IMPL(gpu_permute_random) {
    SKIP_WITHOUT_GPU(env);
    const int64_t sizes[] = {0, 1, 3, 128, 255, 256, 257, 1000, 8192, 65537};
    int bad = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const moe_permute_config cfgs[] = {
            {128, 0, 128, 8, 128, MOE_PERMUTE_CONTIGUOUS, 0},   /* qwen3-30b-a3b, tile 128 */
            {256, 64, 64, 8, 64, MOE_PERMUTE_CONTIGUOUS, 0},    /* an EP rank of deepseek-v3 */
            {8, 0, 8, 2, 1, MOE_PERMUTE_CONTIGUOUS, 0},         /* mixtral, no padding */
            {512, 0, 512, 16, 16, MOE_PERMUTE_CONTIGUOUS, 0},   /* the widest */
            {1, 0, 1, 1, 32, MOE_PERMUTE_CONTIGUOUS, 0},        /* E = 1 */
            {256, 32, 32, 8, 1, MOE_PERMUTE_MASKED, 40},        /* masked with overflow */
        };
        for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
            bad += compare_permute(env, &cfgs[c], sizes[s], env->seed + 101 * s + c, 0);
            if (c == 1) bad += compare_permute(env, &cfgs[c], sizes[s], env->seed + 7 * s, 1); /* skewed */
        }
    }
    ASSERT_MSG(bad == 0, "%d permute runs differ between GPU and CPU (seed %" PRIu64 ")", bad, env->seed);
    return TEST_OK;
}

/* moe_route_permute on the GPU (fused for small T) against moe_route + moe_permute on the CPU: ids, weights,
 * load counters, invalid rows and every permute output equal, across the fused path's limits. */
static int compare_route_permute(test_env *env, const char *model, int64_t T, int variant, int hard, uint64_t seed) {
    moe_ctx *gpu = env->gpu, *cpu = env->cpu;
    moe_router_config rc;
    moe_router_preset(model, &rc);
    const int E = rc.n_experts, k = rc.top_k;
    /* variant 0: all experts local, tile 128; 1: an EP rank's quarter, tile 16; 2: masked with overflow */
    moe_permute_config pc = {E, 0, E, k, 128, MOE_PERMUTE_CONTIGUOUS, 0};
    if (variant == 1) pc.expert_begin = E / 4, pc.n_experts = E / 4 > 0 ? E / 4 : 1, pc.tile_m = 16;
    if (variant == 2) pc.layout = MOE_PERMUTE_MASKED, pc.max_rows = 1 + T * k / E;
    const int64_t n = T * k, rows = moe_permute_rows(&pc, T);
    float *x = malloc(4 * (size_t)(T * E) + 4), bias[512];
    uint64_t st = seed;
    for (int64_t i = 0; i < T * E; i++) {
        const uint64_t r = test_splitmix64(&st);
        x[i] = (float)((double)(r >> 11) * 0x1p-53 * 8.0 - 4.0);
        if (r % 211 == 0) x[i] = NAN;
        if (r % 37 == 1 && i > 0) x[i] = x[i - 1]; /* ties */
    }
    if (T > 2)
        for (int e = 0; e < E; e++) x[2 * E + e] = NAN; /* a row with no expert */
    for (int e = 0; e < E; e++) bias[e] = (float)((int)(test_splitmix64(&st) % 200) - 100) * 1e-3f;
    if (hard) { /* biased scores that tie (equal biases in fours beside the tied logits), and in row T - 1 all groups
                 * but the last two without a valid pair: only one expert of group 0 scores (invalid groups) */
        for (int e = 0; e < E; e++) bias[e] = bias[e & ~3];
        const int per = rc.n_groups > 1 ? E / rc.n_groups : E;
        for (int e = 0; e < E - 2 * per; e++) x[(T - 1) * E + e] = e == 0 ? 1.0f : NAN;
    }
    moe_router_config gc = rc;
    if (rc.kind == MOE_ROUTER_GROUPED && rc.score == MOE_SCORE_SIGMOID) rc.bias = bias;
    /* CPU: the two ops */
    int32_t *ci = malloc(4 * (size_t)n + 4), *cs = calloc((size_t)pc.n_experts, 4), *crow = malloc(4 * (size_t)rows + 4),
            *cslot = malloc(4 * (size_t)n + 4), cinv = 0, cpinv = -1, cdrop = -1;
    float *cw = malloc(4 * (size_t)n + 4);
    int64_t *coff = calloc((size_t)pc.n_experts + 1, 8);
    moe_expert_stats *cst = NULL, *gst = NULL;
    moe_expert_stats_create(cpu, 1, E, &cst);
    moe_expert_stats_create(gpu, 1, E, &gst);
    moe_tensor cl = moe_tensor_2d(x, MOE_DTYPE_F32, T, E);
    moe_route_args ca = {&cl, NULL, T, ci, cw, &cinv, cst, 0};
    moe_permute_outputs co = {cs, coff, crow, cslot, &cpinv, &cdrop};
    int bad = moe_route(cpu, &rc, &ca, NULL) != MOE_OK || moe_permute(cpu, &pc, ci, T, &co, NULL, 0, NULL) != MOE_OK;
    /* GPU: one call */
    int32_t zero = 0, *gi = malloc(4 * (size_t)n + 4), *gs = calloc((size_t)pc.n_experts, 4),
            *grow = malloc(4 * (size_t)rows + 4), *gslot = malloc(4 * (size_t)n + 4), ginv = 0, gpinv = 0, gdrop = 0;
    float *gw = malloc(4 * (size_t)n + 4);
    int64_t *goff = calloc((size_t)pc.n_experts + 1, 8);
    void *dx = test_upload(gpu, x, 4 * (size_t)(T * E)), *dinv = test_upload(gpu, &zero, 4), *di = NULL, *dw = NULL;
    if (rc.bias) gc.bias = test_upload(gpu, bias, 4 * (size_t)E);
    moe_alloc(gpu, 4 * (size_t)n + 4, &di);
    moe_alloc(gpu, 4 * (size_t)n + 4, &dw);
    moe_permute_outputs go;
    moe_alloc(gpu, 4 * (size_t)pc.n_experts, (void **)&go.counts);
    moe_alloc(gpu, 8 * (size_t)(pc.n_experts + 1), (void **)&go.offsets);
    moe_alloc(gpu, 4 * (size_t)rows + 8, (void **)&go.row_src);
    int32_t *row_src_alloc = go.row_src;
    if (variant == 1) go.row_src += 1; /* not 16-byte aligned: the padding fill's scalar stores */
    moe_alloc(gpu, 4 * (size_t)n + 4, (void **)&go.slot_row);
    moe_alloc(gpu, 4, (void **)&go.invalid);
    moe_alloc(gpu, 4, (void **)&go.dropped);
    moe_memset(gpu, go.row_src, 0xF7, 4 * (size_t)rows, NULL);
    moe_memset(gpu, go.dropped, 0xF7, 4, NULL);
    size_t ws = 0;
    void *dws = NULL;
    moe_permute_workspace_size(gpu, &pc, T, &ws);
    if (ws) moe_alloc(gpu, ws, &dws);
    moe_tensor gl = moe_tensor_2d(dx, MOE_DTYPE_F32, T, E);
    moe_route_args ga = {&gl, NULL, T, di, dw, dinv, gst, 0};
    const int64_t used = pc.layout == MOE_PERMUTE_CONTIGUOUS ? coff[pc.n_experts] : rows;
    if (!bad && (moe_route_permute(gpu, &gc, &ga, &pc, &go, dws, ws, NULL) != MOE_OK ||
                 test_download(gpu, gi, di, 4 * (size_t)n) || test_download(gpu, gw, dw, 4 * (size_t)n) ||
                 test_download(gpu, &ginv, dinv, 4) || test_download(gpu, gs, go.counts, 4 * (size_t)pc.n_experts) ||
                 test_download(gpu, goff, go.offsets, 8 * (size_t)(pc.n_experts + 1)) ||
                 test_download(gpu, grow, go.row_src, 4 * (size_t)used) ||
                 test_download(gpu, gslot, go.slot_row, 4 * (size_t)n) || test_download(gpu, &gpinv, go.invalid, 4) ||
                 test_download(gpu, &gdrop, go.dropped, 4))) {
        fprintf(stderr, "  route_permute %s T=%lld: %s\n", model, (long long)T, moe_last_error(gpu));
        bad = 1;
    }
    const char *what = NULL;
    if (bad)
        what = NULL;
    else if (memcmp(ci, gi, 4 * (size_t)n) || memcmp(cw, gw, 4 * (size_t)n))
        what = "ids or weights";
    else if (cinv != ginv || cpinv != gpinv || (pc.layout == MOE_PERMUTE_MASKED && cdrop != gdrop))
        what = "invalid or dropped counts";
    else if (memcmp(cs, gs, 4 * (size_t)pc.n_experts) || memcmp(grow, crow, 4 * (size_t)used) ||
             memcmp(gslot, cslot, 4 * (size_t)n))
        what = "counts, row_src or slot_row";
    else if (pc.layout == MOE_PERMUTE_CONTIGUOUS && memcmp(coff, goff, 8 * (size_t)(pc.n_experts + 1)))
        what = "offsets";
    int64_t cc[512], gc_counts[512];
    moe_expert_stats_read(cpu, cst, cc, NULL, NULL);
    moe_expert_stats_read(gpu, gst, gc_counts, NULL, NULL);
    if (!bad && !what && memcmp(cc, gc_counts, 8 * (size_t)E)) what = "load counters";
    if (what) {
        fprintf(stderr, "  route_permute %s T=%lld variant %d: %s differ\n", model, (long long)T, variant, what);
        bad = 1;
    }
    moe_expert_stats_destroy(cpu, cst);
    moe_expert_stats_destroy(gpu, gst);
    free(x), free(ci), free(cs), free(crow), free(cslot), free(cw), free(coff);
    free(gi), free(gs), free(grow), free(gslot), free(gw), free(goff);
    moe_free(gpu, dx), moe_free(gpu, dinv), moe_free(gpu, di), moe_free(gpu, dw), moe_free(gpu, dws);
    moe_free(gpu, (void *)gc.bias), moe_free(gpu, go.counts), moe_free(gpu, go.offsets), moe_free(gpu, row_src_alloc);
    moe_free(gpu, go.slot_row), moe_free(gpu, go.invalid), moe_free(gpu, go.dropped);
    return bad;
}

TEST_IMPL(gpu_route_permute) {
    SKIP_WITHOUT_GPU(env);
    const char *models[] = {"qwen3-30b-a3b", "deepseek-v3", "mixtral-8x7b", "llama4-scout", "gpt-oss-120b",
                            "deepseek-v2", "llama4-maverick", "olmoe"};
    /* around the fused path's limits: one CTA (8 warps), the cluster of 8 (64), 2 tokens a warp (128); beyond, the
     * two ops, with the permute's chunk counts (512 entries a chunk) summed by the place kernel (up to 16 K counts:
     * Qwen3 at 4099 tokens) or by the scan kernel (DeepSeek-V3 at 4099, everything at 20001) */
    const int64_t sizes[] = {1, 2, 7, 8, 9, 33, 64, 65, 127, 128, 129, 300, 1000, 4099, 20001};
    int bad = 0;
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            bad += compare_route_permute(env, models[m], sizes[s], (int)((m + s) % 3), 0, env->seed + 13 * m + s);
    /* one token to four of DeepSeek-V3 (the small route + permute kernel) in both contiguous layouts,
     * with tied biased scores and invalid groups */
    for (int64_t T = 1; T <= 4; T++)
        for (int v = 0; v < 2; v++) bad += compare_route_permute(env, "deepseek-v3", T, v, 1, env->seed + 977 * T + v);
    /* an error from either op's checks, before anything runs */
    moe_router_config rc;
    moe_router_preset("qwen3-30b-a3b", &rc);
    const moe_permute_config pc = {128, 0, 128, 4, 128, MOE_PERMUTE_CONTIGUOUS, 0};
    void *d = NULL;
    ASSERT_OK(env->gpu, moe_alloc(env->gpu, 1 << 16, &d));
    moe_tensor l = moe_tensor_2d(d, MOE_DTYPE_F32, 4, 128);
    moe_route_args a = {&l, NULL, 4, (int32_t *)d, (float *)d, NULL, NULL, 0};
    moe_permute_outputs o = {(int32_t *)d, (int64_t *)d, (int32_t *)d, (int32_t *)d, NULL, NULL};
    ASSERT_FAILS(env->gpu, MOE_ERR_INVALID_ARG, "top_k", moe_route_permute(env->gpu, &rc, &a, &pc, &o, NULL, 0, NULL));
    moe_free(env->gpu, d);
    ASSERT_MSG(bad == 0, "%d route + permute runs differ between GPU and CPU (seed %" PRIu64 ")", bad, env->seed);
    return TEST_OK;
}

TEST_IMPL(gpu_eplb_waterfill_stats) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *gpu = env->gpu, *cpu = env->cpu;
    uint64_t st = env->seed;
    /* replica map */
    const int E = 64, X = 3, kt = 9, kr = 8;
    const int64_t T = 5000;
    int32_t l2p[E * X], cnt[E];
    for (int e = 0; e < E; e++) {
        cnt[e] = 1 + (int)(test_splitmix64(&st) % X);
        for (int r = 0; r < X; r++) l2p[e * X + r] = r < cnt[e] ? (int32_t)(test_splitmix64(&st) % 96) : -1;
    }
    int32_t *ids = malloc(4 * T * kt), *co = malloc(4 * T * kt), *go = malloc(4 * T * kt);
    for (int64_t i = 0; i < T * kt; i++) ids[i] = (int32_t)(test_splitmix64(&st) % (E + 4)) - 2;
    ASSERT_OK(cpu, moe_eplb_map(cpu, l2p, cnt, E, X, ids, co, T, kt, kr, NULL));
    void *dl = test_upload(gpu, l2p, sizeof l2p), *dc = test_upload(gpu, cnt, sizeof cnt),
         *di = test_upload(gpu, ids, 4 * T * kt), *dout = NULL;
    moe_alloc(gpu, 4 * T * kt, &dout);
    ASSERT_OK(gpu, moe_eplb_map(gpu, dl, dc, E, X, di, dout, T, kt, kr, NULL));
    ASSERT(test_download(gpu, go, dout, 4 * T * kt) == 0);
    ASSERT_MSG(!memcmp(co, go, 4 * T * kt), "replica map differs");
    /* waterfill: rank loads from the ids, then the expansion, several configurations */
    for (int variant = 0; variant < 4; variant++) {
        moe_waterfill_config c = {E, variant == 3 ? 8 : 4, variant % 4, kr, 2.5f, variant == 2 ? 1500 : 0, variant == 1,
                                  variant == 3 ? 10000 : 64};
        int64_t cl[8], gl[8];
        for (int64_t i = 0; i < T * kr; i++) ids[i] = (int32_t)(test_splitmix64(&st) % (E + 1)) - 1;
        float *w = malloc(4 * T * kr), *cw = malloc(4 * T * (kr + 1)), *gw = malloc(4 * T * (kr + 1));
        for (int64_t i = 0; i < T * kr; i++) w[i] = (float)(test_splitmix64(&st) % 1000) * 1e-3f;
        ASSERT_OK(cpu, moe_waterfill_rank_load(cpu, &c, ids, T, cl, NULL));
        void *dids = test_upload(gpu, ids, 4 * T * kr), *dw = test_upload(gpu, w, 4 * T * kr), *dload = NULL, *doi = NULL,
             *dow = NULL;
        moe_alloc(gpu, 64, &dload);
        moe_alloc(gpu, 4 * T * (kr + 1), &doi);
        moe_alloc(gpu, 4 * T * (kr + 1), &dow);
        ASSERT_OK(gpu, moe_waterfill_rank_load(gpu, &c, dids, T, dload, NULL));
        ASSERT(test_download(gpu, gl, dload, 8 * (size_t)c.world) == 0);
        ASSERT_MSG(!memcmp(cl, gl, 8 * (size_t)c.world), "rank loads differ");
        ASSERT_OK(cpu, moe_waterfill(cpu, &c, ids, w, T, cl, co, cw, NULL));
        ASSERT_OK(gpu, moe_waterfill(gpu, &c, dids, dw, T, dload, doi, dow, NULL));
        ASSERT(test_download(gpu, go, doi, 4 * T * (kr + 1)) == 0 && test_download(gpu, gw, dow, 4 * T * (kr + 1)) == 0);
        ASSERT_MSG(!memcmp(co, go, 4 * T * (kr + 1)) && !memcmp(cw, gw, 4 * T * (kr + 1)), "waterfill variant %d differs",
                   variant);
        free(w), free(cw), free(gw);
        moe_free(gpu, dids), moe_free(gpu, dw), moe_free(gpu, dload), moe_free(gpu, doi), moe_free(gpu, dow);
    }
    /* load counters fed directly, with invalid ids */
    moe_expert_stats *cs, *gs;
    ASSERT_OK(cpu, moe_expert_stats_create(cpu, 3, E, &cs));
    ASSERT_OK(gpu, moe_expert_stats_create(gpu, 3, E, &gs));
    for (int64_t i = 0; i < T * kt; i++) ids[i] = (int32_t)(test_splitmix64(&st) % (E + 3)) - 2;
    void *dids = test_upload(gpu, ids, 4 * T * kt);
    ASSERT_OK(cpu, moe_expert_stats_record(cpu, cs, 2, ids, T * kt, NULL));
    ASSERT_OK(gpu, moe_expert_stats_record(gpu, gs, 2, dids, T * kt, NULL));
    int64_t c1[3 * E], g1[3 * E], ci[3], gi[3];
    ASSERT_OK(cpu, moe_expert_stats_read(cpu, cs, c1, ci, NULL));
    ASSERT_OK(gpu, moe_expert_stats_read(gpu, gs, g1, gi, NULL));
    ASSERT(!memcmp(c1, g1, sizeof c1) && !memcmp(ci, gi, sizeof ci));
    moe_expert_stats_destroy(cpu, cs);
    moe_expert_stats_destroy(gpu, gs);
    free(ids), free(co), free(go);
    moe_free(gpu, dl), moe_free(gpu, dc), moe_free(gpu, di), moe_free(gpu, dout), moe_free(gpu, dids);
    return TEST_OK;
}

TEST_IMPL(gpu_route_errors) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *gpu = env->gpu;
    moe_router_config c = {MOE_ROUTER_TOPK, MOE_SCORE_SOFTMAX, 600, 8, 0, 0, 0, 0, 0, 1.0f, NULL, NULL, 0, 0};
    void *d = NULL;
    ASSERT_OK(gpu, moe_alloc(gpu, 1 << 16, &d));
    moe_tensor l = moe_tensor_2d(d, MOE_DTYPE_F32, 4, 600);
    moe_route_args a = {&l, NULL, 4, (int32_t *)d, (float *)d, NULL, NULL, 0};
    ASSERT_FAILS(gpu, MOE_ERR_UNSUPPORTED, "512 experts", moe_route(gpu, &c, &a, NULL));
    c.n_experts = 64;
    c.top_k = 17;
    l.shape[1] = 64;
    ASSERT_FAILS(gpu, MOE_ERR_UNSUPPORTED, "top_k 16", moe_route(gpu, &c, &a, NULL));
    static int32_t host_ids[64];
    c.top_k = 2;
    a.ids = host_ids;
    ASSERT_FAILS(gpu, MOE_ERR_INVALID_ARG, "ids", moe_route(gpu, &c, &a, NULL));
    moe_free(gpu, d);
    return TEST_OK;
}
