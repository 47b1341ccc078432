/* mma.cuh — the tensor-core building blocks of the portable (sm_80+) GEMMs: cp.async with zero fill, ldmatrix,
 * and mma.sync m16n8k16 bf16 -> f32. */
#ifndef MOE_CUDA_COMMON_MMA_CUH
#define MOE_CUDA_COMMON_MMA_CUH

#include <stdint.h>

/* 16 bytes global -> shared (a shared-window address), asynchronously, through L2 only; bytes < 16 fills the rest
 * with zeros (0: all zeros). */
__device__ __forceinline__ void moe_cp_async16_to(uint32_t smem, const void *gmem, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes));
}
/* The same under an L2 eviction policy (sm90.cuh's moe_l2_evict_last) for the lines it reads. */
__device__ __forceinline__ void moe_cp_async16_hint(uint32_t smem, const void *gmem, int bytes, uint64_t policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(smem), "l"(gmem),
                 "r"(bytes), "l"(policy));
}
/* The same to a generic pointer into shared memory. */
__device__ __forceinline__ void moe_cp_async16(void *smem, const void *gmem, int bytes) {
    moe_cp_async16_to((uint32_t)__cvta_generic_to_shared(smem), gmem, bytes);
}

/* 4 bytes global -> shared (a scale), asynchronously; bytes 0 writes zeros. */
__device__ __forceinline__ void moe_cp_async4(uint32_t smem, const void *gmem, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem), "l"(gmem), "r"(bytes));
}

__device__ __forceinline__ void moe_cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N> __device__ __forceinline__ void moe_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Four 8x8 b16 matrices from shared memory (each lane gives one row address: a shared::cta address, or a
 * generic pointer into shared memory). */
__device__ __forceinline__ void moe_ldmatrix_x4(uint32_t (&r)[4], uint32_t smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem));
}
__device__ __forceinline__ void moe_ldmatrix_x4(uint32_t (&r)[4], const void *smem) {
    moe_ldmatrix_x4(r, (uint32_t)__cvta_generic_to_shared(smem));
}

/* PTX prmt in its default mode: byte i of the result is byte sel[4i .. 4i + 3] of the pair (b:a). */
__device__ __forceinline__ uint32_t moe_prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

/* d += a (16x16, row) * b (16x8, col): bf16 inputs, f32 accumulators. */
__device__ __forceinline__ void moe_mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#endif /* MOE_CUDA_COMMON_MMA_CUH */
