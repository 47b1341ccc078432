/* test_layer.c — the MoE layer on the CPU: the oracle's Hugging Face blocks (f32 within 1e-5, bf16 within 2e-2),
 * -1 slots, T = 0, and bad input. */
#include <stdlib.h>

#include "layer_cases.h"
#ifdef MOE_WITH_CUDA
#include "cuda/moe/tile_table.cuh"
#endif

TEST_IMPL(layer_golden) {
    ASSERT_EQ_I64(layer_run_golden(env, env->cpu, MOE_DTYPE_F32, 0, 1e-5), 0);
    ASSERT_EQ_I64(layer_run_golden(env, env->cpu, MOE_DTYPE_F32, 1, 1e-5), 0);
    /* bf16 weights and x: the golden logits keep the routing of the f32 data */
    ASSERT_EQ_I64(layer_run_golden(env, env->cpu, MOE_DTYPE_BF16, 1, 2e-2), 0);
    return TEST_OK;
}

/* Rows whose logits are all NaN route nowhere (every slot -1): without shared experts their output is 0; with
 * them, exactly the shared part. T = 0 is a no-op. */
TEST_IMPL(layer_skipped_slots) {
    moe_layer_config c = {0};
    c.hidden = 24, c.intermediate = 16, c.activation = MOE_ACT_SILU_GLU, c.dtype = MOE_DTYPE_F32;
    ASSERT_OK(env->cpu, moe_router_preset("qwen3-30b-a3b", &c.router));
    c.router.n_experts = 16, c.router.top_k = 4;
    for (int shared = 0; shared < 2; shared++) {
        c.n_shared = shared, c.shared_intermediate = shared ? 8 : 0;
        layer_problem p;
        layer_problem_random(&p, &c, 200, 1, env->seed + (uint64_t)shared);
        float *out = malloc(sizeof(float) * 200 * 24);
        ASSERT_OK(env->cpu, layer_run(env->cpu, &p, MOE_DTYPE_F32, 1, out, 0));
        layer_problem q = p; /* the same rows with no routed expert at all: logits all NaN */
        float *nan_logits = malloc(sizeof(float) * 200 * 16), *shared_only = malloc(sizeof(float) * 200 * 24);
        for (int i = 0; i < 200 * 16; i++) nan_logits[i] = NAN;
        q.logits = nan_logits;
        ASSERT_OK(env->cpu, layer_run(env->cpu, &q, MOE_DTYPE_F32, 1, shared_only, 0));
        int checked = 0;
        for (int t = 5; t < 200; t += 97, checked++)
            for (int h = 0; h < 24; h++)
                ASSERT_MSG(test_same_f32(out[t * 24 + h], shared_only[t * 24 + h]) &&
                               (shared || out[t * 24 + h] == 0.0f),
                           "token %d (all slots -1), shared %d: %g, expected %g", t, shared, out[t * 24 + h],
                           shared_only[t * 24 + h]);
        ASSERT(checked == 3);
        double norm = 0.0;
        for (int i = 0; i < 200 * 24; i++) norm += fabs(out[i]);
        ASSERT(norm > 0.0);
        free(out), free(nan_logits), free(shared_only);
        layer_problem_free(&p);
    }
    layer_problem p;
    layer_problem_random(&p, &c, 0, 1, env->seed);
    ASSERT_OK(env->cpu, layer_run(env->cpu, &p, MOE_DTYPE_F32, 1, NULL, 0));
    layer_problem_free(&p);
    return TEST_OK;
}

TEST_IMPL(layer_errors) {
    moe_ctx *ctx = env->cpu;
    float w13[2 * 2 * 8 * 8], w2[2 * 8 * 8], gate[2 * 8], x[3 * 8], y[3 * 8], ws[1024];
    memset(w13, 0, sizeof w13), memset(w2, 0, sizeof w2), memset(gate, 0, sizeof gate), memset(x, 0, sizeof x);
    moe_layer_config c = {0};
    c.hidden = 8, c.intermediate = 8, c.activation = MOE_ACT_SILU_GLU, c.dtype = MOE_DTYPE_F32;
    c.router.kind = MOE_ROUTER_TOPK, c.router.score = MOE_SCORE_SOFTMAX, c.router.n_experts = 2, c.router.top_k = 1;
    c.router.scaling_factor = 1.0f;
    moe_layer_weights w = {.w13 = w13, .w2 = w2, .gate = gate};
    moe_layer *l = NULL;
    moe_layer_config b = c;
    b.activation = (moe_activation)9;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "activation", moe_layer_create(ctx, &b, &w, &l));
    b = c;
    b.expert_tile = (moe_expert_tile)9;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "expert_tile", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.dtype = MOE_DTYPE_F16;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "dtype", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.hidden = 0;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "hidden", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.gate_dtype = MOE_DTYPE_F16;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "gate_dtype", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.n_shared = 1, b.shared_intermediate = 8;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "shared", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.router.top_k = 2, b.router.weight_on_input = 1;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "top_k 1", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.router.kind = MOE_ROUTER_INVALID;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "router", moe_layer_create(ctx, &b, &w, &l));
    /* the router is checked at create: its E and k size the layer's buffers */
    b = c, b.router.top_k = 0;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "top_k 0", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.router.n_experts = 0;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "n_experts is 0", moe_layer_create(ctx, &b, &w, &l));
    /* widths and shared experts past what the layer's sizes allow */
    b = c, b.hidden = (1 << 20) + 8;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "2^20", moe_layer_create(ctx, &b, &w, &l));
    b = c, b.n_shared = 65, b.shared_intermediate = 8;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "up to 64", moe_layer_create(ctx, &b, &w, &l));
    moe_layer_weights nw = w;
    nw.w2 = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "w2", moe_layer_create(ctx, &c, &nw, &l));
    ASSERT(l == NULL);

    ASSERT_OK(ctx, moe_layer_create(ctx, &c, &w, &l));
    size_t need = 0;
    ASSERT_OK(ctx, moe_layer_workspace_size(l, 3, &need));
    ASSERT(need > 0 && need <= sizeof ws);
    /* token counts whose rows pass int32 ids (their byte sizes once wrapped to 0) */
    size_t none = 7;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "too many", moe_layer_workspace_size(l, (int64_t)1 << 31, &none));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "too many", moe_layer_workspace_size(l, (int64_t)1 << 62, &none));
    ASSERT(none == 7);
    moe_tensor xt = moe_tensor_2d(x, MOE_DTYPE_F32, 3, 8), yt = moe_tensor_2d(y, MOE_DTYPE_F32, 3, 8);
    moe_tensor bad_x = moe_tensor_2d(x, MOE_DTYPE_F32, 3, 6), bad_y = moe_tensor_2d(y, MOE_DTYPE_BF16, 3, 8);
    moe_tensor bad_logits = moe_tensor_2d(gate, MOE_DTYPE_F32, 3, 5);
    moe_layer_io io = {&xt, NULL, &yt, NULL, NULL, 0};
    ASSERT_OK(ctx, moe_layer_forward(l, &io, ws, sizeof ws, NULL));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "workspace", moe_layer_forward(l, &io, ws, need - 1, NULL));
    io.x = &bad_x;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "x must be", moe_layer_forward(l, &io, ws, sizeof ws, NULL));
    io.x = &xt, io.out = &bad_y;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "out must be", moe_layer_forward(l, &io, ws, sizeof ws, NULL));
    io.out = &yt, io.logits = &bad_logits;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "logits", moe_layer_forward(l, &io, ws, sizeof ws, NULL));
    io.logits = NULL, io.x = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "NULL", moe_layer_forward(l, &io, ws, sizeof ws, NULL));
    moe_layer_destroy(l);

    l = NULL;
    w.gate = NULL; /* no gate weight: forward must be given logits */
    ASSERT_OK(ctx, moe_layer_create(ctx, &c, &w, &l));
    io.x = &xt;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "gate", moe_layer_forward(l, &io, ws, sizeof ws, NULL));
    moe_layer_destroy(l);
    ASSERT(moe_layer_forward(NULL, &io, ws, sizeof ws, NULL) == MOE_ERR_INVALID_ARG);
    return TEST_OK;
}

/* A bf16 router weight (config.gate_dtype, as checkpoints ship it) gives the bits of its f32 copy: softmax top-k
 * with Qwen2-MoE's shared gate, and DeepSeek-V3's grouped sigmoid routing with its correction bias. */
TEST_IMPL(layer_gate_bf16) {
    int bad = 0;
    moe_layer_config c = layer_config("qwen3-30b-a3b", 64, 32, 16, 4, MOE_ACT_SILU_GLU);
    c.dtype = MOE_DTYPE_F32, c.n_shared = 1, c.shared_intermediate = 24, c.shared_gate = 1;
    layer_problem p;
    layer_problem_random(&p, &c, 37, 0, env->seed);
    bad += layer_gate_bf16_same(env->cpu, &p, MOE_DTYPE_F32, "softmax top 4, shared gate");
    layer_problem_free(&p);
    c = layer_config("deepseek-v3", 72, 32, 32, 6, MOE_ACT_SILU_GLU);
    c.router.n_groups = 8, c.router.topk_groups = 3, c.router.bias = (const float *)1; /* drawn */
    layer_problem_random(&p, &c, 21, 0, env->seed + 1);
    bad += layer_gate_bf16_same(env->cpu, &p, MOE_DTYPE_BF16, "deepseek-v3 grouped, bias");
    layer_problem_free(&p);
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}

/* The GPU layer tests' comparison (layer_compare_outputs) on made-up outputs: token t of gpu is cpu's row times
 * 1 + err[t], so that its relative error is exactly err[t]. With FP8 activations the one token most past the
 * overall tolerance is set aside (h's requantisation); without them, or with one more such token where it matters,
 * or past the token tolerance, or a replay that differs, or a NaN, the comparison fails. */
static int compare_made_up(int64_t T, const double *err, int act_quantized, int replay_differs, int nan) {
    const int64_t H = 64;
    float *cpu = malloc(sizeof(float) * (size_t)(T * H)), *gpu = malloc(sizeof(float) * (size_t)(T * H)),
          *again = malloc(sizeof(float) * (size_t)(T * H));
    uint64_t r = 12345;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            cpu[t * H + h] = (float)((double)(r >> 40) / (double)(1ull << 24) - 0.5);
            gpu[t * H + h] = (float)(cpu[t * H + h] * (1.0 + err[t]));
        }
    memcpy(again, gpu, sizeof(float) * (size_t)(T * H));
    if (replay_differs) again[H + 3] += 1.0f;
    if (nan) gpu[2 * H + 5] = again[2 * H + 5] = NAN;
    const int bad = layer_compare_outputs(cpu, gpu, again, T, H, act_quantized, "made up", 8e-3, 1.2e-1);
    free(cpu), free(gpu), free(again);
    return bad;
}

TEST_IMPL(layer_compare_rules) {
    (void)env;
    double err[17];
    for (int t = 0; t < 17; t++) err[t] = 2e-3;
    ASSERT(!compare_made_up(5, err, 0, 0, 0));
    ASSERT(!compare_made_up(5, err, 1, 0, 0));
    err[4] = 2.4e-2; /* one flipped token at T = 5: 1.1e-2 overall */
    ASSERT(compare_made_up(5, err, 0, 0, 0));
    ASSERT(!compare_made_up(5, err, 1, 0, 0));
    ASSERT(compare_made_up(5, err, 1, 1, 0));
    ASSERT(compare_made_up(5, err, 1, 0, 1));
    err[1] = 2.4e-2; /* two at T = 5: one set aside, the other fails the overall figure */
    ASSERT(compare_made_up(5, err, 1, 0, 0));
    ASSERT(!compare_made_up(17, err, 1, 0, 0)); /* T = 17: one set aside, the other 6.3e-3 over 16 tokens */
    err[1] = err[4] = 5e-2; /* one set aside, the other 1.26e-2 over 16: one, not a share of T */
    ASSERT(compare_made_up(17, err, 1, 0, 0));
    err[1] = err[9] = 2e-3, err[4] = 0.2; /* past the token tolerance: fails, though set aside from the overall */
    ASSERT(compare_made_up(5, err, 1, 0, 0));
    return TEST_OK;
}

/* The measured tile table's lookup (src/cuda/moe/tile_table.cu) on rows made up here: the key must match in full;
 * a row covers the token counts above the previous row of its key up to its own, the last one every T above. */
TEST_IMPL(layer_tile_table) {
    (void)env;
#ifndef MOE_WITH_CUDA
    SKIP("CPU-only build: the tiles are the CUDA kernels'");
#else
    const moe_tile_row rows[] = {
        {90, "bf16", 2048, 768, 128, 8, 16, MOE_EXPERT_TILE_SMALL},
        {90, "bf16", 2048, 768, 128, 8, 1024, MOE_EXPERT_TILE_LARGE}, /* out of order on purpose */
        {90, "bf16", 2048, 768, 128, 8, 128, MOE_EXPERT_TILE_MEDIUM},
        {90, "bf16", 2048, 768, 128, 8, 256, MOE_EXPERT_TILE_MEDIUM32},
        {90, "fp8", 2048, 768, 128, 8, 4, MOE_EXPERT_TILE_LARGE},
        {80, "bf16", 2048, 768, 128, 8, 4, MOE_EXPERT_TILE_MEDIUM},
        {0, NULL, 0, 0, 0, 0, 0, MOE_EXPERT_TILE_AUTO},
    };
    const struct {
        int sm;
        const char *w;
        int H, E;
        int64_t T;
        moe_expert_tile want;
    } cases[] = {
        {90, "bf16", 2048, 128, 1, MOE_EXPERT_TILE_SMALL},   {90, "bf16", 2048, 128, 16, MOE_EXPERT_TILE_SMALL},
        {90, "bf16", 2048, 128, 17, MOE_EXPERT_TILE_MEDIUM}, {90, "bf16", 2048, 128, 128, MOE_EXPERT_TILE_MEDIUM},
        {90, "bf16", 2048, 128, 129, MOE_EXPERT_TILE_MEDIUM32}, {90, "bf16", 2048, 128, 256, MOE_EXPERT_TILE_MEDIUM32},
        {90, "bf16", 2048, 128, 257, MOE_EXPERT_TILE_LARGE}, {90, "bf16", 2048, 128, 99999, MOE_EXPERT_TILE_LARGE},
        {90, "fp8", 2048, 128, 1, MOE_EXPERT_TILE_LARGE},    {90, "fp8", 2048, 128, 5000, MOE_EXPERT_TILE_LARGE},
        {80, "bf16", 2048, 128, 64, MOE_EXPERT_TILE_MEDIUM}, {90, "nvfp4", 2048, 128, 1, MOE_EXPERT_TILE_AUTO},
        {90, "bf16", 4096, 128, 1, MOE_EXPERT_TILE_AUTO},    {90, "bf16", 2048, 64, 1, MOE_EXPERT_TILE_AUTO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const moe_expert_tile got =
            moe__tile_lookup(rows, cases[i].sm, cases[i].w, cases[i].H, 768, cases[i].E, 8, cases[i].T);
        ASSERT_MSG(got == cases[i].want, "case %zu (sm %d, %s, H %d, E %d, T %lld): tile %d, want %d", i, cases[i].sm,
                   cases[i].w, cases[i].H, cases[i].E, (long long)cases[i].T, (int)got, (int)cases[i].want);
    }
    /* the weights' names as `moe tune` writes them */
    moe_layer_config c = {0};
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), "bf16"), "bf16 experts: %s", moe__tile_weights_name(&c));
    c.expert_format = moe_qformat_preset(MOE_QFORMAT_NVFP4);
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), "nvfp4"), "nvfp4 experts: %s", moe__tile_weights_name(&c));
    c.expert_format = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), "fp8"), "fp8 experts: %s", moe__tile_weights_name(&c));
    c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), "w8a8"), "w8a8: %s", moe__tile_weights_name(&c));
    c.expert_format = moe_qformat_preset(MOE_QFORMAT_MXFP4);
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), "w4a8"), "w4a8: %s", moe__tile_weights_name(&c));
    c.expert_format = moe_qformat_preset(MOE_QFORMAT_NVFP4);
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), "w4a8-nvfp4"), "w4a8-nvfp4: %s", moe__tile_weights_name(&c));
    c.expert_format = moe_qformat_preset(MOE_QFORMAT_MXFP8); /* no dtype of `moe tune` names it */
    ASSERT_MSG(!strcmp(moe__tile_weights_name(&c), ""), "mxfp8 with fp8 inputs: %s", moe__tile_weights_name(&c));
    return TEST_OK;
#endif
}
