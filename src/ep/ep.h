/* ep.h — expert parallelism: the layer split over the ranks of a comm (docs/ep.md), its buffers and the data
 * movement steps, each on the CPU (ep_ops.c) and the GPU (cuda/ep/ep.cu). */
#ifndef MOE_EP_EP_H
#define MOE_EP_EP_H

#include "ep/comm.h"
#include "moe/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One token on the wire: its x row (layer dtype, or FP8 codes then the 1x128 groups' f32 scales), its k expert
 * ids and k weights; every part starts on 16 bytes. */
typedef struct moe_ep_record {
    int64_t x_bytes, s_bytes, id_bytes; /* per token: x (or codes), scales (0 without FP8), ids = weights = 4k */
    int64_t x_off, s_off, id_off, w_off, bytes;
} moe_ep_record;

enum { EP_MAX_MARKS = 16 };

/* A rank's buffers, in its context's memory, carved once for max_tokens M, N ranks (see ep.c for each one's
 * shape); host_* are host memory. */
struct moe_ep {
    moe_comm *comm;
    moe_ep_config c;
    moe_layer *layer;    /* the whole config; its weights are this rank's experts [expert_begin, + n_local) */
    moe_ep_record rec;
    int64_t ybytes;      /* bytes of an element of an expert output row: 4 (CPU, f32) or 2 (GPU, bf16) */
    moe_layer_scratch ls; /* route, gate, shared experts for M tokens (offsets into scratch) */
    moe_layer_scratch xs; /* GPU: the routed experts for N M tokens */
    void *mem;           /* one allocation */
    size_t mem_bytes;
    char *scratch, *experts_scratch;
    void *xq, *xs_scales;                   /* FP8 wire: (M, H) codes, (M, ceil(H / 128)) f32 scales */
    int32_t *dst, *tok_dst;                 /* (M, k) rank of each slot, (M, N) rank of each token or -1 */
    int32_t *slot_counts, *tok_counts;      /* (N) */
    int64_t *slot_off, *tok_off;            /* (N + 1) */
    int32_t *slot_rowsrc, *slot_row;        /* (M k) rows of the by-rank order, (M, k) each slot's row there */
    int32_t *tok_rowsrc, *tok_slot_row;     /* (M N), (M N) */
    void *permute;                          /* moe_permute's scratch, the largest of the three uses */
    size_t permute_bytes;
    void *send, *recv;                      /* (M N) records, (N M) records */
    void *recv_x, *recv_q, *recv_scales;    /* (N M, H) layer dtype; FP8: codes and scales as they came */
    int32_t *recv_ids, *recv_dst;           /* (N M, k) */
    float *recv_w;                          /* (N M, k) */
    int32_t *ret_counts;                    /* (N) */
    int64_t *ret_off;                       /* (N + 1) */
    int32_t *ll_pos;                        /* low latency: (N M k) rows' places in y_ret's fixed blocks */
    int32_t *ll_slot_row;                   /* low latency: (M k) each slot's row in y_home's fixed blocks */
    int32_t *ret_rowsrc, *ret_slot_row;     /* (N M k) */
    void *y_ret;                            /* (N M k, H) expert outputs to send back, in their order */
    void *y_home;                           /* (M k, H) expert outputs of this rank's tokens, by-rank order
                                             * (low latency: (N M k, H), a block of M k rows a rank) */
    int64_t *hdr_send, *hdr_recv;           /* the counts of a forward: (2N + 3) [T, tok_off, slot_off], (N, 2N + 3) */
    int64_t *host;                          /* host: hdr_send, hdr_recv (N, 3 each) and the byte plans */
    float *ag_part;                         /* allgather backend: (N Tmax, H) f32 partial sums */
    float *ag_sum;                          /* (M, H) f32 */
    /* low latency between the GPUs of one process (cuda/ep/p2p.cu): flags (3N + 1 int64), the peers' receive
     * buffers, y_home and flags (3 N pointers), the wait's error flag (host-mapped, and its device address) */
    int p2p;
    int64_t *p2p_flags;
    void **p2p_ptrs;
    int *p2p_error, *p2p_error_dev;
    /* EPLB: R slots, S = R / N on each rank; the logical expert of each slot (host); the replica tables
     * (E, X = R - E + 1) and (E) on the device; the routed ids mapped to slots (M, k); load counters */
    int R, S, X, mapped;
    int32_t *phy2log, *log2phy_host, *logcnt_host;
    int32_t *log2phy, *logcnt, *ids_phys;
    moe_expert_stats *stats;
    /* profiling: a mark at the end of each phase, in order (GPU: CUDA events; CPU: the host clock) */
    int profiling, n_marks;
    int mark_phase[EP_MAX_MARKS];
    void *events[EP_MAX_MARKS];
    double host_ms[EP_MAX_MARKS];
    moe_ep_timing last;                     /* the bytes and tokens of the last forward */
};

enum { EP_PHASE_START = -1, EP_PHASE_ROUTE, EP_PHASE_PACK, EP_PHASE_COUNTS, EP_PHASE_DISPATCH, EP_PHASE_EXPERTS,
       EP_PHASE_COMBINE, EP_PHASE_FINISH };
/* Marks the end of `phase` on stream when profiling (EP_PHASE_START opens a forward). */
void moe__ep_mark(moe_ep *ep, int phase, void *stream);

/* All-gathers `bytes` host bytes of every rank into all (size x bytes, rank order), through the context's memory;
 * waits. For setup and rebalancing, not for the forward. */
moe_status moe__ep_allgather_host(moe_comm *comm, const void *mine, int64_t bytes, void *all);

/* EPLB (ep_eplb.c): the tables of the placement in phy2log (host) to the device; the routed ids of T tokens
 * counted and mapped to slots (returns the ids the dispatch uses). */
moe_status moe__ep_placement_init(moe_ep *ep);
moe_status moe__ep_map_ids(moe_ep *ep, const int32_t *ids, int64_t T, const int32_t **out, void *stream);
/* Checksums of n blocks of `bytes` bytes at base + i stride: sum over the block's 32-bit words w_j (its bytes 4j ..
 * 4j + 3 in memory order, the last word zero-padded) of w_j (2j + 1) mod 2^64, added to out[i] (host). Any stride
 * and alignment on the CPU (a bf16 layer with H I odd has 2-byte aligned experts); the GPU's layers have widths of
 * multiples of 8, so their blocks are whole, aligned words, which its kernel takes as they are. */
moe_status moe__ep_checksum(moe_ep *ep, const void *base, int64_t stride, int64_t bytes, int n, uint64_t *out);

/* Steps, dispatched on the context's backend. Counts on the device stay there; n_max bounds the grids. */
moe_status moe__ep_rank_of(moe_ep *ep, const int32_t *ids, int64_t n, int32_t *dst, void *stream);
moe_status moe__ep_token_dst(moe_ep *ep, const int32_t *dst, int64_t T, int32_t *tok_dst, void *stream);
/* record r (r < *n_rows; n_max bounds it) <- token rowsrc[r] / stride of x, scales, ids, weights */
moe_status moe__ep_pack(moe_ep *ep, const int32_t *rowsrc, int stride, const int64_t *n_rows, int64_t n_max,
                        const void *x, const void *scales, const int32_t *ids, const float *w, void *out, void *stream);
/* (rowsrc NULL: record r <- token r; n_rows NULL: n_max records) */
/* n records -> rows of x, scales, ids, weights */
moe_status moe__ep_unpack(moe_ep *ep, const void *in, int64_t n, void *x, void *scales, int32_t *ids, float *w,
                          void *stream);
/* out row r (r < *n_rows) <- y row slot_row[rowsrc[r]], row_bytes bytes */
moe_status moe__ep_gather(moe_ep *ep, const void *y, const int32_t *slot_row, const int32_t *rowsrc,
                          const int64_t *n_rows, int64_t n_max, int64_t row_bytes, void *out, void *stream);

/* Low latency. N M records: block d, record i < count_d (offsets: (N + 1) on the device) <- token
 * rowsrc[offsets[d] + i] / stride; records past the count carry ids -1 (nothing reads their x). */
moe_status moe__ep_pack_fixed(moe_ep *ep, const int32_t *rowsrc, int stride, const int64_t *offsets, const void *x,
                              const void *scales, const int32_t *ids, const float *w, void *out, void *stream);
/* dst[t k + j] = t / per_source when id(t, j) is one of this rank's experts, else -1 (n tokens) */
moe_status moe__ep_source_of(moe_ep *ep, const int32_t *ids, int64_t n, int64_t per_source, int32_t *dst,
                             void *stream);
/* out[i] = row[i] >= 0 ? group[i] cap + row[i] - offsets[group[i]] : -1: a grouped row into its group's fixed
 * block (n entries) */
moe_status moe__ep_remap(moe_ep *ep, const int32_t *row, const int32_t *group, const int64_t *offsets, int64_t n,
                         int64_t cap, int32_t *out, void *stream);
/* GPU: out row pos[i] <- y row src_row[i] for every i < n with pos[i] >= 0 (row_bytes bytes) */
moe_status moe__ep_scatter(moe_ep *ep, const void *y, const int32_t *src_row, const int32_t *pos, int64_t n,
                           int64_t row_bytes, void *out, void *stream);
/* part (n, H) f32: row t = sum over j in order of w_tj y[slot_row[t, j]] (rows of -1 skipped; 1 for w with the
 * weight on the input) */
moe_status moe__ep_partial(moe_ep *ep, const void *y, const int32_t *slot_row, const float *w, int64_t n,
                           float *part, void *stream);
/* out (T, H) layer dtype = sum + the shared experts (CPU: computed here; GPU: from the layer scratch ls) */
moe_status moe__ep_finish(moe_ep *ep, const void *x, const float *sum, int64_t T, const moe_layer_scratch *ls,
                          void *out, void *stream);

#ifdef MOE_WITH_CUDA
moe_status moe__cuda_p2p_enable(moe_ctx *ctx, int peer_device, int *ok);
moe_status moe__cuda_p2p_host_flag(moe_ctx *ctx, int **flag, int **flag_dev);
void moe__cuda_p2p_host_flag_free(moe_ctx *ctx, int *flag);
moe_status moe__cuda_p2p_step(moe_ctx *ctx, int64_t *flags, int n_ranks, void *stream);
moe_status moe__cuda_p2p_dispatch(moe_ctx *ctx, const moe_ep_record *rec, const int32_t *rowsrc, int stride,
                                  const int64_t *offsets, int n_ranks, int64_t cap, int me, const void *x,
                                  const void *scales, const int32_t *ids, const float *w, char *const *recv,
                                  void *stream);
moe_status moe__cuda_p2p_signal(moe_ctx *ctx, int kind, int me, int n_ranks, const int64_t *offsets,
                                int64_t *const *flags, const int64_t *my_flags, void *stream);
moe_status moe__cuda_p2p_wait(moe_ctx *ctx, int kind, int n_ranks, const int64_t *flags, double timeout_s, int *error,
                              void *stream);
moe_status moe__cuda_p2p_mask(moe_ctx *ctx, const moe_ep_record *rec, void *recv, const int64_t *flags, int n_ranks,
                              int64_t cap, void *stream);
moe_status moe__cuda_p2p_scatter(moe_ctx *ctx, const void *y, const int32_t *src_row, const int32_t *pos, int64_t n,
                                 int64_t row_bytes, int64_t cap, int me, char *const *home, void *stream);
/* out (n, device) += the checksums */
moe_status moe__cuda_ep_checksum(moe_ctx *ctx, const void *base, int64_t stride, int64_t bytes, int n,
                                 unsigned long long *out, void *stream);
moe_status moe__cuda_ep_pack_fixed(moe_ctx *ctx, const moe_ep_record *rec, const int32_t *rowsrc, int stride,
                                   const int64_t *offsets, int n_ranks, int64_t cap, const void *x, const void *scales,
                                   const int32_t *ids, const float *w, void *out, void *stream);
moe_status moe__cuda_ep_source_of(moe_ctx *ctx, const int32_t *ids, int64_t n, int k, int per_rank, int me,
                                  int64_t per_source, int32_t *dst, void *stream);
moe_status moe__cuda_ep_remap(moe_ctx *ctx, const int32_t *row, const int32_t *group, const int64_t *offsets,
                              int64_t n, int64_t cap, int32_t *out, void *stream);
moe_status moe__cuda_ep_scatter(moe_ctx *ctx, const void *y, const int32_t *src_row, const int32_t *pos, int64_t n,
                                int64_t row_bytes, void *out, void *stream);
moe_status moe__cuda_ep_events(moe_ctx *ctx, int n, void **events);
void moe__cuda_ep_events_destroy(moe_ctx *ctx, int n, void **events);
moe_status moe__cuda_ep_record(moe_ctx *ctx, void *event, void *stream);
/* ms from a to b; waits for b */
moe_status moe__cuda_ep_elapsed(moe_ctx *ctx, void *a, void *b, double *ms);
moe_status moe__cuda_ep_partial(moe_ctx *ctx, const void *y, const int32_t *slot_row, const float *w, int k,
                                int weight_on_input, int64_t n, int H, float *part, void *stream);
moe_status moe__cuda_ep_finish(moe_ctx *ctx, const float *sum, const void *shared_y, int n_shared,
                               const float *shared_scale, int64_t T, int H, void *out, void *stream);
moe_status moe__cuda_ep_rank_of(moe_ctx *ctx, const int32_t *ids, int64_t n, int per_rank, int32_t *dst,
                                void *stream);
moe_status moe__cuda_ep_token_dst(moe_ctx *ctx, const int32_t *dst, int64_t T, int k, int n_ranks, int32_t *tok_dst,
                                  void *stream);
moe_status moe__cuda_ep_pack(moe_ctx *ctx, const moe_ep_record *rec, const int32_t *rowsrc, int stride,
                             const int64_t *n_rows, int64_t n_max, const void *x, const void *scales,
                             const int32_t *ids, const float *w, void *out, void *stream);
moe_status moe__cuda_ep_unpack(moe_ctx *ctx, const moe_ep_record *rec, const void *in, int64_t n, void *x,
                               void *scales, int32_t *ids, float *w, void *stream);
moe_status moe__cuda_ep_gather(moe_ctx *ctx, const void *y, const int32_t *slot_row, const int32_t *rowsrc,
                               const int64_t *n_rows, int64_t n_max, int64_t row_bytes, void *out, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MOE_EP_EP_H */
