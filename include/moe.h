/* moe.h — the whole public API of libmoe, a Mixture-of-Experts inference library.
 *
 * Conventions
 * - Every function that can fail returns a moe_status; MOE_OK is 0. The context keeps a message that names the
 *   problem (moe_last_error). The library never exits or aborts.
 * - Data pointers passed to an operation live where the context computes: host memory for the CPU backend,
 *   device memory for the CUDA backend (moe_alloc / moe_memcpy move data between the two).
 * - GPU work is asynchronous on the stream given as the last argument (a cudaStream_t, or NULL for the
 *   context's own stream); nothing synchronises with the host unless its comment says so. The CPU backend
 *   runs synchronously and ignores the stream.
 * - Exact definitions of every number format: docs/formats.md.
 */
#ifndef MOE_H
#define MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MOE_API __declspec(dllexport)
#elif defined(__GNUC__)
#define MOE_API __attribute__((visibility("default")))
#else
#define MOE_API
#endif

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0
MOE_API const char *moe_version(void);

/* ---------------------------------------------------------------------------------------------------------
 * Status
 * ------------------------------------------------------------------------------------------------------- */

#define MOE_STATUS_MAP(X)                                                                  \
    X(MOE_OK, 0, "success")                                                                \
    X(MOE_ERR_INVALID_ARG, -1, "invalid argument")                                         \
    X(MOE_ERR_UNSUPPORTED, -2, "unsupported")                                              \
    X(MOE_ERR_CUDA, -3, "CUDA error")                                                      \
    X(MOE_ERR_OOM, -4, "out of memory")                                                    \
    X(MOE_ERR_IO, -5, "input/output error")                                                \
    X(MOE_ERR_NO_DEVICE, -6, "no usable GPU")                                              \
    X(MOE_ERR_COMM, -7, "communication failed")

typedef enum moe_status {
#define MOE_STATUS_ENUM_(name, value, text) name = value,
    MOE_STATUS_MAP(MOE_STATUS_ENUM_)
#undef MOE_STATUS_ENUM_
} moe_status;

/* A short constant description of a status ("invalid argument"); never NULL. */
MOE_API const char *moe_status_string(moe_status status);

/* ---------------------------------------------------------------------------------------------------------
 * Data types
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_dtype {
    MOE_DTYPE_INVALID = 0,
    MOE_DTYPE_F32,  /* IEEE binary32 */
    MOE_DTYPE_F16,  /* IEEE binary16 */
    MOE_DTYPE_BF16, /* bfloat16 */
    MOE_DTYPE_E4M3, /* FP8 E4M3FN: finite, max 448, 0x7F/0xFF NaN; one byte */
    MOE_DTYPE_E5M2, /* FP8 E5M2: IEEE-like, max 57344; one byte */
    MOE_DTYPE_E2M1, /* FP4 E2M1: max 6; two per byte, element 2i in the low nibble */
    MOE_DTYPE_E8M0, /* MX scale: 2^(byte - 127); 0xFF NaN; one byte */
    MOE_DTYPE_U8,
    MOE_DTYPE_I32,
    MOE_DTYPE_I64,
    MOE_DTYPE_COUNT_
} moe_dtype;

MOE_API const char *moe_dtype_name(moe_dtype dtype);     /* "bf16"; "invalid" for unknown values */
MOE_API moe_dtype moe_dtype_from_name(const char *name); /* MOE_DTYPE_INVALID when unknown */
MOE_API int moe_dtype_bits(moe_dtype dtype);             /* 4 for E2M1, 0 when unknown */

/* Bytes that n elements of dtype occupy (E2M1: n must be even); -1 when unknown or invalid. */
MOE_API int64_t moe_dtype_bytes(moe_dtype dtype, int64_t n);

/* ---------------------------------------------------------------------------------------------------------
 * Scalar conversions (host code, the exact definitions of docs/formats.md §1)
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_round {
    MOE_ROUND_NEAREST_EVEN = 0, /* IEEE round to nearest, ties to even */
    MOE_ROUND_ZERO,             /* toward zero (E8M0 only) */
    MOE_ROUND_UP                /* toward +Inf (E8M0 only) */
} moe_round;

MOE_API uint16_t moe_bf16_from_f32(float x); /* RN; NaN -> 0x7FFF */
MOE_API float moe_bf16_to_f32(uint16_t bits);
MOE_API uint16_t moe_f16_from_f32(float x); /* RN, subnormals kept; NaN -> 0x7FFF */
MOE_API float moe_f16_to_f32(uint16_t bits);
/* saturate != 0: overflow -> +-max finite (CUDA satfinite); 0: E4M3 -> NaN with sign, E5M2 -> +-Inf. */
MOE_API uint8_t moe_e4m3_from_f32(float x, int saturate);
MOE_API float moe_e4m3_to_f32(uint8_t bits);
MOE_API uint8_t moe_e5m2_from_f32(float x, int saturate);
MOE_API float moe_e5m2_to_f32(uint8_t bits);
MOE_API uint8_t moe_e2m1_from_f32(float x);    /* one nibble (low 4 bits); saturating; NaN -> 0x7 */
MOE_API float moe_e2m1_to_f32(uint8_t nibble); /* reads the low 4 bits */
/* round: MOE_ROUND_ZERO or MOE_ROUND_UP (anything else is treated as MOE_ROUND_UP); sign ignored. */
MOE_API uint8_t moe_e8m0_from_f32(float x, moe_round round, int saturate);
MOE_API float moe_e8m0_to_f32(uint8_t bits); /* 0x00 -> 2^-127, 0xFF -> NaN */

/* ---------------------------------------------------------------------------------------------------------
 * Context
 * ------------------------------------------------------------------------------------------------------- */

typedef struct moe_ctx moe_ctx;

typedef enum moe_backend {
    MOE_BACKEND_AUTO = 0, /* the CUDA GPU when one is usable, else the CPU (with a notice through the log) */
    MOE_BACKEND_CPU,
    MOE_BACKEND_CUDA
} moe_backend;

typedef enum moe_log_level { MOE_LOG_DEBUG = 0, MOE_LOG_INFO, MOE_LOG_NOTICE, MOE_LOG_ERROR } moe_log_level;

/* Called for notices (e.g. "no GPU: running on the CPU"); NULL sends them to stderr. */
typedef void (*moe_log_fn)(void *user, moe_log_level level, const char *message);

#define MOE_MAX_CPU_THREADS 1024

typedef struct moe_ctx_options {
    moe_backend backend;
    int device;        /* CUDA device ordinal (CUDA backend) */
    int n_threads;     /* CPU threads, 0..MOE_MAX_CPU_THREADS; 0 = OpenMP's default (all processors) */
    moe_log_fn log;    /* NULL = stderr */
    void *log_user;    /* passed to log */
    int log_level;     /* messages below this level are dropped; default MOE_LOG_NOTICE */
} moe_ctx_options;

/* Default options: AUTO backend, device 0, all CPU threads, notices to stderr. */
MOE_API moe_ctx_options moe_ctx_options_default(void);

/* Creates a context. options may be NULL (defaults). On failure *ctx is NULL and, when the failure happened
 * after allocation, the message is lost: the status says what class of error it was, and the log got the text. */
MOE_API moe_status moe_ctx_create(const moe_ctx_options *options, moe_ctx **ctx);
MOE_API void moe_ctx_destroy(moe_ctx *ctx); /* NULL is fine */

MOE_API moe_backend moe_ctx_backend(const moe_ctx *ctx);
/* One line describing where the context computes: "cpu (2 threads)", "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)". */
MOE_API const char *moe_ctx_describe(const moe_ctx *ctx);
/* The message of the last failed call on this context ("" when none). Valid until the next call. */
MOE_API const char *moe_last_error(const moe_ctx *ctx);
/* Whether this build of libmoe contains CUDA kernels, and for which architectures ("sm_90a sm_80 compute_80";
 * "" in a CPU-only build). */
MOE_API int moe_built_with_cuda(void);
MOE_API const char *moe_cuda_archs(void);

/* ---------------------------------------------------------------------------------------------------------
 * Memory on the context's backend (host memory on the CPU backend)
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_copy_kind {
    MOE_COPY_HOST_TO_CTX = 0, /* host -> backend */
    MOE_COPY_CTX_TO_HOST,     /* backend -> host */
    MOE_COPY_CTX_TO_CTX       /* backend -> backend */
} moe_copy_kind;

MOE_API moe_status moe_alloc(moe_ctx *ctx, size_t bytes, void **ptr); /* 256-byte aligned */
MOE_API void moe_free(moe_ctx *ctx, void *ptr);
MOE_API moe_status moe_memcpy(moe_ctx *ctx, void *dst, const void *src, size_t bytes, moe_copy_kind kind,
                              void *stream);
MOE_API moe_status moe_memset(moe_ctx *ctx, void *dst, int value, size_t bytes, void *stream);
/* Waits for the work queued on stream (NULL: the context's stream). The only host synchronisation. */
MOE_API moe_status moe_sync(moe_ctx *ctx, void *stream);

/* CUDA graphs: work queued on a stream between begin and end is recorded, then replayed with one launch (the
 * CUDA backend only; MOE_ERR_UNSUPPORTED on the CPU). Operations of libmoe never synchronise with the host, so
 * a whole step of them can be captured. */
typedef struct moe_graph moe_graph;
MOE_API moe_status moe_graph_begin(moe_ctx *ctx, void *stream);
MOE_API moe_status moe_graph_end(moe_ctx *ctx, void *stream, moe_graph **graph);
MOE_API moe_status moe_graph_replay(moe_ctx *ctx, moe_graph *graph, void *stream);
MOE_API void moe_graph_destroy(moe_ctx *ctx, moe_graph *graph);

/* ---------------------------------------------------------------------------------------------------------
 * Tensors
 * ------------------------------------------------------------------------------------------------------- */

#define MOE_MAX_RANK 4

/* A dense row-major view; the memory belongs to the caller. A tensor of rank r is read as a batch of
 * matrices of shape (shape[r-2], shape[r-1]); rank 1 is one row. */
typedef struct moe_tensor {
    void *data;
    moe_dtype dtype;
    int rank;                     /* 1..MOE_MAX_RANK */
    int64_t shape[MOE_MAX_RANK];  /* outermost first */
} moe_tensor;

/* A 2-D view (rows, cols). */
MOE_API moe_tensor moe_tensor_2d(void *data, moe_dtype dtype, int64_t rows, int64_t cols);
MOE_API int64_t moe_tensor_numel(const moe_tensor *t);

/* Elementwise conversion between dtypes of equal shape, through f32 (exact for every source type).
 * round: MOE_ROUND_NEAREST_EVEN for float targets; MOE_ROUND_ZERO or MOE_ROUND_UP for E8M0.
 * saturate: for E4M3/E5M2/E8M0 targets (E2M1 always saturates). */
typedef struct moe_convert_options {
    moe_round round;
    int saturate;
} moe_convert_options;

/* options NULL: round to nearest even (E8M0: toward +Inf), saturating. */
MOE_API moe_status moe_convert(moe_ctx *ctx, const moe_tensor *src, moe_tensor *dst,
                               const moe_convert_options *options, void *stream);

/* ---------------------------------------------------------------------------------------------------------
 * Quantised formats (docs/formats.md §2, §3)
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_qformat_kind {
    MOE_QFORMAT_INVALID = 0,
    MOE_QFORMAT_FP8_TENSOR,  /* one f32 scale for the whole tensor */
    MOE_QFORMAT_FP8_ROW,     /* one scale per row (token) */
    MOE_QFORMAT_FP8_1X128,   /* one scale per row and 128 columns (DeepSeek-V3 activations) */
    MOE_QFORMAT_FP8_128X128, /* one scale per 128x128 tile of each matrix (DeepSeek-V3 weights) */
    MOE_QFORMAT_MXFP8,       /* 32-element blocks, E8M0 scales (OCP MX) */
    MOE_QFORMAT_MXFP4,       /* 32-element blocks of E2M1, E8M0 scales (OCP MX, gpt-oss) */
    MOE_QFORMAT_NVFP4,       /* 16-element blocks of E2M1, E4M3 scales, one f32 global scale */
    MOE_QFORMAT_COUNT_
} moe_qformat_kind;

typedef enum moe_scale_rule {
    MOE_SCALE_DEFAULT = 0, /* the kind's own: F32 for FP8 kinds, RCEIL for MX kinds, E4M3 blocks for NVFP4 */
    MOE_SCALE_F32,         /* s = amax / max_elem */
    MOE_SCALE_UE8M0_FLOOR, /* 2^(floor(log2 amax) - emax_elem)    OCP MX v1.0 */
    MOE_SCALE_UE8M0_CEIL,  /* 2^(ceil(log2 amax) - emax_elem)     torchao CEIL */
    MOE_SCALE_UE8M0_RCEIL, /* 2^ceil(log2(amax / max_elem))       NVIDIA, DeepGEMM, DeepSeek ue8m0 */
    MOE_SCALE_RULE_COUNT_
} moe_scale_rule;

typedef enum moe_scale_layout {
    MOE_SCALE_LINEAR = 0,       /* row-major [batch, rows, blocks per row] */
    MOE_SCALE_SWIZZLED_128X4,   /* the 128x4 tiled layout of block-scaled GEMMs (MX and NVFP4 kinds) */
} moe_scale_layout;

/* What the NVFP4 per-tensor f32 number means. There is no default: the two are easy to mix up. */
typedef enum moe_nvfp4_global {
    MOE_NVFP4_GLOBAL_UNSET = 0,
    MOE_NVFP4_GLOBAL_ENCODE, /* G = 448*6 / amax (FlashInfer, TensorRT-LLM, vLLM input_scale_inv) */
    MOE_NVFP4_GLOBAL_DECODE  /* g = amax / (448*6) (ModelOpt weight_scale_2 and input_scale) */
} moe_nvfp4_global;

typedef struct moe_qformat {
    moe_qformat_kind kind;
    moe_dtype elem;          /* E4M3 or E5M2 (FP8 and MXFP8 kinds); E2M1 (MXFP4, NVFP4) */
    moe_scale_rule rule;
    moe_dtype scale_dtype;   /* F32 (F32 rule, or UE8M0 rules on FP8 kinds); E8M0 (UE8M0 rules); E4M3 (NVFP4) */
    moe_scale_layout layout;
    moe_nvfp4_global global; /* NVFP4 only */
    int static_scale;        /* FP8_TENSOR / NVFP4: 1 = the caller wrote the scale before quantising */
    float amax_floor;        /* every block's amax is raised to at least this */
} moe_qformat;

/* The common recipe of a kind (docs/formats.md): E4M3 (E2M1 for FP4 kinds), the default rule, linear scales,
 * dynamic scales, the kind's amax floor. For NVFP4 the caller still has to set .global. */
MOE_API moe_qformat moe_qformat_preset(moe_qformat_kind kind);
MOE_API const char *moe_qformat_kind_name(moe_qformat_kind kind);  /* "mxfp4" */
MOE_API moe_qformat_kind moe_qformat_kind_from_name(const char *name); /* MOE_QFORMAT_INVALID when unknown */
MOE_API const char *moe_scale_rule_name(moe_scale_rule rule);      /* "rceil" */
MOE_API moe_scale_rule moe_scale_rule_from_name(const char *name); /* MOE_SCALE_RULE_COUNT_ when unknown */

/* A quantised tensor: the logical (unquantised) shape plus its buffers, all in the context's memory. */
typedef struct moe_qtensor {
    moe_qformat format;
    int rank;
    int64_t shape[MOE_MAX_RANK];
    void *data;          /* elements, row-major; E2M1 two per byte */
    void *scale;         /* block scales in format.layout; FP8_TENSOR: the one f32 scale */
    float *global_scale; /* NVFP4 only: one f32 in the convention format.global */
} moe_qtensor;

/* Byte sizes of a quantised tensor's buffers, and the shape of its scale matrix per batch entry. */
typedef struct moe_qsizes {
    size_t data_bytes;
    size_t scale_bytes;
    size_t global_scale_bytes; /* 4 for NVFP4, else 0 */
    int64_t batch;             /* matrices in the tensor */
    int64_t scale_rows;        /* per matrix, before swizzle padding */
    int64_t scale_cols;
} moe_qsizes;

/* Checks format and shape (returns the problem in the message) and fills sizes. ctx may be NULL. */
MOE_API moe_status moe_qtensor_sizes(moe_ctx *ctx, const moe_qformat *format, int rank, const int64_t *shape,
                                     moe_qsizes *sizes);

/* Quantises x (F32, BF16 or F16; shape = q->shape) into q->data, q->scale and q->global_scale. */
MOE_API moe_status moe_quantize(moe_ctx *ctx, const moe_tensor *x, moe_qtensor *q, void *stream);

/* Dequantises q into y (F32, BF16 or F16; shape = q->shape). */
MOE_API moe_status moe_dequantize(moe_ctx *ctx, const moe_qtensor *q, moe_tensor *y, void *stream);

/* Swizzle layout of block scales (docs/formats.md §3), for one-byte scales (E8M0, E4M3, U8).
 * linear: (batch..., rows, cols) bytes; swizzled: batch x moe_scale_swizzled_bytes(rows, cols) bytes (-1 for a
 * negative shape, or one whose padded size passes int64). */
MOE_API int64_t moe_scale_swizzled_bytes(int64_t rows, int64_t cols);
MOE_API moe_status moe_scale_swizzle(moe_ctx *ctx, const moe_tensor *linear, void *swizzled, void *stream);
MOE_API moe_status moe_scale_unswizzle(moe_ctx *ctx, const void *swizzled, moe_tensor *linear, void *stream);


/* ---------------------------------------------------------------------------------------------------------
 * Routing (docs/routing.md)
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_router_kind {
    MOE_ROUTER_INVALID = 0,
    MOE_ROUTER_TOPK,         /* scores, top k of score + bias, weights = scores (Mixtral, Qwen, OLMoE, Llama-4) */
    MOE_ROUTER_TOPK_SOFTMAX, /* top k of the logits, softmax over the k (GPT-OSS) */
    MOE_ROUTER_GROUPED,      /* group-limited top k (DeepSeek-V2 group_limited_greedy, DeepSeek-V3 noaux_tc) */
    MOE_ROUTER_HASH,         /* experts from a token-id table (hash layers, DeepSeek-V4 hash routing) */
    MOE_ROUTER_KIND_COUNT_
} moe_router_kind;

typedef enum moe_score_func {
    MOE_SCORE_NONE = 0, /* TOPK_SOFTMAX; HASH without a gate (weights 1/k) */
    MOE_SCORE_SOFTMAX,
    MOE_SCORE_SIGMOID
} moe_score_func;

typedef enum moe_group_score {
    MOE_GROUP_SCORE_MAX = 0, /* DeepSeek-V2: the group's largest score */
    MOE_GROUP_SCORE_TOP2_SUM /* DeepSeek-V3: the sum of the group's two largest (biased) scores */
} moe_group_score;

typedef enum moe_group_mask {
    MOE_GROUP_MASK_NEG_INF = 0, /* experts of dropped groups cannot be chosen (the DeepSeek reference) */
    MOE_GROUP_MASK_ZERO         /* their biased score becomes 0.0 (Hugging Face MoEGate) */
} moe_group_mask;

typedef struct moe_router_config {
    moe_router_kind kind;
    moe_score_func score;
    int n_experts;               /* E */
    int top_k;                   /* k */
    int n_groups, topk_groups;   /* GROUPED: E / n_groups experts a group; keep topk_groups groups */
    moe_group_score group_score; /* GROUPED */
    moe_group_mask group_mask;   /* GROUPED */
    int renormalize;             /* weights divided by their sum */
    float scaling_factor;        /* routed_scaling_factor: multiplied into the weights once, here; 1 = none */
    const float *bias;           /* (E) f32 in the context's memory, or NULL: selection only (TOPK, GROUPED) */
    const int32_t *hash_table;   /* (hash_vocab, k) in the context's memory (HASH) */
    int64_t hash_vocab;
    int weight_on_input;         /* Llama-4: the MoE layer multiplies the expert input by the weight */
} moe_router_config;

/* The router of a known model: "mixtral-8x7b", "qwen2-moe", "qwen3-30b-a3b", "qwen3-235b-a22b", "olmoe",
 * "deepseek-v2", "deepseek-v3", "gpt-oss-20b", "gpt-oss-120b", "llama4-scout", "llama4-maverick". The bias
 * (DeepSeek-V3's e_score_correction_bias) is left NULL for the caller to set. */
MOE_API moe_status moe_router_preset(const char *model, moe_router_config *config);
MOE_API const char *moe_router_kind_name(moe_router_kind kind);

typedef struct moe_expert_stats moe_expert_stats;

typedef struct moe_route_args {
    const moe_tensor *logits;  /* (T, E) f32, bf16 or f16; NULL only for HASH with MOE_SCORE_NONE */
    const int32_t *token_ids;  /* (T): HASH only */
    int64_t n_tokens;          /* T */
    int32_t *ids;              /* (T, k) out: expert ids, -1 for a slot that could not be filled */
    float *weights;            /* (T, k) out */
    int32_t *invalid_rows;     /* optional (1): incremented by the number of rows with a -1 slot */
    moe_expert_stats *stats;   /* optional: the chosen experts are added to this layer's load counters */
    int stats_layer;
} moe_route_args;

/* Routes T tokens. All pointers in the context's memory; no host synchronisation on the GPU. */
MOE_API moe_status moe_route(moe_ctx *ctx, const moe_router_config *config, const moe_route_args *args,
                             void *stream);

/* ---------------------------------------------------------------------------------------------------------
 * Expert-load statistics (docs/routing.md §3): per layer, per expert (token, slot) counts on the device
 * ------------------------------------------------------------------------------------------------------- */

/* The counters live in ctx's memory: every call that takes them (these, moe_route's args, a layer's io) must be
 * on a context of the same backend and GPU, else MOE_ERR_INVALID_ARG (destroy on another one logs an error and
 * leaves their memory). */
MOE_API moe_status moe_expert_stats_create(moe_ctx *ctx, int n_layers, int n_experts, moe_expert_stats **stats);
MOE_API void moe_expert_stats_destroy(moe_ctx *ctx, moe_expert_stats *stats);
/* Adds the n ids (any layout, e.g. (T, k)) to layer's counters; -1 skipped, out-of-range ids counted apart. */
MOE_API moe_status moe_expert_stats_record(moe_ctx *ctx, moe_expert_stats *stats, int layer, const int32_t *ids,
                                           int64_t n, void *stream);
/* Copies the counters to host memory: counts (n_layers, n_experts), invalid (n_layers) or NULL. Waits for the
 * stream: read between steps, not inside one. */
MOE_API moe_status moe_expert_stats_read(moe_ctx *ctx, moe_expert_stats *stats, int64_t *counts, int64_t *invalid,
                                         void *stream);
MOE_API moe_status moe_expert_stats_reset(moe_ctx *ctx, moe_expert_stats *stats, void *stream);
/* mean / max of n counts; 1 when all are 0. */
MOE_API double moe_balancedness(const int64_t *counts, int n);

/* ---------------------------------------------------------------------------------------------------------
 * EPLB (docs/routing.md §4): replicas and placement of logical experts on physical slots
 * ------------------------------------------------------------------------------------------------------- */

/* The most physical slots EPLB plans for (and an expert-parallel layer takes): 64 K, so that every table size,
 * E (R - E + 1) log2phy entries at most, is an int. */
#define MOE_EPLB_MAX_SLOTS 65536

typedef struct moe_eplb_config {
    int n_layers;   /* L */
    int n_logical;  /* E: logical (routed) experts */
    int n_physical; /* R: physical slots, E <= R <= MOE_EPLB_MAX_SLOTS, a multiple of n_gpus */
    int n_groups;   /* expert groups (E a multiple); hierarchical when a multiple of n_nodes, else global */
    int n_nodes;
    int n_gpus;     /* a multiple of n_nodes */
} moe_eplb_config;

/* Host computation (ctx may be NULL; it only receives the message). load (L, E) estimated loads; outputs
 * phy2log (L, R), log2phy (L, E, R - E + 1) -1 padded, logcnt (L, E), all host memory. */
MOE_API moe_status moe_eplb_plan(moe_ctx *ctx, const moe_eplb_config *config, const double *load, int32_t *phy2log,
                                 int32_t *log2phy, int32_t *logcnt);

/* Replica choice at dispatch for one layer: ids (T, k_total) logical -> physical in out (may alias ids):
 * physical = log2phy[id][p % logcnt[id]] for the flat position p of each of the first k_routed columns; other
 * columns and -1 pass through; ids outside [0, E) become -1. log2phy (E, max_replicas) and logcnt (E) in the
 * context's memory. */
MOE_API moe_status moe_eplb_map(moe_ctx *ctx, const int32_t *log2phy, const int32_t *logcnt, int n_logical,
                                int max_replicas, const int32_t *ids, int32_t *out, int64_t n_tokens, int k_total,
                                int k_routed, void *stream);

/* ---------------------------------------------------------------------------------------------------------
 * Waterfill (docs/routing.md §5): the shared expert dispatched like a routed one, to a lightly loaded rank
 * ------------------------------------------------------------------------------------------------------- */

typedef struct moe_waterfill_config {
    int n_experts;     /* routed experts E, a multiple of world */
    int world;         /* EP ranks, <= 32 */
    int source_rank;   /* this rank */
    int top_k;         /* k routed slots */
    float routed_scaling_factor; /* the shared expert's weight is 1 / this (1 when 0) */
    int64_t target;    /* > 0: the per-rank load target; 0: derived from rank_load */
    int all_ranks;     /* every rank is a candidate, not only the token's own and its experts' ranks */
    int min_tokens;    /* batches smaller than this keep the shared expert local (SGLang: 64) */
} moe_waterfill_config;

/* rank_load (world) int64 in the context's memory: zeroed, then the routed (token, slot) count per rank. */
MOE_API moe_status moe_waterfill_rank_load(moe_ctx *ctx, const moe_waterfill_config *config, const int32_t *ids,
                                           int64_t n_tokens, int64_t *rank_load, void *stream);
/* ids, weights (T, k) -> out_ids, out_weights (T, k + 1); rank_load (world) int64, in the context's memory. */
MOE_API moe_status moe_waterfill(moe_ctx *ctx, const moe_waterfill_config *config, const int32_t *ids,
                                 const float *weights, int64_t n_tokens, const int64_t *rank_load, int32_t *out_ids,
                                 float *out_weights, void *stream);

/* ---------------------------------------------------------------------------------------------------------
 * Permute / align (docs/routing.md §6): the rows each local expert's GEMM reads, from the routed ids
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_permute_layout {
    MOE_PERMUTE_CONTIGUOUS = 0, /* experts' rows back to back, each segment padded to a multiple of tile_m */
    MOE_PERMUTE_MASKED          /* (E, max_rows): expert e's rows at e * max_rows */
} moe_permute_layout;

typedef struct moe_permute_config {
    int n_experts_global;  /* ids >= this, or < -1, are invalid */
    int expert_begin;      /* first local expert */
    int n_experts;         /* local experts E */
    int top_k;             /* k */
    int tile_m;            /* contiguous: segments start on multiples of this (>= 1) */
    moe_permute_layout layout;
    int64_t max_rows;      /* masked: rows per expert */
} moe_permute_config;

typedef struct moe_permute_outputs {
    int32_t *counts;   /* (E) assignments per local expert */
    int64_t *offsets;  /* (E + 1) contiguous: first row of each expert, offsets[E] = rows used; masked: unused */
    int32_t *row_src;  /* (moe_permute_rows(...)) flat index t * k + j of each row, -1 for padding rows; the
                        * contiguous layout writes rows < offsets[E] only, the masked one all E * max_rows */
    int32_t *slot_row; /* (T * k) row of each (token, slot), -1 when skipped or dropped */
    int32_t *invalid;  /* optional (1): set to the number of invalid ids */
    int32_t *dropped;  /* optional (1): set to the number of assignments past max_rows (masked) */
} moe_permute_outputs;

/* Rows row_src must hold: contiguous T*k + E*(tile_m - 1); masked E*max_rows. -1 on a bad config, or past int64. */
MOE_API int64_t moe_permute_rows(const moe_permute_config *config, int64_t n_tokens);
/* Scratch the GPU needs for T tokens (0 on the CPU). */
MOE_API moe_status moe_permute_workspace_size(moe_ctx *ctx, const moe_permute_config *config, int64_t n_tokens,
                                              size_t *bytes);
/* ids (T, k) -> outputs; deterministic (token order inside each expert); no host synchronisation. */
MOE_API moe_status moe_permute(moe_ctx *ctx, const moe_permute_config *config, const int32_t *ids,
                               int64_t n_tokens, const moe_permute_outputs *out, void *workspace,
                               size_t workspace_bytes, void *stream);

/* moe_route, then moe_permute of the ids it wrote (args->ids, args->n_tokens), as one call with the same results.
 * The permute config's top_k and n_experts_global must be the router's top_k and n_experts; workspace as
 * moe_permute_workspace_size. On the GPU a small batch (T <= 128 and T * k <= 2048; T <= 16 before sm_90) is
 * one kernel launch instead of two (docs/routing.md §7); larger ones run the two ops. */
MOE_API moe_status moe_route_permute(moe_ctx *ctx, const moe_router_config *router, const moe_route_args *args,
                                     const moe_permute_config *config, const moe_permute_outputs *out,
                                     void *workspace, size_t workspace_bytes, void *stream);


/* ---------------------------------------------------------------------------------------------------------
 * The MoE layer (docs/layer.md): route, expert FFNs, shared experts, combine
 * ------------------------------------------------------------------------------------------------------- */

typedef enum moe_activation {
    MOE_ACT_INVALID = 0,
    MOE_ACT_SILU_GLU,      /* silu(g) * u (SwiGLU: Mixtral, Qwen, DeepSeek, Llama-4, OLMoE) */
    MOE_ACT_GELU_GLU,      /* gelu(g) * u, erf form */
    MOE_ACT_GELU_TANH_GLU, /* gelu(g) * u, tanh approximation */
    MOE_ACT_GPTOSS_GLU     /* g' = min(g, limit), u' = clamp(u, +-limit): g' * sigmoid(alpha g') * (u' + 1) */
} moe_activation;

typedef enum moe_w13_layout {
    MOE_W13_CONCAT = 0,    /* w13 rows 0..I-1 are the gate, I..2I-1 the up projection */
    MOE_W13_INTERLEAVED    /* even rows gate, odd rows up (GPT-OSS) */
} moe_w13_layout;

/* The tile of the GPU's routed expert GEMMs (docs/layer.md §7), by the rows of an expert a CTA takes: SMALL (16,
 * decode), MEDIUM32 (32), MEDIUM (64) or LARGE (128: wgmma and TMA on Hopper, the FP8 tensor cores for W8A8). */
typedef enum moe_expert_tile {
    MOE_EXPERT_TILE_AUTO = 0,
    MOE_EXPERT_TILE_SMALL,
    MOE_EXPERT_TILE_MEDIUM32,
    MOE_EXPERT_TILE_MEDIUM,
    MOE_EXPERT_TILE_LARGE,
} moe_expert_tile;

typedef struct moe_layer_config {
    int hidden;               /* H (up to 2^20) */
    int intermediate;         /* I: each expert's FFN width (up to 2^20) */
    moe_router_config router; /* n_experts E and top_k k live here; router.bias may point at the correction bias */
    moe_activation activation;
    float act_alpha, act_limit; /* MOE_ACT_GPTOSS_GLU: 1.702 and 7.0 in GPT-OSS */
    moe_w13_layout w13_layout;
    moe_dtype dtype;          /* weights, x and out: MOE_DTYPE_BF16 (CUDA and CPU) or MOE_DTYPE_F32 (CPU) */
    /* weights.gate and weights.shared_gate: MOE_DTYPE_F32 (zero means f32) or MOE_DTYPE_BF16, as checkpoints ship
     * router weights (DeepSeek-V3, Qwen3, GPT-OSS); the logits are summed in f32 either way, so a bf16 gate gives
     * the bits its f32 copy gives, from half the bytes */
    moe_dtype gate_dtype;
    int n_shared;             /* shared experts: dense FFNs run on every token and added to the output */
    int shared_intermediate;  /* their width (up to 2^20; up to 64 shared experts) */
    int shared_gate;          /* Qwen2-MoE: the shared output is scaled by sigmoid(x . shared_gate) */
    /* The routed experts' w13 and w2 stored quantised (docs/layer.md §5); kind MOE_QFORMAT_INVALID (zero) keeps
     * them in dtype. FP8_ROW, FP8_1X128, FP8_128X128 (E4M3; f32 or E8M0 scales; DeepSeek-V3), MXFP8 (E4M3),
     * MXFP4 (gpt-oss) or NVFP4 (a global scale per expert matrix, in expert_format.global's convention), with
     * linear scales. Each weight is elem * scale; x, the activations and the shared experts stay in dtype. */
    moe_qformat expert_format;
    /* The routed experts' inputs quantised (docs/layer.md §6, W8A8): kind MOE_QFORMAT_INVALID (zero) keeps them in
     * dtype; MOE_QFORMAT_FP8_1X128 (E4M3, f32 scales by any rule, linear) quantises each token's x and each row
     * of h in 1x128 groups before the GEMM that reads it, as DeepSeek-V3's inference does. With FP8_128X128
     * experts, Hopper runs those GEMMs on the FP8 tensor cores. */
    moe_qformat act_format;
    /* The GPU's routed expert GEMMs: MOE_EXPERT_TILE_AUTO (zero) lets the tile table pick for each forward
     * (docs/layer.md §7: measured choices by model shape, weights and tokens, written by `moe tune`, and rules by
     * the rows a touched expert gets where the table has no row); the others force one tile (for `moe tune`,
     * and to compare). The CPU ignores it. */
    moe_expert_tile expert_tile;
    /* The shared experts' shared_w13 and shared_w2 stored quantised (docs/layer.md §5), in one of expert_format's
     * weight formats and layout (S matrices); kind MOE_QFORMAT_INVALID (zero) keeps them in dtype. With act_format
     * set, their inputs and h are quantised as the routed experts' are (DeepSeek-V3 quantises the activations of
     * every FP8 linear). The CPU runs them; the GPU does not yet (MOE_ERR_UNSUPPORTED). */
    moe_qformat shared_format;
} moe_layer_config;

/* The layer of a known model (the router presets' names: "qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b", ...):
 * shapes, router, activation, w13 layout and shared experts, dtype bf16. */
MOE_API moe_status moe_layer_preset(const char *model, moe_layer_config *config);

/* The weights, in the context's memory, in config.dtype (router weights in config.gate_dtype, biases in f32). The
 * layer keeps these pointers; it does not copy the weights. */
typedef struct moe_layer_weights {
    const void *w13;          /* (E, 2I, H) */
    const void *w2;           /* (E, H, I) */
    const float *b13;         /* (E, 2I) or NULL (GPT-OSS has biases) */
    const float *b2;          /* (E, H) or NULL */
    const void *gate;         /* (E, H) router weight in config.gate_dtype, or NULL when forward is always given
                               * logits */
    const float *gate_bias;   /* (E) or NULL (GPT-OSS) */
    const void *shared_w13;   /* (S, 2Is, H) */
    const void *shared_w2;    /* (S, H, Is) */
    const void *shared_gate;  /* (H) in config.gate_dtype, when config.shared_gate */
    /* config.expert_format only: w13 and w2 hold the quantised elements of (E, 2I, H) and (E, H, I) (E2M1 two a
     * byte), these their block scales as moe_quantize writes them for that shape (E matrices, linear), and for
     * NVFP4 one global scale per expert matrix (a checkpoint's per-expert weight_scale_2). */
    const void *w13_scale, *w2_scale;
    const float *w13_global, *w2_global; /* (E) NVFP4 only */
    /* config.shared_format only: shared_w13 and shared_w2 hold the elements of (S, 2Is, H) and (S, H, Is), these
     * their scales (S matrices) and NVFP4's global scales (S), as for the routed experts above. */
    const void *shared_w13_scale, *shared_w2_scale;
    const float *shared_w13_global, *shared_w2_global;
} moe_layer_weights;

typedef struct moe_layer moe_layer;

MOE_API moe_status moe_layer_create(moe_ctx *ctx, const moe_layer_config *config, const moe_layer_weights *weights,
                                    moe_layer **layer);
MOE_API void moe_layer_destroy(moe_layer *layer);
/* Scratch for a forward of up to max_tokens tokens. */
MOE_API moe_status moe_layer_workspace_size(moe_layer *layer, int64_t max_tokens, size_t *bytes);

typedef struct moe_layer_io {
    const moe_tensor *x;      /* (T, H) in config.dtype */
    const moe_tensor *logits; /* (T, E) f32/bf16/f16 router logits, or NULL: x . gate^T (+ gate_bias) in f32 */
    moe_tensor *out;          /* (T, H) in config.dtype */
    const int32_t *token_ids; /* (T): hash routing only */
    moe_expert_stats *stats;  /* optional load counters */
    int stats_layer;
} moe_layer_io;

/* out = MoE(x): routed experts (combined in slot order, so results are the same bits run after run) plus shared
 * experts. No host synchronisation; T may change between calls (up to the workspace's max_tokens). */
MOE_API moe_status moe_layer_forward(moe_layer *layer, const moe_layer_io *io, void *workspace, size_t workspace_bytes,
                                     void *stream);

/* ---------------------------------------------------------------------------------------------------------
 * Expert parallelism (docs/ep.md): one MoE layer over several ranks, each holding a slice of the experts
 * ------------------------------------------------------------------------------------------------------- */

/* A group of ranks that exchange tokens. A rank's context decides the transport: CPU contexts move host buffers
 * (over MPI, or through shared memory between the threads of one process), CUDA contexts move device buffers over
 * NCCL. Every collective call (moe_ep_create, moe_ep_forward) must be made by all ranks of the group, in the same
 * order. */
typedef struct moe_comm moe_comm;

/* Whether this build of libmoe has the MPI transport (moe_comm_create_mpi). */
MOE_API int moe_built_with_mpi(void);

/* This process's rank in MPI_COMM_WORLD (launched by `mpirun -np N`; several nodes work the same way). CUDA
 * contexts: an NCCL communicator bootstrapped through MPI (pick each rank's GPU in its context options, e.g. from
 * OMPI_COMM_WORLD_LOCAL_RANK). MPI is initialised here when the caller has not done it, and finalised when that
 * comm is destroyed. */
MOE_API moe_status moe_comm_create_mpi(moe_ctx *ctx, moe_comm **comm);

/* One process driving n ranks: comms[i] is rank i of n on ctxs[i] (n distinct contexts: all CPU contexts, or all
 * CUDA contexts on distinct GPUs: NCCL). Each rank's collective calls must then come from a thread of its own. The contexts'
 * errors name the failing rank. */
MOE_API moe_status moe_comm_create_local(moe_ctx *const *ctxs, int n, moe_comm **comms);
MOE_API void moe_comm_destroy(moe_comm *comm); /* NULL is fine */
MOE_API int moe_comm_rank(const moe_comm *comm);
MOE_API int moe_comm_size(const moe_comm *comm);
MOE_API moe_ctx *moe_comm_ctx(const moe_comm *comm); /* the context the comm was made for */
/* A collective that waits longer than this for a peer fails with MOE_ERR_COMM (and, on NCCL, aborts the
 * communicator: the comm is unusable afterwards). Default 60 s; MOE_COMM_TIMEOUT_S in the environment sets it.
 * Longer than MOE_COMM_TIMEOUT_MAX_S (a week) counts as that; zero, negative or NaN leaves it as it was. */
#define MOE_COMM_TIMEOUT_MAX_S 604800.0
MOE_API void moe_comm_set_timeout(moe_comm *comm, double seconds);

/* Collective: every rank sends `bytes` bytes to every rank: send holds size blocks (block p goes to rank p), recv
 * gets block p from rank p; context memory; CPU: done on return, CUDA: ordered on stream. The transport's plain
 * all-to-all, the yardstick of `moe bench ep`. */
MOE_API moe_status moe_comm_alltoall(moe_comm *comm, const void *send, size_t bytes, void *recv, void *stream);

typedef enum moe_ep_backend {
    MOE_EP_ALL_TO_ALL = 0,   /* normal mode: each token travels once to every rank that owns one of its experts,
                              * expert outputs travel back to the token's rank, which combines them in slot order */
    MOE_EP_ALLGATHER,        /* the simple alternative: all-gather the tokens, every rank runs its experts on
                              * all of them, reduce-scatter the partial sums (f32; equal to the layer within
                              * rounding, not bit for bit) */
    MOE_EP_LOW_LATENCY       /* decode: the all-to-all with buffers of a fixed size (max_tokens records to every
                              * peer, max_tokens k rows back), so that nothing waits for the host and a forward
                              * can be captured in a CUDA graph; kernels are chosen for N max_tokens tokens (the
                              * layer's bits when every rank passes max_tokens tokens) */
} moe_ep_backend;

typedef struct moe_ep_config {
    moe_layer_config layer;  /* the whole layer; layer.router.n_experts E must be a multiple of the ranks */
    moe_ep_backend backend;
    moe_dtype wire;          /* the tokens on the wire: layer.dtype (0 means that), or MOE_DTYPE_FP8_E4M3
                              * (bf16 layers: 1x128 groups with f32 scales, dequantised on arrival) */
    int64_t max_tokens;      /* the most tokens one rank passes to a forward (sizes the buffers) */
    int n_physical;          /* expert slots over all ranks, E plus replicas (EPLB), a multiple of the ranks, at
                              * most MOE_EPLB_MAX_SLOTS; 0 means E. At creation slot p holds logical expert p mod E */
} moe_ep_config;

typedef struct moe_ep moe_ep;

/* Collective. Rank r holds slots [r S, (r+1) S), S = n_physical / N: weights.w13, w2, b13, b2 are the weights of
 * the logical experts in those slots only ((S, 2I, H), ...; without replicas, experts [r E/N, (r+1) E/N)); the
 * router weights and the shared experts are whole on every rank. Configs that differ
 * between ranks are an error on every rank, naming the field. The layer keeps the pointers; its buffers
 * (for max_tokens) are allocated here. */
MOE_API moe_status moe_ep_create(moe_comm *comm, const moe_ep_config *config, const moe_layer_weights *weights,
                                 moe_ep **ep);
MOE_API void moe_ep_destroy(moe_ep *ep);

/* Collective: out = MoE(x) for this rank's T tokens (T may differ between ranks, 0 included). All-to-all: the
 * same bits as moe_layer_forward on one device over all ranks' tokens (the GPU: given the router logits, see
 * docs/ep.md); the token counts are exchanged through the host, so this call waits for the device once. Low
 * latency: no wait, capturable. */
MOE_API moe_status moe_ep_forward(moe_ep *ep, const moe_layer_io *io, void *stream);

/* Where the time of the last forward went, in ms, when profiling is on (GPU: CUDA events between the phases,
 * read by moe_ep_last_timing, which waits for them). All-to-all phases; the all-gather backend reports route,
 * counts, dispatch (the all-gather), experts, combine (partial sums + reduce-scatter) and finish. */
typedef struct moe_ep_timing {
    double route_ms;     /* gate logits, router, slot and token destinations, their permutations */
    double pack_ms;      /* FP8 quantisation and the records */
    double counts_ms;    /* the counts' all-gather and the one wait for the device */
    double dispatch_ms;  /* the tokens' exchange */
    double experts_ms;   /* unpack, the experts, the gather of the rows to send back */
    double combine_ms;   /* the rows' exchange back */
    double finish_ms;    /* the weighted sum in slot order and the shared experts' join */
    int64_t dispatch_bytes, combine_bytes; /* sent to other ranks by this rank */
    int64_t tokens_in;   /* tokens this rank's experts received */
} moe_ep_timing;
MOE_API moe_status moe_ep_set_profiling(moe_ep *ep, int on);

/* EPLB in the loop. Collective, between forwards: the logical experts' load that the ranks' routers counted since
 * the last rebalance, summed over the ranks, goes through EPLB (moe_eplb_plan: one layer, n_physical slots, a
 * GPU a rank); expert weights move to their new slots, rewriting the buffers weights.w13, w2, b13, b2 given at
 * creation (which must be writable); every slot's checksum after the move must equal its expert's before it
 * (else MOE_ERR_COMM on every rank); the counters restart. The replica of a (token, slot) is then chosen as
 * moe_eplb_map does. balance_before / _after (may be NULL): mean / max over the ranks of the load their slots
 * get, each expert's load split evenly over its replicas. Waits for the device. */
MOE_API moe_status moe_ep_rebalance(moe_ep *ep, double *balance_before, double *balance_after, void *stream);
/* The logical expert of every slot (n_physical entries, host memory). */
MOE_API moe_status moe_ep_placement(moe_ep *ep, int32_t *phy2log);
MOE_API moe_status moe_ep_last_timing(moe_ep *ep, moe_ep_timing *timing);

#ifdef __cplusplus
}
#endif

#endif /* MOE_H */
