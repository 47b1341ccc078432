/* bquant.cuh — quantised expert weights (B) in the grouped GEMM (grouped_gemm.cu, grouped_gemm_sm90.cu): the codes
 * of each K step take B's place in the cp.async pipeline, and become bf16 in one of two ways.
 *  - In registers (bq_regs): the SMALL tile of decode, whose warps share no B row, turns each thread's codes into
 *    its mma.sync fragments directly.
 *  - In shared memory (bq_tile): tiles whose warps share B rows (MEDIUM, LARGE, the wgmma tile) convert each K step
 *    once per CTA into a bf16 tile, which their warps then read as they read bf16 weights; each weight becomes
 *    bf16(code * block scale) there (one rounding for f32 scales, exact for E8M0 and for E2M1 codes).
 * K is a multiple of 32, so a 16-byte chunk of codes is all inside K or all outside. Device code only. */
#ifndef MOE_CUDA_MOE_BQUANT_CUH
#define MOE_CUDA_MOE_BQUANT_CUH

#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/moe/gemm_tile.cuh"

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

__device__ __forceinline__ uint32_t bq_pack(float a, float b) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t *>(&v);
}

/* Two FP8 codes as a bf16 pair scaled by 2^-112, exactly and with no arithmetic: the hardware's E4M3 -> f16 (every
 * E4M3 value, subnormals included, is a normal f16), then the f16 fields read as bf16 fields (exponent bias 15 in
 * place of 127). NaN codes come out finite. */
__device__ __forceinline__ uint32_t bq_fp8_pair_2m112(uint32_t codes) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)codes, __NV_E4M3);
    const uint32_t u = (uint32_t)h.x | (uint32_t)h.y << 16;
    return ((u >> 3) & 0x0FFF0FFFu) | (u & 0x80008000u);
}

/* Two FP8 codes (low byte first) times s as a bf16 pair: the codes' values exactly (E4M3 -> f16 -> f32), times s
 * in f32, rounded to bf16. (Measured on the H200 in the wide tiles: faster than reading the values out of
 * bq_fp8_pair_2m112's bits with integer operations.) */
__device__ __forceinline__ uint32_t bq_fp8_pair(uint32_t codes, float s) {
    const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)codes, __NV_E4M3));
    const float2 f = __half22float2(h);
    return bq_pack(f.x * s, f.y * s);
}

/* Eight FP4 codes (a word, code i in bits 4i..4i+3) as four bf16 pairs, exactly, with byte permutes: the bf16 bytes
 * of the magnitudes come from register tables; the signs from a permute whose selector keeps the code's sign bit,
 * which makes it copy a byte's sign bit across the byte (0x80 -> 0xFF for negative codes, 0x80 kept otherwise). */
__device__ __forceinline__ void bq_fp4x8(uint32_t w, uint32_t (&o)[4]) {
    /* bf16 of the E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6: low bytes, high bytes */
    const uint32_t lo0 = 0xC0800000u, lo1 = 0xC0804000u, hi0 = 0x3F3F3F00u, hi1 = 0x40404040u;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint32_t x = w >> (16 * h), m = x & 0x7777u; /* codes 4h .. 4h + 3; their magnitudes */
        const uint32_t sign = ((moe_prmt(0x80808080u, 0x80808080u, x) ^ 0x80808080u) & 0x40404040u) << 1;
        const uint32_t lo = moe_prmt(lo0, lo1, m), hi = moe_prmt(hi0, hi1, m) | sign;
        o[2 * h] = moe_prmt(lo, hi, 0x5140), o[2 * h + 1] = moe_prmt(lo, hi, 0x7362);
    }
}

/* A raw block scale as the bf16 pair (s, s): exact for E8M0 (2^-127 and NaN included) and E4M3 scales. */
template <int F> __device__ __forceinline__ __nv_bfloat162 bq_scale_bf16x2(uint32_t raw) {
    if (F == MOE_B_E2M1_E8M0) { /* 2^(e - 127) is bf16 exponent e; e = 0 the subnormal 0x0040, 0xFF NaN */
        const uint32_t b = raw == 0 ? 0x0040u : raw == 0xFF ? 0x7FC0u : raw << 7;
        const uint32_t v = b | b << 16;
        return *reinterpret_cast<const __nv_bfloat162 *>(&v);
    }
    return __float2bfloat162_rn(bq_scale_f32<F>(raw));
}

/* cp.async of K step kt's codes, for a staging T (bq_regs or bq_tile: thread tid copies 16-byte chunk
 * tid % CHUNKS of the rows (tid + i THREADS) / CHUNKS from q.src), into `stage` with rows kStride bytes apart;
 * chunks past N or K read as zeros (K is a multiple of 32: a chunk is all in or all out). */
template <class T, int kStride>
__device__ __forceinline__ void bq_copy_codes(const T &q, uint8_t *stage, int kt, const moe_gemm_params &p, int tid) {
    const int qc = tid % T::CHUNKS;
    const bool in_k = kt * T::BK + qc * T::ELEMS < p.k;
#pragma unroll
    for (int i = 0; i < T::PER; i++) {
        const int s = (tid + i * T::THREADS) / T::CHUNKS;
        if (s >= T::BN) continue;
        const bool in = q.src[i] && in_k;
        moe_cp_async16(stage + s * kStride + qc * 16,
                       in ? (const void *)(q.src[i] + (int64_t)kt * T::ROW_BYTES) : (const void *)p.a, in ? 16 : 0);
    }
}

/* ---- B fragments in registers: the SMALL tile (one warp row, so no B row is read by two warps) ----
 *
 * A K step of 128 is split over 4 warps of 32 columns (and the tile's B rows over WARPS_N warps). Thread q
 * (lane % 4) of a warp holds the natural columns 8q .. 8q + 7 of its 32 for both operands: register r of k16 step j
 * holds the column pair 8q + 4j + 2r, where the standard fragments hold 16j + 8r + 2q. A and B agree, so the sum
 * is the same, and each row is read with one load:
 * 16 bytes of A (rows padded to BK + 32 elements: the two rows of an 8-thread phase fall in distinct banks), 8 bytes
 * of FP8 or 4 of FP4 codes (rows padded so the rows of a phase do too).
 * FP4: codes become bf16 exactly (bq_fp4x8) and are multiplied by their block scale in bf16 (exact: E8M0 and E4M3
 * scales times E2M1 values fit bf16). FP8: codes become bf16 times 2^-112 (bq_fp8_pair_2m112); the step's products
 * are summed apart and added to the accumulators times 2^112 and the block scale of their column, in f32
 * (promotion, as DeepGEMM does; the warp's 32 columns lie in one block of every FP8 format). Products whose size
 * in code units are below 2^-14 may be flushed by the tensor cores (f32 subnormals). */
template <class C, int F_> struct bq_regs {
    static constexpr int F = F_, THREADS = C::THREADS, BN = C::BN, BK = C::BK, NI = C::NI;
    static constexpr bool FP4 = F == MOE_B_E2M1_E8M0 || F == MOE_B_E2M1_E4M3;
    static constexpr int ROW_BYTES = FP4 ? C::BK / 2 : C::BK, STRIDE = ROW_BYTES + (FP4 ? 16 : 32);
    static constexpr int LDA = C::BK + 32;                                   /* A row, elements */
    static constexpr int CHUNKS = ROW_BYTES / 16, PER = (C::BN * CHUNKS + C::THREADS - 1) / C::THREADS;
    static constexpr int ELEMS = FP4 ? 32 : 16;                              /* elements a 16-byte chunk */
    static constexpr int KS = FP4 ? 1 : 2; /* scales an n8 block: FP4 its fragment row's, FP8 its two columns' */
    static constexpr size_t SMEM = (size_t)C::STAGES * C::BM * LDA * 2 + (size_t)C::STAGES * C::BN * STRIDE;
    static_assert(C::WARPS_M != 1 || (C::BK == 128 && C::KW == 32 && C::THREADS % CHUNKS == 0), "register B");
    const uint8_t *src[PER];     /* the copy chunks in step 0, NULL past N */
    int32_t srow[C::NI][KS];     /* where the scale rows of the B rows this thread applies start; -1 past N */
    const char *scale;
    uint32_t sc[C::NI][KS], next[C::NI][KS];
};

template <class R, bool kGlu>
__device__ __forceinline__ void bq_regs_init(R &q, const moe_gemm_params &p, const moe_gemm_tile &t, int tid,
                                             int lane, int wn0) {
    const int64_t row_bytes = R::FP4 ? p.k / 2 : p.k;
    const uint8_t *b = reinterpret_cast<const uint8_t *>(p.b) +
                       t.group * (R::FP4 ? p.b_group_stride / 2 : p.b_group_stride);
#pragma unroll
    for (int i = 0; i < R::PER; i++) {
        const int s = (tid + i * R::THREADS) / R::CHUNKS;
        const int64_t r = s < R::BN ? moe_gemm_b_index<kGlu>(p, t, R::BN, s) : -1;
        q.src[i] = r >= 0 ? b + r * row_bytes + (tid % R::CHUNKS) * 16 : nullptr;
    }
#pragma unroll
    for (int ni = 0; ni < R::NI; ni++)
#pragma unroll
        for (int c = 0; c < R::KS; c++) { /* FP4: the fragment row lane / 4; FP8: the columns 2 (lane % 4) + c */
            const int64_t r = moe_gemm_b_index<kGlu>(p, t, R::BN,
                                                     wn0 + ni * 8 + (R::FP4 ? lane >> 2 : 2 * (lane & 3) + c));
            q.srow[ni][c] = r >= 0 ? (int32_t)((r >> p.bs.row_shift) * p.bs.cols) : -1; /* a matrix's scales < 2^31 */
        }
    q.scale = reinterpret_cast<const char *>(p.bs.scale) +
              t.group * p.bs.group_stride * (R::F == MOE_B_E4M3_F32 ? 4 : 1);
}

/* The raw scales of K step kt this thread applies (0 past N and past K): at the thread's first column. */
template <class R>
__device__ __forceinline__ void bq_regs_scales(const R &q, int kt, const moe_gemm_params &p, int lane, int wk0,
                                               uint32_t (&dst)[R::NI][R::KS]) {
    const int k = kt * R::BK + wk0 + 8 * (lane & 3);
#pragma unroll
    for (int ni = 0; ni < R::NI; ni++)
#pragma unroll
        for (int c = 0; c < R::KS; c++)
            dst[ni][c] = bq_scale_raw<R::F>(q.scale, q.srow[ni][c] + (k >> p.bs.col_shift),
                                            q.srow[ni][c] >= 0 && k < p.k);
}

/* One K step of a warp: A rows (a: the stage's A tile, rows of LDA) from wm0, B rows (codes: the stage's code
 * rows) from wn0, its 32 columns from wk0; adds into acc (MI x NI mma tiles). */
template <class R, int MI>
__device__ __forceinline__ void bq_regs_step(const R &q, const __nv_bfloat16 *a, const uint8_t *codes, int lane,
                                             int wm0, int wn0, int wk0, float (&acc)[MI][R::NI][4]) {
    const int g = lane >> 2, c8 = 8 * (lane & 3);
    uint4 al[MI], ah[MI]; /* rows g and g + 8 of each m16 tile: the thread's 8 columns */
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
        al[mi] = *reinterpret_cast<const uint4 *>(a + (wm0 + mi * 16 + g) * R::LDA + wk0 + c8);
        ah[mi] = *reinterpret_cast<const uint4 *>(a + (wm0 + mi * 16 + g + 8) * R::LDA + wk0 + c8);
    }
#pragma unroll
    for (int ni = 0; ni < R::NI; ni++) {
        const uint8_t *row = codes + (wn0 + ni * 8 + g) * R::STRIDE;
        uint32_t b[4]; /* pairs 0..3 of the thread's 8 columns */
        if (R::FP4) {
            bq_fp4x8(*reinterpret_cast<const uint32_t *>(row + (wk0 + c8) / 2), b);
            const __nv_bfloat162 s2 = bq_scale_bf16x2<R::F>(q.sc[ni][0]);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&b[e]), s2);
                b[e] = *reinterpret_cast<const uint32_t *>(&v);
            }
        } else {
            const uint2 w = *reinterpret_cast<const uint2 *>(row + wk0 + c8);
            b[0] = bq_fp8_pair_2m112(w.x & 0xFFFF), b[1] = bq_fp8_pair_2m112(w.x >> 16);
            b[2] = bq_fp8_pair_2m112(w.y & 0xFFFF), b[3] = bq_fp8_pair_2m112(w.y >> 16);
        }
#pragma unroll
        for (int mi = 0; mi < MI; mi++) {
            float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            float(&d)[4] = R::FP4 ? acc[mi][ni] : part;
            const uint32_t *l = &al[mi].x, *h = &ah[mi].x;
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const uint32_t af[4] = {l[2 * j], h[2 * j], l[2 * j + 1], h[2 * j + 1]};
                const uint32_t bf[2] = {b[2 * j], b[2 * j + 1]};
                moe_mma_bf16_16816(d, af, bf);
            }
            if (!R::FP4) /* promotion: accumulators (c0, c1) and (c2, c3) are columns 2 (lane % 4) + {0, 1} */
#pragma unroll
                for (int e = 0; e < 4; e++)
                    acc[mi][ni][e] = fmaf(part[e] * 0x1p112f, bq_scale_f32<R::F>(q.sc[ni][e & 1]), acc[mi][ni][e]);
        }
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
    q.scale = reinterpret_cast<const char *>(p.bs.scale) +
              t.group * p.bs.group_stride * (T::F == MOE_B_E4M3_F32 ? 4 : 1);
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

/* Converts the staged codes (stage as bq_copy_codes wrote it) with the scales q.sc: the 16-byte output chunk h
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
            uint4 o;
            uint32_t *ov = &o.x;
            if (T::FP4) { /* exact: bf16 codes times the bf16 scale */
                bq_fp4x8(word[h], *reinterpret_cast<uint32_t(*)[4]>(ov));
                const __nv_bfloat162 s2 = bq_scale_bf16x2<T::F>(q.sc[i][h * 8 / 16]);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162 *>(&ov[e]), s2);
                    ov[e] = *reinterpret_cast<const uint32_t *>(&v);
                }
            } else {
                const float sc = bq_scale_f32<T::F>(q.sc[i][0]);
#pragma unroll
                for (int e = 0; e < 4; e++) /* element pairs 2e, 2e + 1 of the 8 */
                    ov[e] = bq_fp8_pair((word[2 * h + e / 2] >> (16 * (e % 2))) & 0xFFFF, sc);
            }
            *out(s, qc * (T::ELEMS / 8) + h) = o;
        }
    }
}

#endif /* MOE_CUDA_MOE_BQUANT_CUH */
