/* test_gpu_layer_fp4.c — FP4 weights (MXFP4, NVFP4) on their wgmma tile (grouped_gemm_fp4_rs.cu) at 64 rows (MEDIUM)
 * and 128 rows (LARGE, at any K: MOE_GEMM_FP4_RS_LARGE) against the CPU reference over the same codes, each case once
 * more on the tile the shape takes without it, so that both stay checked: MEDIUM's mma.sync tile (MOE_GEMM_NO_FP4_RS),
 * LARGE's cp.async wgmma tile (MOE_GEMM_NO_FP4_RS_LARGE); at LARGE once more with 3 CTAs walking the tiles
 * (MOE_GEMM_FP4_RS_CTAS). MOE_TEST_FP4_TILE=rs or mma runs only the wgmma tile or only the other, walk only the
 * walks (and MEDIUM's wgmma tile), for compute-sanitizer runs, which would take minutes over all; the default is all.
 * Skipped without a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer_cases.h"

typedef struct {
    const char *preset, *what;
    int H, I, E, k, T;
    int interleaved;   /* GPT-OSS's interleaved w13, biases and clamps, x past the clamps */
    int shared;        /* a shared expert of width 96 beside: bf16, or (2) quantised in the routed format */
    int w8a8;          /* act_format FP8 1x128: the MEDIUM tile then reads Q(x) in bf16 and writes h in f32 */
    int big;           /* every other expert's w13 times 2^24 and w2 times 2^-24: MXFP4 scales past 2^9 */
    int odd;           /* some 32-value blocks zero, some times 2^-16: NVFP4 scales of zero and E4M3 subnormals */
    int64_t counts[4]; /* top-1 rows sent to each of 4 experts (logits given), or all 0 */
    moe_activation act;
} fp4_case;

/* Cases, MEDIUM forced: K of 16 and 6 steps of 64 (H 1024, I 384); K of 24 and 10 (H 1536, I 640: the tile's 4-stage
 * ring of 128-K steps fills its stages 3 times over, so each stage's barriers pass phases 0, 1, 0); K ending half way
 * into a step and N past the last tile in both GEMMs (H 160, I 96); GPT-OSS's interleaved w13 with biases and clamps;
 * Llama-4's weight on the input with 2I = 640 (5 GLU tiles of 64 columns) and a bf16 shared expert; experts of 64, 65,
 * 1 and 0 rows (a tile all rows, one of one row beside one of 64, an empty expert); a quantised shared expert (its
 * tile rows are all T tokens); W8A8's bf16 path (h in f32); E8M0 scales past 2^9 in every other expert (the tile's
 * wide path); NVFP4 scales of zero and E4M3 subnormals in some rows' blocks (the tile's exact path, in steps beside
 * plain ones). Tiles whose second half holds no row run at wgmma's N = 32: experts of 32, 33 and 20 rows, and
 * GPT-OSS's and the wide scales' cases again at about 20 and 25 rows an expert. Small enough for compute-sanitizer. */
static const fp4_case cases[] = {
    {"qwen3-30b-a3b", "H 1024, I 384, 16 K steps", 1024, 384, 16, 4, 256, 0, 0, 0, 0, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "H 1536, I 640, 24 K steps", 1536, 640, 8, 2, 160, 0, 0, 0, 0, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "H 160, I 96: K and N tails", 160, 96, 8, 2, 200, 0, 0, 0, 0, 0, {0}, MOE_ACT_SILU_GLU},
    {"gpt-oss-20b", "gptoss interleaved, biases, clamps", 320, 192, 8, 4, 120, 1, 0, 0, 0, 0, {0}, MOE_ACT_GPTOSS_GLU},
    {"llama4-scout", "weight on input, 2I = 640, shared", 128, 320, 4, 1, 200, 0, 1, 0, 0, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "experts of 64, 65, 1, 0 rows", 256, 192, 4, 1, 130, 0, 0, 0, 0, 0, {64, 65, 1, 0},
     MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "quantised shared expert", 256, 128, 8, 2, 100, 0, 2, 0, 0, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "scales past 2^9", 256, 256, 8, 2, 200, 0, 0, 0, 1, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "w8a8 bf16 path", 256, 256, 8, 2, 200, 0, 0, 1, 0, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "experts of 32, 33, 20, 0 rows", 256, 192, 4, 1, 85, 0, 0, 0, 0, 0, {32, 33, 20, 0},
     MOE_ACT_SILU_GLU},
    {"gpt-oss-20b", "gptoss, 20 rows an expert", 320, 192, 8, 4, 40, 1, 0, 0, 0, 0, {0}, MOE_ACT_GPTOSS_GLU},
    {"qwen3-30b-a3b", "scales past 2^9, 25 rows an expert", 256, 256, 8, 2, 100, 0, 0, 0, 1, 0, {0}, MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "zero and subnormal NVFP4 scales", 1024, 384, 8, 2, 160, 0, 0, 0, 0, 1, {0}, MOE_ACT_SILU_GLU},
};

/* The same cases and more with LARGE forced: experts of 128, 129, 64 and 0 rows (a full tile; a tile of one row
 * beside a full one; a tile whose second half holds no row, at wgmma's N = 64; an empty expert), and many rows an
 * expert with K of 16 steps of 128 (the ring's phases four times over). */
static const fp4_case large_cases[] = {
    {"qwen3-30b-a3b", "experts of 128, 129, 64, 0 rows", 256, 192, 4, 1, 321, 0, 0, 0, 0, 0, {128, 129, 64, 0},
     MOE_ACT_SILU_GLU},
    {"qwen3-30b-a3b", "H 2048, I 256, 300 rows an expert", 2048, 256, 4, 2, 600, 0, 0, 0, 0, 0, {0}, MOE_ACT_SILU_GLU},
};

/* Runs the cases with the tile forced on the FP4 wgmma tile and on the other (on, off: the variables that put it on,
 * where the shape needs one, and keep it off). */
static int run_cases(test_env *env, const fp4_case *list, size_t count, moe_expert_tile tile, const char *on,
                     const char *off, int rs_only, uint64_t seed) {
    const char *only = getenv("MOE_TEST_FP4_TILE");
    const int first = !rs_only && only && !strcmp(only, "mma");
    const int last = !rs_only && !(only && (!strcmp(only, "rs") || !strcmp(only, "walk")));
    moe_qformat fmts[LAYER_WEIGHT_FORMATS];
    const char *names[LAYER_WEIGHT_FORMATS];
    layer_weight_formats(fmts, names);
    int bad = 0;
    for (size_t i = 0; i < count; i++)
        for (int f = LAYER_FP4_FIRST; f < LAYER_WEIGHT_FORMATS; f++) {
            const fp4_case *d = &list[i];
            moe_layer_config c = layer_config(d->preset, d->H, d->I, d->E, d->k, d->act);
            if (d->interleaved) c.w13_layout = MOE_W13_INTERLEAVED, c.act_alpha = 1.702f, c.act_limit = 7.0f;
            if (d->shared) c.n_shared = 1, c.shared_intermediate = 96;
            if (d->w8a8) c.act_format = moe_qformat_preset(MOE_QFORMAT_FP8_1X128);
            c.expert_tile = tile;
            const int given = d->counts[0] + d->counts[1] + d->counts[2] + d->counts[3] > 0;
            layer_problem p;
            layer_qweights q, sq;
            layer_problem_random(&p, &c, d->T, given, seed++);
            if (given) layer_problem_route_counts(&p, d->counts);
            if (d->interleaved)
                for (int64_t j = 0; j < p.T * d->H; j++) p.x[j] *= 3.0f; /* past the clamps */
            if (d->big)
                for (int e = 0; e < c.router.n_experts; e += 2) {
                    const int64_t n = (int64_t)2 * d->I * d->H;
                    for (int64_t j = 0; j < n; j++) p.w13[e * n + j] *= 0x1p24f;
                    for (int64_t j = 0; j < n / 2; j++) p.w2[e * (n / 2) + j] *= 0x1p-24f;
                }
            if (d->odd) { /* rows 3 and 9 of every 16, blocks 1 of 4 zero and 0 of 3 times 2^-16 (in w13 and w2) */
                float *w[2] = {p.w13, p.w2};
                const int64_t rows[2] = {(int64_t)c.router.n_experts * 2 * d->I, (int64_t)c.router.n_experts * d->H};
                const int cols[2] = {d->H, d->I};
                for (int m = 0; m < 2; m++)
                    for (int64_t r = 0; r < rows[m]; r++)
                        for (int b = 0; b < cols[m] / 32; b++)
                            for (int j = 0; j < 32; j++) {
                                float *v = &w[m][r * cols[m] + 32 * b + j];
                                if (r % 16 == 3 && b % 4 == 1) *v = 0.0f;
                                if (r % 16 == 9 && b % 3 == 0) *v *= 0x1p-16f;
                            }
            }
            if (layer_problem_quantize(env->cpu, &p, &fmts[f], &q, NULL)) {
                bad++;
                layer_problem_free(&p);
                continue;
            }
            if (d->shared == 2 && layer_problem_quantize_shared(env->cpu, &p, &fmts[f], &sq, NULL)) {
                bad++;
                layer_qweights_free(&q);
                layer_problem_free(&p);
                continue;
            }
            p.qw = &q;
            if (d->shared == 2) p.sqw = &sq;
            for (int old = first; old <= last; old++) {
                const char *set = old ? off : on; /* on: NULL where the shape takes the tile anyway */
                if (set) setenv(set, "1", 1);
                char what[112];
                snprintf(what, sizeof what, "%s, %s, %s%s", names[f], d->what,
                         tile == MOE_EXPERT_TILE_LARGE ? "LARGE " : "",
                         old ? "the other tile" : rs_only ? "wgmma tile, 3 CTAs walking" : "wgmma tile");
                /* W8A8's bf16 path rounds Q(x) and Q(h) to bf16: gpu_layer_w8a8's bounds */
                bad += d->w8a8 ? layer_compare_gpu_tol(env, &p, given, what, 2.5e-2, 1.2e-1)
                               : layer_compare_gpu(env, &p, given, what);
                if (set) unsetenv(set);
            }
            if (d->shared == 2) layer_qweights_free(&sq);
            layer_qweights_free(&q);
            layer_problem_free(&p);
        }
    return bad;
}

TEST_IMPL(gpu_layer_fp4_medium) {
    const char *only = getenv("MOE_TEST_FP4_TILE");
    ASSERT_MSG(!only || !strcmp(only, "rs") || !strcmp(only, "mma") || !strcmp(only, "walk"),
               "MOE_TEST_FP4_TILE must be rs, mma or walk");
    SKIP_WITHOUT_GPU(env);
    const int bad = run_cases(env, cases, sizeof cases / sizeof cases[0], MOE_EXPERT_TILE_MEDIUM, NULL,
                              "MOE_GEMM_NO_FP4_RS", 0, env->seed + 2600);
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}

TEST_IMPL(gpu_layer_fp4_large) {
    const char *only = getenv("MOE_TEST_FP4_TILE");
    const int walk_only = only && !strcmp(only, "walk");
    ASSERT_MSG(!only || !strcmp(only, "rs") || !strcmp(only, "mma") || walk_only,
               "MOE_TEST_FP4_TILE must be rs, mma or walk");
    SKIP_WITHOUT_GPU(env);
    const char *on = "MOE_GEMM_FP4_RS_LARGE", *off = "MOE_GEMM_NO_FP4_RS_LARGE";
    int bad = 0;
    if (!walk_only) {
        bad += run_cases(env, cases, sizeof cases / sizeof cases[0], MOE_EXPERT_TILE_LARGE, on, off, 0,
                         env->seed + 2700);
        bad += run_cases(env, large_cases, sizeof large_cases / sizeof large_cases[0], MOE_EXPERT_TILE_LARGE, on,
                         off, 0, env->seed + 2800);
    }
    /* The wgmma tile's walks with 3 CTAs (of a GEMM, or of a dense group), so that each CTA walks many tiles: a
     * tile's last steps load the next one's first (K of 3 steps of 128 and more; shorter K runs a tile a CTA),
     * tiles at half wgmma's N beside whole ones, the ring's phases across tiles. */
    if (!(only && !strcmp(only, "mma"))) {
        setenv("MOE_GEMM_FP4_RS_CTAS", "3", 1);
        bad += run_cases(env, cases, sizeof cases / sizeof cases[0], MOE_EXPERT_TILE_LARGE, on, off, 1,
                         env->seed + 2900);
        bad += run_cases(env, large_cases, sizeof large_cases / sizeof large_cases[0], MOE_EXPERT_TILE_LARGE, on,
                         off, 1, env->seed + 3000);
        unsetenv("MOE_GEMM_FP4_RS_CTAS");
    }
    ASSERT_EQ_I64(bad, 0);
    return TEST_OK;
}
