/* qformat.c — format presets and names, validation, geometry and sizes (docs/formats.md §2). */
#include "formats/qformat.h"

#include <math.h>
#include <string.h>

static const char *const moe_kind_names[MOE_QFORMAT_COUNT_] = {
    [MOE_QFORMAT_INVALID] = "invalid",       [MOE_QFORMAT_FP8_TENSOR] = "fp8_tensor",
    [MOE_QFORMAT_FP8_ROW] = "fp8_row",       [MOE_QFORMAT_FP8_1X128] = "fp8_1x128",
    [MOE_QFORMAT_FP8_128X128] = "fp8_128x128", [MOE_QFORMAT_MXFP8] = "mxfp8",
    [MOE_QFORMAT_MXFP4] = "mxfp4",           [MOE_QFORMAT_NVFP4] = "nvfp4",
};

static const char *const moe_rule_names[MOE_SCALE_RULE_COUNT_] = {
    [MOE_SCALE_DEFAULT] = "default",       [MOE_SCALE_F32] = "f32",
    [MOE_SCALE_UE8M0_FLOOR] = "floor",     [MOE_SCALE_UE8M0_CEIL] = "ceil",
    [MOE_SCALE_UE8M0_RCEIL] = "rceil",
};

const char *moe_qformat_kind_name(moe_qformat_kind k) {
    return k > MOE_QFORMAT_INVALID && k < MOE_QFORMAT_COUNT_ ? moe_kind_names[k] : "invalid";
}

moe_qformat_kind moe_qformat_kind_from_name(const char *name) {
    for (int k = 1; name && k < MOE_QFORMAT_COUNT_; k++)
        if (strcmp(name, moe_kind_names[k]) == 0) return (moe_qformat_kind)k;
    return MOE_QFORMAT_INVALID;
}

const char *moe_scale_rule_name(moe_scale_rule r) {
    return r >= MOE_SCALE_DEFAULT && r < MOE_SCALE_RULE_COUNT_ ? moe_rule_names[r] : "invalid";
}

moe_scale_rule moe_scale_rule_from_name(const char *name) {
    for (int r = 0; name && r < MOE_SCALE_RULE_COUNT_; r++)
        if (strcmp(name, moe_rule_names[r]) == 0) return (moe_scale_rule)r;
    return MOE_SCALE_RULE_COUNT_;
}

static bool moe_kind_is_fp8(moe_qformat_kind k) {
    return k == MOE_QFORMAT_FP8_TENSOR || k == MOE_QFORMAT_FP8_ROW || k == MOE_QFORMAT_FP8_1X128 ||
           k == MOE_QFORMAT_FP8_128X128;
}

moe_qformat moe_qformat_preset(moe_qformat_kind kind) {
    moe_qformat f;
    memset(&f, 0, sizeof f);
    f.kind = kind;
    f.elem = MOE_DTYPE_E4M3;
    f.rule = MOE_SCALE_F32;
    f.scale_dtype = MOE_DTYPE_F32;
    f.layout = MOE_SCALE_LINEAR;
    switch (kind) {
    case MOE_QFORMAT_FP8_ROW: f.amax_floor = 1.0f / 512.0f; break; /* vLLM: scale >= 1 / (448 * 512) */
    case MOE_QFORMAT_FP8_1X128:
    case MOE_QFORMAT_FP8_128X128: f.amax_floor = 1e-4f; break; /* DeepSeek-V3 act_quant */
    case MOE_QFORMAT_MXFP8:
        f.rule = MOE_SCALE_UE8M0_RCEIL;
        f.scale_dtype = MOE_DTYPE_E8M0;
        break;
    case MOE_QFORMAT_MXFP4:
        f.elem = MOE_DTYPE_E2M1;
        f.rule = MOE_SCALE_UE8M0_RCEIL;
        f.scale_dtype = MOE_DTYPE_E8M0;
        break;
    case MOE_QFORMAT_NVFP4:
        f.elem = MOE_DTYPE_E2M1;
        f.rule = MOE_SCALE_DEFAULT;
        f.scale_dtype = MOE_DTYPE_E4M3;
        break;
    default: break;
    }
    return f;
}

/* Checks the format's fields against each other; resolves MOE_SCALE_DEFAULT. */
static moe_status moe_check_format(moe_ctx *ctx, moe_qformat *f) {
    const char *kn = moe_qformat_kind_name(f->kind);
    MOE_CHECK_ARG(ctx, f->kind > MOE_QFORMAT_INVALID && f->kind < MOE_QFORMAT_COUNT_,
                  "unknown quantised format kind %d", (int)f->kind);
    bool fp8 = moe_kind_is_fp8(f->kind), mx = f->kind == MOE_QFORMAT_MXFP8 || f->kind == MOE_QFORMAT_MXFP4;
    bool fp4 = f->kind == MOE_QFORMAT_MXFP4 || f->kind == MOE_QFORMAT_NVFP4;
    if (fp4)
        MOE_CHECK_ARG(ctx, f->elem == MOE_DTYPE_E2M1, "%s: elements must be e2m1, not %s", kn,
                      moe_dtype_name(f->elem));
    else
        MOE_CHECK_ARG(ctx, f->elem == MOE_DTYPE_E4M3 || f->elem == MOE_DTYPE_E5M2,
                      "%s: elements must be e4m3 or e5m2, not %s", kn, moe_dtype_name(f->elem));
    MOE_CHECK_ARG(ctx, f->rule >= MOE_SCALE_DEFAULT && f->rule < MOE_SCALE_RULE_COUNT_, "%s: unknown scale rule %d",
                  kn, (int)f->rule);
    if (f->kind == MOE_QFORMAT_NVFP4) {
        MOE_CHECK_ARG(ctx, f->rule == MOE_SCALE_DEFAULT, "nvfp4: block scales are e4m3; scale rule %s does not apply",
                      moe_scale_rule_name(f->rule));
        MOE_CHECK_ARG(ctx, f->scale_dtype == MOE_DTYPE_E4M3, "nvfp4: scales are stored as e4m3, not %s",
                      moe_dtype_name(f->scale_dtype));
        MOE_CHECK_ARG(ctx, f->global == MOE_NVFP4_GLOBAL_ENCODE || f->global == MOE_NVFP4_GLOBAL_DECODE,
                      "nvfp4: say what the global scale means: MOE_NVFP4_GLOBAL_ENCODE (448*6/amax, FlashInfer) or "
                      "MOE_NVFP4_GLOBAL_DECODE (amax/(448*6), ModelOpt weight_scale_2)");
    } else {
        MOE_CHECK_ARG(ctx, f->global == MOE_NVFP4_GLOBAL_UNSET, "%s: a global scale convention is for nvfp4 only",
                      kn);
        if (f->rule == MOE_SCALE_DEFAULT) f->rule = mx ? MOE_SCALE_UE8M0_RCEIL : MOE_SCALE_F32;
        if (mx) {
            MOE_CHECK_ARG(ctx, moe__rule_is_ue8m0(f->rule), "%s: scales are powers of two; rule %s does not apply", kn,
                          moe_scale_rule_name(f->rule));
            MOE_CHECK_ARG(ctx, f->scale_dtype == MOE_DTYPE_E8M0, "%s: scales are stored as e8m0, not %s", kn,
                          moe_dtype_name(f->scale_dtype));
        } else if (f->rule == MOE_SCALE_F32) {
            MOE_CHECK_ARG(ctx, f->scale_dtype == MOE_DTYPE_F32, "%s: rule f32 stores f32 scales, not %s", kn,
                          moe_dtype_name(f->scale_dtype));
        } else {
            MOE_CHECK_ARG(ctx, f->scale_dtype == MOE_DTYPE_F32 || f->scale_dtype == MOE_DTYPE_E8M0,
                          "%s: power-of-two scales are stored as f32 or e8m0, not %s", kn,
                          moe_dtype_name(f->scale_dtype));
        }
    }
    MOE_CHECK_ARG(ctx, f->kind != MOE_QFORMAT_FP8_TENSOR || f->scale_dtype == MOE_DTYPE_F32,
                  "fp8_tensor: the per-tensor scale is stored as f32, not %s", moe_dtype_name(f->scale_dtype));
    MOE_CHECK_ARG(ctx, f->layout == MOE_SCALE_LINEAR || f->layout == MOE_SCALE_SWIZZLED_128X4,
                  "%s: unknown scale layout %d", kn, (int)f->layout);
    MOE_CHECK_ARG(ctx, f->layout == MOE_SCALE_LINEAR || !fp8,
                  "%s: the swizzled 128x4 layout is for mxfp8, mxfp4 and nvfp4 scales", kn);
    MOE_CHECK_ARG(ctx, !f->static_scale || f->kind == MOE_QFORMAT_FP8_TENSOR || f->kind == MOE_QFORMAT_NVFP4,
                  "%s: a static scale is for fp8_tensor and nvfp4 only", kn);
    MOE_CHECK_ARG(ctx, isfinite(f->amax_floor) && f->amax_floor >= 0.0f,
                  "%s: amax_floor must be a finite number >= 0, not %g", kn, (double)f->amax_floor);
    return MOE_OK;
}

moe_status moe__qlayout(moe_ctx *ctx, const moe_qformat *format, int rank, const int64_t *shape, moe_qlayout *l) {
    MOE_CHECK_ARG(ctx, format && shape && l, "quantised format, shape and layout must not be NULL");
    memset(l, 0, sizeof *l);
    l->f = *format;
    MOE_TRY(moe_check_format(ctx, &l->f));
    const char *kn = moe_qformat_kind_name(l->f.kind);
    MOE_CHECK_ARG(ctx, rank >= 1 && rank <= MOE_MAX_RANK, "%s: rank %d is outside 1..%d", kn, rank, MOE_MAX_RANK);
    int64_t numel = moe__shape_numel(rank, shape);
    MOE_CHECK_ARG(ctx, numel >= 0, "%s: negative dimension or too many elements in the shape", kn);
    moe__shape_matrices(rank, shape, &l->batch, &l->rows, &l->cols);

    const moe_qformat_kind k = l->f.kind;
    l->block_rows = k == MOE_QFORMAT_FP8_128X128 ? 128 : 1;
    l->block_cols = k == MOE_QFORMAT_MXFP8 || k == MOE_QFORMAT_MXFP4 ? 32
                    : k == MOE_QFORMAT_NVFP4                         ? 16
                    : k == MOE_QFORMAT_FP8_ROW                       ? (l->cols > 0 ? l->cols : 1)
                                                                     : 128;
    if (k == MOE_QFORMAT_MXFP8 || k == MOE_QFORMAT_MXFP4 || k == MOE_QFORMAT_NVFP4)
        MOE_CHECK_ARG(ctx, l->cols % l->block_cols == 0,
                      "%s: the last dimension (%lld) must be a multiple of the block size %lld", kn,
                      (long long)l->cols, (long long)l->block_cols);

    if (k == MOE_QFORMAT_FP8_TENSOR) {
        l->scale_rows = l->scale_cols = 1;
    } else {
        l->scale_rows = (l->rows + l->block_rows - 1) / l->block_rows;
        l->scale_cols = (l->cols + l->block_cols - 1) / l->block_cols;
    }
    l->scale_rows_pad = l->scale_rows;
    l->scale_cols_pad = l->scale_cols;
    if (l->f.layout == MOE_SCALE_SWIZZLED_128X4) {
        l->scale_rows_pad = (l->scale_rows + 127) / 128 * 128;
        l->scale_cols_pad = (l->scale_cols + 3) / 4 * 4;
    }
    l->scale_bytes_each = l->f.scale_dtype == MOE_DTYPE_F32 ? 4 : 1;
    l->elem_max = l->f.elem == MOE_DTYPE_E4M3 ? 448.0f : l->f.elem == MOE_DTYPE_E5M2 ? 57344.0f : 6.0f;
    l->elem_emax = l->f.elem == MOE_DTYPE_E4M3 ? 8 : l->f.elem == MOE_DTYPE_E5M2 ? 15 : 2;

    l->data_bytes = (size_t)moe_dtype_bytes(l->f.elem, numel);
    int64_t n_scales = k == MOE_QFORMAT_FP8_TENSOR ? 1 : l->batch * l->scale_rows_pad * l->scale_cols_pad;
    l->scale_bytes = (size_t)n_scales * (size_t)l->scale_bytes_each;
    l->global_bytes = k == MOE_QFORMAT_NVFP4 ? sizeof(float) : 0;
    return MOE_OK;
}

moe_status moe_qtensor_sizes(moe_ctx *ctx, const moe_qformat *format, int rank, const int64_t *shape,
                             moe_qsizes *sizes) {
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, sizes, "moe_qtensor_sizes: sizes must not be NULL");
    moe_qlayout l;
    MOE_TRY(moe__qlayout(ctx, format, rank, shape, &l));
    sizes->data_bytes = l.data_bytes;
    sizes->scale_bytes = l.scale_bytes;
    sizes->global_scale_bytes = l.global_bytes;
    sizes->batch = l.batch;
    sizes->scale_rows = l.scale_rows;
    sizes->scale_cols = l.scale_cols;
    return MOE_OK;
}
