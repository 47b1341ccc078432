/* fuzz.h — what the API fuzz tests share (fuzz.c; the ops in test_fuzz.c and test_fuzz_ep.c): a random stream,
 * buffers in the context's memory sized to the byte, the checks on a call's outcome, and a model's layer at small
 * shapes with some fields changed. */
#ifndef MOE_TESTS_FUZZ_H
#define MOE_TESTS_FUZZ_H

#include "test.h"

typedef struct fuzz {
    uint64_t state;
    moe_ctx *ctx;
    int gpu;
    moe_comm *comm;       /* one rank on ctx, for the expert-parallel layer */
    long ok, failed, bad; /* calls that succeeded, that failed with a message, property violations */
    long compared;        /* fused route + permute steps compared with the two ops */
    long ep_compared;     /* expert-parallel forwards compared with the layer */
    long replayed;        /* layer forwards run again over a poisoned workspace and compared */
    void *held[48];       /* this op's buffers in the context's memory */
    int n_held;
} fuzz;

/* bytes in the context's memory (zeros, or a copy of init): malloc'd to the byte on the CPU, so that ASan sees
 * one past the end; NULL when it cannot be had (the op then passes NULL on, which calls must reject). */
void *fz_buf(fuzz *f, size_t bytes, const void *init);
/* bytes of a buffer of fz_buf back to the host; nonzero on failure. */
int fz_get(fuzz *f, void *host, const void *buf, size_t bytes);
/* Frees the op's buffers (on the GPU after its work is done, which must still succeed). */
void fz_release(fuzz *f);

uint64_t fz_next(fuzz *f);
int fz_pick(fuzz *f, const int *v, int n);
#define PICK(f, ...) fz_pick(f, (const int[]){__VA_ARGS__}, (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int)))
/* A float that is often special: NaN, +-Inf, 0, else a small value. */
float fz_float(fuzz *f);

/* A call's status counted: a failure must name its problem. */
void fz_status(fuzz *f, moe_status s, const char *what);
/* The n int32 of buf (context memory) are all in -1 .. hi - 1. */
void fz_range(fuzz *f, const char *what, const int32_t *buf, int64_t n, int64_t hi);
/* The bytes of two buffers of fz_buf are the same (a property violation otherwise); 0 if so. */
int fz_same(fuzz *f, const char *what, const void *a, const void *b, size_t bytes);

extern const char *const fz_models[9];

/* A model's layer at small shapes with fields perhaps changed (sizes, dtype, activation, layout, shared experts,
 * formats); dims are the sizes its buffers take, sane where the config's are not. */
typedef struct fz_dims {
    int64_t H, I, E, S, Is;
} fz_dims;
fz_dims fz_layer_config(fuzz *f, moe_layer_config *c);
/* Weights for c in the context's memory, each a buffer sometimes missing: `slots` routed matrices (E for a layer;
 * an expert-parallel layer's slots, slot p a copy of expert p mod E) of small random values, or of random codes
 * and scales with no NaN or Inf among them for a quantised format. */
void fz_layer_weights(fuzz *f, const moe_layer_config *c, const fz_dims *d, int64_t slots, moe_layer_weights *w);

/* Inputs of T tokens for a layer of c, in the context's memory: x (T, Hx) in c's dtype (Hx is H but for a test of
 * a wrong width), logits (T, E) f32, out (T, H), token ids for hash routers (some outside the table). */
typedef struct fz_inputs {
    moe_tensor x, logits, out;
    const int32_t *token_ids;
} fz_inputs;
void fz_layer_inputs(fuzz *f, const moe_layer_config *c, const fz_dims *d, int64_t T, int64_t Hx, fz_inputs *in);
/* Load counters for a forward's io: none mostly, else of 1 or 2 layers of E or E + 1 experts, and a layer index
 * in or out of range; the caller destroys them (moe_expert_stats_destroy accepts NULL). */
moe_expert_stats *fz_stats(fuzz *f, const fz_dims *d, int *stats_layer);

void fuzz_route_permute(fuzz *f);
void fuzz_quantize(fuzz *f);
void fuzz_convert_swizzle(fuzz *f);
void fuzz_layer(fuzz *f);
void fuzz_balance(fuzz *f);
void fuzz_ep(fuzz *f);

#endif
