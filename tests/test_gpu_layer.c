/* test_gpu_layer.c — the CUDA MoE layer (bf16) against the CPU reference on fresh random problems, and against
 * the oracle's Hugging Face blocks; run-to-run bit equality; T from 0 to 65537 (every tile shape); refusals.
 * Skipped without a GPU. */
#include <stdlib.h>

#include "layer_cases.h"

TEST_IMPL(gpu_layer_random) {
    SKIP_WITHOUT_GPU(env);
    int bad = 0;
    uint64_t seed = env->seed;
    layer_problem p;
    /* Qwen3-like, K and N not multiples of the tile (392 = 12 x 32 + 8, 200 = 3 x 64 + 8), shared expert with
     * Qwen2's gate, logits from the gate weight */
    moe_layer_config c = layer_config("qwen3-30b-a3b", 392, 200, 16, 4, MOE_ACT_SILU_GLU);
    c.n_shared = 1, c.shared_intermediate = 136, c.shared_gate = 1;
    const int64_t sizes[] = {1, 7, 64, 300};
    for (int i = 0; i < 4; i++) {
        layer_problem_random(&p, &c, sizes[i], 0, seed++);
        bad += layer_compare_gpu(env, &p, 0, "silu, concat, shared + gate");
        layer_problem_free(&p);
    }
    /* GPT-OSS: interleaved w13, biases everywhere, clamps */
    c = layer_config("gpt-oss-20b", 256, 96, 32, 4, MOE_ACT_GPTOSS_GLU);
    c.w13_layout = MOE_W13_INTERLEAVED, c.act_alpha = 1.702f, c.act_limit = 7.0f;
    layer_problem_random(&p, &c, 257, 0, seed++);
    for (int64_t i = 0; i < p.T * 256; i++) p.x[i] *= 3.0f; /* push w13 . x past the limit */
    bad += layer_compare_gpu(env, &p, 0, "gptoss, interleaved, biases");
    layer_problem_free(&p);
    /* Llama-4: top-1 sigmoid, the weight on the input, an unscaled shared expert */
    c = layer_config("llama4-scout", 128, 64, 16, 1, MOE_ACT_SILU_GLU);
    c.n_shared = 1, c.shared_intermediate = 64;
    layer_problem_random(&p, &c, 130, 0, seed++);
    bad += layer_compare_gpu(env, &p, 0, "llama4, weight on input");
    layer_problem_free(&p);
    /* DeepSeek-V3 grouped routing with correction bias, two shared experts, given logits with all-NaN rows
     * (every slot -1) */
    c = layer_config("deepseek-v3", 256, 64, 64, 6, MOE_ACT_SILU_GLU);
    c.router.n_groups = 8, c.router.topk_groups = 3;
    c.router.bias = (const float *)1; /* drawn by layer_problem_random */
    c.n_shared = 2, c.shared_intermediate = 64;
    layer_problem_random(&p, &c, 500, 1, seed++);
    bad += layer_compare_gpu(env, &p, 1, "deepseek-v3 grouped, 2 shared, -1 slots");
    layer_problem_free(&p);
    /* the GELU variants, few experts so each spans several row tiles */
    const moe_activation acts[] = {MOE_ACT_GELU_GLU, MOE_ACT_GELU_TANH_GLU};
    for (int i = 0; i < 2; i++) {
        c = layer_config("mixtral-8x7b", 136, 120, 8, 2, acts[i]);
        layer_problem_random(&p, &c, 600, 1, seed++);
        bad += layer_compare_gpu(env, &p, 1, i ? "gelu_tanh, 8 experts" : "gelu, 8 experts");
        layer_problem_free(&p);
    }
    /* a larger Qwen3-shaped layer: 64 experts, top 8, 1024 x 384 */
    c = layer_config("qwen3-30b-a3b", 1024, 384, 64, 8, MOE_ACT_SILU_GLU);
    layer_problem_random(&p, &c, 256, 0, seed++);
    bad += layer_compare_gpu(env, &p, 0, "qwen3 64 experts top 8, 1024 x 384");
    layer_problem_free(&p);
    /* the portable (mma.sync) prefill tiles, which Hopper replaces by wgmma */
    setenv("MOE_GEMM_PORTABLE", "1", 1);
    c = layer_config("mixtral-8x7b", 136, 120, 8, 2, MOE_ACT_SILU_GLU);
    c.n_shared = 1, c.shared_intermediate = 64;
    layer_problem_random(&p, &c, 700, 0, seed++);
    bad += layer_compare_gpu(env, &p, 0, "portable prefill tiles, shared");
    layer_problem_free(&p);
    unsetenv("MOE_GEMM_PORTABLE");
    /* 65537 tokens (the 128-row tiles, dense shared tiles of 128 rows), and 0 tokens. The logits are given: from
     * the gate, whose f32 sums the backends add in different orders, a token or two of so many may have its 4th
     * and 5th logits within an ulp and be routed differently (seed 87019170: token 2657, logits 9e-8 apart, 4e-2
     * off on every build) */
    c = layer_config("qwen3-30b-a3b", 64, 32, 16, 4, MOE_ACT_SILU_GLU);
    c.n_shared = 1, c.shared_intermediate = 32;
    layer_problem_random(&p, &c, 65537, 1, seed++);
    bad += layer_compare_gpu(env, &p, 1, "65537 tokens, 16 experts top 4, shared");
    layer_problem_free(&p);
    layer_problem_random(&p, &c, 0, 0, seed++);
    ASSERT_OK(env->gpu, layer_run(env->gpu, &p, MOE_DTYPE_BF16, 0, NULL, 0));
    layer_problem_free(&p);
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}

/* Every tile shape (16-, 64- and 128-row tiles, routed and dense) on a small layer: quick enough for
 * compute-sanitizer (scripts/gpu_layer.sh runs it under memcheck and racecheck). */
TEST_IMPL(gpu_layer_tiles) {
    SKIP_WITHOUT_GPU(env);
    int bad = 0;
    uint64_t seed = env->seed + 77;
    moe_layer_config c = layer_config("qwen2-moe", 72, 40, 4, 1, MOE_ACT_SILU_GLU);
    c.n_shared = 1, c.shared_intermediate = 24, c.shared_gate = 1;
    const int64_t sizes[] = {1, 200, 600};
    for (int i = 0; i < 3; i++) {
        layer_problem p;
        layer_problem_random(&p, &c, sizes[i], 0, seed++);
        bad += layer_compare_gpu(env, &p, 0, "tile shapes, qwen2-moe style");
        layer_problem_free(&p);
    }
    /* each tile forced (moe_layer_config.expert_tile, what `moe tune` times), at decode and prefill sizes */
    for (int t = MOE_EXPERT_TILE_SMALL; t <= MOE_EXPERT_TILE_LARGE; t++)
        for (int i = 0; i < 2; i++) {
            moe_layer_config f = c;
            f.expert_tile = (moe_expert_tile)t;
            layer_problem p;
            layer_problem_random(&p, &f, sizes[i], 0, seed++);
            char what[64];
            snprintf(what, sizeof what, "tile %d forced, T = %lld", t, (long long)sizes[i]);
            bad += layer_compare_gpu(env, &p, 0, what);
            layer_problem_free(&p);
        }
    /* the streaming decode kernels' K not a multiple of their 64- and 128-wide blocks (H = 200, I = 72: a partial
     * last block in both GEMMs), a tile with one half and with two; two dense shared experts on the same kernel
     * (a group each, 1 and 2 row tiles) */
    for (int i = 0; i < 2; i++) {
        moe_layer_config f = layer_config("qwen3-30b-a3b", 200, 72, 8, 4, MOE_ACT_SILU_GLU);
        f.n_shared = 2, f.shared_intermediate = 40;
        layer_problem p;
        layer_problem_random(&p, &f, i ? 24 : 1, 0, seed++);
        bad += layer_compare_gpu(env, &p, 0, i ? "decode, K off the block, T = 24" : "decode, K off the block, T = 1");
        layer_problem_free(&p);
    }
    /* top_k off the powers of two (the decode kernel's token index is a multiply, not a division): DeepSeek-V2's
     * top 6 at decode, and top 3 with SMALL forced over 300 tokens (token indices up to 899, tiles of two halves) */
    for (int i = 0; i < 2; i++) {
        moe_layer_config f = layer_config("qwen3-30b-a3b", 256, 128, i ? 8 : 64, i ? 3 : 6, MOE_ACT_SILU_GLU);
        if (i) f.expert_tile = MOE_EXPERT_TILE_SMALL;
        layer_problem p;
        layer_problem_random(&p, &f, i ? 300 : 7, 0, seed++);
        bad += layer_compare_gpu(env, &p, 0, i ? "decode, top 3, SMALL forced, T = 300" : "decode, top 6, T = 7");
        layer_problem_free(&p);
    }
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}

/* The Hopper prefill tiles over bf16 weights: every case picks the LARGE shape (64 rows an expert or more), and
 * runs three times, through the warp-specialised TMA tile (routed row tiles in expert bands), through the cp.async
 * wgmma tile (MOE_GEMM_SM90_CPASYNC), and with the MEDIUM shape forced (the TMA tile of 64 rows, each consumer half
 * of the B rows):
 * K off the 64-column step (H = 136), N off the 256-row tile, K long enough to wrap the 4 stages several times,
 * concatenated and interleaved w13 with biases and clamps, the weight on the input, dense shared experts, padding
 * and -1 slots. On other GPUs both runs take the portable tiles. Small enough for compute-sanitizer. */
TEST_IMPL(gpu_layer_sm90) {
    SKIP_WITHOUT_GPU(env);
    int bad = 0;
    uint64_t seed = env->seed + 300;
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1) setenv("MOE_GEMM_SM90_CPASYNC", "1", 1);
        if (pass == 2) unsetenv("MOE_GEMM_SM90_CPASYNC");
        const char *kernel = pass == 0 ? "tma" : pass == 1 ? "cp.async" : "tma 64 rows";
        const moe_expert_tile tile = pass == 2 ? MOE_EXPERT_TILE_MEDIUM : MOE_EXPERT_TILE_AUTO;
        char what[64];
        layer_problem p;
        moe_layer_config c = layer_config("mixtral-8x7b", 136, 120, 8, 2, MOE_ACT_SILU_GLU);
        c.n_shared = 1, c.shared_intermediate = 64;
        c.expert_tile = tile;
        layer_problem_random(&p, &c, 600, 0, seed++);
        snprintf(what, sizeof what, "%s: concat, K tail, dense shared", kernel);
        bad += layer_compare_gpu(env, &p, 0, what);
        layer_problem_free(&p);
        c = layer_config("gpt-oss-20b", 256, 96, 8, 4, MOE_ACT_GPTOSS_GLU);
        c.w13_layout = MOE_W13_INTERLEAVED, c.act_alpha = 1.702f, c.act_limit = 7.0f;
        c.expert_tile = tile;
        layer_problem_random(&p, &c, 300, 0, seed++);
        for (int64_t i = 0; i < p.T * 256; i++) p.x[i] *= 3.0f; /* past the clamps */
        snprintf(what, sizeof what, "%s: gptoss interleaved, biases", kernel);
        bad += layer_compare_gpu(env, &p, 0, what);
        layer_problem_free(&p);
        c = layer_config("llama4-scout", 128, 320, 4, 1, MOE_ACT_SILU_GLU);
        c.n_shared = 1, c.shared_intermediate = 200;
        c.expert_tile = tile;
        layer_problem_random(&p, &c, 520, 0, seed++);
        snprintf(what, sizeof what, "%s: llama4 weight on input, 2I = 640", kernel);
        bad += layer_compare_gpu(env, &p, 0, what);
        layer_problem_free(&p);
        c = layer_config("qwen3-30b-a3b", 1024, 384, 16, 4, MOE_ACT_SILU_GLU);
        c.expert_tile = tile;
        layer_problem_random(&p, &c, 512, 0, seed++);
        snprintf(what, sizeof what, "%s: qwen3 1024 x 384, 16 K steps", kernel);
        bad += layer_compare_gpu(env, &p, 0, what);
        layer_problem_free(&p);
        /* rows set per expert (4 experts, k = 1): experts of 64, 65, 192 and 0 rows: with 128-row tiles, a
         * consumer's 64 rows are all padding in expert 0's only tile (it skips them) and in expert 2's last tile
         * (computed: the first reads the same B), and hold one row in expert 1's; an expert of 2100 rows beside two
         * small ones and an empty one: the TMA tile walks an expert's row tiles in bands of at most 16 (17 tiles of
         * 128 rows: bands of 16 and 1; at 64 rows, 33 tiles: 16, 16 and 1) */
        static const int64_t counts[2][4] = {{64, 65, 192, 0}, {2100, 50, 0, 130}};
        static const char *const counts_what[2] = {"experts of 64, 65, 192 and 0 rows", "an expert of 2100 rows"};
        for (int i = 0; i < 2; i++) {
            c = layer_config("qwen3-30b-a3b", 256, 192, 4, 1, MOE_ACT_SILU_GLU);
            c.expert_tile = pass == 2 ? MOE_EXPERT_TILE_MEDIUM : MOE_EXPERT_TILE_LARGE;
            layer_problem_random(&p, &c, counts[i][0] + counts[i][1] + counts[i][2] + counts[i][3], 1, seed++);
            layer_problem_route_counts(&p, counts[i]);
            snprintf(what, sizeof what, "%s: %s", kernel, counts_what[i]);
            bad += layer_compare_gpu(env, &p, 1, what);
            layer_problem_free(&p);
        }
        c = layer_config("deepseek-v3", 256, 64, 64, 6, MOE_ACT_SILU_GLU);
        c.router.n_groups = 8, c.router.topk_groups = 3;
        c.router.bias = (const float *)1; /* drawn by layer_problem_random */
        c.expert_tile = tile;
        layer_problem_random(&p, &c, 1500, 1, seed++);
        snprintf(what, sizeof what, "%s: deepseek-v3, -1 slots", kernel);
        bad += layer_compare_gpu(env, &p, 1, what);
        layer_problem_free(&p);
    }
    unsetenv("MOE_GEMM_SM90_CPASYNC");
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}

/* A bf16 router weight against its f32 copy on the GPU, bit for bit (gate.cu reads half the bytes, sums the same
 * products in the same order): at decode (one token: the gate first, its splits a cluster; 5 and 8: one token
 * group), past the first group (17), on the tensor cores (100), with Qwen2-MoE's shared gate; W8A8 at decode (the
 * gate writes x's codes); and a bf16 gate against the CPU. */
TEST_IMPL(gpu_layer_gate_bf16) {
    SKIP_WITHOUT_GPU(env);
    int bad = 0;
    uint64_t seed = env->seed;
    layer_problem p;
    moe_layer_config c = layer_config("deepseek-v3", 1024, 128, 64, 6, MOE_ACT_SILU_GLU);
    c.router.n_groups = 8, c.router.topk_groups = 3, c.router.bias = (const float *)1; /* drawn */
    c.n_shared = 1, c.shared_intermediate = 128;
    const int64_t sizes[] = {1, 5, 8, 17, 100};
    for (int i = 0; i < 5; i++) {
        layer_problem_random(&p, &c, sizes[i], 0, seed++);
        bad += layer_gate_bf16_same(env->gpu, &p, MOE_DTYPE_BF16, "deepseek-v3 grouped, bias, shared");
        layer_problem_free(&p);
    }
    c = layer_config("qwen3-30b-a3b", 392, 200, 16, 4, MOE_ACT_SILU_GLU);
    c.n_shared = 1, c.shared_intermediate = 136, c.shared_gate = 1;
    for (int i = 0; i < 2; i++) {
        layer_problem_random(&p, &c, i ? 70 : 1, 0, seed++);
        bad += layer_gate_bf16_same(env->gpu, &p, MOE_DTYPE_BF16, "softmax top 4, shared gate");
        layer_problem_free(&p);
    }
    c = layer_config("deepseek-v3", 512, 256, 16, 4, MOE_ACT_SILU_GLU);
    c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
    moe_qformat fp8 = moe_qformat_preset(MOE_QFORMAT_FP8_128X128);
    for (int T = 1; T <= 4; T += 3) {
        layer_problem_random(&p, &c, T, 0, seed++);
        layer_qweights q;
        if (layer_problem_quantize(env->cpu, &p, &fp8, &q, NULL)) {
            bad++;
        } else {
            p.qw = &q;
            bad += layer_gate_bf16_same(env->gpu, &p, MOE_DTYPE_BF16, "w8a8 (the gate writes x's codes)");
            p.qw = NULL;
            layer_qweights_free(&q);
        }
        layer_problem_free(&p);
    }
    c = layer_config("qwen3-30b-a3b", 392, 200, 16, 4, MOE_ACT_SILU_GLU);
    c.gate_dtype = MOE_DTYPE_BF16, c.n_shared = 1, c.shared_intermediate = 136, c.shared_gate = 1;
    for (int i = 0; i < 2; i++) {
        layer_problem_random(&p, &c, i ? 300 : 1, 0, seed++);
        bad += layer_compare_gpu(env, &p, 0, "bf16 gate against the cpu");
        layer_problem_free(&p);
    }
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}

TEST_IMPL(gpu_layer_golden) {
    SKIP_WITHOUT_GPU(env);
    /* bf16 on the GPU against the f32 HF blocks, with their logits (bf16 x would move the routing) */
    ASSERT_EQ_I64(layer_run_golden(env, env->gpu, MOE_DTYPE_BF16, 1, 2e-2), 0);
    /* W8A8: bf16 x and the bf16 path's roundings move h by about 2^-9 before it is quantised, which turns into
     * whole code steps near rounding boundaries (docs/layer.md §6): 2.3e-2 and 3.3e-2 measured at T = 9 */
    ASSERT_EQ_I64(layer_run_quant_golden(env, env->gpu, MOE_DTYPE_BF16, 2e-2, 6e-2), 0);
    return TEST_OK;
}

TEST_IMPL(gpu_layer_errors) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *ctx = env->gpu;
    moe_layer_config c = layer_config("mixtral-8x7b", 12, 16, 8, 2, MOE_ACT_SILU_GLU);
    void *w13 = NULL, *w2 = NULL;
    ASSERT_OK(ctx, moe_alloc(ctx, 8 * 32 * 16 * 2, &w13));
    ASSERT_OK(ctx, moe_alloc(ctx, 8 * 16 * 16 * 2, &w2));
    moe_layer_weights w = {.w13 = w13, .w2 = w2};
    moe_layer *l = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_UNSUPPORTED, "multiples of 8", moe_layer_create(ctx, &c, &w, &l));
    c.hidden = 16, c.dtype = MOE_DTYPE_F32;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "bf16", moe_layer_create(ctx, &c, &w, &l));
    c.dtype = MOE_DTYPE_BF16;
    /* past the CUDA routers' reach: refused at creation, not at every forward */
    moe_layer_config wide = c;
    wide.router.n_experts = 768;
    ASSERT_FAILS(ctx, MOE_ERR_UNSUPPORTED, "up to 512 experts", moe_layer_create(ctx, &wide, &w, &l));
    wide.router.n_experts = 32, wide.router.top_k = 20;
    ASSERT_FAILS(ctx, MOE_ERR_UNSUPPORTED, "top_k 16", moe_layer_create(ctx, &wide, &w, &l));
    /* an expert-parallel layer whose rank holds more slots than one permute takes: refused at creation */
    moe_comm *one = NULL;
    ASSERT_OK(ctx, moe_comm_create_local(&ctx, 1, &one));
    moe_ep_config ec = {c, MOE_EP_ALL_TO_ALL, 0, 4, 2048};
    moe_ep *ep = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_UNSUPPORTED, "slots a rank", moe_ep_create(one, &ec, &w, &ep));
    ASSERT(ep == NULL);
    moe_comm_destroy(one);
    moe_layer_weights mis = w;
    mis.w2 = (const char *)w2 + 2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "aligned", moe_layer_create(ctx, &c, &mis, &l));
    static uint16_t host_w2[8 * 16 * 16];
    moe_layer_weights host = w;
    host.w2 = host_w2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "w2", moe_layer_create(ctx, &c, &host, &l));
    /* quantised experts need rows of whole 16-byte FP4 chunks; their scales must be on the device */
    moe_layer_weights qw = w;
    qw.w13_scale = qw.w2_scale = w13;
    c.expert_format = moe_qformat_preset(MOE_QFORMAT_MXFP4);
    c.hidden = 32, c.intermediate = 48;
    ASSERT_FAILS(ctx, MOE_ERR_UNSUPPORTED, "multiples of 32", moe_layer_create(ctx, &c, &qw, &l));
    c.intermediate = 32;
    qw.w2_scale = host_w2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "w2_scale", moe_layer_create(ctx, &c, &qw, &l));
    qw.w2_scale = w13;
    ASSERT_OK(ctx, moe_layer_create(ctx, &c, &qw, &l));
    moe_layer_destroy(l);
    l = NULL;
    /* quantised shared experts: the same 16-byte rows of FP4 codes, and their scales on the device */
    moe_layer_config sc = c;
    sc.n_shared = 1, sc.shared_intermediate = 16, sc.shared_format = moe_qformat_preset(MOE_QFORMAT_MXFP4);
    moe_layer_weights sw = qw;
    sw.shared_w13 = w13, sw.shared_w2 = w2, sw.shared_w13_scale = sw.shared_w2_scale = w13;
    ASSERT_FAILS(ctx, MOE_ERR_UNSUPPORTED, "shared_intermediate (16)", moe_layer_create(ctx, &sc, &sw, &l));
    sc.shared_intermediate = 32;
    sw.shared_w2_scale = host_w2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "shared_w2_scale", moe_layer_create(ctx, &sc, &sw, &l));
    ASSERT(l == NULL);
    sw.shared_w2_scale = w13;
    ASSERT_OK(ctx, moe_layer_create(ctx, &sc, &sw, &l));
    moe_layer_destroy(l);
    moe_free(ctx, w13), moe_free(ctx, w2);
    return TEST_OK;
}
