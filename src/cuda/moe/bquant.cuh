/* bquant.cuh — quantised expert weights (B) in the grouped GEMM (grouped_gemm.cu): how a K step of codes is staged
 * in shared memory, and how a thread turns codes and block scales into the bf16 B fragments of mma.sync m16n8k16
 * in registers. Device code only.
 *
 * The codes of a K step (BK per B row: bytes for FP8, half bytes for FP4) arrive by cp.async in rows padded to an
 * odd number of 16-byte units, so the 8 rows a fragment load touches fall in 8 distinct bank groups. A thread's
 * fragment for (B row n, k16 step at kk) holds k = kk + 2q, 2q+1 and kk + 8 + 2q, 9 + 2q (q = lane % 4): two
 * 2-byte reads (FP8) or two 1-byte reads (FP4, two codes a byte, low nibble first). Each weight becomes
 * bf16(code * block scale): FP8 through f32 (one rounding for f32 scales, exact for E8M0), FP4 through a 256-entry
 * table of bf16 code pairs times the scale in bf16 (exact: E8M0 and E4M3 scales times E2M1 codes fit bf16). The
 * scales a thread needs for the next K step are loaded one step ahead, into registers. */
#ifndef MOE_CUDA_MOE_BQUANT_CUH
#define MOE_CUDA_MOE_BQUANT_CUH

#include "cuda/common/cuda.cuh"
#include "cuda/moe/grouped_gemm.cuh"

template <class C, int F> struct bquant_config {
    static constexpr bool FP4 = F == MOE_B_E2M1_E8M0 || F == MOE_B_E2M1_E4M3;
    static constexpr int ROW_BYTES = FP4 ? C::BK / 2 : C::BK;         /* codes of one B row of a K step */
    static constexpr int STRIDE = (ROW_BYTES / 16) % 2 ? ROW_BYTES + 32 : ROW_BYTES + 16; /* odd x 16 bytes */
    static constexpr int CHUNKS = ROW_BYTES / 16;                      /* 16-byte chunks a row */
    static constexpr int PER = (C::BN * CHUNKS + C::THREADS - 1) / C::THREADS; /* chunks a thread copies */
    static constexpr int KSUB = C::KW / 16;                            /* k16 steps of a warp in a K step */
    static constexpr size_t SMEM = (size_t)C::STAGES * C::BM * C::LDS * 2 + (size_t)C::STAGES * C::BN * STRIDE +
                                   (FP4 ? 256 * 4 : 0);
    static_assert(CHUNKS >= 1 && C::THREADS % CHUNKS == 0 && (STRIDE / 16) % 2 == 1, "quantised staging");
};

/* The stored scale at index i, raw (f32 bits or one byte); 0 where there is none. */
template <int F> __device__ __forceinline__ uint32_t bq_scale_raw(const void *base, int64_t i, bool valid) {
    if (!valid) return 0;
    if (F == MOE_B_E4M3_F32) return __ldg(reinterpret_cast<const uint32_t *>(base) + i);
    return __ldg(reinterpret_cast<const uint8_t *>(base) + i);
}

/* A raw scale as f32. E8M0 0x00 stands for 2^-127 (and 0 only when there is no scale: padding reads zeros). */
template <int F> __device__ __forceinline__ float bq_scale_f32(uint32_t raw) {
    if (F == MOE_B_E4M3_F32) return __uint_as_float(raw);
    if (F == MOE_B_E2M1_E4M3) return moe_decode((uint8_t)raw, MOE_DTYPE_E4M3);
    return moe_decode((uint8_t)raw, MOE_DTYPE_E8M0);
}

/* The 256-entry table: byte b (codes b & 15, b >> 4) as a bf16 pair, written by the CTA's threads. */
__device__ __forceinline__ void bq_fp4_table(uint32_t *lut, int tid, int threads) {
    for (int b = tid; b < 256; b += threads) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(moe_e2m1_value((uint32_t)b), moe_e2m1_value((uint32_t)b >> 4));
        lut[b] = *reinterpret_cast<const uint32_t *>(&v);
    }
}

__device__ __forceinline__ uint32_t bq_pack(float a, float b) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* Two FP8 codes (low byte first) times s as a bf16 pair. */
__device__ __forceinline__ uint32_t bq_fp8_pair(uint32_t codes, float s) {
    const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)codes, __NV_E4M3));
    const float2 f = __half22float2(h);
    return bq_pack(f.x * s, f.y * s);
}

/* Two FP4 codes (one byte) times the bf16 pair s2 (the scale twice): exact. */
__device__ __forceinline__ uint32_t bq_fp4_pair(const uint32_t *lut, uint32_t byte, __nv_bfloat162 s2) {
    const uint32_t v = lut[byte];
    const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&v), s2);
    return *reinterpret_cast<const uint32_t *>(&r);
}

/* The B fragment of one k16 step at kk (elements from the staged row's start) of staged row `row`, scale raw. */
template <int F>
__device__ __forceinline__ void bq_fragment(const uint8_t *row, int kk, int q, uint32_t raw, const uint32_t *lut,
                                            uint32_t (&b)[2]) {
    const float s = bq_scale_f32<F>(raw);
    if (F == MOE_B_E2M1_E8M0 || F == MOE_B_E2M1_E4M3) {
        const __nv_bfloat162 s2 = __float2bfloat162_rn(s); /* exact: E8M0 and E4M3 values are bf16 values */
        b[0] = bq_fp4_pair(lut, row[kk / 2 + q], s2);
        b[1] = bq_fp4_pair(lut, row[kk / 2 + 4 + q], s2);
    } else {
        b[0] = bq_fp8_pair(*reinterpret_cast<const uint16_t *>(row + kk + 2 * q), s);
        b[1] = bq_fp8_pair(*reinterpret_cast<const uint16_t *>(row + kk + 8 + 2 * q), s);
    }
}

#endif /* MOE_CUDA_MOE_BQUANT_CUH */
