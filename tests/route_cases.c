/* route_cases.c — runs the oracle's routing cases on a context (see route_cases.h). */
#include <stdlib.h>

#include "route_cases.h"

/* ---------------------------------------------------------------------------------------------------------- */

void route_config_from_cfg(const char *cfg, moe_router_config *c) {
    char kind[32] = "", score[32] = "", gscore[32] = "", mask[32] = "";
    long long k = 0, E = 0, groups = 0, topk_groups = 0, renorm = 0, vocab = 0;
    golden_cfg_word(cfg, "kind=", kind, sizeof kind);
    golden_cfg_word(cfg, "score=", score, sizeof score);
    golden_cfg_word(cfg, "group_score=", gscore, sizeof gscore);
    golden_cfg_word(cfg, "mask=", mask, sizeof mask);
    golden_cfg_int(cfg, "k=", &k);
    golden_cfg_int(cfg, "E=", &E);
    golden_cfg_int(cfg, "groups=", &groups);
    golden_cfg_int(cfg, "topk_groups=", &topk_groups);
    golden_cfg_int(cfg, "renorm=", &renorm);
    golden_cfg_int(cfg, "vocab=", &vocab);
    memset(c, 0, sizeof *c);
    c->kind = !strcmp(kind, "topk")           ? MOE_ROUTER_TOPK
              : !strcmp(kind, "topk_softmax") ? MOE_ROUTER_TOPK_SOFTMAX
              : !strcmp(kind, "grouped")      ? MOE_ROUTER_GROUPED
              : !strcmp(kind, "hash")         ? MOE_ROUTER_HASH
                                              : MOE_ROUTER_INVALID;
    c->score = !strcmp(score, "softmax")   ? MOE_SCORE_SOFTMAX
               : !strcmp(score, "sigmoid") ? MOE_SCORE_SIGMOID
                                           : MOE_SCORE_NONE;
    c->n_experts = (int)E;
    c->top_k = (int)k;
    c->n_groups = (int)groups;
    c->topk_groups = (int)topk_groups;
    c->group_score = !strcmp(gscore, "top2_sum") ? MOE_GROUP_SCORE_TOP2_SUM : MOE_GROUP_SCORE_MAX;
    c->group_mask = !strcmp(mask, "zero") ? MOE_GROUP_MASK_ZERO : MOE_GROUP_MASK_NEG_INF;
    c->renormalize = (int)renorm;
    c->scaling_factor = golden_cfg_f32(cfg, "scale=");
    c->hash_vocab = vocab;
}

static int run_router_case(moe_ctx *ctx, const golden *g, const char *name) {
    char cfg[512], input[16];
    if (!golden_cfg(g, name, cfg, sizeof cfg)) return 1;
    long long k = 0, E = 0, has_bias = 0;
    golden_cfg_word(cfg, "input=", input, sizeof input);
    golden_cfg_int(cfg, "k=", &k);
    golden_cfg_int(cfg, "E=", &E);
    golden_cfg_int(cfg, "bias=", &has_bias);
    moe_router_config c;
    route_config_from_cfg(cfg, &c);
    const golden_record *want_ids = golden_case(g, name, "ids"), *want_w = golden_case(g, name, "weights"), *want_inv = golden_case(g, name, "invalid");
    if (!want_ids || !want_w || !want_inv) return 1;
    if (moe_ctx_backend(ctx) == MOE_BACKEND_CUDA && (E > 512 || k > 16)) {
        fprintf(stderr, "  %s: E=%lld k=%lld is beyond the CUDA routers (CPU only; gpu_route_errors checks the refusal)\n",
                name, E, k);
        return 0;
    }
    const int64_t T = want_ids->shape[0];
    void *d_logits = NULL, *d_bias = NULL, *d_table = NULL, *d_tokens = NULL, *d_ids = NULL, *d_w = NULL, *d_inv = NULL;
    int bad = 0;
    moe_tensor logits;
    memset(&logits, 0, sizeof logits);
    if (c.score != MOE_SCORE_NONE || c.kind == MOE_ROUTER_TOPK_SOFTMAX) {
        const golden_record *l = golden_case(g, name, "logits");
        if (!l) return 1;
        const int bf16 = !strcmp(input, "bf16");
        uint16_t *h = malloc(2 * (size_t)l->numel + 2);
        for (int64_t i = 0; i < l->numel; i++) h[i] = moe_bf16_from_f32(test_f32_from_bits(((const uint32_t *)l->data)[i]));
        d_logits = bf16 ? test_upload(ctx, h, 2 * (size_t)l->numel) : test_upload(ctx, l->data, l->bytes);
        free(h);
        logits = moe_tensor_2d(d_logits, bf16 ? MOE_DTYPE_BF16 : MOE_DTYPE_F32, T, E);
    }
    if (has_bias) {
        const golden_record *b = golden_case(g, name, "bias");
        if (!b) return 1;
        c.bias = d_bias = test_upload(ctx, b->data, b->bytes);
    }
    int32_t *tokens = NULL, *table = NULL;
    if (c.kind == MOE_ROUTER_HASH) {
        const golden_record *tb = golden_case(g, name, "table"), *tk = golden_case(g, name, "tokens");
        if (!tb || !tk) return 1;
        table = golden_to_i32(tb);
        tokens = golden_to_i32(tk);
        c.hash_table = d_table = test_upload(ctx, table, 4 * (size_t)tb->numel);
        d_tokens = test_upload(ctx, tokens, 4 * (size_t)tk->numel);
    }
    const size_t n = (size_t)(T * k);
    int32_t *ids = malloc(4 * n + 4), inv = 0;
    float *w = malloc(4 * n + 4);
    moe_alloc(ctx, 4 * n + 4, &d_ids);
    moe_alloc(ctx, 4 * n + 4, &d_w);
    moe_alloc(ctx, 4, &d_inv);
    moe_memset(ctx, d_ids, 0xA5, 4 * n, NULL);
    moe_memset(ctx, d_w, 0xA5, 4 * n, NULL);
    moe_memset(ctx, d_inv, 0, 4, NULL);
    moe_route_args a = {c.score != MOE_SCORE_NONE || c.kind == MOE_ROUTER_TOPK_SOFTMAX ? &logits : NULL,
                        d_tokens, T, d_ids, d_w, d_inv, NULL, 0};
    if (moe_route(ctx, &c, &a, NULL) != MOE_OK || test_download(ctx, ids, d_ids, 4 * n) ||
        test_download(ctx, w, d_w, 4 * n) || test_download(ctx, &inv, d_inv, 4)) {
        fprintf(stderr, "  %s: %s\n", name, moe_last_error(ctx));
        bad = 1;
    }
    for (size_t i = 0; !bad && i < n; i++) {
        const int64_t wi = ((const int64_t *)want_ids->data)[i];
        const float ww = test_f32_from_bits(((const uint32_t *)want_w->data)[i]);
        if (ids[i] != wi || !(fabsf(w[i] - ww) <= 1e-6f * fabsf(ww) + 1e-9f || (isnan(ww) && isnan(w[i])))) {
            fprintf(stderr, "  %s: token %zu slot %zu: expert %d weight %a, oracle %lld %a (%s)\n", name, i / (size_t)k,
                    i % (size_t)k, ids[i], w[i], (long long)wi, ww, cfg);
            bad = 1;
        }
    }
    if (!bad && inv != *(const int64_t *)want_inv->data) {
        fprintf(stderr, "  %s: %d invalid rows, oracle %lld\n", name, inv, (long long)*(const int64_t *)want_inv->data);
        bad = 1;
    }
    free(ids);
    free(w);
    free(tokens);
    free(table);
    moe_free(ctx, d_logits);
    moe_free(ctx, d_bias);
    moe_free(ctx, d_table);
    moe_free(ctx, d_tokens);
    moe_free(ctx, d_ids);
    moe_free(ctx, d_w);
    moe_free(ctx, d_inv);
    return bad;
}

typedef int (*case_fn)(moe_ctx *ctx, const golden *g, const char *name);

static int run_family(test_env *env, moe_ctx *ctx, const char *list, case_fn fn, int min_cases) {
    golden g;
    if (golden_load(&g, env->data_dir, "routing.moeg")) return -1;
    char **names = golden_case_names(&g, list);
    int bad = 0, count = 0;
    for (size_t i = 0; names && names[i]; i++, count++) bad += fn(ctx, &g, names[i]);
    golden_free_names(names);
    golden_free(&g);
    if (count < min_cases) {
        fprintf(stderr, "  %s: only %d cases\n", list, count);
        bad++;
    }
    return bad;
}

int route_run_golden_routers(test_env *env, moe_ctx *ctx) {
    return run_family(env, ctx, "cases", run_router_case, 10);
}

/* ---------------------------------------------------------------------------------------------------------- */

static int compare_i32(const char *name, const char *what, const int32_t *got, const golden_record *want) {
    for (int64_t i = 0; i < want->numel; i++)
        if (got[i] != ((const int64_t *)want->data)[i]) {
            fprintf(stderr, "  %s: %s[%lld] = %d, oracle %lld\n", name, what, (long long)i, got[i],
                    (long long)((const int64_t *)want->data)[i]);
            return 1;
        }
    return 0;
}

static int run_eplbmap_case(moe_ctx *ctx, const golden *g, const char *name) {
    char cfg[256];
    long long E = 0, kt = 0, kr = 0;
    if (!golden_cfg(g, name, cfg, sizeof cfg)) return 1;
    golden_cfg_int(cfg, "E=", &E);
    golden_cfg_int(cfg, "k_total=", &kt);
    golden_cfg_int(cfg, "k_routed=", &kr);
    const golden_record *ids = golden_case(g, name, "ids"), *l2p = golden_case(g, name, "log2phy"), *cnt = golden_case(g, name, "logcnt"),
                        *want = golden_case(g, name, "out");
    if (!ids || !l2p || !cnt || !want) return 1;
    int32_t *h_ids = golden_to_i32(ids), *h_l2p = golden_to_i32(l2p), *h_cnt = golden_to_i32(cnt), *out = malloc(4 * (size_t)ids->numel + 4);
    void *d_ids = test_upload(ctx, h_ids, 4 * (size_t)ids->numel), *d_l2p = test_upload(ctx, h_l2p, 4 * (size_t)l2p->numel),
         *d_cnt = test_upload(ctx, h_cnt, 4 * (size_t)cnt->numel), *d_out = NULL;
    moe_alloc(ctx, 4 * (size_t)ids->numel + 4, &d_out);
    int bad = moe_eplb_map(ctx, d_l2p, d_cnt, (int)E, (int)l2p->shape[1], d_ids, d_out, ids->shape[0], (int)kt, (int)kr,
                           NULL) != MOE_OK ||
              test_download(ctx, out, d_out, 4 * (size_t)ids->numel);
    if (bad) fprintf(stderr, "  %s: %s\n", name, moe_last_error(ctx));
    bad = bad || compare_i32(name, "out", out, want);
    free(h_ids), free(h_l2p), free(h_cnt), free(out);
    moe_free(ctx, d_ids), moe_free(ctx, d_l2p), moe_free(ctx, d_cnt), moe_free(ctx, d_out);
    return bad;
}

int route_run_golden_eplbmap(test_env *env, moe_ctx *ctx) {
    return run_family(env, ctx, "eplbmap_cases", run_eplbmap_case, 2);
}

static int run_waterfill_case(moe_ctx *ctx, const golden *g, const char *name) {
    char cfg[256];
    long long E = 0, world = 0, src = 0, k = 0, target = 0, all = 0, mint = 64;
    if (!golden_cfg(g, name, cfg, sizeof cfg)) return 1;
    golden_cfg_int(cfg, "E=", &E);
    golden_cfg_int(cfg, "world=", &world);
    golden_cfg_int(cfg, "source=", &src);
    golden_cfg_int(cfg, "k=", &k);
    golden_cfg_int(cfg, "target=", &target);
    golden_cfg_int(cfg, "all=", &all);
    golden_cfg_int(cfg, "min_tokens=", &mint);
    moe_waterfill_config c = {(int)E, (int)world, (int)src, (int)k, golden_cfg_f32(cfg, "scale="), target, (int)all, (int)mint};
    const golden_record *ids = golden_case(g, name, "ids"), *w = golden_case(g, name, "weights"), *load = golden_case(g, name, "load"),
                        *want_ids = golden_case(g, name, "out_ids"), *want_w = golden_case(g, name, "out_weights");
    if (!ids || !w || !load || !want_ids || !want_w) return 1;
    const int64_t T = ids->shape[0];
    int32_t *h_ids = golden_to_i32(ids), *out_ids = malloc(4 * (size_t)(T * (k + 1)) + 4);
    float *out_w = malloc(4 * (size_t)(T * (k + 1)) + 4);
    void *d_ids = test_upload(ctx, h_ids, 4 * (size_t)ids->numel), *d_w = test_upload(ctx, w->data, w->bytes),
         *d_load = test_upload(ctx, load->data, load->bytes), *d_oi = NULL, *d_ow = NULL;
    moe_alloc(ctx, 4 * (size_t)(T * (k + 1)) + 4, &d_oi);
    moe_alloc(ctx, 4 * (size_t)(T * (k + 1)) + 4, &d_ow);
    int bad = moe_waterfill(ctx, &c, d_ids, d_w, T, d_load, d_oi, d_ow, NULL) != MOE_OK ||
              test_download(ctx, out_ids, d_oi, 4 * (size_t)(T * (k + 1))) ||
              test_download(ctx, out_w, d_ow, 4 * (size_t)(T * (k + 1)));
    if (bad) fprintf(stderr, "  %s: %s\n", name, moe_last_error(ctx));
    bad = bad || compare_i32(name, "out_ids", out_ids, want_ids);
    for (int64_t i = 0; !bad && i < want_w->numel; i++)
        if (test_f32_bits(out_w[i]) != ((const uint32_t *)want_w->data)[i]) {
            fprintf(stderr, "  %s: out_weights[%lld] = %a, oracle %a\n", name, (long long)i, out_w[i],
                    test_f32_from_bits(((const uint32_t *)want_w->data)[i]));
            bad = 1;
        }
    /* the per-rank load counted from these ids (not compared with .load, which a test may choose freely) */
    free(h_ids), free(out_ids), free(out_w);
    moe_free(ctx, d_ids), moe_free(ctx, d_w), moe_free(ctx, d_load), moe_free(ctx, d_oi), moe_free(ctx, d_ow);
    return bad;
}

int route_run_golden_waterfill(test_env *env, moe_ctx *ctx) {
    return run_family(env, ctx, "wf_cases", run_waterfill_case, 4);
}

static int run_permute_case(moe_ctx *ctx, const golden *g, const char *name) {
    char cfg[256], layout[32];
    long long Eg = 0, e0 = 0, E = 0, M = 1, max_rows = 0;
    if (!golden_cfg(g, name, cfg, sizeof cfg)) return 1;
    golden_cfg_int(cfg, "E_global=", &Eg);
    golden_cfg_int(cfg, "e0=", &e0);
    golden_cfg_int(cfg, "E=", &E);
    golden_cfg_int(cfg, "M=", &M);
    golden_cfg_int(cfg, "max_rows=", &max_rows);
    golden_cfg_word(cfg, "layout=", layout, sizeof layout);
    const golden_record *ids = golden_case(g, name, "ids");
    if (!ids) return 1;
    const int64_t T = ids->shape[0], k = ids->ndim > 1 ? ids->shape[1] : 1;
    moe_permute_config c = {(int)Eg, (int)e0, (int)E, (int)k, (int)M,
                            !strcmp(layout, "masked") ? MOE_PERMUTE_MASKED : MOE_PERMUTE_CONTIGUOUS, max_rows};
    const int64_t rows = moe_permute_rows(&c, T);
    size_t ws_bytes = 0;
    moe_permute_workspace_size(ctx, &c, T, &ws_bytes);
    int32_t *h_ids = golden_to_i32(ids), *counts = malloc(4 * (size_t)E), *row_src = malloc(4 * (size_t)rows + 4),
            *slot_row = malloc(4 * (size_t)(T * k) + 4), inv = -7, drop = -7;
    int64_t *offsets = malloc(8 * (size_t)(E + 1));
    void *d_ids = test_upload(ctx, h_ids, 4 * (size_t)(T * k)), *ws = NULL;
    moe_permute_outputs o;
    moe_alloc(ctx, 4 * (size_t)E, (void **)&o.counts);
    moe_alloc(ctx, 8 * (size_t)(E + 1), (void **)&o.offsets);
    moe_alloc(ctx, 4 * (size_t)rows + 4, (void **)&o.row_src);
    moe_alloc(ctx, 4 * (size_t)(T * k) + 4, (void **)&o.slot_row);
    moe_alloc(ctx, 4, (void **)&o.invalid);
    moe_alloc(ctx, 4, (void **)&o.dropped);
    moe_memset(ctx, o.row_src, 0xA5, 4 * (size_t)rows, NULL);
    moe_memset(ctx, o.slot_row, 0xA5, 4 * (size_t)(T * k), NULL);
    if (ws_bytes) moe_alloc(ctx, ws_bytes, &ws);
    int bad = moe_permute(ctx, &c, d_ids, T, &o, ws, ws_bytes, NULL) != MOE_OK ||
              test_download(ctx, counts, o.counts, 4 * (size_t)E) ||
              test_download(ctx, offsets, o.offsets, 8 * (size_t)(E + 1)) ||
              test_download(ctx, row_src, o.row_src, 4 * (size_t)rows) ||
              test_download(ctx, slot_row, o.slot_row, 4 * (size_t)(T * k)) || test_download(ctx, &inv, o.invalid, 4) ||
              test_download(ctx, &drop, o.dropped, 4);
    if (bad) fprintf(stderr, "  %s: %s\n", name, moe_last_error(ctx));
    const golden_record *w_counts = golden_case(g, name, "counts"), *w_rows = golden_case(g, name, "row_src"),
                        *w_slots = golden_case(g, name, "slot_row"), *w_inv = golden_case(g, name, "invalid"), *w_drop = golden_case(g, name, "dropped");
    bad = bad || !w_counts || !w_rows || !w_slots || !w_inv || !w_drop;
    bad = bad || compare_i32(name, "counts", counts, w_counts) || compare_i32(name, "row_src", row_src, w_rows) ||
          compare_i32(name, "slot_row", slot_row, w_slots);
    if (!bad && c.layout == MOE_PERMUTE_CONTIGUOUS) {
        const golden_record *w_off = golden_case(g, name, "offsets");
        for (int64_t e = 0; !bad && w_off && e <= E; e++)
            if (offsets[e] != ((const int64_t *)w_off->data)[e]) {
                fprintf(stderr, "  %s: offsets[%lld] = %lld, oracle %lld\n", name, (long long)e, (long long)offsets[e],
                        (long long)((const int64_t *)w_off->data)[e]);
                bad = 1;
            }
        bad = bad || !w_off || w_rows->numel != offsets[E];
    }
    if (!bad && (inv != *(const int64_t *)w_inv->data || drop != *(const int64_t *)w_drop->data)) {
        fprintf(stderr, "  %s: invalid %d dropped %d, oracle %lld %lld\n", name, inv, drop,
                (long long)*(const int64_t *)w_inv->data, (long long)*(const int64_t *)w_drop->data);
        bad = 1;
    }
    free(h_ids), free(counts), free(row_src), free(slot_row), free(offsets);
    moe_free(ctx, d_ids), moe_free(ctx, ws), moe_free(ctx, o.counts), moe_free(ctx, o.offsets);
    moe_free(ctx, o.row_src), moe_free(ctx, o.slot_row), moe_free(ctx, o.invalid), moe_free(ctx, o.dropped);
    return bad;
}

int route_run_golden_permute(test_env *env, moe_ctx *ctx) {
    return run_family(env, ctx, "perm_cases", run_permute_case, 8);
}

int route_run_golden_eplb(test_env *env) {
    golden g;
    if (golden_load(&g, env->data_dir, "routing.moeg")) return -1;
    char **names = golden_case_names(&g, "eplb_cases");
    int bad = 0, count = 0;
    for (size_t i = 0; names && names[i]; i++, count++) {
        const char *name = names[i];
        char cfg[256];
        long long R = 0, G = 0, N = 0, M = 0;
        const golden_record *load = golden_case(&g, name, "load"), *p2l = golden_case(&g, name, "phy2log"), *l2p = golden_case(&g, name, "log2phy"),
                            *cnt = golden_case(&g, name, "logcnt");
        if (!golden_cfg(&g, name, cfg, sizeof cfg) || !load || !p2l || !l2p || !cnt) {
            bad++;
            continue;
        }
        golden_cfg_int(cfg, "R=", &R);
        golden_cfg_int(cfg, "groups=", &G);
        golden_cfg_int(cfg, "nodes=", &N);
        golden_cfg_int(cfg, "gpus=", &M);
        const int L = (int)load->shape[0], E = (int)load->shape[1];
        moe_eplb_config c = {L, E, (int)R, (int)G, (int)N, (int)M};
        double *w = malloc(sizeof(double) * (size_t)(L * E));
        for (int64_t j = 0; j < L * E; j++) w[j] = (double)((const int64_t *)load->data)[j];
        int32_t *o_p2l = malloc(4 * (size_t)(L * R)), *o_l2p = malloc(4 * (size_t)L * E * (R - E + 1)),
                *o_cnt = malloc(4 * (size_t)(L * E));
        if (moe_eplb_plan(NULL, &c, w, o_p2l, o_l2p, o_cnt) != MOE_OK) {
            fprintf(stderr, "  %s: moe_eplb_plan failed\n", name);
            bad++;
        } else {
            bad += compare_i32(name, "phy2log", o_p2l, p2l) || compare_i32(name, "log2phy", o_l2p, l2p) ||
                   compare_i32(name, "logcnt", o_cnt, cnt);
        }
        free(w), free(o_p2l), free(o_l2p), free(o_cnt);
    }
    golden_free_names(names);
    golden_free(&g);
    return count < 3 ? bad + 1 : bad;
}
