/* tile_table.cu — the lookup in the measured tile table (tile_table.cuh); the rows are in tile_table.inc. */
#include <string.h>

#include "cuda/moe/tile_table.cuh"

namespace {

const moe_tile_row kRows[] = {
#include "cuda/moe/tile_table.inc"
    {0, NULL, 0, 0, 0, 0, 0, MOE_EXPERT_TILE_AUTO}, /* the end */
};

} // namespace

const char *moe__tile_weights_name(const moe_layer_config *c) {
    if (!c->expert_format.kind) return "bf16";
    if (c->act_format.kind) /* FP8 inputs: the names of `moe bench layer --dtype` */
        switch (c->expert_format.kind) {
        case MOE_QFORMAT_FP8_128X128: return "w8a8";
        case MOE_QFORMAT_MXFP4: return "w4a8";
        case MOE_QFORMAT_NVFP4: return "w4a8-nvfp4";
        default: return "";
        }
    switch (c->expert_format.kind) {
    case MOE_QFORMAT_FP8_128X128: return "fp8";
    case MOE_QFORMAT_FP8_ROW: return "fp8-row";
    case MOE_QFORMAT_MXFP8: return "mxfp8";
    case MOE_QFORMAT_MXFP4: return "mxfp4";
    case MOE_QFORMAT_NVFP4: return "nvfp4";
    default: return "";
    }
}

moe_expert_tile moe__tile_lookup(const moe_tile_row *rows, int sm, const char *weights, int hidden, int intermediate,
                                 int experts, int top_k, int64_t tokens) {
    moe_expert_tile last = MOE_EXPERT_TILE_AUTO; /* the key's row with the largest max_tokens, for T above them all */
    int64_t last_max = -1, best_max = INT64_MAX;
    moe_expert_tile best = MOE_EXPERT_TILE_AUTO; /* the key's row with the smallest max_tokens >= T */
    for (const moe_tile_row *r = rows; r->weights; r++) {
        if (r->sm != sm || r->hidden != hidden || r->intermediate != intermediate || r->experts != experts ||
            r->top_k != top_k || strcmp(r->weights, weights))
            continue;
        if (r->max_tokens >= tokens && r->max_tokens < best_max) best = r->tile, best_max = r->max_tokens;
        if (r->max_tokens > last_max) last = r->tile, last_max = r->max_tokens;
    }
    return best != MOE_EXPERT_TILE_AUTO ? best : last;
}

moe_expert_tile moe__tile_table_lookup(int sm, const char *weights, int hidden, int intermediate, int experts,
                                       int top_k, int64_t tokens) {
    return moe__tile_lookup(kRows, sm, weights, hidden, intermediate, experts, top_k, tokens);
}
