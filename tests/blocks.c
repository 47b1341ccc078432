/* blocks.c — block-format helpers shared by the CPU and GPU tests: the oracle's case descriptions, buffers on a
 * context, and the golden-file run. */
#include <stdlib.h>

#include "blocks.h"

int blocks_parse_cfg(const char *cfg, moe_qformat *f, moe_dtype *input) {
    char kind[32], elem[16], rule[16], scale[16], layout[16], global[16], in[16];
    int st;
    unsigned floor_bits;
    if (sscanf(cfg, "kind=%31s elem=%15s rule=%15s scale=%15s layout=%15s global=%15s static=%d floor=%x input=%15s",
               kind, elem, rule, scale, layout, global, &st, &floor_bits, in) != 9)
        return -1;
    *f = moe_qformat_preset(moe_qformat_kind_from_name(kind));
    f->elem = moe_dtype_from_name(elem);
    f->rule = !strcmp(rule, "e4m3") ? MOE_SCALE_DEFAULT : moe_scale_rule_from_name(rule);
    f->scale_dtype = moe_dtype_from_name(scale);
    f->layout = !strcmp(layout, "swizzled") ? MOE_SCALE_SWIZZLED_128X4 : MOE_SCALE_LINEAR;
    f->global = !strcmp(global, "encode")   ? MOE_NVFP4_GLOBAL_ENCODE
                : !strcmp(global, "decode") ? MOE_NVFP4_GLOBAL_DECODE
                                            : MOE_NVFP4_GLOBAL_UNSET;
    f->static_scale = st;
    f->amax_floor = test_f32_from_bits(floor_bits);
    *input = moe_dtype_from_name(in);
    return f->kind == MOE_QFORMAT_INVALID || *input == MOE_DTYPE_INVALID ? -1 : 0;
}

int test_qbuf_alloc(moe_ctx *ctx, test_qbuf *b, const moe_qformat *f, int rank, const int64_t *shape) {
    memset(b, 0, sizeof *b);
    if (moe_qtensor_sizes(ctx, f, rank, shape, &b->sizes) != MOE_OK) return -1;
    b->q.format = *f;
    b->q.rank = rank;
    memcpy(b->q.shape, shape, sizeof(int64_t) * (size_t)rank);
    if (moe_alloc(ctx, b->sizes.data_bytes, &b->q.data) || moe_alloc(ctx, b->sizes.scale_bytes, &b->q.scale) ||
        moe_alloc(ctx, 4, (void **)&b->q.global_scale))
        return -1;
    moe_memset(ctx, b->q.data, 0xA5, b->sizes.data_bytes, NULL);
    moe_memset(ctx, b->q.scale, 0xA5, b->sizes.scale_bytes, NULL);
    moe_memset(ctx, b->q.global_scale, 0xA5, 4, NULL);
    return 0;
}

void test_qbuf_free(moe_ctx *ctx, test_qbuf *b) {
    moe_free(ctx, b->q.data);
    moe_free(ctx, b->q.scale);
    moe_free(ctx, b->q.global_scale);
    memset(b, 0, sizeof *b);
}

/* Compares n bytes; prints the first mismatch. Returns 1 when they differ. */
static int diff_bytes(const char *what, const char *name, const uint8_t *got, const uint8_t *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            fprintf(stderr, "  %s %s: byte %zu is 0x%02x, oracle 0x%02x\n", name, what, i, got[i], want[i]);
            return 1;
        }
    return 0;
}

/* One golden case on ctx; returns 0 when everything matches. */
static int run_case(moe_ctx *ctx, const golden *g, const char *name) {
    char key[160], cfg[512] = {0};
    const golden_record *rec[6] = {0};
    const char *sfx[] = {"cfg", "x", "q", "s", "y", "g"};
    snprintf(key, sizeof key, "%s.cfg", name);
    if (!(rec[0] = golden_get(g, key))) return 1;
    memcpy(cfg, rec[0]->data, rec[0]->bytes < sizeof cfg - 1 ? rec[0]->bytes : sizeof cfg - 1);
    moe_qformat f;
    moe_dtype in_dtype;
    if (blocks_parse_cfg(cfg, &f, &in_dtype)) {
        fprintf(stderr, "  %s: cannot parse \"%s\"\n", name, cfg);
        return 1;
    }
    for (int i = 1; i < (f.kind == MOE_QFORMAT_NVFP4 ? 6 : 5); i++) {
        snprintf(key, sizeof key, "%s.%s", name, sfx[i]);
        if (!(rec[i] = golden_get(g, key))) return 1;
    }
    const golden_record *x = rec[1];
    int64_t n = x->numel;
    test_qbuf b;
    void *xd = NULL, *yd = NULL;
    int bad = 0;
    if (test_qbuf_alloc(ctx, &b, &f, x->ndim, x->shape) || moe_alloc(ctx, (size_t)n * 4, &xd) ||
        moe_alloc(ctx, (size_t)n * 4, &yd)) {
        fprintf(stderr, "  %s: setup failed: %s\n", name, moe_last_error(ctx));
        bad = 1;
        goto done;
    }
    /* The input as f32, or as bf16 when the case says so (its values are exactly bf16). */
    uint16_t *bf = malloc((size_t)n * 2 + 2);
    for (int64_t i = 0; i < n; i++) bf[i] = moe_bf16_from_f32(test_f32_from_bits(((const uint32_t *)x->data)[i]));
    moe_memcpy(ctx, xd, in_dtype == MOE_DTYPE_BF16 ? (const void *)bf : x->data,
               (size_t)n * (in_dtype == MOE_DTYPE_BF16 ? 2 : 4), MOE_COPY_HOST_TO_CTX, NULL);
    free(bf);
    if (f.static_scale && f.kind == MOE_QFORMAT_FP8_TENSOR)
        moe_memcpy(ctx, b.q.scale, rec[3]->data, rec[3]->bytes, MOE_COPY_HOST_TO_CTX, NULL);
    if (f.static_scale && f.kind == MOE_QFORMAT_NVFP4)
        moe_memcpy(ctx, b.q.global_scale, rec[5]->data, 4, MOE_COPY_HOST_TO_CTX, NULL);
    moe_tensor xt = {xd, in_dtype, x->ndim, {0}};
    memcpy(xt.shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    moe_status s = moe_quantize(ctx, &xt, &b.q, NULL);
    if (s != MOE_OK) {
        fprintf(stderr, "  %s: moe_quantize: %s\n", name, moe_last_error(ctx));
        bad = 1;
        goto done;
    }
    uint8_t *host = malloc(b.sizes.data_bytes + b.sizes.scale_bytes + (size_t)n * 4 + 8);
    uint8_t *hq = host, *hs = host + b.sizes.data_bytes, *hy = hs + b.sizes.scale_bytes;
    moe_memcpy(ctx, hq, b.q.data, b.sizes.data_bytes, MOE_COPY_CTX_TO_HOST, NULL);
    moe_memcpy(ctx, hs, b.q.scale, b.sizes.scale_bytes, MOE_COPY_CTX_TO_HOST, NULL);
    float global = 0;
    moe_memcpy(ctx, &global, b.q.global_scale, 4, MOE_COPY_CTX_TO_HOST, NULL);
    moe_sync(ctx, NULL);
    if (rec[2]->bytes != b.sizes.data_bytes || rec[3]->bytes != b.sizes.scale_bytes) {
        fprintf(stderr, "  %s: sizes %zu/%zu, oracle %zu/%zu\n", name, b.sizes.data_bytes, b.sizes.scale_bytes,
                rec[2]->bytes, rec[3]->bytes);
        bad = 1;
    } else {
        bad |= diff_bytes("scale", name, hs, rec[3]->data, rec[3]->bytes);
        bad |= diff_bytes("data", name, hq, rec[2]->data, rec[2]->bytes);
    }
    if (rec[5] && test_f32_bits(global) != *(const uint32_t *)rec[5]->data) {
        fprintf(stderr, "  %s: global scale %a, oracle %a\n", name, global,
                test_f32_from_bits(*(const uint32_t *)rec[5]->data));
        bad = 1;
    }
    /* Dequantise what the oracle quantised, so a quantise bug does not hide a dequantise check. */
    moe_memcpy(ctx, b.q.data, rec[2]->data, rec[2]->bytes, MOE_COPY_HOST_TO_CTX, NULL);
    moe_memcpy(ctx, b.q.scale, rec[3]->data, rec[3]->bytes, MOE_COPY_HOST_TO_CTX, NULL);
    if (rec[5]) moe_memcpy(ctx, b.q.global_scale, rec[5]->data, 4, MOE_COPY_HOST_TO_CTX, NULL);
    moe_tensor yt = xt;
    yt.data = yd;
    yt.dtype = MOE_DTYPE_F32;
    s = moe_dequantize(ctx, &b.q, &yt, NULL);
    moe_memcpy(ctx, hy, yd, (size_t)n * 4, MOE_COPY_CTX_TO_HOST, NULL);
    moe_sync(ctx, NULL);
    if (s != MOE_OK) {
        fprintf(stderr, "  %s: moe_dequantize: %s\n", name, moe_last_error(ctx));
        bad = 1;
    } else {
        for (int64_t i = 0; i < n; i++) {
            float got, want = test_f32_from_bits(((const uint32_t *)rec[4]->data)[i]);
            memcpy(&got, hy + 4 * i, 4);
            if (!test_same_f32(got, want)) {
                fprintf(stderr, "  %s: dequantised element %" PRId64 " is %a, oracle %a\n", name, i, got, want);
                bad = 1;
                break;
            }
        }
    }
    free(host);
done:
    test_qbuf_free(ctx, &b);
    moe_free(ctx, xd);
    moe_free(ctx, yd);
    return bad;
}

int blocks_run_golden(test_env *env, moe_ctx *ctx) {
    golden g;
    if (golden_load(&g, env->data_dir, "blocks.moeg")) return -1;
    const golden_record *cases = golden_get(&g, "cases");
    if (!cases) {
        golden_free(&g);
        return -1;
    }
    char *list = calloc(1, cases->bytes + 1);
    memcpy(list, cases->data, cases->bytes);
    int bad = 0, count = 0;
    for (char *save = NULL, *name = strtok_r(list, "\n", &save); name; name = strtok_r(NULL, "\n", &save)) {
        bad += run_case(ctx, &g, name);
        count++;
    }
    free(list);
    golden_free(&g);
    if (count < 20) {
        fprintf(stderr, "  only %d golden cases found\n", count);
        return bad + 1;
    }
    return bad;
}

int blocks_config_matrix(moe_qformat *formats, char (*names)[64], int cap) {
    static const struct {
        moe_qformat_kind kind;
        moe_dtype elem;
        moe_scale_rule rule;
        moe_dtype scale;
        moe_scale_layout layout;
        moe_nvfp4_global global;
    } m[] = {
        {MOE_QFORMAT_FP8_TENSOR, MOE_DTYPE_E4M3, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_TENSOR, MOE_DTYPE_E5M2, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_TENSOR, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_ROW, MOE_DTYPE_E4M3, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_ROW, MOE_DTYPE_E5M2, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_ROW, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_FP8_ROW, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_1X128, MOE_DTYPE_E4M3, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_1X128, MOE_DTYPE_E5M2, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_1X128, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_1X128, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_FP8_1X128, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_CEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_FP8_128X128, MOE_DTYPE_E4M3, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_128X128, MOE_DTYPE_E5M2, MOE_SCALE_F32, MOE_DTYPE_F32, 0, 0},
        {MOE_QFORMAT_FP8_128X128, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_FP8_128X128, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP8, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP8, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP8, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_CEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP8, MOE_DTYPE_E5M2, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP8, MOE_DTYPE_E5M2, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP8, MOE_DTYPE_E4M3, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, MOE_SCALE_SWIZZLED_128X4, 0},
        {MOE_QFORMAT_MXFP4, MOE_DTYPE_E2M1, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP4, MOE_DTYPE_E2M1, MOE_SCALE_UE8M0_FLOOR, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP4, MOE_DTYPE_E2M1, MOE_SCALE_UE8M0_CEIL, MOE_DTYPE_E8M0, 0, 0},
        {MOE_QFORMAT_MXFP4, MOE_DTYPE_E2M1, MOE_SCALE_UE8M0_RCEIL, MOE_DTYPE_E8M0, MOE_SCALE_SWIZZLED_128X4, 0},
        {MOE_QFORMAT_NVFP4, MOE_DTYPE_E2M1, MOE_SCALE_DEFAULT, MOE_DTYPE_E4M3, 0, MOE_NVFP4_GLOBAL_ENCODE},
        {MOE_QFORMAT_NVFP4, MOE_DTYPE_E2M1, MOE_SCALE_DEFAULT, MOE_DTYPE_E4M3, 0, MOE_NVFP4_GLOBAL_DECODE},
        {MOE_QFORMAT_NVFP4, MOE_DTYPE_E2M1, MOE_SCALE_DEFAULT, MOE_DTYPE_E4M3, MOE_SCALE_SWIZZLED_128X4,
         MOE_NVFP4_GLOBAL_ENCODE},
        {MOE_QFORMAT_NVFP4, MOE_DTYPE_E2M1, MOE_SCALE_DEFAULT, MOE_DTYPE_E4M3, MOE_SCALE_SWIZZLED_128X4,
         MOE_NVFP4_GLOBAL_DECODE},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof m / sizeof m[0] && n < cap; i++, n++) {
        moe_qformat f = moe_qformat_preset(m[i].kind);
        f.elem = m[i].elem;
        f.rule = m[i].rule;
        f.scale_dtype = m[i].scale;
        f.layout = m[i].layout;
        f.global = m[i].global;
        formats[n] = f;
        snprintf(names[n], 64, "%s/%s/%s/%s%s%s", moe_qformat_kind_name(f.kind), moe_dtype_name(f.elem),
                 moe_scale_rule_name(f.rule), moe_dtype_name(f.scale_dtype),
                 f.layout == MOE_SCALE_SWIZZLED_128X4 ? "/swizzled" : "",
                 f.global == MOE_NVFP4_GLOBAL_ENCODE   ? "/encode"
                 : f.global == MOE_NVFP4_GLOBAL_DECODE ? "/decode"
                                                       : "");
    }
    return n;
}

void blocks_random_data(float *x, int64_t n, uint64_t seed, int specials) {
    uint64_t st = seed ^ 0x5EEDull;
    float scale = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        uint64_t r = test_splitmix64(&st);
        if (i % 16 == 0) scale = ldexpf(1.0f, (int)(r % 17) - 8); /* a new magnitude every 16 elements */
        /* Box-Muller is overkill: a sum of uniforms is close enough to normal and exact to reproduce. */
        float u = (float)((r >> 40) & 0xFFFF) / 65536.0f + (float)((r >> 24) & 0xFFFF) / 65536.0f +
                  (float)((r >> 8) & 0xFFFF) / 65536.0f - 1.5f;
        x[i] = u * 2.0f * scale;
        if (r % 997 == 0) x[i] = ldexpf(1.0f, (int)(r % 13) - 6); /* exact powers of two hit scale boundaries */
        if (specials && r % 100003 == 1) x[i] = NAN;
        if (specials && r % 100003 == 2) x[i] = (r & 1) ? INFINITY : -INFINITY;
    }
    if (n >= 4096)
        for (int64_t i = 1024; i < 1024 + 512; i++) x[i] = 0.0f; /* with 512 columns: one whole zero row */
}
