/* test_errors.c — bad input gives a status and a message naming the problem, never a crash. */
#include <stdlib.h>

#include "route/router.h"
#include "test.h"

static void quiet(void *user, moe_log_level level, const char *message) {
    (void)user;
    (void)level;
    (void)message;
}

/* Keeps the last message in user (256 bytes). */
static void keep(void *user, moe_log_level level, const char *message) {
    (void)level;
    snprintf((char *)user, 256, "%s", message);
}

TEST_IMPL(errors_bad_input) {
    moe_ctx *ctx = env->cpu;
    float x[64] = {0};
    uint8_t data[64], scale[64];
    float global = 1.0f;
    moe_tensor xt = moe_tensor_2d(x, MOE_DTYPE_F32, 2, 32);
    moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_MXFP4), 2, {2, 32}, data, scale, &global};

    ASSERT_OK(ctx, moe_quantize(ctx, &xt, &q, NULL));
    ASSERT(moe_quantize(NULL, &xt, &q, NULL) == MOE_ERR_INVALID_ARG);
    /* a size whose rounding to the allocator's 256 bytes would wrap (it once returned a 256-byte buffer) */
    void *huge = &global;
    for (size_t back = 0; back < 300; back += 37)
        ASSERT_FAILS(ctx, MOE_ERR_OOM, "not available", moe_alloc(ctx, SIZE_MAX - back, &huge));
    ASSERT(huge == NULL);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "tensor is NULL", moe_quantize(ctx, NULL, &q, NULL));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "quantised tensor is NULL", moe_quantize(ctx, &xt, NULL, NULL));

    moe_qtensor bad = q;
    bad.data = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "quantised data is NULL", moe_quantize(ctx, &xt, &bad, NULL));
    bad = q;
    bad.scale = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "scale buffer is NULL", moe_quantize(ctx, &xt, &bad, NULL));
    moe_tensor nodata = xt;
    nodata.data = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "data is NULL", moe_quantize(ctx, &nodata, &q, NULL));

    bad = q;
    bad.format.kind = (moe_qformat_kind)77;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "unknown quantised format kind 77", moe_quantize(ctx, &xt, &bad, NULL));
    bad = q;
    bad.format.elem = MOE_DTYPE_E4M3;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "elements must be e2m1", moe_quantize(ctx, &xt, &bad, NULL));

    /* 33 columns: not a multiple of the 32-element block */
    moe_tensor x33 = moe_tensor_2d(x, MOE_DTYPE_F32, 1, 33);
    bad = q;
    bad.shape[0] = 1;
    bad.shape[1] = 33;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "multiple of the block size 32", moe_quantize(ctx, &x33, &bad, NULL));
    moe_qsizes sz;
    int64_t shape40[2] = {1, 40};
    moe_qformat nv = moe_qformat_preset(MOE_QFORMAT_NVFP4);
    nv.global = MOE_NVFP4_GLOBAL_ENCODE;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "multiple of the block size 16", moe_qtensor_sizes(ctx, &nv, 2, shape40, &sz));

    /* NVFP4 without saying which global-scale convention */
    bad = q;
    bad.format = moe_qformat_preset(MOE_QFORMAT_NVFP4);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "MOE_NVFP4_GLOBAL_ENCODE", moe_quantize(ctx, &xt, &bad, NULL));
    bad.format.global = MOE_NVFP4_GLOBAL_DECODE;
    bad.global_scale = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "global_scale", moe_quantize(ctx, &xt, &bad, NULL));
    bad = q;
    bad.format.global = MOE_NVFP4_GLOBAL_ENCODE;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "for nvfp4 only", moe_quantize(ctx, &xt, &bad, NULL));

    bad = q;
    bad.format.rule = MOE_SCALE_F32;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "rule f32 does not apply", moe_quantize(ctx, &xt, &bad, NULL));
    bad = q;
    bad.format.static_scale = 1;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "static scale", moe_quantize(ctx, &xt, &bad, NULL));
    bad = q;
    bad.format.amax_floor = NAN;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "amax_floor", moe_quantize(ctx, &xt, &bad, NULL));
    bad = q;
    bad.format = moe_qformat_preset(MOE_QFORMAT_FP8_ROW);
    bad.format.layout = MOE_SCALE_SWIZZLED_128X4;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "swizzled", moe_quantize(ctx, &xt, &bad, NULL));
    bad.format.layout = MOE_SCALE_LINEAR;
    bad.format.scale_dtype = MOE_DTYPE_E8M0;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "rule f32 stores f32 scales", moe_quantize(ctx, &xt, &bad, NULL));

    /* shapes and dtypes of the unquantised side */
    moe_tensor wrong = moe_tensor_2d(x, MOE_DTYPE_F32, 4, 16);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "shape differs", moe_quantize(ctx, &wrong, &q, NULL));
    wrong = moe_tensor_2d(x, MOE_DTYPE_I32, 2, 32);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "must be f32, bf16 or f16", moe_quantize(ctx, &wrong, &q, NULL));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "must be f32, bf16 or f16", moe_dequantize(ctx, &q, &wrong, NULL));
    wrong = xt;
    wrong.rank = 5;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "rank 5", moe_quantize(ctx, &wrong, &q, NULL));
    wrong = xt;
    wrong.shape[0] = -2;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "negative dimension", moe_quantize(ctx, &wrong, &q, NULL));
    wrong = xt;
    wrong.dtype = (moe_dtype)99;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "unknown dtype", moe_quantize(ctx, &wrong, &q, NULL));

    /* swizzle of a non-byte type; zero-sized tensors are fine */
    moe_tensor f32s = moe_tensor_2d(x, MOE_DTYPE_F32, 2, 4);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "one-byte scales", moe_scale_swizzle(ctx, &f32s, scale, NULL));
    moe_tensor empty = moe_tensor_2d(NULL, MOE_DTYPE_F32, 0, 32);
    moe_qtensor qe = {moe_qformat_preset(MOE_QFORMAT_MXFP8), 2, {0, 32}, NULL, NULL, NULL};
    ASSERT_OK(ctx, moe_quantize(ctx, &empty, &qe, NULL));

    /* EPLB past its slot bound (its int tables), and a map whose token count times k passes int64 */
    const moe_eplb_config big = {1, 8, MOE_EPLB_MAX_SLOTS + 8, 1, 1, 8};
    double load8[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int32_t p2l[8], l2p[8], lcnt[8], one_id[1] = {0};
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "physical slots", moe_eplb_plan(ctx, &big, load8, p2l, l2p, lcnt));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "64-bit sizes",
                 moe_eplb_map(ctx, l2p, lcnt, 8, 1, one_id, one_id, INT64_MAX / 4, 8, 8, NULL));

    /* a layer whose experts' weights pass 64-bit sizes: E x 3 x I x H = 2^31 x 3 x 2^40 */
    moe_layer_config lc;
    ASSERT(moe_layer_preset("mixtral-8x7b", &lc) == MOE_OK);
    lc.hidden = lc.intermediate = 1 << 20, lc.router.n_experts = INT32_MAX, lc.dtype = MOE_DTYPE_F32;
    const moe_layer_weights lw = {.w13 = load8, .w2 = load8};
    moe_layer *big_layer = NULL;
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "64-bit sizes", moe_layer_create(ctx, &lc, &lw, &big_layer));
    ASSERT(big_layer == NULL);

    moe_router_config rc8;
    ASSERT(moe_router_preset("mixtral-8x7b", &rc8) == MOE_OK);
    float lg8[8] = {0};
    int32_t ids2[2];
    float w2v[2];
    moe_tensor lt8 = moe_tensor_2d(lg8, MOE_DTYPE_F32, 1, 8);
    /* element pointers off their type's alignment (the GPU faults on them; the CPU reads them in undefined
     * behaviour): each call names the pointer */
    _Alignas(16) unsigned char raw[256] = {0};
    moe_tensor odd = moe_tensor_2d(raw + 2, MOE_DTYPE_F32, 2, 4), bf = moe_tensor_2d(raw + 64, MOE_DTYPE_BF16, 2, 4);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "4-byte aligned", moe_convert(ctx, &odd, &bf, NULL, NULL));
    const moe_route_args ra_odd = {&lt8, NULL, 1, (int32_t *)(raw + 130), w2v, NULL, NULL, 0};
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "ids is not 4-byte aligned", moe_route(ctx, &rc8, &ra_odd, NULL));
    const moe_permute_config pc8 = {8, 0, 8, 2, 1, MOE_PERMUTE_CONTIGUOUS, 0};
    int32_t pid[2] = {0, 1}, pcnt[8], prow[16], pslot[2];
    const moe_permute_outputs po = {pcnt, (int64_t *)(raw + 132), prow, pslot, NULL, NULL};
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "offsets is not 8-byte aligned",
                 moe_permute(ctx, &pc8, pid, 1, &po, NULL, 0, NULL));
    moe_qtensor q_odd = {moe_qformat_preset(MOE_QFORMAT_FP8_ROW), 2, {2, 4}, raw + 200, raw + 1, NULL};
    moe_tensor x24 = moe_tensor_2d(raw, MOE_DTYPE_F32, 2, 4);
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "f32 scales are not 4-byte aligned", moe_quantize(ctx, &x24, &q_odd, NULL));

    /* load counters that live elsewhere (made on a GPU, here pretended): every use refuses them, naming where they
     * live; destroying them on this context leaves their memory rather than freeing it with the wrong backend */
    moe_expert_stats *st = NULL;
    ASSERT_OK(ctx, moe_expert_stats_create(ctx, 1, 8, &st));
    st->backend = MOE_BACKEND_CUDA, st->device = 0;
    const moe_route_args ra = {&lt8, NULL, 1, ids2, w2v, NULL, st, 0};
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "made on a GPU", moe_route(ctx, &rc8, &ra, NULL));
    int64_t c8[8];
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "made on a GPU", moe_expert_stats_read(ctx, st, c8, NULL, NULL));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "made on a GPU", moe_expert_stats_reset(ctx, st, NULL));
    ASSERT_FAILS(ctx, MOE_ERR_INVALID_ARG, "made on a GPU", moe_expert_stats_record(ctx, st, 0, ids2, 2, NULL));
    int64_t *held[2] = {st->counts, st->invalid};
    moe_expert_stats_destroy(ctx, st); /* logs an error, frees the handle only */
    free(held[0]), free(held[1]);

    /* contexts */
    moe_ctx_options o = moe_ctx_options_default();
    o.log = quiet;
    o.backend = (moe_backend)9;
    moe_ctx *c2 = (moe_ctx *)1;
    ASSERT(moe_ctx_create(&o, &c2) == MOE_ERR_INVALID_ARG && c2 == NULL);
    if (!moe_built_with_cuda()) {
        o.backend = MOE_BACKEND_CUDA;
        ASSERT(moe_ctx_create(&o, &c2) == MOE_ERR_UNSUPPORTED && c2 == NULL);
    }
    ASSERT(moe_ctx_create(NULL, NULL) == MOE_ERR_INVALID_ARG);
    ASSERT(!strcmp(moe_last_error(NULL), ""));
    /* thread counts the OpenMP runtime would crash on (100 000) fail at creation, naming the field */
    char said[256];
    o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CPU, o.log = keep, o.log_user = said;
    const int bad_threads[] = {-1, MOE_MAX_CPU_THREADS + 1, 100000};
    for (int i = 0; i < 3; i++) {
        said[0] = 0, o.n_threads = bad_threads[i];
        ASSERT(moe_ctx_create(&o, &c2) == MOE_ERR_INVALID_ARG && c2 == NULL);
        ASSERT_MSG(strstr(said, "n_threads"), "%d threads: \"%s\"", bad_threads[i], said);
    }
    o.n_threads = 3;
    ASSERT(moe_ctx_create(&o, &c2) == MOE_OK && strstr(moe_ctx_describe(c2), "3 threads"));
    moe_ctx_destroy(c2);
    return TEST_OK;
}
