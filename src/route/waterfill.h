/* waterfill.h — the per-token rule of docs/routing.md §5, written once for host and device: both backends run
 * this code on the same integers, so they agree by construction; the oracle checks the rule itself. */
#ifndef MOE_ROUTE_WATERFILL_H
#define MOE_ROUTE_WATERFILL_H

#include "core/internal.h"

/* Whether a routed id counts: in [0, E). -1 and anything outside (a caller's bad id) are skipped, never remapped to
 * a slot past the ranks' (docs/routing.md §5). */
static inline MOE_HD bool moe__wf_valid(int32_t id, const moe_waterfill_config *c) {
    return id >= 0 && id < c->n_experts;
}

/* The rank of a valid routed id, clamped to the ranks. */
static inline MOE_HD int moe__wf_rank(int32_t id, int epr, int world) {
    int r = id / epr;
    return r < 0 ? 0 : r >= world ? world - 1 : r;
}

/* Chooses the rank that runs token t's shared expert. ids: the token's k routed ids; load: per rank. */
static inline MOE_HD int moe__wf_choose(const moe_waterfill_config *c, const int32_t *ids, const int64_t *load,
                                        int64_t target, int64_t t) {
    const int world = c->world, src = c->source_rank, epr = c->n_experts / c->world;
    uint32_t cand = c->all_ranks ? (world >= 32 ? 0xFFFFFFFFu : (1u << world) - 1u) : 1u << src;
    int best = src;
    int64_t best_count = load[src];
    for (int j = 0; j < c->top_k && !c->all_ranks; j++) {
        if (!moe__wf_valid(ids[j], c)) continue;
        const int r = moe__wf_rank(ids[j], epr, world);
        cand |= 1u << r;
        if (load[r] * 11 < best_count * 10) best = r, best_count = load[r];
    }
    for (int r = 0; r < world && c->all_ranks; r++)
        if (load[r] * 11 < best_count * 10) best = r, best_count = load[r];
    int64_t total = 0;
    for (int r = 0; r < world; r++) {
        if (!(cand >> r & 1u)) continue;
        int64_t w = target > load[r] ? target - load[r] : 0;
        total += r == src ? w : w * 10 / 11;
    }
    if (total <= 0) return best;
    const uint32_t seed = ((uint32_t)t ^ ((uint32_t)src * 0x9E3779B9u)) * 1664525u + 1013904223u;
    const int64_t u = (int64_t)(seed % (uint64_t)total);
    int64_t cum = 0;
    for (int r = 0; r < world; r++) {
        if (!(cand >> r & 1u)) continue;
        int64_t w = target > load[r] ? target - load[r] : 0;
        if (r != src) w = w * 10 / 11;
        if (u >= cum && u < cum + w) return r;
        cum += w;
    }
    return best; /* not reached: u < total */
}

/* Writes token t's k + 1 output slots. */
static inline MOE_HD void moe__wf_token(const moe_waterfill_config *c, const int32_t *ids, const float *w,
                                        const int64_t *load, int64_t target, int64_t n_tokens, int64_t t,
                                        int32_t *out_ids, float *out_w) {
    const int k = c->top_k, epr = c->n_experts / c->world;
    int valid = 0;
    for (int j = 0; j < k; j++) {
        const int32_t id = ids[j];
        const bool ok = moe__wf_valid(id, c);
        valid |= ok;
        out_ids[j] = ok ? id + id / epr : -1;
        out_w[j] = ok ? w[j] : 0.0f;
    }
    const int rank = n_tokens < c->min_tokens ? c->source_rank : moe__wf_choose(c, ids, load, target, t);
    out_ids[k] = valid ? rank * (epr + 1) + epr : -1;
    out_w[k] = !valid ? 0.0f : c->routed_scaling_factor != 0.0f ? 1.0f / c->routed_scaling_factor : 1.0f;
}

/* The per-rank load target: the override when > 0, else ceil((sum + sum / k) / world). */
static inline MOE_HD int64_t moe__wf_target(const moe_waterfill_config *c, const int64_t *load) {
    if (c->target > 0) return c->target;
    int64_t sum = 0;
    for (int r = 0; r < c->world; r++) sum += load[r];
    return (sum + sum / c->top_k + c->world - 1) / c->world;
}

#endif /* MOE_ROUTE_WATERFILL_H */
