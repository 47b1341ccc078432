/* gate.cuh — the router's logits on the GPU: logits (T, E) = x (T, H) bf16 . gate (E, H)^T (+ gate_bias), the gate
 * in f32 or bf16, summed in f32; and Qwen2-MoE's shared-expert scale sigmoid(x . shared_gate) (T) in the same pass.
 * C linkage: the layer calls it, and tests/test_gpu_gate.c checks it against a float64 sum. */
#ifndef MOE_CUDA_MOE_GATE_CUH
#define MOE_CUDA_MOE_GATE_CUH

#include "core/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* W8A8's x codes written by the CUDA-core kernel (T < MOE_GATE_MANY_T) on its way, for the FP8 kernels that read x:
 * codes (T, H) E4M3 and scales (T, ceil(H / 128)) f32, 1x128 groups whose scale comes by `rule` from the group's
 * amax raised to amax_floor; the same bits as moe_quantize in that format (moe_act_quant_group). */
typedef struct moe_gate_x_codes {
    uint8_t *codes;
    float *scales;
    moe_scale_rule rule;
    float amax_floor;
} moe_gate_x_codes;

/* x: bf16 rows. gate and shared_gate in gate_dtype (MOE_DTYPE_F32 or MOE_DTYPE_BF16: for finite x, the same bits
 * for the same values); gate may be NULL (E = 0: only the shared scale); shared_gate may be NULL. H a multiple of 8,
 * rows 16-byte aligned. partial: scratch of moe__gate_partial_rows(T, H) x (E + 1) floats (layer.h). alone: no other
 * kernel runs beside this one (then a thread block cluster may add the splits' sums, gate.cu). x_codes: NULL, or
 * where x's W8A8 codes go (T < MOE_GATE_MANY_T only: else MOE_ERR_UNSUPPORTED). stream: a cudaStream_t, NULL for
 * the context's. Deterministic: every output is summed in one fixed order. */
moe_status moe__cuda_gate_logits(moe_ctx *ctx, const void *x, const void *gate, moe_dtype gate_dtype,
                                 const float *gate_bias, const void *shared_gate, int64_t T, int H, int E,
                                 float *logits, float *shared_scale, float *partial, bool alone,
                                 const moe_gate_x_codes *x_codes, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* MOE_CUDA_MOE_GATE_CUH */
