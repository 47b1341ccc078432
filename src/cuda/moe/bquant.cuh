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
#include "cuda/common/mma.cuh"
#include "cuda/moe/gemm_tile.cuh"

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

/* ---- conversion into a bf16 tile in shared memory, once per CTA ---- */

/* A CTA of THREADS threads stages the codes of BN B rows x BK (one K step) and converts them: thread tid owns the
 * 16-byte code chunk tid % CHUNKS of the rows (tid + i THREADS) / CHUNKS, 16 (FP8) or 32 (FP4) elements. */
template <int BN_, int BK_, int THREADS_, int F_> struct bq_tile {
    static constexpr int BN = BN_, BK = BK_, THREADS = THREADS_, F = F_;
    static constexpr bool FP4 = F == MOE_B_E2M1_E8M0 || F == MOE_B_E2M1_E4M3;
    static constexpr int ROW_BYTES = FP4 ? BK / 2 : BK, CHUNKS = ROW_BYTES / 16, ELEMS = FP4 ? 32 : 16;
    static constexpr int PER = (BN * CHUNKS + THREADS - 1) / THREADS, SUB = ELEMS / 16; /* scales a chunk */
    static constexpr size_t STAGE = (size_t)BN * ROW_BYTES; /* bytes of codes a stage */
    static_assert(CHUNKS >= 1 && THREADS % CHUNKS == 0, "quantised tile");
    const uint8_t *src[PER]; /* the chunk in step 0, or NULL past N */
    int64_t row[PER];        /* its B row, -1 past N or past the tile */
    const char *scale;       /* the group's scales */
    uint32_t sc[PER][SUB], next[PER][SUB]; /* raw scales of the step being converted, and of the one after */
};

template <class T, bool kGlu>
__device__ __forceinline__ void bq_tile_init(T &q, const moe_gemm_params &p, const moe_gemm_tile &t, int tid) {
    const int64_t row_bytes = T::FP4 ? p.k / 2 : p.k;
    const uint8_t *b = reinterpret_cast<const uint8_t *>(p.b) +
                       t.group * (T::FP4 ? p.b_group_stride / 2 : p.b_group_stride);
#pragma unroll
    for (int i = 0; i < T::PER; i++) {
        const int s = (tid + i * T::THREADS) / T::CHUNKS;
        q.row[i] = s < T::BN ? moe_gemm_b_index<kGlu>(p, t, T::BN, s) : -1;
        q.src[i] = q.row[i] >= 0 ? b + q.row[i] * row_bytes + (tid % T::CHUNKS) * 16 : nullptr;
    }
    q.scale = reinterpret_cast<const char *>(p.bs.scale) + t.group * p.bs.group_stride * (T::F == MOE_B_E4M3_F32 ? 4 : 1);
}

/* cp.async of K step kt's codes into `stage` (rows of ROW_BYTES); chunks past N or K read as zeros. */
template <class T>
__device__ __forceinline__ void bq_tile_copy(const T &q, uint8_t *stage, int kt, const moe_gemm_params &p, int tid) {
    const int qc = tid % T::CHUNKS;
    const bool in_k = kt * T::BK + qc * T::ELEMS < p.k; /* K is a multiple of 32: a chunk is all in or out */
#pragma unroll
    for (int i = 0; i < T::PER; i++) {
        const int s = (tid + i * T::THREADS) / T::CHUNKS;
        if (s >= T::BN) continue;
        const bool in = q.src[i] && in_k;
        moe_cp_async16(stage + s * T::ROW_BYTES + qc * 16,
                       in ? (const void *)(q.src[i] + (int64_t)kt * T::ROW_BYTES) : (const void *)p.a, in ? 16 : 0);
    }
}

/* The raw scales of K step kt's chunks into dst (0 past N and past K). */
template <class T>
__device__ __forceinline__ void bq_tile_scales(const T &q, int kt, const moe_gemm_params &p, int tid,
                                               uint32_t (&dst)[T::PER][T::SUB]) {
#pragma unroll
    for (int i = 0; i < T::PER; i++)
#pragma unroll
        for (int j = 0; j < T::SUB; j++) {
            const int k = kt * T::BK + (tid % T::CHUNKS) * T::ELEMS + 16 * j;
            dst[i][j] = bq_scale_raw<T::F>(q.scale, (q.row[i] >> p.bs.row_shift) * p.bs.cols + (k >> p.bs.col_shift),
                                           q.row[i] >= 0 && k < p.k);
        }
}

/* Converts the staged codes (stage as bq_tile_copy wrote it) with the scales q.sc: the 16-byte output chunk h
 * (8 bf16: elements 8 h .. 8 h + 7 of the thread's chunk) of tile row s goes to out(s, c) for the row's chunk
 * index c = qc ELEMS / 8 + h. */
template <class T, class Out>
__device__ __forceinline__ void bq_tile_convert(const T &q, const uint8_t *stage, int tid, Out out) {
    const int qc = tid % T::CHUNKS;
#pragma unroll
    for (int i = 0; i < T::PER; i++) {
        const int s = (tid + i * T::THREADS) / T::CHUNKS;
        if (s >= T::BN) continue;
        const uint4 w = *reinterpret_cast<const uint4 *>(stage + s * T::ROW_BYTES + qc * 16);
        const uint32_t word[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int h = 0; h < T::ELEMS / 8; h++) { /* 8 elements: FP4 one word, FP8 two */
            const float sc = bq_scale_f32<T::F>(q.sc[i][h * 8 / 16]);
            uint4 o;
            uint32_t *ov = &o.x;
#pragma unroll
            for (int e = 0; e < 4; e++) { /* element pairs 2e, 2e + 1 of the 8 */
                if (T::FP4) {
                    const uint32_t byte = (word[h] >> (8 * e)) & 0xFF;
                    ov[e] = bq_pack(moe_e2m1_value(byte) * sc, moe_e2m1_value(byte >> 4) * sc);
                } else {
                    ov[e] = bq_fp8_pair((word[2 * h + e / 2] >> (16 * (e % 2))) & 0xFFFF, sc);
                }
            }
            *out(s, qc * (T::ELEMS / 8) + h) = o;
        }
    }
}

#endif /* MOE_CUDA_MOE_BQUANT_CUH */
