/* layer_experts.cuh — what layer.cu takes from layer_experts.cu (the expert GEMMs, their tile and their plan);
 * moe/layer.h declares the stages both files implement for the CPU side and expert parallelism. */
#ifndef MOE_CUDA_MOE_LAYER_EXPERTS_CUH
#define MOE_CUDA_MOE_LAYER_EXPERTS_CUH

#include <cuda_runtime.h>

#include "moe/layer.h"

/* The permutation of the routed experts' rows for a step planned for plan_tokens tokens (tiles as the grouped GEMM
 * will pick them), over the layer's local experts, into the scratch. */
void moe__cuda_layer_plan(const moe_layer *l, int64_t plan_tokens, const moe_layer_scratch *s, char *ws,
                          moe_permute_config *pc, moe_permute_outputs *po);

/* Whether the routed GEMMs of a step of T tokens read W8A8's x as codes and scales (the FP8 kernels' tiles), which
 * the forward then makes: in the gate at decode (T <= MOE_GATE_GROUP, the gate first), else on the side stream
 * (moe__cuda_layer_quantize_x into s->xq, s->xs). */
bool moe__cuda_layer_x_codes(const moe_layer *l, int64_t T);
moe_status moe__cuda_layer_quantize_x(moe_layer *l, const void *x, int64_t T, const moe_layer_scratch *s, char *ws,
                                      cudaStream_t st);

/* Quantised shared experts (docs/layer.md §5): S experts of every token through the routed experts' GEMMs, so that
 * every weight format and W8A8 take the same kernels (FP8 tensor cores and decode kernels included). Their plan puts
 * token t of expert s at row s Tp + t (Tp: T padded to the tile), and y leaves in those rows of s->shared_y, which
 * s->shared_offsets (S + 1) locates. x_codes: W8A8's x codes are in s->xq already, made earlier on this stream. */
moe_status moe__cuda_layer_shared_quantized(moe_layer *l, const void *x, int64_t T, bool x_codes,
                                            const moe_layer_scratch *s, char *ws, cudaStream_t side);

#endif /* MOE_CUDA_MOE_LAYER_EXPERTS_CUH */
