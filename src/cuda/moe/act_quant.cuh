/* act_quant.cuh — W8A8 inputs (docs/layer.md §6) quantised in 1x128 FP8 groups: as bf16 values for the kernels
 * that read bf16 A (the SMALL and MEDIUM tiles, other GPUs), or as codes and scales for the FP8 decode kernel. */
#ifndef MOE_CUDA_MOE_ACT_QUANT_CUH
#define MOE_CUDA_MOE_ACT_QUANT_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/internal.h"

/* out (rows, cols) = bf16(dequant(quant(x))) group by group: each row's 1x128 groups get their scale by `rule`
 * from the group's amax (raised to amax_floor), E4M3 codes, then code * scale rounded once to bf16. x is bf16 or
 * f32 (x_dtype). rows: the rows to cover; live_rows: a device count that may cut them short (the permutation's
 * offsets[E]), or NULL. cols a multiple of 8, rows 16-byte aligned. */
moe_status moe__cuda_act_fake_quant(moe_ctx *ctx, const void *x, moe_dtype x_dtype, __nv_bfloat16 *out, int64_t rows,
                                    const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                                    cudaStream_t stream);

/* The same groups as codes: codes (rows, cols) E4M3 and scales[(c / 128) * scale_ld + r] f32 (the W8A8 GEMMs' A
 * layout for rows that are not gathered). */
moe_status moe__cuda_act_quant(moe_ctx *ctx, const float *x, uint8_t *codes, float *scales, int64_t scale_ld,
                               int64_t rows, const int64_t *live_rows, int cols, moe_scale_rule rule, float amax_floor,
                               cudaStream_t stream);

#endif /* MOE_CUDA_MOE_ACT_QUANT_CUH */
