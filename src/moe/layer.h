/* layer.h — the MoE layer's state and its backends. */
#ifndef MOE_MOE_LAYER_H
#define MOE_MOE_LAYER_H

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_layer {
    moe_ctx *ctx;
    moe_layer_config c;
    moe_layer_weights w;
    /* CUDA, with shared experts: they run on a stream of their own beside the routing and the routed experts,
     * forked from and joined back to the caller's stream by these events (one forward at a time per layer) */
    void *side_stream, *fork_event, *join_event;
};

/* The GPU's grouped GEMMs work on tiles of 16, 64 or 128 rows (chosen per forward from T); the permutation pads
 * each expert's rows to the tile, so the scratch holds rows for the largest. */
#define MOE_LAYER_MAX_TILE_M 128

/* Rows (of E + 1 floats) the GPU's gate logits may need for partial sums over slices of H: the kernels choose
 * splits s with s * T <= min(ceil(H / 128) * T, 16896 + T), a bound that grows with T. */
static inline int64_t moe__gate_partial_rows(int64_t T, int H) {
    const int64_t a = (int64_t)((H + 127) / 128) * T, b = 16896 + T;
    return a < b ? a : b;
}

/* Scratch of one forward of T tokens, as offsets into the caller's workspace (a bump allocator: sizing and
 * carving follow the same code). The CPU uses the first three; the GPU all. */
typedef struct moe_layer_scratch {
    size_t logits, ids, weights; /* (T, E) f32, (T, k) int32, (T, k) f32 */
    size_t counts, offsets;      /* (E) int32, (E + 1) int64: the contiguous permutation */
    size_t row_src, slot_row;    /* (rows) int32, (T, k) int32 */
    size_t permute, permute_bytes; /* moe_permute's own scratch */
    size_t h, y;                 /* (rows, I) bf16 activations, (rows, H) bf16 expert outputs */
    size_t shared_scale;         /* (T) f32: sigmoid(x . shared_gate) */
    size_t gate_partial;         /* (moe__gate_partial_rows, E + 1) f32 */
    size_t shared_h, shared_y;   /* (S, T, Is) bf16, (S, T, H) bf16 */
    int64_t rows;                /* row capacity of the permutation: T k + E (MAX_TILE_M - 1) */
    size_t bytes;                /* total */
} moe_layer_scratch;

moe_layer_scratch moe__layer_scratch(const moe_layer *l, int64_t T);

moe_status moe__cpu_layer_forward(moe_layer *l, const moe_layer_io *io, void *workspace);
#ifdef MOE_WITH_CUDA
moe_status moe__cuda_layer_init(moe_layer *l);
void moe__cuda_layer_fini(moe_layer *l);
moe_status moe__cuda_layer_forward(moe_layer *l, const moe_layer_io *io, void *workspace, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_MOE_LAYER_H */
