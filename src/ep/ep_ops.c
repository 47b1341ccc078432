/* ep_ops.c — the data movement steps of expert parallelism (ep.h) on the CPU, and the dispatch to the GPU's. */
#include <string.h>

#include "ep/ep.h"

#ifdef MOE_WITH_CUDA
#define EP_ON_GPU(ep) ((ep)->layer->ctx->backend == MOE_BACKEND_CUDA)
#endif

moe_status moe__ep_rank_of(moe_ep *ep, const int32_t *ids, int64_t n, int32_t *dst, void *stream) {
    const int per_rank = ep->layer->n_local;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep)) return moe__cuda_ep_rank_of(ep->layer->ctx, ids, n, per_rank, dst, stream);
#endif
    (void)stream;
    for (int64_t i = 0; i < n; i++) dst[i] = ids[i] >= 0 ? ids[i] / per_rank : -1;
    return MOE_OK;
}

moe_status moe__ep_token_dst(moe_ep *ep, const int32_t *dst, int64_t T, int32_t *tok_dst, void *stream) {
    const int k = ep->c.layer.router.top_k, N = ep->comm->size;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep)) return moe__cuda_ep_token_dst(ep->layer->ctx, dst, T, k, N, tok_dst, stream);
#endif
    (void)stream;
    for (int64_t t = 0; t < T; t++)
        for (int d = 0; d < N; d++) {
            int any = 0;
            for (int j = 0; j < k; j++) any |= dst[t * k + j] == d;
            tok_dst[t * N + d] = any ? d : -1;
        }
    return MOE_OK;
}

moe_status moe__ep_pack(moe_ep *ep, const int32_t *rowsrc, int stride, const int64_t *n_rows, int64_t n_max,
                        const void *x, const void *scales, const int32_t *ids, const float *w, void *out,
                        void *stream) {
    const moe_ep_record *r = &ep->rec;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep))
        return moe__cuda_ep_pack(ep->layer->ctx, r, rowsrc, stride, n_rows, n_max, x, scales, ids, w, out, stream);
#endif
    (void)stream;
    const int64_t rows = n_rows ? *n_rows : n_max;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t t = rowsrc ? rowsrc[i] / stride : i;
        char *o = (char *)out + i * r->bytes;
        memcpy(o + r->x_off, (const char *)x + t * r->x_bytes, (size_t)r->x_bytes);
        if (r->s_bytes) memcpy(o + r->s_off, (const char *)scales + t * r->s_bytes, (size_t)r->s_bytes);
        memcpy(o + r->id_off, ids + t * (r->id_bytes / 4), (size_t)r->id_bytes);
        memcpy(o + r->w_off, w + t * (r->id_bytes / 4), (size_t)r->id_bytes);
    }
    return MOE_OK;
}

moe_status moe__ep_unpack(moe_ep *ep, const void *in, int64_t n, void *x, void *scales, int32_t *ids, float *w,
                          void *stream) {
    const moe_ep_record *r = &ep->rec;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep)) return moe__cuda_ep_unpack(ep->layer->ctx, r, in, n, x, scales, ids, w, stream);
#endif
    (void)stream;
    for (int64_t i = 0; i < n; i++) {
        const char *p = (const char *)in + i * r->bytes;
        memcpy((char *)x + i * r->x_bytes, p + r->x_off, (size_t)r->x_bytes);
        if (r->s_bytes) memcpy((char *)scales + i * r->s_bytes, p + r->s_off, (size_t)r->s_bytes);
        memcpy(ids + i * (r->id_bytes / 4), p + r->id_off, (size_t)r->id_bytes);
        memcpy(w + i * (r->id_bytes / 4), p + r->w_off, (size_t)r->id_bytes);
    }
    return MOE_OK;
}

moe_status moe__ep_gather(moe_ep *ep, const void *y, const int32_t *slot_row, const int32_t *rowsrc,
                          const int64_t *n_rows, int64_t n_max, int64_t row_bytes, void *out, void *stream) {
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep))
        return moe__cuda_ep_gather(ep->layer->ctx, y, slot_row, rowsrc, n_rows, n_max, row_bytes, out, stream);
#endif
    (void)stream, (void)n_max, (void)ep;
    for (int64_t i = 0; i < *n_rows; i++)
        memcpy((char *)out + i * row_bytes, (const char *)y + (int64_t)slot_row[rowsrc[i]] * row_bytes,
               (size_t)row_bytes);
    return MOE_OK;
}

moe_status moe__ep_partial(moe_ep *ep, const void *y, const int32_t *slot_row, const float *w, int64_t n,
                           float *part, void *stream) {
    const moe_layer_config *c = &ep->c.layer;
    const int k = c->router.top_k, H = c->hidden;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep))
        return moe__cuda_ep_partial(ep->layer->ctx, y, slot_row, w, k, c->router.weight_on_input, n, H, part, stream);
#endif
    (void)stream;
    const float *yf = y;
#pragma omp parallel for num_threads(ep->layer->ctx->n_threads) schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *acc = part + t * H;
        for (int i = 0; i < H; i++) acc[i] = 0.0f;
        for (int j = 0; j < k; j++) {
            const int32_t r = slot_row[t * k + j];
            if (r < 0) continue;
            const float wj = c->router.weight_on_input ? 1.0f : w[t * k + j];
            for (int i = 0; i < H; i++) acc[i] += wj * yf[(int64_t)r * H + i];
        }
    }
    return MOE_OK;
}

moe_status moe__ep_finish(moe_ep *ep, const void *x, const float *sum, int64_t T, const moe_layer_scratch *ls,
                          void *out, void *stream) {
    const moe_layer_config *c = &ep->c.layer;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep))
        return moe__cuda_ep_finish(ep->layer->ctx, sum, c->n_shared ? ep->scratch + ls->shared_y : NULL, c->n_shared,
                                   c->shared_gate ? (const float *)(ep->scratch + ls->shared_scale) : NULL, T,
                                   c->hidden, out, stream);
#endif
    (void)stream, (void)ls;
    /* the CPU combine over one unit-weight row a token (0 + 1 * sum = sum exactly) adds the shared experts */
    const int k = c->router.top_k;
    int32_t *slot_row = (int32_t *)(ep->scratch + ep->ls.slot_row);
    float *ones = (float *)(ep->scratch + ep->ls.weights);
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < k; j++) slot_row[t * k + j] = j == 0 ? (int32_t)t : -1, ones[t * k + j] = 1.0f;
    return moe__cpu_layer_combine(ep->layer, x, T, sum, slot_row, ones, out);
}

moe_status moe__ep_pack_fixed(moe_ep *ep, const int32_t *rowsrc, int stride, const int64_t *offsets, const void *x,
                              const void *scales, const int32_t *ids, const float *w, void *out, void *stream) {
    const moe_ep_record *r = &ep->rec;
    const int N = ep->comm->size;
    const int64_t M = ep->c.max_tokens;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep))
        return moe__cuda_ep_pack_fixed(ep->layer->ctx, r, rowsrc, stride, offsets, N, M, x, scales, ids, w, out, stream);
#endif
    for (int d = 0; d < N; d++) {
        const int64_t count = offsets[d + 1] - offsets[d];
        for (int64_t i = count; i < M; i++) memset((char *)out + (d * M + i) * r->bytes + r->id_off, 0xFF,
                                                   (size_t)r->id_bytes);
        if (count) MOE_TRY(moe__ep_pack(ep, rowsrc + offsets[d], stride, &count, count, x, scales, ids, w,
                                        (char *)out + d * M * r->bytes, stream));
    }
    return MOE_OK;
}

moe_status moe__ep_source_of(moe_ep *ep, const int32_t *ids, int64_t n, int64_t per_source, int32_t *dst,
                             void *stream) {
    const int k = ep->c.layer.router.top_k, per_rank = ep->layer->n_local, me = ep->comm->rank;
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep))
        return moe__cuda_ep_source_of(ep->layer->ctx, ids, n, k, per_rank, me, per_source, dst, stream);
#endif
    (void)stream;
    for (int64_t i = 0; i < n * k; i++)
        dst[i] = ids[i] >= 0 && ids[i] / per_rank == me ? (int32_t)(i / k / per_source) : -1;
    return MOE_OK;
}

moe_status moe__ep_remap(moe_ep *ep, const int32_t *row, const int32_t *group, const int64_t *offsets, int64_t n,
                         int64_t cap, int32_t *out, void *stream) {
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep)) return moe__cuda_ep_remap(ep->layer->ctx, row, group, offsets, n, cap, out, stream);
#endif
    (void)ep, (void)stream;
    for (int64_t i = 0; i < n; i++)
        out[i] = row[i] >= 0 ? (int32_t)(group[i] * cap + row[i] - offsets[group[i]]) : -1;
    return MOE_OK;
}

moe_status moe__ep_scatter(moe_ep *ep, const void *y, const int32_t *src_row, const int32_t *pos, int64_t n,
                           int64_t row_bytes, void *out, void *stream) {
#ifdef MOE_WITH_CUDA
    if (EP_ON_GPU(ep)) return moe__cuda_ep_scatter(ep->layer->ctx, y, src_row, pos, n, row_bytes, out, stream);
#endif
    (void)stream, (void)ep;
    for (int64_t i = 0; i < n; i++)
        if (pos[i] >= 0)
            memcpy((char *)out + (int64_t)pos[i] * row_bytes, (const char *)y + (int64_t)src_row[i] * row_bytes,
                   (size_t)row_bytes);
    return MOE_OK;
}
