/* test_layer_quant.c — the MoE layer over quantised experts on the CPU: the reference over FP8 / MX / NVFP4 weights
 * gives exactly the bits of the f32 layer over the weights those codes stand for (moe_dequantize, itself checked
 * against ml_dtypes' goldens), on shapes off every block grid; it matches the oracle's Hugging Face blocks run on
 * the values ml_dtypes decodes from the same codes (layer_quant.moeg); and bad formats are refused. */
#include <stdlib.h>

#include "layer_cases.h"

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

TEST_IMPL(layer_quant_cpu) {
    moe_qformat fmts[LAYER_WEIGHT_FORMATS];
    const char *names[LAYER_WEIGHT_FORMATS];
    const int n = layer_weight_formats(fmts, names);
    const moe_layer_config c = quant_config();
    const int64_t T = 37, H = c.hidden;
    layer_problem p;
    layer_problem_random(&p, &c, T, 1, env->seed);
    float *plain = malloc(sizeof(float) * (size_t)(T * H)), *quant = malloc(sizeof(float) * (size_t)(T * H)),
          *deq_out = malloc(sizeof(float) * (size_t)(T * H));
    ASSERT_OK(env->cpu, layer_run(env->cpu, &p, MOE_DTYPE_F32, 1, plain, 0));
    for (int i = 0; i < n; i++) {
        layer_qweights q;
        float *deq[2];
        ASSERT_MSG(layer_problem_quantize(env->cpu, &p, &fmts[i], &q, deq) == 0, "%s", names[i]);
        layer_problem pq = p, pd = p;
        pq.qw = &q;
        pd.w13 = deq[0], pd.w2 = deq[1];
        ASSERT_OK(env->cpu, layer_run(env->cpu, &pq, MOE_DTYPE_F32, 1, quant, 0));
        ASSERT_OK(env->cpu, layer_run(env->cpu, &pd, MOE_DTYPE_F32, 1, deq_out, 0));
        for (int64_t j = 0; j < T * H; j++)
            ASSERT_MSG(test_same_f32(quant[j], deq_out[j]), "%s: out[%lld] = %.9g over the codes, %.9g over their "
                       "values", names[i], (long long)j, quant[j], deq_out[j]);
        /* the codes are not the f32 weights: the output moved, by about the format's precision */
        const double e = test_rel_l2(quant, plain, T * H), bound = fmts[i].elem == MOE_DTYPE_E2M1 ? 0.25 : 0.08;
        fprintf(stderr, "  %-20s relative L2 to the unquantised layer %.3g\n", names[i], e);
        ASSERT_MSG(e > 0.0 && e < bound, "%s: %g", names[i], e);
        free(deq[0]), free(deq[1]);
        layer_qweights_free(&q);
    }
    free(plain), free(quant), free(deq_out);
    layer_problem_free(&p);
    return TEST_OK;
}

TEST_IMPL(layer_quant_golden) {
    ASSERT_EQ_I64(layer_run_quant_golden(env, env->cpu, MOE_DTYPE_F32, 1e-5), 0);
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
    return TEST_OK;
}
