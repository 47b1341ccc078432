/* test_layer_quant.c — the MoE layer over quantised experts on the CPU: the reference over FP8 / MX / NVFP4 weights
 * gives exactly the bits of the f32 layer over the weights those codes stand for (moe_dequantize, itself checked
 * against ml_dtypes' goldens), on shapes off every block grid; it matches the oracle's Hugging Face blocks run on
 * the values ml_dtypes decodes from the same codes (layer_quant.moeg); and bad formats are refused. W8A8
 * (act_format): the layer equals the definition of docs/layer.md §6 composed here from the public quantiser. */
#include <math.h>
#include <stdlib.h>

#include "layer_cases.h"
#include "route/route_math.h"

/* A layer whose H and I fit every format's blocks (MX: multiples of 32) but not the 128-blocks: 2I = 192 and
 * H = 160 rows end in partial 128 x 128 tiles. */
static moe_layer_config quant_config(void) {
    moe_layer_config c = {0};
    moe_router_preset("qwen3-30b-a3b", &c.router);
    c.router.n_experts = 8, c.router.top_k = 2;
    c.hidden = 160, c.intermediate = 96, c.activation = MOE_ACT_SILU_GLU, c.dtype = MOE_DTYPE_F32;
    c.n_shared = 1, c.shared_intermediate = 32;
    return c;
}

/* In every weight format, the layer over the codes of p's routed experts (shared 0) or shared experts (1) gives
 * exactly the bits of the f32 layer over the values they stand for, and moves the output from the unquantised
 * layer by about the format's precision (the codes are not the f32 weights). */
static test_result codes_give_their_values(test_env *env, const layer_problem *p, int shared) {
    moe_qformat fmts[LAYER_WEIGHT_FORMATS];
    const char *names[LAYER_WEIGHT_FORMATS];
    const int n = layer_weight_formats(fmts, names);
    const int64_t T = p->T, H = p->c.hidden;
    float *plain = malloc(sizeof(float) * (size_t)(T * H)), *quant = malloc(sizeof(float) * (size_t)(T * H)),
          *deq_out = malloc(sizeof(float) * (size_t)(T * H));
    ASSERT_OK(env->cpu, layer_run(env->cpu, p, MOE_DTYPE_F32, 1, plain, 0));
    for (int i = 0; i < n; i++) {
        layer_qweights q;
        float *deq[2];
        ASSERT_MSG((shared ? layer_problem_quantize_shared : layer_problem_quantize)(env->cpu, p, &fmts[i], &q, deq) ==
                       0, "%s", names[i]);
        layer_problem pq = *p, pd = *p;
        if (shared) pq.sqw = &q, pd.sw13 = deq[0], pd.sw2 = deq[1];
        else pq.qw = &q, pd.w13 = deq[0], pd.w2 = deq[1];
        ASSERT_OK(env->cpu, layer_run(env->cpu, &pq, MOE_DTYPE_F32, 1, quant, 0));
        ASSERT_OK(env->cpu, layer_run(env->cpu, &pd, MOE_DTYPE_F32, 1, deq_out, 0));
        for (int64_t j = 0; j < T * H; j++)
            ASSERT_MSG(test_same_f32(quant[j], deq_out[j]), "%s%s: out[%lld] = %.9g over the codes, %.9g over "
                       "their values", shared ? "shared " : "", names[i], (long long)j, quant[j], deq_out[j]);
        const double e = test_rel_l2(quant, plain, T * H), bound = fmts[i].elem == MOE_DTYPE_E2M1 ? 0.25 : 0.08;
        fprintf(stderr, "  %-20s relative L2 to the unquantised %s %.3g\n", names[i],
                shared ? "shared experts" : "layer", e);
        ASSERT_MSG(e > 0.0 && e < bound, "%s: %g", names[i], e);
        free(deq[0]), free(deq[1]);
        layer_qweights_free(&q);
    }
    free(plain), free(quant), free(deq_out);
    return TEST_OK;
}

TEST_IMPL(layer_quant_cpu) {
    const moe_layer_config c = quant_config();
    layer_problem p;
    layer_problem_random(&p, &c, 37, 1, env->seed);
    const test_result r = codes_give_their_values(env, &p, 0);
    layer_problem_free(&p);
    return r;
}

TEST_IMPL(layer_quant_golden) {
    ASSERT_EQ_I64(layer_run_quant_golden(env, env->cpu, MOE_DTYPE_F32, 1e-5, 1e-5), 0);
    return TEST_OK;
}

TEST_IMPL(layer_quant_errors) {
    moe_ctx *ctx = env->cpu;
    moe_layer_config c = quant_config();
    c.n_shared = 0;
    static _Alignas(16) uint8_t data[8 * 192 * 160], scale[8 * 192 * 8 * 4];
    static float global[8];
    moe_layer_weights w = {.w13 = data, .w2 = data, .w13_scale = scale, .w2_scale = scale};
    moe_layer *l = NULL;
    moe_layer_config b = c;
    b.expert_format = moe_qformat_preset(MOE_QFORMAT_FP8_TENSOR);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "not a weight format", moe_layer_create(ctx, &b, &w, &l));
    b.expert_format = moe_qformat_preset(MOE_QFORMAT_MXFP4);
    b.expert_format.layout = MOE_SCALE_SWIZZLED_128X4;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "linear", moe_layer_create(ctx, &b, &w, &l));
    b.expert_format = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    b.expert_format.elem = MOE_DTYPE_E5M2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "e4m3", moe_layer_create(ctx, &b, &w, &l));
    b.expert_format = moe_qformat_preset(MOE_QFORMAT_MXFP4);
    b.hidden = 150; /* not a multiple of the 32-element blocks */
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "150", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.expert_format = moe_qformat_preset(MOE_QFORMAT_NVFP4);
    b.expert_format.global = MOE_NVFP4_GLOBAL_DECODE;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "w13_global", moe_layer_create(ctx, &b, &w, &l));
    moe_layer_weights nw = w;
    nw.w13_global = nw.w2_global = global, nw.w2_scale = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "w2_scale", moe_layer_create(ctx, &b, &nw, &l));
    b.expert_format.global = MOE_NVFP4_GLOBAL_UNSET;
    nw.w2_scale = scale;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "global", moe_layer_create(ctx, &b, &nw, &l));
    ASSERT(l == NULL);
    moe_layer_config f = c;
    f.expert_format = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    moe_layer_weights mis = w;
    mis.w2_scale = scale + 2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "4-byte aligned", moe_layer_create(ctx, &f, &mis, &l));
    b.expert_format.global = MOE_NVFP4_GLOBAL_DECODE;
    ASSERT_OK(ctx, moe_layer_create(ctx, &b, &nw, &l));
    moe_layer_destroy(l);
    l = NULL;
    /* quantised shared experts: the same checks, named for them */
    moe_layer_config sc = c;
    sc.n_shared = 2, sc.shared_intermediate = 32;
    moe_layer_weights sw = w;
    sw.shared_w13 = sw.shared_w2 = data;
    sc.shared_format = moe_qformat_preset(MOE_QFORMAT_FP8_TENSOR);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "shared_format fp8_tensor is not a weight format",
                 moe_layer_create(ctx, &sc, &sw, &l));
    sc.shared_format = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "shared_w13_scale", moe_layer_create(ctx, &sc, &sw, &l));
    sw.shared_w13_scale = sw.shared_w2_scale = scale;
    sc.shared_format = moe_qformat_preset(MOE_QFORMAT_NVFP4);
    sc.shared_format.global = MOE_NVFP4_GLOBAL_DECODE;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "shared_w13_global", moe_layer_create(ctx, &sc, &sw, &l));
    sw.shared_w13_global = sw.shared_w2_global = global;
    ASSERT(l == NULL);
    ASSERT_OK(ctx, moe_layer_create(ctx, &sc, &sw, &l));
    moe_layer_destroy(l);
    return TEST_OK;
}

/* Quantised shared experts (config.shared_format) on the CPU. In every weight format the layer over the shared
 * experts' codes gives exactly the bits of the layer over the values they stand for (two shared experts, Qwen2's
 * gate, the routed experts plain). With W8A8 a shared expert is computed as a routed one is: one expert routed at
 * weight 1 and a shared expert with the same codes give exactly twice the output of that expert alone. */
TEST_IMPL(layer_shared_quant_cpu) {
    moe_layer_config c = quant_config();
    c.n_shared = 2, c.shared_intermediate = 64, c.shared_gate = 1;
    const int64_t T = 29, H = c.hidden;
    layer_problem p;
    layer_problem_random(&p, &c, T, 1, env->seed + 60);
    const test_result r = codes_give_their_values(env, &p, 1);
    layer_problem_free(&p);
    if (r != TEST_OK) return r;

    /* W8A8: one routed expert and one shared expert, the same FP8 128x128 codes */
    c = quant_config();
    c.router.n_experts = 1, c.router.top_k = 1; /* softmax over one logit: weight 1 */
    c.n_shared = 1, c.shared_intermediate = c.intermediate;
    c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    layer_problem_random(&p, &c, T, 1, env->seed + 61);
    for (int64_t t = 0; t < T; t++) p.logits[t] = 0.0f; /* every token routed (random logits hold NaN rows) */
    layer_qweights q;
    const moe_qformat f = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    ASSERT(layer_problem_quantize(env->cpu, &p, &f, &q, NULL) == 0);
    float *both = malloc(sizeof(float) * (size_t)(T * H)), *alone = malloc(sizeof(float) * (size_t)(T * H));
    layer_problem pb = p, pa = p;
    pb.qw = pb.sqw = &q;
    pa.qw = &q, pa.c.n_shared = 0;
    ASSERT_OK(env->cpu, layer_run(env->cpu, &pb, MOE_DTYPE_F32, 1, both, 0));
    ASSERT_OK(env->cpu, layer_run(env->cpu, &pa, MOE_DTYPE_F32, 1, alone, 0));
    double mag = 0.0;
    for (int64_t j = 0; j < T * H; j++) {
        ASSERT_MSG(test_same_f32(both[j], 2.0f * alone[j]), "W8A8: out[%lld] = %.9g with the shared expert, %.9g "
                   "for the routed one alone", (long long)j, both[j], alone[j]);
        mag += fabs(alone[j]);
    }
    ASSERT_MSG(mag > 0.0, "W8A8: an all-zero output tests nothing");
    free(both), free(alone);
    layer_qweights_free(&q);
    layer_problem_free(&p);
    return TEST_OK;
}

/* v (n) -> dequant(quant(v)) in format f, through the public moe_quantize / moe_dequantize (docs/formats.md). */
static int fake_quant(moe_ctx *cpu, const moe_qformat *f, float *v, int64_t n) {
    const int64_t shape[2] = {1, n};
    moe_qsizes qs;
    if (moe_qtensor_sizes(cpu, f, 2, shape, &qs) != MOE_OK) return -1;
    void *codes = malloc(qs.data_bytes + 16), *scales = malloc(qs.scale_bytes + 16);
    moe_qtensor q = {*f, 2, {1, n}, codes, scales, NULL};
    moe_tensor t = moe_tensor_2d(v, MOE_DTYPE_F32, 1, n);
    const int bad = moe_quantize(cpu, &t, &q, NULL) != MOE_OK || moe_dequantize(cpu, &q, &t, NULL) != MOE_OK;
    free(codes), free(scales);
    return bad ? -1 : 0;
}

/* The W8A8 layer of p (f32, given logits, no shared experts, SiLU-GLU over concatenated w13) composed by hand:
 * route, then per slot x quantised (times the weight for Llama-4), h = silu(g) u quantised, y = w2 . h, the slots
 * summed in order. out (T, H). */
static int w8a8_by_hand(moe_ctx *cpu, const layer_problem *p, const moe_qformat *af, float *out) {
    const moe_layer_config *c = &p->c;
    const int64_t T = p->T, H = c->hidden, I = c->intermediate, E = c->router.n_experts, k = c->router.top_k;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(T * k));
    float *wts = malloc(sizeof(float) * (size_t)(T * k)), *xq = malloc(sizeof(float) * (size_t)H),
          *h = malloc(sizeof(float) * (size_t)I), *acc = malloc(sizeof(float) * (size_t)H);
    moe_tensor lt = moe_tensor_2d(p->logits, MOE_DTYPE_F32, T, E);
    moe_route_args ra = {&lt, NULL, T, ids, wts, NULL, NULL, 0};
    int bad = moe_route(cpu, &c->router, &ra, NULL) != MOE_OK;
    for (int64_t t = 0; t < T && !bad; t++) {
        for (int64_t i = 0; i < H; i++) acc[i] = 0.0f;
        for (int64_t j = 0; j < k && !bad; j++) {
            const int32_t e = ids[t * k + j];
            if (e < 0) continue;
            for (int64_t i = 0; i < H; i++) xq[i] = p->x[t * H + i];
            bad |= fake_quant(cpu, af, xq, H);
            if (c->router.weight_on_input)
                for (int64_t i = 0; i < H; i++) xq[i] *= wts[t * k + j];
            const float *w13 = p->w13 + e * 2 * I * H, *w2 = p->w2 + e * H * I;
            for (int64_t i = 0; i < I; i++) {
                float g = 0.0f, u = 0.0f;
                for (int64_t q = 0; q < H; q++) g += w13[i * H + q] * xq[q];
                for (int64_t q = 0; q < H; q++) u += w13[(I + i) * H + q] * xq[q];
                /* the layer's sigmoid: an exp an ulp off moves h across a code boundary now and then, and the
                 * quantised h turns that into a whole code step (5.2e-5 relative L2 at seed 24306273389) */
                h[i] = g * moe__sigmoidf(g) * u;
            }
            bad |= fake_quant(cpu, af, h, I);
            const float cw = c->router.weight_on_input ? 1.0f : wts[t * k + j];
            for (int64_t r = 0; r < H; r++) {
                float y = 0.0f;
                for (int64_t i = 0; i < I; i++) y += w2[r * I + i] * h[i];
                acc[r] += cw * y;
            }
        }
        for (int64_t i = 0; i < H; i++) out[t * H + i] = acc[i];
    }
    free(ids), free(wts), free(xq), free(h), free(acc);
    return bad ? -1 : 0;
}

/* W8A8 on the CPU: the layer with act_format FP8 1x128 (f32 scales, and UE8M0 powers of two) against the
 * definition composed by hand, for softmax top-2 and for Llama-4's weight on the input; both move the output
 * from the unquantised layer by about FP8's precision. */
TEST_IMPL(layer_w8a8_cpu) {
    const char *presets[] = {"qwen3-30b-a3b", "llama4-scout"};
    const moe_scale_rule rules[] = {MOE_SCALE_F32, MOE_SCALE_UE8M0_RCEIL};
    for (int m = 0; m < 2; m++)
        for (int r = 0; r < 2; r++) {
            moe_layer_config c = quant_config();
            moe_router_preset(presets[m], &c.router);
            c.router.n_experts = 8, c.router.top_k = m ? 1 : 2;
            c.n_shared = 0, c.hidden = 320, c.intermediate = 192; /* the last group of each row is partial */
            c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
            c.act_format.rule = rules[r];
            const int64_t T = 23, H = c.hidden;
            layer_problem p;
            layer_problem_random(&p, &c, T, 1, env->seed + 40 + 2 * m + r);
            float *got = malloc(sizeof(float) * (size_t)(T * H)), *want = malloc(sizeof(float) * (size_t)(T * H)),
                  *plain = malloc(sizeof(float) * (size_t)(T * H));
            ASSERT_OK(env->cpu, layer_run(env->cpu, &p, MOE_DTYPE_F32, 1, got, 0));
            ASSERT(w8a8_by_hand(env->cpu, &p, &c.act_format, want) == 0);
            layer_problem pp = p;
            pp.c.act_format.kind = MOE_QFORMAT_INVALID;
            ASSERT_OK(env->cpu, layer_run(env->cpu, &pp, MOE_DTYPE_F32, 1, plain, 0));
            const double e = test_rel_l2(got, want, T * H), moved = test_rel_l2(got, plain, T * H);
            fprintf(stderr, "  %-14s %-6s relative L2 to the definition %.2e, to the unquantised layer %.3g\n",
                    presets[m], moe_scale_rule_name(rules[r]), e, moved);
            ASSERT_MSG(e < 1e-5, "%s %s: %g", presets[m], moe_scale_rule_name(rules[r]), e);
            ASSERT_MSG(moved > 1e-3 && moved < 0.1, "%s: %g", presets[m], moved);
            free(got), free(want), free(plain);
            layer_problem_free(&p);
        }
    return TEST_OK;
}

TEST_IMPL(layer_w8a8_errors) {
    moe_ctx *ctx = env->cpu;
    moe_layer_config c = quant_config();
    c.n_shared = 0;
    static _Alignas(16) float w13[8 * 192 * 160], w2[8 * 160 * 96];
    moe_layer_weights w = {.w13 = w13, .w2 = w2};
    moe_layer *l = NULL;
    c.act_format = moe_qformat_preset(MOE_QFORMAT_MXFP8);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "act_format mxfp8", moe_layer_create(ctx, &c, &w, &l));
    c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    c.act_format.elem = MOE_DTYPE_E5M2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "e4m3", moe_layer_create(ctx, &c, &w, &l));
    c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    c.act_format.rule = MOE_SCALE_UE8M0_RCEIL, c.act_format.scale_dtype = MOE_DTYPE_E8M0;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "f32", moe_layer_create(ctx, &c, &w, &l));
    ASSERT(l == NULL);
    c.act_format.scale_dtype = MOE_DTYPE_F32;
    ASSERT_OK(ctx, moe_layer_create(ctx, &c, &w, &l));
    moe_layer_destroy(l);
    return TEST_OK;
}
