/* bench/micro/micro.cuh — what the hand-built micro benchmarks of bench/micro share: a CUDA call's check (prints
 * and returns 1 from the calling function) and the cp.async copies, commit and wait. */
#ifndef MOE_BENCH_MICRO_CUH
#define MOE_BENCH_MICRO_CUH

#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e = (x);                                                                                           \
        if (e != cudaSuccess) {                                                                                        \
            printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));                                           \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* 16 bytes global -> shared, L2 only (cg) or through L1 (ca); 4 bytes through L1 */
__device__ __forceinline__ void cp16(uint32_t s, const void *g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
}
__device__ __forceinline__ void cp16ca(uint32_t s, const void *g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
}
__device__ __forceinline__ void cp4(uint32_t s, const void *g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(g));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void waitg() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

#endif /* MOE_BENCH_MICRO_CUH */
