/* layer.c — the MoE layer's public entry points: one validation of config, weights and tensors, the scratch
 * layout, then the backend. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe/layer.h"
#include "route/router.h"

moe_layer_scratch moe__layer_scratch(const moe_layer *l, int64_t T) {
    const moe_layer_config *c = &l->c;
    const size_t E = (size_t)c->router.n_experts, k = (size_t)c->router.top_k, t = (size_t)(T > 0 ? T : 0);
    const size_t H = (size_t)c->hidden;
    moe_layer_scratch s = {0};
    size_t at = 0;
    s.logits = at, at += moe__align256(t * E * 4);
    s.ids = at, at += moe__align256(t * k * 4);
    s.weights = at, at += moe__align256(t * k * 4);
#ifdef MOE_WITH_CUDA
    if (l->ctx->backend == MOE_BACKEND_CUDA) {
        const size_t S = (size_t)c->n_shared, Is = (size_t)c->shared_intermediate;
        moe_layer_scratch x = moe__cuda_layer_experts_scratch(l, T, at); /* the routed experts' part */
        x.logits = s.logits, x.ids = s.ids, x.weights = s.weights;
        s = x, at = x.bytes;
        s.shared_scale = at, at += moe__align256(t * 4);
        s.gate_partial = at, at += moe__align256((size_t)moe__gate_partial_rows((int64_t)t, c->hidden) * (E + 1) * 4);
        if (!l->shared_quantized || t == 0) {
            s.shared_h = at, at += moe__align256(S * t * Is * 2);
            s.shared_y = at, at += moe__align256(S * t * H * 2);
            s.bytes = at;
            return s;
        }
        /* the quantised shared experts' plan and buffers, sized as the routed experts' (layer_experts.cu) for S
         * experts of every token, each padded to the largest tile */
        const size_t rows = S * (t + MOE_LAYER_MAX_TILE_M - 1);
        s.shared_rows = (int64_t)rows;
        s.shared_offsets = at, at += moe__align256((S + 1) * 8);
        s.shared_row_src = at, at += moe__align256(rows * 4);
        s.shared_h = at, at += moe__align256(rows * Is * 2);
        s.shared_y = at, at += moe__align256(rows * H * 2);
        if (l->act_quantized) s.shared_w8a8 = moe__w8a8_scratch(&at, t, H, rows, Is, s.shared_h);
        s.bytes = at;
        return s;
    }
#endif
    /* CPU: a (T, k) row map and the expert outputs (T k, H) in f32 */
    s.slot_row = at, at += moe__align256(t * k * 4);
    s.y = at, at += moe__align256(t * k * H * 4);
    s.rows = (int64_t)(t * k);
    s.bytes = at;
    return s;
}

/* One set of quantised expert matrices for the checks below: n experts' w13 (n, 2I, H) and w2 (n, H, I) in format f,
 * with their scale buffers; what names the config field and pre the weights' prefix in messages. */
typedef struct moe_expert_set {
    const moe_qformat *f;
    const char *what, *noun, *pre; /* "expert_format", "experts", "" or "shared_format", "shared experts", "shared_" */
    int64_t n, I;
    const void *s13, *s2;
    const float *g13, *g2;
} moe_expert_set;

/* Quantised experts (routed, or shared): a weight format (block scales along each row, or 128x128 tiles; linear
 * scales) whose layouts for w13 and w2 are valid, and its scale buffers. */
static moe_status moe_check_weight_format(moe_ctx *ctx, int64_t H, const moe_expert_set *x, moe_qlayout *q13,
                                          moe_qlayout *q2) {
    const moe_qformat *f = x->f;
    const moe_qformat_kind k = f->kind;
    MOE_CHECK_ARG(ctx, k == MOE_QFORMAT_FP8_ROW || k == MOE_QFORMAT_FP8_1X128 || k == MOE_QFORMAT_FP8_128X128 ||
                           k == MOE_QFORMAT_MXFP8 || k == MOE_QFORMAT_MXFP4 || k == MOE_QFORMAT_NVFP4,
                  "moe_layer_create: %s %s is not a weight format (fp8_row, fp8_1x128, fp8_128x128, mxfp8, mxfp4, "
                  "nvfp4)", x->what, moe_qformat_kind_name(k));
    MOE_CHECK_ARG(ctx, f->elem == MOE_DTYPE_E4M3 || f->elem == MOE_DTYPE_E2M1,
                  "moe_layer_create: %s elements must be e4m3 or e2m1, not %s", x->what, moe_dtype_name(f->elem));
    MOE_CHECK_ARG(ctx, f->layout == MOE_SCALE_LINEAR, "moe_layer_create: %s scales must be linear", x->what);
    const int64_t s13[3] = {x->n, 2 * x->I, H}, s2[3] = {x->n, H, x->I};
    MOE_TRY(moe__qlayout(ctx, f, 3, s13, q13));
    MOE_TRY(moe__qlayout(ctx, f, 3, s2, q2));
    MOE_CHECK_ARG(ctx, x->s13 && x->s2, "moe_layer_create: %s %s needs %sw13_scale and %sw2_scale", x->what,
                  moe_qformat_kind_name(k), x->pre, x->pre);
    MOE_CHECK_ARG(ctx, k != MOE_QFORMAT_NVFP4 || (x->g13 && x->g2),
                  "moe_layer_create: nvfp4 %s need %sw13_global and %sw2_global (one per expert)", x->noun, x->pre,
                  x->pre);
    MOE_CHECK_ARG(ctx, q13->scale_bytes_each == 1 || ((uintptr_t)x->s13 % 4 == 0 && (uintptr_t)x->s2 % 4 == 0),
                  "moe_layer_create: the f32 scales %sw13_scale and %sw2_scale must be 4-byte aligned", x->pre,
                  x->pre);
    return MOE_OK;
}

/* Quantised expert inputs (W8A8): FP8 1x128 groups of E4M3 with f32 scales (any rule), linear; the layouts of one
 * row of x and of h, and of the quantised shared experts' h. */
static moe_status moe_check_act_format(moe_ctx *ctx, const moe_layer_config *c, moe_qlayout *qx, moe_qlayout *qh,
                                       moe_qlayout *qsh) {
    const moe_qformat *f = &c->act_format;
    MOE_CHECK_ARG(ctx, f->kind == MOE_QFORMAT_FP8_1X128,
                  "moe_layer_create: act_format %s is not an activation format of the layer (fp8_1x128)",
                  moe_qformat_kind_name(f->kind));
    MOE_CHECK_ARG(ctx, f->elem == MOE_DTYPE_E4M3, "moe_layer_create: act_format elements must be e4m3, not %s",
                  moe_dtype_name(f->elem));
    MOE_CHECK_ARG(ctx, f->scale_dtype == MOE_DTYPE_F32 && f->layout == MOE_SCALE_LINEAR,
                  "moe_layer_create: act_format scales must be f32 (of any rule) and linear");
    const int64_t sx[2] = {1, c->hidden}, sh[2] = {1, c->intermediate};
    MOE_TRY(moe__qlayout(ctx, f, 2, sx, qx));
    MOE_TRY(moe__qlayout(ctx, f, 2, sh, qh));
    if (c->shared_format.kind == MOE_QFORMAT_INVALID || c->n_shared == 0) return MOE_OK;
    const int64_t ss[2] = {1, c->shared_intermediate};
    return moe__qlayout(ctx, f, 2, ss, qsh);
}

static moe_status moe_check_layer(moe_ctx *ctx, const moe_layer_config *c, const moe_layer_weights *w) {
    MOE_CHECK_ARG(ctx, c && w, "moe_layer_create: config and weights must not be NULL");
    /* widths up to 2^20 (real models: up to 2^15), 64 shared experts and the routed experts' weights under 2^60
     * values: with the tokens' int32 row ids, no size the layer computes can pass 64 bits */
    MOE_CHECK_ARG(ctx, c->hidden >= 1 && c->intermediate >= 1 && c->hidden <= (1 << 20) && c->intermediate <= (1 << 20),
                  "moe_layer_create: hidden %d, intermediate %d (each 1 .. 2^20)", c->hidden, c->intermediate);
    MOE_CHECK_ARG(ctx, c->activation >= MOE_ACT_SILU_GLU && c->activation <= MOE_ACT_GPTOSS_GLU,
                  "moe_layer_create: unknown activation %d", (int)c->activation);
    MOE_CHECK_ARG(ctx, c->w13_layout == MOE_W13_CONCAT || c->w13_layout == MOE_W13_INTERLEAVED,
                  "moe_layer_create: unknown w13 layout %d", (int)c->w13_layout);
    MOE_CHECK_ARG(ctx, c->dtype == MOE_DTYPE_BF16 || c->dtype == MOE_DTYPE_F32,
                  "moe_layer_create: dtype must be bf16 or f32, not %s", moe_dtype_name(c->dtype));
    MOE_CHECK_ARG(ctx, c->gate_dtype == MOE_DTYPE_INVALID || c->gate_dtype == MOE_DTYPE_F32 ||
                           c->gate_dtype == MOE_DTYPE_BF16,
                  "moe_layer_create: gate_dtype must be f32 or bf16, not %s", moe_dtype_name(c->gate_dtype));
    MOE_CHECK_ARG(ctx, w->w13 && w->w2, "moe_layer_create: the expert weights w13 and w2 are NULL");
    MOE_CHECK_ARG(ctx, c->n_shared >= 0 && c->n_shared <= 64 &&
                           (c->n_shared == 0 || (c->shared_intermediate >= 1 && c->shared_intermediate <= (1 << 20) &&
                                                 w->shared_w13 && w->shared_w2)),
                  "moe_layer_create: %d shared experts (up to 64) need shared_intermediate (1 .. 2^20), shared_w13 and "
                  "shared_w2", c->n_shared);
    MOE_CHECK_ARG(ctx, !c->shared_gate || (c->n_shared > 0 && w->shared_gate),
                  "moe_layer_create: shared_gate needs shared experts and weights.shared_gate");
    MOE_CHECK_ARG(ctx, c->router.kind != MOE_ROUTER_INVALID, "moe_layer_create: the router is not configured");
    MOE_TRY(moe__router_check(ctx, &c->router)); /* its E and k size the layer's buffers */
    MOE_CHECK_ARG(ctx, c->router.n_experts <= ((int64_t)1 << 60) / (3 * (int64_t)c->intermediate * c->hidden),
                  "moe_layer_create: %d experts of 3 x %d x %d weights pass 64-bit sizes", c->router.n_experts,
                  c->intermediate, c->hidden);
    MOE_CHECK_ARG(ctx, c->expert_tile >= MOE_EXPERT_TILE_AUTO && c->expert_tile <= MOE_EXPERT_TILE_LARGE,
                  "moe_layer_create: expert_tile %d is not a moe_expert_tile", (int)c->expert_tile);
    MOE_CHECK_ARG(ctx, !c->router.weight_on_input || c->router.top_k == 1,
                  "moe_layer_create: the router weight on the expert input (Llama-4) needs top_k 1, not %d",
                  c->router.top_k);
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_CHECK_ARG(ctx, c->dtype == MOE_DTYPE_BF16, "moe_layer_create: the CUDA layer computes in bf16, not %s",
                      moe_dtype_name(c->dtype));
        if (c->hidden % 8 || c->intermediate % 8 || (c->n_shared && c->shared_intermediate % 8))
            return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                              "moe_layer_create: the CUDA layer needs hidden (%d), intermediate (%d) and "
                              "shared_intermediate (%d) to be multiples of 8 (16-byte rows)",
                              c->hidden, c->intermediate, c->shared_intermediate);
        MOE_TRY(moe__router_cuda_reach(ctx, &c->router, "moe_layer_create"));
        if (c->shared_format.kind != MOE_QFORMAT_INVALID && c->n_shared > 0 &&
            (c->hidden % 32 || c->shared_intermediate % 32))
            return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                              "moe_layer_create: quantised shared experts on the GPU need hidden (%d) and "
                              "shared_intermediate (%d) to be multiples of 32 (16-byte rows of FP4 codes)",
                              c->hidden, c->shared_intermediate);
        if (c->expert_format.kind != MOE_QFORMAT_INVALID && (c->hidden % 32 || c->intermediate % 32))
            return moe__error(ctx, MOE_ERR_UNSUPPORTED,
                              "moe_layer_create: quantised experts on the GPU need hidden (%d) and intermediate (%d) "
                              "to be multiples of 32 (16-byte rows of FP4 codes)",
                              c->hidden, c->intermediate);
        /* every weight on the device; the matrices are read 16 bytes at a time, the f32 vectors are not */
        const struct {
            const void *ptr;
            const char *name;
            int aligned16;
        } ws[] = {{w->w13, "w13", 1},   {w->w2, "w2", 1},
                  {w->b13, "b13", 0},   {w->b2, "b2", 0},
                  {w->gate, "gate", 1}, {w->gate_bias, "gate_bias", 0},
                  {w->shared_w13, "shared_w13", 1}, {w->shared_w2, "shared_w2", 1},
                  {w->shared_gate, "shared_gate", 1}, {w->w13_scale, "w13_scale", 0},
                  {w->w2_scale, "w2_scale", 0},     {w->w13_global, "w13_global", 0},
                  {w->w2_global, "w2_global", 0},   {w->shared_w13_scale, "shared_w13_scale", 0},
                  {w->shared_w2_scale, "shared_w2_scale", 0}, {w->shared_w13_global, "shared_w13_global", 0},
                  {w->shared_w2_global, "shared_w2_global", 0}};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            if (!ws[i].ptr) continue;
            MOE_TRY(moe__cuda_check_pointer(ctx, ws[i].ptr, ws[i].name));
            MOE_CHECK_ARG(ctx, !ws[i].aligned16 || (uintptr_t)ws[i].ptr % 16 == 0,
                          "moe_layer_create: %s (%p) must be 16-byte aligned on the GPU (16-byte loads)", ws[i].name,
                          ws[i].ptr);
        }
    }
#endif
    return MOE_OK;
}

moe_status moe_layer_preset(const char *model, moe_layer_config *c) {
    static const struct {
        const char *name;
        int hidden, intermediate, n_shared, shared_intermediate, shared_gate;
        moe_activation act;
    } presets[] = {
        {"mixtral-8x7b", 4096, 14336, 0, 0, 0, MOE_ACT_SILU_GLU},
        {"qwen2-moe", 2048, 1408, 1, 5632, 1, MOE_ACT_SILU_GLU},
        {"qwen3-30b-a3b", 2048, 768, 0, 0, 0, MOE_ACT_SILU_GLU},
        {"qwen3-235b-a22b", 4096, 1536, 0, 0, 0, MOE_ACT_SILU_GLU},
        {"olmoe", 2048, 1024, 0, 0, 0, MOE_ACT_SILU_GLU},
        {"deepseek-v2", 5120, 1536, 2, 1536, 0, MOE_ACT_SILU_GLU},
        {"deepseek-v3", 7168, 2048, 1, 2048, 0, MOE_ACT_SILU_GLU},
        {"gpt-oss-20b", 2880, 2880, 0, 0, 0, MOE_ACT_GPTOSS_GLU},
        {"gpt-oss-120b", 2880, 2880, 0, 0, 0, MOE_ACT_GPTOSS_GLU},
        {"llama4-scout", 5120, 8192, 1, 8192, 0, MOE_ACT_SILU_GLU},
        {"llama4-maverick", 5120, 8192, 1, 8192, 0, MOE_ACT_SILU_GLU},
    };
    if (!model || !c) return MOE_ERR_INVALID_ARG;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(model, presets[i].name) != 0) continue;
        memset(c, 0, sizeof *c);
        MOE_TRY(moe_router_preset(model, &c->router));
        c->hidden = presets[i].hidden, c->intermediate = presets[i].intermediate;
        c->activation = presets[i].act;
        if (c->activation == MOE_ACT_GPTOSS_GLU) {
            c->act_alpha = 1.702f, c->act_limit = 7.0f;
            c->w13_layout = MOE_W13_INTERLEAVED;
        }
        c->dtype = MOE_DTYPE_BF16;
        c->n_shared = presets[i].n_shared, c->shared_intermediate = presets[i].shared_intermediate;
        c->shared_gate = presets[i].shared_gate;
        return MOE_OK;
    }
    return MOE_ERR_INVALID_ARG;
}

moe_status moe_layer_create(moe_ctx *ctx, const moe_layer_config *config, const moe_layer_weights *weights,
                            moe_layer **out) {
    if (!ctx) return MOE_ERR_INVALID_ARG;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, out, "moe_layer_create: out is NULL");
    *out = NULL;
    MOE_TRY(moe_check_layer(ctx, config, weights));
    moe_qlayout q13, q2, qs13, qs2;
    const bool quantized = config->expert_format.kind != MOE_QFORMAT_INVALID;
    if (quantized) {
        const moe_expert_set x = {&config->expert_format, "expert_format", "experts", "", config->router.n_experts,
                                  config->intermediate, weights->w13_scale, weights->w2_scale, weights->w13_global,
                                  weights->w2_global};
        MOE_TRY(moe_check_weight_format(ctx, config->hidden, &x, &q13, &q2));
    }
    const bool shared_quantized = config->shared_format.kind != MOE_QFORMAT_INVALID && config->n_shared > 0;
    if (shared_quantized) {
        const moe_expert_set x = {&config->shared_format, "shared_format", "shared experts", "shared_",
                                  config->n_shared, config->shared_intermediate, weights->shared_w13_scale,
                                  weights->shared_w2_scale, weights->shared_w13_global, weights->shared_w2_global};
        MOE_TRY(moe_check_weight_format(ctx, config->hidden, &x, &qs13, &qs2));
    }
    moe_qlayout qx, qh, qsh;
    const bool act_quantized = config->act_format.kind != MOE_QFORMAT_INVALID;
    if (act_quantized) MOE_TRY(moe_check_act_format(ctx, config, &qx, &qh, &qsh));
    moe_layer *l = calloc(1, sizeof *l);
    if (!l) return moe__error(ctx, MOE_ERR_OOM, "moe_layer_create: out of host memory");
    l->ctx = ctx;
    l->c = *config;
    l->w = *weights;
    l->expert_begin = 0, l->n_local = l->n_global = config->router.n_experts;
    if (quantized) l->quantized = true, l->q13 = q13, l->q2 = q2;
    if (act_quantized) l->act_quantized = true, l->qx = qx, l->qh = qh;
    if (shared_quantized) l->shared_quantized = true, l->qs13 = qs13, l->qs2 = qs2;
    if (shared_quantized && act_quantized) l->qsh = qsh;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA && (config->n_shared > 0 || act_quantized)) { /* the side stream */
        const moe_status s = moe__cuda_layer_init(l);
        if (s != MOE_OK) {
            moe_layer_destroy(l);
            return s;
        }
    }
#endif
    *out = l;
    return MOE_OK;
}

void moe_layer_destroy(moe_layer *l) {
#ifdef MOE_WITH_CUDA
    if (l && l->side_stream) moe__cuda_layer_fini(l);
#endif
    free(l);
}

/* Whether T tokens' (token, slot) rows, each expert's padded to the largest tile, fit int32 row ids. */
static int moe_layer_tokens_fit(const moe_layer *l, int64_t T) {
    const int64_t room = INT32_MAX - 1 - (int64_t)l->c.router.n_experts * MOE_LAYER_MAX_TILE_M;
    return T >= 0 && room > 0 && T <= room / l->c.router.top_k;
}

moe_status moe_layer_workspace_size(moe_layer *l, int64_t max_tokens, size_t *bytes) {
    if (!l) return MOE_ERR_INVALID_ARG;
    moe__clear_error(l->ctx);
    MOE_CHECK_ARG(l->ctx, bytes && max_tokens >= 0, "moe_layer_workspace_size: bytes NULL or max_tokens < 0");
    MOE_CHECK_ARG(l->ctx, moe_layer_tokens_fit(l, max_tokens),
                  "moe_layer_workspace_size: %lld tokens are too many for int32 row ids", (long long)max_tokens);
    *bytes = moe__layer_scratch(l, max_tokens).bytes;
    return MOE_OK;
}

static int moe_is_matrix(const moe_tensor *t, int64_t rows, int64_t cols) {
    return t && t->rank == 2 && t->shape[0] == rows && t->shape[1] == cols;
}

moe_status moe_layer_forward(moe_layer *l, const moe_layer_io *io, void *workspace, size_t workspace_bytes,
                             void *stream) {
    if (!l) return MOE_ERR_INVALID_ARG;
    moe_ctx *ctx = l->ctx;
    moe__clear_error(ctx);
    MOE_CHECK_ARG(ctx, io && io->x && io->out, "moe_layer_forward: io, x and out must not be NULL");
    MOE_TRY(moe__check_tensor(ctx, io->x, "moe_layer_forward x"));
    MOE_TRY(moe__check_tensor(ctx, io->out, "moe_layer_forward out"));
    const int64_t T = io->x->shape[0];
    const int H = l->c.hidden, E = l->c.router.n_experts;
    MOE_CHECK_ARG(ctx, moe_is_matrix(io->x, T, H) && io->x->dtype == l->c.dtype,
                  "moe_layer_forward: x must be (T, %d) %s", H, moe_dtype_name(l->c.dtype));
    MOE_CHECK_ARG(ctx, moe_is_matrix(io->out, T, H) && io->out->dtype == l->c.dtype,
                  "moe_layer_forward: out must be (%lld, %d) %s like x", (long long)T, H, moe_dtype_name(l->c.dtype));
    MOE_CHECK_ARG(ctx, !io->logits || moe_is_matrix(io->logits, T, E),
                  "moe_layer_forward: logits must be (%lld, %d)", (long long)T, E);
    MOE_CHECK_ARG(ctx, io->logits || l->w.gate || (l->c.router.kind == MOE_ROUTER_HASH && !l->c.router.score),
                  "moe_layer_forward: no logits given and the layer has no gate weight");
    MOE_CHECK_ARG(ctx, moe_layer_tokens_fit(l, T), "moe_layer_forward: %lld tokens are too many for int32 row ids",
                  (long long)T);
    const moe_layer_scratch s = moe__layer_scratch(l, T);
    const size_t need = s.bytes;
    MOE_CHECK_ARG(ctx, workspace_bytes >= need && (workspace || need == 0),
                  "moe_layer_forward: the workspace has %zu bytes, %zu needed for %lld tokens", workspace_bytes, need,
                  (long long)T);
    if (T == 0) return MOE_OK;
#ifdef MOE_WITH_CUDA
    if (ctx->backend == MOE_BACKEND_CUDA) {
        MOE_CHECK_ARG(ctx, (uintptr_t)io->x->data % 16 == 0 && (uintptr_t)io->out->data % 16 == 0,
                      "moe_layer_forward: x and out must be 16-byte aligned on the GPU");
        MOE_TRY(moe__cuda_check_pointer(ctx, io->x->data, "x"));
        MOE_TRY(moe__cuda_check_pointer(ctx, io->out->data, "out"));
        MOE_TRY(moe__cuda_check_pointer(ctx, workspace, "workspace"));
        if (io->logits) MOE_TRY(moe__cuda_check_pointer(ctx, io->logits->data, "logits"));
        if (io->token_ids) MOE_TRY(moe__cuda_check_pointer(ctx, io->token_ids, "token_ids"));
        return moe__cuda_layer_forward(l, io, &s, workspace, stream);
    }
#endif
    (void)stream;
    return moe__cpu_layer_forward(l, io, &s, workspace);
}
