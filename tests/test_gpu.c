/* test_gpu.c — the CUDA backend against the CPU reference, bit for bit, on fresh random inputs: every scalar
 * conversion over the oracle's input sets and every code, every block format and scale rule on tensors of
 * MOE_TEST_GPU_MIB MiB (default 64), the golden cases, the swizzle, and bad pointers. Skipped without a GPU. */
#include <stdlib.h>

#include "blocks.h"
#include "conversions.h"

/* Copies host -> ctx buffer (allocated here). */
static void *upload(moe_ctx *ctx, const void *host, size_t bytes) {
    void *d = NULL;
    if (moe_alloc(ctx, bytes, &d) != MOE_OK) return NULL;
    moe_memcpy(ctx, d, host, bytes, MOE_COPY_HOST_TO_CTX, NULL);
    return d;
}

static int download(moe_ctx *ctx, void *host, const void *dev, size_t bytes) {
    if (moe_memcpy(ctx, host, dev, bytes, MOE_COPY_CTX_TO_HOST, NULL) != MOE_OK) return -1;
    return moe_sync(ctx, NULL) == MOE_OK ? 0 : -1;
}

/* One conversion of n inputs on the GPU compared with the host function. */
static int gpu_convert_check(moe_ctx *gpu, const test_conversion *c, const uint32_t *in, int64_t n, void *d_in,
                             const char *set) {
    int64_t out_bytes = moe_dtype_bytes(c->dst, n);
    void *d_out = NULL;
    uint8_t *out = malloc((size_t)out_bytes);
    int bad = 0;
    if (moe_alloc(gpu, (size_t)out_bytes, &d_out) != MOE_OK) return 1;
    moe_memset(gpu, d_out, 0xA5, (size_t)out_bytes, NULL);
    moe_tensor src = moe_tensor_2d(d_in, MOE_DTYPE_F32, 1, n), dst = moe_tensor_2d(d_out, c->dst, 1, n);
    moe_convert_options o = {c->round, c->saturate};
    if (moe_convert(gpu, &src, &dst, &o, NULL) != MOE_OK || download(gpu, out, d_out, (size_t)out_bytes)) {
        fprintf(stderr, "  %s on %s: %s\n", c->name, set, moe_last_error(gpu));
        bad = 1;
    }
    for (int64_t i = 0; !bad && i < n; i++) {
        uint32_t want = c->host(test_f32_from_bits(in[i])), got = test_conversion_output(c, out, i);
        if (got != want) {
            fprintf(stderr, "  %s on %s: input 0x%08x (%a): gpu 0x%x, cpu 0x%x\n", c->name, set, in[i],
                    test_f32_from_bits(in[i]), got, want);
            bad = 1;
        }
    }
    moe_free(gpu, d_out);
    free(out);
    return bad;
}

/* Every code of a narrow type decoded on the GPU (to f32) equals the host decode. */
static int gpu_decode_check(moe_ctx *gpu, moe_dtype type, int codes) {
    int n = type == MOE_DTYPE_E2M1 ? 2 * codes * codes : codes; /* E2M1: every pair of nibbles */
    int64_t in_bytes = moe_dtype_bytes(type, n);
    uint8_t *in = malloc((size_t)in_bytes);
    float *out = malloc((size_t)n * 4);
    for (int64_t i = 0; i < in_bytes; i++) {
        if (type == MOE_DTYPE_E2M1)
            in[i] = (uint8_t)i;
        else if (codes == 65536)
            ((uint16_t *)in)[i / 2] = (uint16_t)(i / 2);
        else
            in[i] = (uint8_t)i;
    }
    void *d_in = upload(gpu, in, (size_t)in_bytes), *d_out = NULL;
    moe_alloc(gpu, (size_t)n * 4, &d_out);
    moe_tensor src = moe_tensor_2d(d_in, type, 1, n), dst = moe_tensor_2d(d_out, MOE_DTYPE_F32, 1, n);
    int bad = moe_convert(gpu, &src, &dst, NULL, NULL) != MOE_OK || download(gpu, out, d_out, (size_t)n * 4);
    moe_tensor host_src = moe_tensor_2d(in, type, 1, n);
    float *want = malloc((size_t)n * 4);
    moe_tensor host_dst = moe_tensor_2d(want, MOE_DTYPE_F32, 1, n);
    moe_ctx *cpu = NULL;
    moe_ctx_options o = moe_ctx_options_default();
    o.backend = MOE_BACKEND_CPU;
    moe_ctx_create(&o, &cpu);
    bad |= moe_convert(cpu, &host_src, &host_dst, NULL, NULL) != MOE_OK;
    for (int i = 0; !bad && i < n; i++)
        if (!test_same_f32(out[i], want[i])) {
            fprintf(stderr, "  decode %s element %d: gpu %a, cpu %a\n", moe_dtype_name(type), i, out[i], want[i]);
            bad = 1;
        }
    moe_ctx_destroy(cpu);
    moe_free(gpu, d_in);
    moe_free(gpu, d_out);
    free(in);
    free(out);
    free(want);
    return bad;
}

TEST_IMPL(gpu_scalar_conversions) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *gpu = env->gpu;
    golden g;
    ASSERT(golden_load(&g, env->data_dir, "scalars.moeg") == 0);
    const golden_record *specials = golden_get(&g, "specials");
    ASSERT(specials);
    const int64_t n = 1 << 20;
    uint32_t *in = malloc((size_t)n * 4);
    int bad = 0;
    const char *sets[] = {"specials", "rand", "near", "fresh"};
    for (int s = 0; s < 4; s++) {
        int64_t len = s == 0 ? specials->numel & ~1LL : n; /* E2M1 output needs an even count */
        if (s == 0) memcpy(in, specials->data, (size_t)len * 4);
        if (s == 1 || s == 2) test_random_set(sets[s], in, n);
        if (s == 3) {
            uint64_t st = env->seed;
            for (int64_t i = 0; i < n; i++) in[i] = (uint32_t)test_splitmix64(&st);
        }
        void *d_in = upload(gpu, in, (size_t)len * 4);
        ASSERT(d_in);
        for (int k = 0; k < TEST_N_CONVERSIONS; k++) bad += gpu_convert_check(gpu, &test_conversions[k], in, len, d_in, sets[s]);
        moe_free(gpu, d_in);
    }
    const moe_dtype types[] = {MOE_DTYPE_E4M3, MOE_DTYPE_E5M2, MOE_DTYPE_E8M0, MOE_DTYPE_E2M1, MOE_DTYPE_BF16,
                               MOE_DTYPE_F16};
    const int codes[] = {256, 256, 256, 16, 65536, 65536};
    for (int t = 0; t < 6; t++) bad += gpu_decode_check(gpu, types[t], codes[t]);
    free(in);
    golden_free(&g);
    ASSERT_MSG(bad == 0, "%d GPU conversions differ from the CPU", bad);
    return TEST_OK;
}

/* The GPU's E2M1 encoder (the minimum of three rounded FMAs, cuda.cuh) against the CPU definition on every one of
 * the 2^32 f32 bit patterns, 2^27 at a time through moe_convert on both backends. */
TEST_IMPL(gpu_e2m1_all_inputs) {
    SKIP_WITHOUT_GPU(env);
    const int64_t chunk = (int64_t)1 << 27;
    uint32_t *in = malloc((size_t)chunk * 4);
    uint8_t *want = malloc((size_t)chunk / 2), *got = malloc((size_t)chunk / 2);
    void *d_in = NULL, *d_out = NULL;
    ASSERT(in && want && got);
    ASSERT_OK(env->gpu, moe_alloc(env->gpu, (size_t)chunk * 4, &d_in));
    ASSERT_OK(env->gpu, moe_alloc(env->gpu, (size_t)chunk / 2, &d_out));
    int64_t bad = -1;
    for (int64_t base = 0; base < ((int64_t)1 << 32) && bad < 0; base += chunk) {
        for (int64_t i = 0; i < chunk; i++) in[i] = (uint32_t)(base + i);
        moe_tensor hs = moe_tensor_2d(in, MOE_DTYPE_F32, 1, chunk), hd = moe_tensor_2d(want, MOE_DTYPE_E2M1, 1, chunk);
        moe_tensor ds = moe_tensor_2d(d_in, MOE_DTYPE_F32, 1, chunk), dd = moe_tensor_2d(d_out, MOE_DTYPE_E2M1, 1, chunk);
        ASSERT_OK(env->gpu, moe_memcpy(env->gpu, d_in, in, (size_t)chunk * 4, MOE_COPY_HOST_TO_CTX, NULL));
        ASSERT_OK(env->gpu, moe_memset(env->gpu, d_out, 0xA5, (size_t)chunk / 2, NULL));
        ASSERT_OK(env->gpu, moe_convert(env->gpu, &ds, &dd, NULL, NULL));
        ASSERT_OK(env->cpu, moe_convert(env->cpu, &hs, &hd, NULL, NULL));
        ASSERT(download(env->gpu, got, d_out, (size_t)chunk / 2) == 0);
        for (int64_t i = 0; i < chunk / 2 && bad < 0; i++)
            if (got[i] != want[i]) bad = base + 2 * i + ((got[i] ^ want[i]) & 0xF ? 0 : 1);
    }
    moe_free(env->gpu, d_in);
    moe_free(env->gpu, d_out);
    free(in);
    free(want);
    free(got);
    ASSERT_MSG(bad < 0, "E2M1 of input 0x%08x: the GPU differs from the CPU", (unsigned)bad);
    return TEST_OK;
}

/* Quantises x (host f32 values, given to both backends as dtype in) with f on the GPU and the CPU and compares
 * every byte, then dequantises the same bytes on both and compares every value. Returns 0 when equal. */
static int compare_backends(test_env *env, const moe_qformat *f, const char *name, const float *x, int rank,
                            const int64_t *shape, moe_dtype in) {
    moe_ctx *gpu = env->gpu, *cpu = env->cpu;
    int64_t n = 1;
    for (int d = 0; d < rank; d++) n *= shape[d];
    size_t in_bytes = (size_t)moe_dtype_bytes(in, n);
    void *xin = malloc(in_bytes);
    moe_tensor xc = {xin, MOE_DTYPE_F32, rank, {0}}, cv = {(void *)x, MOE_DTYPE_F32, rank, {0}};
    memcpy(xc.shape, shape, sizeof(int64_t) * (size_t)rank);
    memcpy(cv.shape, shape, sizeof(int64_t) * (size_t)rank);
    xc.dtype = in;
    moe_convert(cpu, &cv, &xc, NULL, NULL); /* the input in its dtype (f32: a copy) */
    test_qbuf hb, db;
    int bad = 0;
    if (test_qbuf_alloc(cpu, &hb, f, rank, shape) || test_qbuf_alloc(gpu, &db, f, rank, shape)) {
        fprintf(stderr, "  %s: %s %s\n", name, moe_last_error(cpu), moe_last_error(gpu));
        free(xin);
        return 1;
    }
    moe_tensor xg = xc;
    xg.data = upload(gpu, xin, in_bytes);
    if (moe_quantize(cpu, &xc, &hb.q, NULL) != MOE_OK || moe_quantize(gpu, &xg, &db.q, NULL) != MOE_OK) {
        fprintf(stderr, "  %s: quantize: cpu \"%s\", gpu \"%s\"\n", name, moe_last_error(cpu), moe_last_error(gpu));
        bad = 1;
    }
    size_t qb = hb.sizes.data_bytes, sb = hb.sizes.scale_bytes;
    uint8_t *q = malloc(qb + sb + 4);
    if (!bad && download(gpu, q, db.q.data, qb) == 0 && download(gpu, q + qb, db.q.scale, sb) == 0 &&
        download(gpu, q + qb + sb, db.q.global_scale, 4) == 0) {
        for (size_t i = 0; i < sb && !bad; i++)
            if (q[qb + i] != ((uint8_t *)hb.q.scale)[i]) {
                fprintf(stderr, "  %s (%s input): scale byte %zu: gpu 0x%02x, cpu 0x%02x\n", name, moe_dtype_name(in), i,
                        q[qb + i], ((uint8_t *)hb.q.scale)[i]);
                bad = 1;
            }
        for (size_t i = 0; i < qb && !bad; i++)
            if (q[i] != ((uint8_t *)hb.q.data)[i]) {
                fprintf(stderr, "  %s (%s input): data byte %zu: gpu 0x%02x, cpu 0x%02x (x = %a)\n", name,
                        moe_dtype_name(in), i, q[i], ((uint8_t *)hb.q.data)[i],
                        x[f->elem == MOE_DTYPE_E2M1 ? 2 * i : i]);
                bad = 1;
            }
        if (f->kind == MOE_QFORMAT_NVFP4 && memcmp(q + qb + sb, hb.q.global_scale, 4)) {
            fprintf(stderr, "  %s: global scale differs\n", name);
            bad = 1;
        }
    } else if (!bad) {
        fprintf(stderr, "  %s: download: %s\n", name, moe_last_error(gpu));
        bad = 1;
    }
    /* Dequantise on both (to the input dtype) and compare. */
    if (!bad) {
        void *yg = NULL, *yh = malloc(in_bytes), *yd = malloc(in_bytes);
        moe_alloc(gpu, in_bytes, &yg);
        moe_memset(gpu, yg, 0xFF, in_bytes, NULL);
        moe_tensor ytg = xg, yth = xc;
        ytg.data = yg;
        yth.data = yh;
        if (moe_dequantize(gpu, &db.q, &ytg, NULL) != MOE_OK || moe_dequantize(cpu, &hb.q, &yth, NULL) != MOE_OK ||
            download(gpu, yd, yg, in_bytes)) {
            fprintf(stderr, "  %s: dequantize: %s\n", name, moe_last_error(gpu));
            bad = 1;
        }
        for (int64_t i = 0; !bad && i < n; i++) {
            int same = in == MOE_DTYPE_F32 ? test_same_f32(((float *)yd)[i], ((float *)yh)[i])
                                           : ((uint16_t *)yd)[i] == ((uint16_t *)yh)[i];
            if (!same) {
                fprintf(stderr, "  %s: dequantised %s element %" PRId64 " differs\n", name, moe_dtype_name(in), i);
                bad = 1;
            }
        }
        moe_free(gpu, yg);
        free(yh);
        free(yd);
    }
    free(q);
    free(xin);
    moe_free(gpu, xg.data);
    test_qbuf_free(cpu, &hb);
    test_qbuf_free(gpu, &db);
    return bad;
}

TEST_IMPL(gpu_blocks_random) {
    SKIP_WITHOUT_GPU(env);
    moe_qformat formats[64];
    char names[64][64];
    int nf = blocks_config_matrix(formats, names, 64);
    /* 4000 columns: a multiple of 32 but not of 128 (partial 1x128 and 128x128 blocks); rows off the tile grid. */
    const int64_t cols = 4000, batch = 2;
    const int64_t rows = (env->gpu_mib * 1024 * 1024 / 4 + batch * cols - 1) / (batch * cols) | 1;
    const int64_t shape[3] = {batch, rows, cols}, n = batch * rows * cols;
    float *x = malloc((size_t)n * 4);
    blocks_random_data(x, n, env->seed, 1);
    int bad = 0;
    for (int k = 0; k < nf; k++) {
        /* f32 inputs of gpu_mib MiB for every format; bf16 and f16 inputs on every second one */
        bad += compare_backends(env, &formats[k], names[k], x, 3, shape, MOE_DTYPE_F32);
        if (k % 2 == 0) bad += compare_backends(env, &formats[k], names[k], x, 3, shape, MOE_DTYPE_BF16);
        if (k % 5 == 0) bad += compare_backends(env, &formats[k], names[k], x, 3, shape, MOE_DTYPE_F16);
    }
    /* Small and degenerate shapes: one row, one block, a single element row for FP8 kinds. */
    const int64_t small[][2] = {{1, 32}, {1, 16}, {3, 64}, {129, 96}, {1, 1}, {0, 32}};
    for (int s = 0; s < 6; s++)
        for (int k = 0; k < nf; k++) {
            moe_qsizes sz;
            if (moe_qtensor_sizes(NULL, &formats[k], 2, small[s], &sz) != MOE_OK) continue;
            bad += compare_backends(env, &formats[k], names[k], x + 12345, 2, small[s], MOE_DTYPE_F32);
        }
    free(x);
    ASSERT_MSG(bad == 0, "%d format runs differ between GPU and CPU (seed %" PRIu64 ")", bad, env->seed);
    return TEST_OK;
}

TEST_IMPL(gpu_blocks_golden) {
    SKIP_WITHOUT_GPU(env);
    int bad = blocks_run_golden(env, env->gpu);
    ASSERT_MSG(bad == 0, "%d golden cases differ on the GPU", bad);
    return TEST_OK;
}

TEST_IMPL(gpu_swizzle) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *gpu = env->gpu, *cpu = env->cpu;
    const int64_t dims[][3] = {{1, 1, 1}, {3, 1000, 77}, {1, 128, 4}, {2, 300, 10}, {1, 4097, 448}};
    uint64_t st = env->seed;
    for (int d = 0; d < 5; d++) {
        int64_t b = dims[d][0], r = dims[d][1], c = dims[d][2], n = b * r * c, ns = b * moe_scale_swizzled_bytes(r, c);
        uint8_t *lin = malloc((size_t)n), *want = malloc((size_t)ns), *got = malloc((size_t)ns), *back = malloc((size_t)n);
        for (int64_t i = 0; i < n; i++) lin[i] = (uint8_t)test_splitmix64(&st);
        moe_tensor t = {lin, MOE_DTYPE_E8M0, 3, {b, r, c}};
        ASSERT_OK(cpu, moe_scale_swizzle(cpu, &t, want, NULL));
        void *dl = upload(gpu, lin, (size_t)n), *ds = NULL;
        ASSERT_OK(gpu, moe_alloc(gpu, (size_t)ns, &ds));
        moe_memset(gpu, ds, 0xA5, (size_t)ns, NULL);
        moe_tensor tg = t;
        tg.data = dl;
        ASSERT_OK(gpu, moe_scale_swizzle(gpu, &tg, ds, NULL));
        ASSERT(download(gpu, got, ds, (size_t)ns) == 0);
        ASSERT_MSG(!memcmp(got, want, (size_t)ns), "swizzle %" PRId64 "x%" PRId64 "x%" PRId64 " differs", b, r, c);
        moe_memset(gpu, dl, 0xA5, (size_t)n, NULL);
        ASSERT_OK(gpu, moe_scale_unswizzle(gpu, ds, &tg, NULL));
        ASSERT(download(gpu, back, dl, (size_t)n) == 0);
        ASSERT_MSG(!memcmp(back, lin, (size_t)n), "unswizzle %" PRId64 "x%" PRId64 "x%" PRId64 " differs", b, r, c);
        moe_free(gpu, dl);
        moe_free(gpu, ds);
        free(lin);
        free(want);
        free(got);
        free(back);
    }
    return TEST_OK;
}

TEST_IMPL(gpu_errors) {
    SKIP_WITHOUT_GPU(env);
    moe_ctx *gpu = env->gpu;
    static float host_x[64];
    static uint8_t host_q[64], host_s[8];
    moe_tensor xt = moe_tensor_2d(host_x, MOE_DTYPE_F32, 2, 32);
    moe_qtensor q = {moe_qformat_preset(MOE_QFORMAT_MXFP8), 2, {2, 32}, host_q, host_s, NULL};
    ASSERT_FAILS(gpu, MOE_ERR_INVALID_ARG, "not device memory", moe_quantize(gpu, &xt, &q, NULL));
    void *d = NULL;
    ASSERT_OK(gpu, moe_alloc(gpu, 256, &d));
    q.data = d;
    q.scale = (uint8_t *)d + 128;
    ASSERT_FAILS(gpu, MOE_ERR_INVALID_ARG, "tensor data", moe_quantize(gpu, &xt, &q, NULL));
    moe_tensor lin = moe_tensor_2d(host_q, MOE_DTYPE_U8, 2, 4);
    ASSERT_FAILS(gpu, MOE_ERR_INVALID_ARG, "not device memory", moe_scale_swizzle(gpu, &lin, d, NULL));
    moe_free(gpu, d);
    void *huge = NULL;
    ASSERT_FAILS(gpu, MOE_ERR_OOM, "bytes", moe_alloc(gpu, (size_t)1 << 50, &huge));
    return TEST_OK;
}
