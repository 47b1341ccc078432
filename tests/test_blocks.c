/* test_blocks.c — block formats on the CPU: the oracle's golden cases bit for bit, the rounding error bound of
 * every format on random data, and the input/output dtypes. */
#include <stdlib.h>

#include "blocks.h"

TEST_IMPL(blocks_golden) {
    int bad = blocks_run_golden(env, env->cpu);
    ASSERT_MSG(bad == 0, "%d golden cases differ", bad);
    return TEST_OK;
}

/* The spacing of f's grid around |v| (docs/formats.md §1): 2^(floor(log2|v|) - mbits), subnormal below. */
static double grid_ulp(double av, moe_dtype elem) {
    int mbits = elem == MOE_DTYPE_E4M3 ? 3 : elem == MOE_DTYPE_E5M2 ? 2 : 1;
    int emin = elem == MOE_DTYPE_E4M3 ? -6 : elem == MOE_DTYPE_E5M2 ? -14 : 0;
    int e = av > 0 ? (int)floor(log2(av)) : emin;
    return ldexp(1.0, (e < emin ? emin : e) - mbits);
}

/* The dequantisation multiplier of every block of b, linear [batch, scale_rows, scale_cols] (f64). */
static double *block_scales(moe_ctx *ctx, const test_qbuf *b) {
    const moe_qformat *f = &b->q.format;
    int64_t n = f->kind == MOE_QFORMAT_FP8_TENSOR ? 1 : b->sizes.batch * b->sizes.scale_rows * b->sizes.scale_cols;
    double *s = malloc((size_t)n * sizeof *s);
    uint8_t *bytes = b->q.scale;
    if (f->layout == MOE_SCALE_SWIZZLED_128X4) {
        bytes = malloc((size_t)n);
        moe_tensor lin = {bytes, MOE_DTYPE_U8, 3, {b->sizes.batch, b->sizes.scale_rows, b->sizes.scale_cols}};
        moe_scale_unswizzle(ctx, b->q.scale, &lin, NULL);
    }
    double g_dec = f->global == MOE_NVFP4_GLOBAL_ENCODE ? 1.0 / *b->q.global_scale : *b->q.global_scale;
    for (int64_t i = 0; i < n; i++)
        s[i] = f->scale_dtype == MOE_DTYPE_F32    ? ((const float *)b->q.scale)[i]
               : f->scale_dtype == MOE_DTYPE_E8M0 ? moe_e8m0_to_f32(bytes[i])
                                                  : moe_e4m3_to_f32(bytes[i]) * g_dec;
    if (bytes != b->q.scale) free(bytes);
    return s;
}

/* Every element is within half a grid step of x/scale (or its saturation distance beyond the element max),
 * times the scale, plus f32 rounding of the scale arithmetic; and the SNR clears a floor. */
TEST_IMPL(blocks_error_bounds) {
    moe_ctx *ctx = env->cpu;
    moe_qformat formats[64];
    char names[64][64];
    int nf = blocks_config_matrix(formats, names, 64);
    enum { B = 2, R = 130, C = 512 };
    const int64_t shape[3] = {B, R, C}, n = B * R * C;
    float *x = malloc(n * 4), *y = malloc(n * 4);
    blocks_random_data(x, n, env->seed, 0);
    moe_tensor xt = {x, MOE_DTYPE_F32, 3, {B, R, C}}, yt = {y, MOE_DTYPE_F32, 3, {B, R, C}};
    for (int k = 0; k < nf; k++) {
        const moe_qformat *f = &formats[k];
        test_qbuf b;
        ASSERT_MSG(test_qbuf_alloc(ctx, &b, f, 3, shape) == 0, "%s: %s", names[k], moe_last_error(ctx));
        ASSERT_OK(ctx, moe_quantize(ctx, &xt, &b.q, NULL));
        ASSERT_OK(ctx, moe_dequantize(ctx, &b.q, &yt, NULL));
        double *scales = block_scales(ctx, &b);
        const int64_t bc = f->kind == MOE_QFORMAT_FP8_ROW ? C : C / b.sizes.scale_cols;
        const double emax = f->elem == MOE_DTYPE_E4M3 ? 448 : f->elem == MOE_DTYPE_E5M2 ? 57344 : 6;
        double sig = 0, noise = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t c = i % C, r = i / C % R, bt = i / (C * R);
            int64_t sr = f->kind == MOE_QFORMAT_FP8_128X128 ? r / 128 : r;
            double s = f->kind == MOE_QFORMAT_FP8_TENSOR
                           ? scales[0]
                           : scales[(bt * b.sizes.scale_rows + sr) * b.sizes.scale_cols + c / bc];
            double v = fabs(x[i] / s), half_ulp = 0.5 * grid_ulp(v, f->elem);
            double allowed = v - emax > half_ulp ? v - emax : half_ulp;
            double err = fabs((double)y[i] - x[i]);
            double bound = s == 0 ? fabs(x[i]) /* an NVFP4 block scale that underflowed: all 0 */
                                  : allowed * s * (1 + 1e-6) + fabs(x[i]) * 0x1p-21 + 1e-44;
            ASSERT_MSG(err <= bound, "%s: element %" PRId64 ": x %a, dequantised %a, scale %a, error %g > bound %g",
                       names[k], i, x[i], y[i], s, err, bound);
            sig += (double)x[i] * x[i];
            noise += err * err;
        }
        /* 4-bit formats give about 17 dB on this data, 8-bit ones 30 dB or more; one scale over blocks whose
         * magnitudes differ by 2^16 loses the small ones. */
        double snr = 10 * log10(sig / (noise + 1e-300));
        double need = f->elem == MOE_DTYPE_E2M1 ? 14 : f->elem == MOE_DTYPE_E5M2 ? 22 : 28;
        if (f->kind == MOE_QFORMAT_FP8_TENSOR || f->kind == MOE_QFORMAT_FP8_ROW || f->kind == MOE_QFORMAT_FP8_128X128)
            need = 10;
        ASSERT_MSG(snr >= need, "%s: SNR %.1f dB < %.0f dB", names[k], snr, need);
        free(scales);
        test_qbuf_free(ctx, &b);
    }
    free(x);
    free(y);
    return TEST_OK;
}

/* bf16 and f16 inputs quantise exactly as their f32 values do; bf16 and f16 outputs are the f32 output rounded. */
TEST_IMPL(blocks_dequant_dtypes) {
    moe_ctx *ctx = env->cpu;
    moe_qformat formats[64];
    char names[64][64];
    int nf = blocks_config_matrix(formats, names, 64);
    enum { R = 64, C = 256, N = R * C };
    static float x[N], y[N];
    static uint16_t xh[N], yh[N];
    static uint8_t q1[N], s1[N * 4];
    const int64_t shape[2] = {R, C};
    blocks_random_data(x, N, env->seed + 1, 1);
    for (int half = 0; half < 2; half++) {
        moe_dtype dt = half ? MOE_DTYPE_F16 : MOE_DTYPE_BF16;
        for (int i = 0; i < N; i++) {
            xh[i] = half ? moe_f16_from_f32(x[i]) : moe_bf16_from_f32(x[i]);
            x[i] = half ? moe_f16_to_f32(xh[i]) : moe_bf16_to_f32(xh[i]);
        }
        for (int k = 0; k < nf; k++) {
            test_qbuf b;
            ASSERT(test_qbuf_alloc(ctx, &b, &formats[k], 2, shape) == 0);
            moe_tensor xt = moe_tensor_2d(x, MOE_DTYPE_F32, R, C), xht = moe_tensor_2d(xh, dt, R, C);
            ASSERT_OK(ctx, moe_quantize(ctx, &xt, &b.q, NULL));
            memcpy(q1, b.q.data, b.sizes.data_bytes);
            memcpy(s1, b.q.scale, b.sizes.scale_bytes);
            ASSERT_OK(ctx, moe_quantize(ctx, &xht, &b.q, NULL));
            ASSERT_MSG(!memcmp(q1, b.q.data, b.sizes.data_bytes) && !memcmp(s1, b.q.scale, b.sizes.scale_bytes),
                       "%s: %s input quantises differently from its f32 values", names[k], moe_dtype_name(dt));
            moe_tensor yt = moe_tensor_2d(y, MOE_DTYPE_F32, R, C), yht = moe_tensor_2d(yh, dt, R, C);
            ASSERT_OK(ctx, moe_dequantize(ctx, &b.q, &yt, NULL));
            ASSERT_OK(ctx, moe_dequantize(ctx, &b.q, &yht, NULL));
            for (int i = 0; i < N; i++)
                ASSERT_MSG(yh[i] == (half ? moe_f16_from_f32(y[i]) : moe_bf16_from_f32(y[i])),
                           "%s: %s output %d", names[k], moe_dtype_name(dt), i);
            test_qbuf_free(ctx, &b);
        }
    }
    return TEST_OK;
}
