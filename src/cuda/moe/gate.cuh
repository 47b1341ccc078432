/* gate.cuh — the router's logits on the GPU: logits (T, E) = x (T, H) bf16 . gate (E, H)^T f32 (+ gate_bias),
 * summed in f32; and Qwen2-MoE's shared-expert scale sigmoid(x . shared_gate) (T) in the same pass. C linkage:
 * the layer calls it, and tests/test_gpu_layer.c checks it against a float64 sum. */
#ifndef MOE_CUDA_MOE_GATE_CUH
#define MOE_CUDA_MOE_GATE_CUH

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x: bf16 rows. gate may be NULL (E = 0: only the shared scale); shared_gate may be NULL. H a multiple of 8, rows
 * 16-byte aligned. partial: scratch of moe__gate_partial_rows(T, H) x (E + 1) floats (layer.h). alone: no other
 * kernel runs beside this one (then a thread block cluster may add the splits' sums, gate.cu). stream: a
 * cudaStream_t, NULL for the context's. Deterministic: every output is summed in one fixed order. */
moe_status moe__cuda_gate_logits(moe_ctx *ctx, const void *x, const float *gate, const float *gate_bias,
                                 const float *shared_gate, int64_t T, int H, int E, float *logits,
                                 float *shared_scale, float *partial, bool alone, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* MOE_CUDA_MOE_GATE_CUH */
