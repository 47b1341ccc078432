/* bench/micro/w4a8_probe.cu — the instruction cost of a W4A8 decode step on the FP8 tensor cores, before building
 * the kernel (docs/performance.md, "Since 35d021b"). Compile only; it is not run and not part of the build:
 *   nvcc -O3 -arch=sm_90a -cubin -o /tmp/w4a8.cubin bench/micro/w4a8_probe.cu && cuobjdump -sass /tmp/w4a8.cubin
 * A warpgroup streams 64 weight rows: per 128-wide K block each thread takes its rows r and r + 8 of four 32-code
 * groups with two ldmatrix (the 8 x 16-byte matrices are the groups, so thread (g, q) gets codes 8q .. 8q + 7 of
 * each), turns each word of 8 E2M1 codes into two words of E4M3 bytes (codes 0, 2, 4, 6 and 1, 3, 5, 7: the code's
 * value times 2^-6, exactly), and runs one wgmma m64n8k32 a group with A in registers and the tokens' codes as B
 * from shared memory (a descriptor; here a stand-in), each group's product into its own accumulator, added to the
 * sum times the rows' E8M0 block scales (stand-in words) while the next group's wgmma runs. Missing from a kernel:
 * the cp.async ring, the tokens' staging in the permuted K order, the activations' 1x128 scales, the epilogue. */
#include <cstdint>

/* d = A (64 x 32, registers: a0 / a2 row r, a1 / a3 row r + 8) . B (8 x 32, descriptor)^T (+ d when acc) */
__device__ __forceinline__ void wgmma_m64n8k32_e4m3_ra(float (&d)[4], const uint32_t (&a)[4], uint64_t db, int acc) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* E2M1 codes 0, 2, 4, 6 (even) and 1, 3, 5, 7 (odd) of word w as E4M3 bytes, each the code's value times 2^-6 */
__device__ __forceinline__ uint32_t e4m3_even(uint32_t w) { return ((w << 4) & 0x80808080u) | ((w << 2) & 0x1C1C1C1Cu); }
__device__ __forceinline__ uint32_t e4m3_odd(uint32_t w) { return (w & 0x80808080u) | ((w >> 2) & 0x1C1C1C1Cu); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

extern "C" __global__ void __launch_bounds__(128) w4a8_probe(const uint32_t *scales, float *out, int nblocks,
                                                             uint64_t db0) {
    extern __shared__ uint4 smem[];
    const uint32_t base = (uint32_t)__cvta_generic_to_shared(smem) + threadIdx.x * 16;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, part[2][4];
    for (int b = 0; b < nblocks; b++) {
        uint32_t w0[4], w1[4]; /* rows r and r + 8: a word of 8 codes of each of the block's 4 groups */
        ldmatrix_x4(w0, base + b * 4096);
        ldmatrix_x4(w1, base + b * 4096 + 2048);
        const uint32_t sw = scales[b * 128 + threadIdx.x]; /* the rows' E8M0 scales (a stand-in layout) */
        auto scale = [&](int j, int row) { return __uint_as_float(((sw >> (8 * j + 4 * row)) & 0xFF) << 23); };
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t a[4] = {e4m3_even(w0[j]), e4m3_even(w1[j]), e4m3_odd(w0[j]), e4m3_odd(w1[j])};
            wgmma_fence();
            wgmma_m64n8k32_e4m3_ra(part[j & 1], a, db0 + (uint64_t)(b * 4 + j) * 2, 0);
            wgmma_commit();
            if (j) { /* group j - 1's product, while group j's runs */
                wgmma_wait<1>();
#pragma unroll
                for (int e = 0; e < 4; e++) acc[e] = __fmaf_rn(part[(j - 1) & 1][e], scale(j - 1, e >> 1), acc[e]);
            }
        }
        wgmma_wait<0>();
#pragma unroll
        for (int e = 0; e < 4; e++) acc[e] = __fmaf_rn(part[1][e], scale(3, e >> 1), acc[e]);
    }
    for (int e = 0; e < 4; e++) out[threadIdx.x * 4 + e] = acc[e];
}
