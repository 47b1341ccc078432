/* tile_table.cuh — the measured part of the routed GEMMs' tile choice (docs/layer.md §7): rows of tile_table.inc,
 * each the fastest tile `moe tune` found for one model shape (H, I, E, k), one weight format and the token counts
 * up to its max_tokens on one GPU generation. The layer asks the table first and falls back on its rules (the
 * rows a touched expert gets) where no row has the shape. A lookup is a scan of a few hundred rows per forward
 * at most: no JIT, no timing at run time. */
#ifndef MOE_CUDA_TILE_TABLE_CUH
#define MOE_CUDA_TILE_TABLE_CUH

#include <stdint.h>

#include "moe.h"

/* One measured choice. sm: 90 for the Hopper kernels (wgmma, TMA, FP8 tensor cores), 80 for the portable ones;
 * weights: the name `moe bench layer --dtype` and `moe tune` use ("bf16", "fp8", "fp8-row", "mxfp8", "mxfp4",
 * "nvfp4", "w8a8"). A row covers the token counts above the previous row of the same key, up to max_tokens;
 * the last row of a key also covers every T above it. */
typedef struct moe_tile_row {
    int sm;
    const char *weights;
    int hidden, intermediate, experts, top_k;
    int64_t max_tokens;
    moe_expert_tile tile;
} moe_tile_row;

#ifdef __cplusplus
extern "C" {
#endif

/* The weights' name for the layer config c, as above ("" for formats no row can name). */
const char *moe__tile_weights_name(const moe_layer_config *c);

/* The tile of rows (ended by a row with weights NULL) for T tokens, or MOE_EXPERT_TILE_AUTO where no row has the
 * key. */
moe_expert_tile moe__tile_lookup(const moe_tile_row *rows, int sm, const char *weights, int hidden, int intermediate,
                                 int experts, int top_k, int64_t tokens);

/* The same in the shipped table (tile_table.inc). */
moe_expert_tile moe__tile_table_lookup(int sm, const char *weights, int hidden, int intermediate, int experts,
                                       int top_k, int64_t tokens);

#ifdef __cplusplus
}
#endif

#endif /* MOE_CUDA_TILE_TABLE_CUH */
