/* gate.cuh — the router's logits on the GPU: logits (T, E) = x (T, H) bf16 . gate (E, H)^T f32 (+ gate_bias),
 * summed in f32; and Qwen2-MoE's shared-expert scale sigmoid(x . shared_gate) (T) in the same pass. */
#ifndef MOE_CUDA_MOE_GATE_CUH
#define MOE_CUDA_MOE_GATE_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/internal.h"

/* gate may be NULL (E = 0: only the shared scale); shared_gate may be NULL. H a multiple of 8, rows 16-byte
 * aligned. partial: scratch of moe__gate_partial_rows(T, H) x (E + 1) floats (layer.h). alone: no other kernel
 * runs beside this one (then a thread block cluster may add the splits' sums, gate.cu). Deterministic: every
 * output is summed in one fixed order. */
moe_status moe__cuda_gate_logits(moe_ctx *ctx, const __nv_bfloat16 *x, const float *gate, const float *gate_bias,
                                 const float *shared_gate, int64_t T, int H, int E, float *logits,
                                 float *shared_scale, float *partial, bool alone, cudaStream_t stream);

#endif /* MOE_CUDA_MOE_GATE_CUH */
