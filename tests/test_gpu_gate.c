/* test_gpu_gate.c — the GPU's router logits (cuda/moe/gate.cu) against a float64 sum on fresh random problems:
 * both kernels (T < 64 on the CUDA cores; from 64 on the tensor cores, each f32 gate weight as three bf16
 * pieces), H split into slices, the gate bias, Qwen2-MoE's shared gate, an infinite gate weight; a bf16 gate
 * against its f32 copy, bit for bit. Skipped without a GPU. */
#include <stdlib.h>
#include <string.h>

#include "conversions.h"
#include "test.h"

#ifdef MOE_WITH_CUDA
#include "cuda/moe/gate.cuh"
#include "moe/layer.h"

/* Uniform in [-1, 1) times 2^[-4, 4): gate weights with all 24 significant bits in use. */
static float wide(uint64_t *st) {
    const double u = (double)(test_splitmix64(st) >> 11) * 0x1p-53 * 2.0 - 1.0;
    return (float)ldexp(u, (int)(test_splitmix64(st) % 8) - 4);
}

/* One problem; returns the failures (printed). A token t with t % 5 == 3 has one nonzero x, so its logit is one
 * product rounded once: within an ulp of the exact one (the split's third piece moves it by up to 2^-16). */
static int check_gate(test_env *env, int64_t T, int H, int E, int with_bias, int with_shared, uint64_t seed) {
    uint64_t st = seed;
    const size_t nx = (size_t)T * H, ng = (size_t)E * H;
    float *x = malloc(sizeof(float) * (nx + 1)), *g = malloc(sizeof(float) * (ng + 1));
    float *bias = malloc(sizeof(float) * (size_t)(E + 1)), *sg = malloc(sizeof(float) * (size_t)(H + 1));
    uint16_t *xb = malloc(2 * (nx + 1));
    for (size_t i = 0; i < nx; i++) {
        const int64_t t = (int64_t)(i / (size_t)H);
        const int h = (int)(i % (size_t)H);
        const float v = wide(&st);
        x[i] = t % 5 == 3 ? (h == (int)(t % H) ? v : 0.0f) : v;
        xb[i] = (uint16_t)conv_bf16(x[i]);
        x[i] = test_f32_from_bits((uint32_t)xb[i] << 16);
    }
    for (size_t i = 0; i < ng; i++) g[i] = wide(&st);
    if (E > 1) g[(size_t)H + 1] = INFINITY; /* expert 1: inf where x is nonzero, NaN where it is 0 */
    for (int e = 0; e < E; e++) bias[e] = wide(&st);
    for (int h = 0; h < H; h++) sg[h] = wide(&st) / 16.0f;
    const size_t parts = (size_t)moe__gate_partial_rows(T, H) * (size_t)(E + 1);
    void *dx = test_upload(env->gpu, xb, 2 * nx), *dg = test_upload(env->gpu, g, sizeof(float) * ng);
    void *db = with_bias ? test_upload(env->gpu, bias, sizeof(float) * (size_t)E) : NULL;
    void *dsg = with_shared ? test_upload(env->gpu, sg, sizeof(float) * (size_t)H) : NULL;
    void *dl = NULL, *ds = NULL, *dp = NULL;
    int bad = 0;
    if (moe_alloc(env->gpu, sizeof(float) * (size_t)(T * E) + 4, &dl) != MOE_OK ||
        moe_alloc(env->gpu, sizeof(float) * (size_t)T + 4, &ds) != MOE_OK ||
        moe_alloc(env->gpu, sizeof(float) * parts + 4, &dp) != MOE_OK) {
        fprintf(stderr, "  allocation: %s\n", moe_last_error(env->gpu));
        bad = 1;
    }
    float *logits = malloc(sizeof(float) * (size_t)(T * E) + 4), *scale = malloc(sizeof(float) * (size_t)T + 4);
    if (!bad) {
        const moe_status s =
            moe__cuda_gate_logits(env->gpu, dx, dg, MOE_DTYPE_F32, db, dsg, T, H, E, dl, ds, dp, false, NULL, NULL);
        if (s != MOE_OK) fprintf(stderr, "  T=%lld H=%d E=%d: %s\n", (long long)T, H, E, moe_last_error(env->gpu)), bad = 1;
    }
    if (!bad && (test_download(env->gpu, logits, dl, sizeof(float) * (size_t)(T * E)) ||
                 (with_shared && test_download(env->gpu, scale, ds, sizeof(float) * (size_t)T))))
        fprintf(stderr, "  download failed\n"), bad = 1;
    double worst = 0.0, worst_one = 0.0;
    int64_t nwrong = 0, tlo = T, thi = -1, elo = E, ehi = -1, zeros = 0;
    const int ran = !bad;
    for (int64_t t = 0; ran && t < T; t++)
        for (int e = 0; e <= E; e++) {
            const float *w = e < E ? g + (size_t)e * H : sg;
            double sum = 0.0, mag = 0.0;
            for (int h = 0; h < H; h++) {
                const double p = (double)x[t * H + h] * (double)w[h];
                sum += p, mag += fabs(p);
            }
            if (e == E && !with_shared) continue;
            const float got = e < E ? logits[t * E + e] : scale[t];
            double want = sum;
            if (e < E && with_bias) want += bias[e], mag += fabs(bias[e]);
            if (e == E) want = 1.0 / (1.0 + exp(-sum));
            if (isnan(want) || isinf(want)) {
                if (!(isnan(want) ? isnan(got) : got == (float)want)) {
                    if (bad < 5) fprintf(stderr, "  T=%lld t=%lld e=%d: %g, want %g\n", (long long)T, (long long)t, e, got, want);
                    bad++, nwrong++;
                }
                continue;
            }
            /* one product (no bias): within an ulp; a sum: f32 rounding of the running sums, far below 1e-5 of the
             * products' magnitudes; the sigmoid (slope at most 1/4) of such a sum, and its own f32 rounding */
            const int one = t % 5 == 3 && !(e < E && with_bias) && e < E;
            const double err = fabs((double)got - want);
            const double tol = one ? ldexp(fabs(want), -23) : e == E ? 1e-6 + 2.5e-6 * mag : 1e-5 * mag;
            const double rel = err / (one ? fabs(want) + 1e-300 : mag + 1e-300);
            if (one) worst_one = rel > worst_one ? rel : worst_one;
            else if (e < E) worst = rel > worst ? rel : worst;
            if (!(err <= tol)) {
                if (bad < 5)
                    fprintf(stderr, "  T=%lld H=%d E=%d t=%lld e=%d: %.9g, want %.9g (err %.3g, tol %.3g)\n",
                            (long long)T, H, E, (long long)t, e, got, want, err, tol);
                bad++, nwrong++, zeros += got == 0.0f;
                tlo = t < tlo ? t : tlo, thi = t > thi ? t : thi, elo = e < elo ? e : elo, ehi = e > ehi ? e : ehi;
            }
        }
    if (nwrong)
        fprintf(stderr, "  %lld wrong (%lld zeros), tokens %lld..%lld, outputs %lld..%lld\n", (long long)nwrong,
                (long long)zeros, (long long)tlo, (long long)thi, (long long)elo, (long long)ehi);
    fprintf(stderr, "  T=%-5lld H=%-5d E=%-3d%s%s: worst error %.2e of the products' magnitude, one-product tokens %.2e\n",
            (long long)T, H, E, with_bias ? " bias" : "", with_shared ? " shared" : "", worst, worst_one);
    void *dev[] = {dx, dg, db, dsg, dl, ds, dp};
    for (int i = 0; i < 7; i++) moe_free(env->gpu, dev[i]);
    free(x), free(g), free(bias), free(sg), free(xb), free(logits), free(scale);
    return bad;
}

/* W8A8's x codes written by the gate on its way (moe_gate_x_codes) against moe_quantize on the CPU in the same
 * FP8 1x128 format, bit for bit, and the logits (E = 0: the shared gate's scales) unchanged by it. x: random bf16
 * of wide magnitudes with NaN and Inf here and there, and whole groups of NaN, of zeros, of values past 2^126 and
 * of subnormals; H % 128 != 0 gives a partial last group. Returns the failures (printed). */
static int check_gate_x_codes(test_env *env, int64_t T, int H, int E, int alone, moe_scale_rule rule, float floor_,
                              uint64_t seed) {
    uint64_t st = seed;
    /* E = 0: no router gate, only Qwen2-MoE's shared gate (one row), whose sigmoid is the output compared */
    const size_t nx = (size_t)T * H, ng = (size_t)(E ? E : 1) * H, nout = (size_t)(E ? T * E : T);
    const int groups = (H + 127) / 128;
    uint16_t *xb = malloc(2 * nx);
    float *g = malloc(sizeof(float) * ng);
    for (size_t i = 0; i < nx; i++) {
        const uint64_t r = test_splitmix64(&st);
        float v = wide(&st) * (float)ldexp(1.0, (int)(r % 40) - 20);
        if (r % 997 == 1) v = NAN;
        if (r % 997 == 2) v = (r & 8) ? INFINITY : -INFINITY;
        xb[i] = (uint16_t)conv_bf16(v);
    }
    for (int64_t t = 0; t < T; t++) { /* token t's group t % groups: a special group */
        const int gi = (int)(t % groups), kind = (int)(t % 4);
        for (int h = gi * 128; h < H && h < gi * 128 + 128; h++) {
            const float v = kind == 0 ? NAN : kind == 1 ? 0.0f : kind == 2 ? 0x1p127f * (1.0f + (float)(h % 7) / 8.0f)
                                                                          : 0x1p-130f * (float)(h % 5);
            xb[t * H + h] = (uint16_t)conv_bf16(h % 2 ? -v : v);
        }
    }
    for (size_t i = 0; i < ng; i++) g[i] = wide(&st);
    const moe_qformat f = {MOE_QFORMAT_FP8_1X128, MOE_DTYPE_E4M3, rule, MOE_DTYPE_F32, MOE_SCALE_LINEAR, 0, 0, floor_};
    const int64_t shape[2] = {T, H};
    moe_qsizes sz;
    int bad = 0;
    if (moe_qtensor_sizes(env->cpu, &f, 2, shape, &sz) != MOE_OK || sz.scale_bytes != (size_t)(T * groups) * 4) {
        fprintf(stderr, "  sizes: %s\n", moe_last_error(env->cpu));
        free(xb), free(g);
        return 1;
    }
    uint8_t *want = malloc(sz.data_bytes), *got = malloc(sz.data_bytes);
    float *want_s = malloc(sz.scale_bytes), *got_s = malloc(sz.scale_bytes);
    float *l0 = malloc(sizeof(float) * nout), *l1 = malloc(sizeof(float) * nout);
    moe_tensor xt = {xb, MOE_DTYPE_BF16, 2, {T, H}};
    moe_qtensor q = {f, 2, {T, H}, want, want_s, NULL};
    if (moe_quantize(env->cpu, &xt, &q, NULL) != MOE_OK)
        fprintf(stderr, "  cpu: %s\n", moe_last_error(env->cpu)), bad = 1;
    const size_t parts = (size_t)moe__gate_partial_rows(T, H) * (size_t)(E + 1);
    void *dx = test_upload(env->gpu, xb, 2 * nx), *dg = test_upload(env->gpu, g, sizeof(float) * ng);
    void *dl = NULL, *dp = NULL, *dc = NULL, *dsc = NULL;
    if (moe_alloc(env->gpu, sizeof(float) * nout, &dl) != MOE_OK ||
        moe_alloc(env->gpu, sizeof(float) * parts + 4, &dp) != MOE_OK ||
        moe_alloc(env->gpu, sz.data_bytes, &dc) != MOE_OK || moe_alloc(env->gpu, sz.scale_bytes, &dsc) != MOE_OK) {
        fprintf(stderr, "  allocation: %s\n", moe_last_error(env->gpu));
        bad = 1;
    }
    if (!bad) { /* poisoned outputs: every code and scale must be written */
        moe_memset(env->gpu, dc, 0x7F, sz.data_bytes, NULL);
        moe_memset(env->gpu, dsc, 0x7F, sz.scale_bytes, NULL);
        const moe_gate_x_codes xc = {dc, dsc, rule, floor_};
        void *gate = E ? dg : NULL, *shared_gate = E ? NULL : dg, *logits = E ? dl : NULL, *scale = E ? NULL : dl;
        if (moe__cuda_gate_logits(env->gpu, dx, gate, MOE_DTYPE_F32, NULL, shared_gate, T, H, E, logits, scale, dp,
                                  alone, NULL, NULL) != MOE_OK ||
            test_download(env->gpu, l0, dl, sizeof(float) * nout) ||
            moe__cuda_gate_logits(env->gpu, dx, gate, MOE_DTYPE_F32, NULL, shared_gate, T, H, E, logits, scale, dp,
                                  alone, &xc, NULL) != MOE_OK ||
            test_download(env->gpu, l1, dl, sizeof(float) * nout) ||
            test_download(env->gpu, got, dc, sz.data_bytes) || test_download(env->gpu, got_s, dsc, sz.scale_bytes)) {
            fprintf(stderr, "  T=%lld H=%d: %s\n", (long long)T, H, moe_last_error(env->gpu));
            bad = 1;
        }
    }
    for (size_t i = 0; !bad && i < sz.scale_bytes / 4; i++)
        if (memcmp(&got_s[i], &want_s[i], 4)) {
            fprintf(stderr, "  T=%lld H=%d rule %s: scale %zu: %a, want %a\n", (long long)T, H,
                    moe_scale_rule_name(rule), i, got_s[i], want_s[i]);
            bad = 1;
        }
    for (size_t i = 0; !bad && i < sz.data_bytes; i++)
        if (got[i] != want[i]) {
            fprintf(stderr, "  T=%lld H=%d rule %s: code %zu: 0x%02x, want 0x%02x\n", (long long)T, H,
                    moe_scale_rule_name(rule), i, got[i], want[i]);
            bad = 1;
        }
    if (!bad && memcmp(l0, l1, sizeof(float) * nout))
        fprintf(stderr, "  T=%lld H=%d: %s differ with the x codes\n", (long long)T, H, E ? "logits" : "shared scales"),
            bad = 1;
    fprintf(stderr, "  T=%-3lld H=%-5d E=%-3d %s rule %-5s floor %g: %s\n", (long long)T, H, E,
            alone ? "alone" : "split", moe_scale_rule_name(rule), (double)floor_, bad ? "differs" : "same bits");
    void *dev[] = {dx, dg, dl, dp, dc, dsc};
    for (int i = 0; i < 6; i++) moe_free(env->gpu, dev[i]);
    free(xb), free(g), free(want), free(got), free(want_s), free(got_s), free(l0), free(l1);
    return bad;
}

/* A bf16 gate against its f32 copy: gate and shared gate of wide bf16 values (one infinite), random finite x; the
 * logits and shared scales from gate_dtype bf16 must be the f32 copy's bits, on either kernel, split by a cluster
 * (alone) or by the reduce kernel. Returns the failures (printed). */
static int check_gate_bf16(test_env *env, int64_t T, int H, int E, int with_bias, int with_shared, int alone,
                           uint64_t seed) {
    uint64_t st = seed;
    const size_t nx = (size_t)T * H, ng = (size_t)E * H + H, nout = (size_t)T * (E + 1); /* the shared row last */
    uint16_t *xb = malloc(2 * nx), *gb = malloc(2 * ng);
    float *g = malloc(sizeof(float) * ng), *bias = malloc(sizeof(float) * (size_t)E + 4);
    for (size_t i = 0; i < nx; i++) xb[i] = (uint16_t)conv_bf16(wide(&st));
    for (size_t i = 0; i < ng; i++) {
        gb[i] = (uint16_t)conv_bf16(wide(&st) / (i >= (size_t)E * H ? 16.0f : 1.0f));
        g[i] = test_f32_from_bits((uint32_t)gb[i] << 16);
    }
    if (E > 1) g[(size_t)H + 3] = INFINITY, gb[(size_t)H + 3] = 0x7F80; /* expert 1: +-inf */
    for (int e = 0; e < E; e++) bias[e] = wide(&st);
    const size_t parts = (size_t)moe__gate_partial_rows(T, H) * (size_t)(E + 1);
    void *dx = test_upload(env->gpu, xb, 2 * nx), *dg = test_upload(env->gpu, g, sizeof(float) * ng);
    void *dgb = test_upload(env->gpu, gb, 2 * ng);
    void *db = with_bias ? test_upload(env->gpu, bias, sizeof(float) * (size_t)E) : NULL;
    float *out[2] = {malloc(sizeof(float) * nout), malloc(sizeof(float) * nout)};
    void *dl = NULL, *dp = NULL;
    int bad = 0;
    if (moe_alloc(env->gpu, sizeof(float) * nout, &dl) != MOE_OK ||
        moe_alloc(env->gpu, sizeof(float) * parts + 4, &dp) != MOE_OK)
        fprintf(stderr, "  allocation: %s\n", moe_last_error(env->gpu)), bad = 1;
    for (int b = 0; b < 2 && !bad; b++) {
        const char *w = b ? (const char *)dgb : (const char *)dg;
        const size_t row = (b ? 2 : 4) * (size_t)E * H; /* the shared gate follows the router gate */
        float *scale = with_shared ? (float *)dl + (size_t)T * E : NULL;
        moe_memset(env->gpu, dl, 0x7F, sizeof(float) * nout, NULL);
        if (moe__cuda_gate_logits(env->gpu, dx, w, b ? MOE_DTYPE_BF16 : MOE_DTYPE_F32, db, with_shared ? w + row : NULL,
                                  T, H, E, dl, scale, dp, alone, NULL, NULL) != MOE_OK ||
            test_download(env->gpu, out[b], dl, sizeof(float) * nout))
            fprintf(stderr, "  T=%lld H=%d E=%d: %s\n", (long long)T, H, E, moe_last_error(env->gpu)), bad = 1;
    }
    const size_t n = (size_t)T * E + (with_shared ? (size_t)T : 0);
    size_t differ = 0, first = n;
    for (size_t i = 0; !bad && i < n; i++)
        if (memcmp(&out[0][i], &out[1][i], 4)) differ++, first = first < i ? first : i;
    if (differ) {
        fprintf(stderr, "  output %zu: %a, f32 copy %a\n", first, out[1][first], out[0][first]);
        bad = 1;
    }
    fprintf(stderr, "  T=%-4lld H=%-5d E=%-3d%s%s %s: bf16 gate against its f32 copy, %zu of %zu outputs differ\n",
            (long long)T, H, E, with_bias ? " bias" : "", with_shared ? " shared" : "", alone ? "alone" : "split",
            differ, n);
    void *dev[] = {dx, dg, dgb, db, dl, dp};
    for (int i = 0; i < 6; i++) moe_free(env->gpu, dev[i]);
    free(xb), free(gb), free(g), free(bias), free(out[0]), free(out[1]);
    return bad;
}
#endif

TEST_IMPL(gpu_gate_x_codes) {
    SKIP_WITHOUT_GPU(env);
#ifdef MOE_WITH_CUDA
    const struct {
        int64_t T;
        int H, E, alone;
        moe_scale_rule rule;
        float floor_;
    } cases[] = {
        {1, 7168, 256, 1, MOE_SCALE_F32, 0.0f},         /* DeepSeek-V3 at decode: a cluster of splits */
        {1, 7168, 256, 0, MOE_SCALE_UE8M0_RCEIL, 0.0f}, /* the splits summed by a second kernel */
        {5, 392, 60, 1, MOE_SCALE_F32, 1e-4f},          /* a partial last group; a floor */
        {8, 2048, 128, 1, MOE_SCALE_UE8M0_FLOOR, 0.0f}, /* a whole group of tokens */
        {20, 1000, 8, 0, MOE_SCALE_UE8M0_CEIL, 1e-30f}, /* three token groups, few warps a split */
        {63, 5120, 16, 0, MOE_SCALE_F32, 0.0f},         /* the last T of the few kernel */
        {3, 2048, 0, 1, MOE_SCALE_F32, 0.0f},           /* no router gate (logits given), a shared gate alone */
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        bad += check_gate_x_codes(env, cases[i].T, cases[i].H, cases[i].E, cases[i].alone, cases[i].rule,
                                  cases[i].floor_, env->seed + 100 + i);
    /* the tensor-core kernel (T >= 64) does not write them: a clear error */
    const moe_gate_x_codes xc = {NULL, NULL, MOE_SCALE_F32, 0.0f};
    void *d = NULL;
    ASSERT_EQ_I64(moe_alloc(env->gpu, 1 << 20, &d), MOE_OK);
    const moe_status s =
        moe__cuda_gate_logits(env->gpu, d, d, MOE_DTYPE_F32, NULL, NULL, 64, 128, 8, d, NULL, d, false, &xc, NULL);
    moe_free(env->gpu, d);
    ASSERT_EQ_I64(s, MOE_ERR_UNSUPPORTED);
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
#else
    SKIP("CPU-only build");
#endif
}

TEST_IMPL(gpu_gate_logits) {
    SKIP_WITHOUT_GPU(env);
#ifdef MOE_WITH_CUDA
    const struct {
        int64_t T;
        int H, E, bias, shared;
    } cases[] = {
        {5, 392, 60, 1, 1},       /* few tokens, one group: split over H */
        {63, 392, 60, 0, 1},      /* the last T of the CUDA-core kernel */
        {64, 392, 60, 0, 1},      /* the tensor cores from here: a partial tile, split over H */
        {300, 1024, 129, 1, 0},   /* expert tiles past E */
        {1000, 7168, 256, 0, 0},  /* DeepSeek-V3's shape */
        {4133, 2048, 128, 1, 1},  /* Qwen3-30B-A3B's, more than a wave of tiles */
        {1000, 392, 256, 0, 0},   /* many tiles, short slices */
        {64, 7168, 256, 0, 0},    /* one token tile, long slices */
        {200, 7168, 64, 0, 0},    /* one expert tile, slices of 128 */
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        bad += check_gate(env, cases[i].T, cases[i].H, cases[i].E, cases[i].bias, cases[i].shared, env->seed + i);
    /* a bf16 gate (as checkpoints ship it) gives its f32 copy's bits, on every path */
    const struct {
        int64_t T;
        int H, E, bias, shared, alone;
    } halves[] = {
        {1, 7168, 256, 0, 0, 1},  /* DeepSeek-V3 at decode: a cluster of splits */
        {1, 7168, 256, 1, 0, 0},  /* the splits summed by the reduce kernel */
        {5, 392, 60, 1, 1, 1},    /* a shared gate, a partial slice */
        {63, 2048, 128, 0, 1, 0}, /* the last T of the CUDA-core kernel */
        {64, 392, 60, 0, 1, 0},   /* the tensor cores: one plane of bf16 terms, a partial tile */
        {1000, 7168, 256, 1, 0, 0},
        {300, 1024, 129, 0, 1, 0},
    };
    for (size_t i = 0; i < sizeof halves / sizeof halves[0]; i++)
        bad += check_gate_bf16(env, halves[i].T, halves[i].H, halves[i].E, halves[i].bias, halves[i].shared,
                               halves[i].alone, env->seed + 50 + i);
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
#else
    SKIP("CPU-only build");
#endif
}
