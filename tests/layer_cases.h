/* layer_cases.h — a whole MoE layer problem on the host (config, f32 weights and inputs), filled from the
 * oracle's golden cases (tests/data/layer.moeg) or at random, and run on any context in f32 or bf16
 * (tests/layer_cases.c). Shared by the CPU and GPU layer tests. */
#ifndef MOE_TEST_LAYER_CASES_H
#define MOE_TEST_LAYER_CASES_H

#include "test.h"

/* A problem's routed expert weights quantised on the host (layer_problem_quantize): the buffers of
 * moe_layer_weights' w13/w2, w13_scale/w2_scale and, for NVFP4, one global scale per expert. */
typedef struct layer_qweights {
    moe_qformat f;
    void *data[2], *scale[2];     /* w13, w2 */
    float *global[2];             /* (E) NVFP4, else NULL */
    size_t data_bytes[2], scale_bytes[2];
    int scale_offset;             /* layer_run puts the scales this many bytes (0-3) past an aligned allocation, as
                                   * a caller's view into a larger buffer may place them */
} layer_qweights;

typedef struct layer_problem {
    moe_layer_config c;     /* pointers inside (router.bias) are host pointers, replaced on upload */
    int64_t T;
    float *x;               /* (T, H) */
    float *logits;          /* (T, E) or NULL */
    float *gate, *gate_bias; /* (E, H), (E) or NULL */
    float *bias;            /* (E) router correction bias or NULL */
    float *w13, *w2;        /* (E, 2I, H), (E, H, I) */
    float *b13, *b2;        /* (E, 2I), (E, H) or NULL */
    float *sw13, *sw2;      /* (S, 2Is, H), (S, H, Is) or NULL */
    float *sgate;           /* (H) or NULL */
    float *want;            /* (T, H) golden output, or NULL */
    int32_t *hash_table;    /* hash routing: (c.router.hash_vocab, k) distinct experts a row, or NULL */
    int32_t *token_ids;     /* hash routing: (T) in [0, hash_vocab), or NULL */
    const layer_qweights *qw; /* the routed experts quantised (layer_run uploads these instead of w13, w2), or NULL */
    const layer_qweights *sqw; /* the shared experts quantised (instead of sw13, sw2), or NULL */
} layer_problem;

/* Golden case `name` of layer.moeg; 0 on success. */
int layer_problem_from_golden(const golden *g, const char *name, layer_problem *p);
/* Random weights of unit-scale outputs and random x for config c (c.router.bias: the values are drawn here when
 * it is non-NULL; hash routing: the table and the token ids too); logits are drawn as well when with_logits (a few
 * rows entirely NaN: all slots -1). */
void layer_problem_random(layer_problem *p, const moe_layer_config *c, int64_t T, int with_logits, uint64_t seed);
/* Top-1 logits (p->logits, drawn with with_logits; E <= 512) that send counts[e] of p's T = sum counts tokens to
 * expert e, interleaved. */
void layer_problem_route_counts(layer_problem *p, const int64_t *counts);
void layer_problem_free(layer_problem *p);

/* Runs p on ctx with weights and x in dtype (bf16: rounded from the f32 values); use_logits passes p->logits
 * instead of computing them from the gate; capture (GPU) records the forward in a CUDA graph and replays it twice,
 * the workspace filled with 0xFF bytes before the second: out is the second's, which must match a plain run's bits
 * (a forward keeps no state in its workspace; api_fuzz checks the same on the CPU). out (T, H) f32. Returns MOE_OK
 * or the failing call's status (its message in the context). */
moe_status layer_run(moe_ctx *ctx, const layer_problem *p, moe_dtype dtype, int use_logits, float *out,
                     int capture);

/* Case `name` of layer_quant.moeg: the problem (no w13, w2) and its experts' codes and scales in q[0], which p->qw
 * then points at, and where the case has them its shared experts' in q[1], for p->sqw (free both with
 * layer_qweights_free); 0 on success. */
int layer_quant_from_golden(const golden *g, const char *name, layer_problem *p, layer_qweights q[2]);
/* Runs every case of layer_quant.moeg on ctx in dtype (given logits) and compares with the oracle's output;
 * returns the number of cases beyond tol (relative L2; tol_w8a8 for the W8A8 cases), or -1 when the file cannot
 * be read. */
int layer_run_quant_golden(test_env *env, moe_ctx *ctx, moe_dtype dtype, double tol, double tol_w8a8);

/* Runs every case of layer.moeg on ctx in dtype and compares with the HF output; returns the number of cases
 * beyond tol (relative L2), or -1 when the file cannot be read. */
int layer_run_golden(test_env *env, moe_ctx *ctx, moe_dtype dtype, int use_logits, double tol);

/* Quantises p's w13 and w2 (each expert a matrix of its own, so NVFP4 gets a global scale per expert) in format f
 * on the CPU context; 0 on success. deq (optional) receives the f32 values the quantised w13 and w2 stand for
 * (moe_dequantize's; the caller frees them). */
int layer_problem_quantize(moe_ctx *cpu, const layer_problem *p, const moe_qformat *f, layer_qweights *q,
                           float *deq[2]);
/* The same for p's shared experts (sw13, sw2: each shared expert a matrix of its own), for p->sqw. */
int layer_problem_quantize_shared(moe_ctx *cpu, const layer_problem *p, const moe_qformat *f, layer_qweights *q,
                                  float *deq[2]);
void layer_qweights_free(layer_qweights *q);
/* The expert weight formats the layer takes, as real checkpoints ship them (FP8 per row, 128x128 with f32 or E8M0
 * scales, 1x128, MXFP8, MXFP4, NVFP4 with either global convention): fills f[] and names[] (either may be NULL)
 * and returns how many (LAYER_WEIGHT_FORMATS). */
#define LAYER_WEIGHT_FORMATS 8
/* The FP4 formats are the list's last three: MXFP4, NVFP4 with the decode global, NVFP4 with the encode global. */
#define LAYER_FP4_FIRST (LAYER_WEIGHT_FORMATS - 3)
int layer_weight_formats(moe_qformat *f, const char **names);

/* A device copy of n host floats in dtype (f32, or bf16 rounded); NULL for NULL. */
void *layer_upload_as(moe_ctx *ctx, const float *v, int64_t n, moe_dtype dtype);

/* Compares layer outputs (T, H): gpu against cpu as layer_compare_gpu_tol says, and again against gpu bit for bit;
 * act_quantized: the layer's act_format is set. Prints one line; 1 when a check fails, else 0. */
int layer_compare_outputs(const float *cpu, const float *gpu, const float *again, int64_t T, int64_t H,
                          int act_quantized, const char *what, double tol_l2, double tol_token);
/* Runs p on the CPU and the GPU context of env in bf16 and compares: relative L2 over all outputs within tol_l2,
 * over each token within tol_token (of the norm of its row, or absolutely when that is 0), the reference not all
 * zeros, and a second GPU run, captured in a CUDA graph and replayed, bit for bit. With FP8 activations (act_format)
 * the one token most past tol_l2 is left out of the overall figure (h's requantisation: see the function).
 * Prints one line; returns 1 when a check fails, else 0. layer_compare_gpu: tolerances 1e-2 and 3e-2. */
int layer_compare_gpu_tol(test_env *env, const layer_problem *p, int use_logits, const char *what, double tol_l2,
                          double tol_token);
int layer_compare_gpu(test_env *env, const layer_problem *p, int use_logits, const char *what);
/* p (given logits; quantised weights where p->qw) on the GPU twice in bf16, the second time with `var` set in the
 * environment (a kernel path's switch), the first captured where `capture` (layer_run): 1 unless both runs succeed
 * with the same output bits (prints why). */
int layer_same_bits_with_env(test_env *env, const layer_problem *p, const char *var, int capture, const char *what);
/* A bf16 router weight against its f32 copy: p (its gate and shared gate rounded to bf16 values here, given
 * no logits) run on ctx in dtype with config.gate_dtype f32 and then bf16 must give the same output bits, and not
 * all zeros. Prints one line; returns 1 when a check fails, else 0. */
int layer_gate_bf16_same(moe_ctx *ctx, layer_problem *p, moe_dtype dtype, const char *what);

/* A bf16 layer config of the router preset's kind with these shapes and activation (nothing else set). */
moe_layer_config layer_config(const char *preset, int H, int I, int E, int k, moe_activation act);

/* ||a - b|| / ||b|| (0 when both are 0). */
double test_rel_l2(const float *a, const float *b, int64_t n);

#endif
