/* cuda.cuh — what every CUDA file of libmoe shares: error mapping, launch geometry, 8-element loads and stores,
 * and the scalar conversions: the CUDA toolkit's (hardware cvt where the GPU has it), and an own E2M1 codec. The
 * CPU reference (src/formats/scalar.h) is written independently from the definitions; tests compare the two. */
#ifndef MOE_CUDA_COMMON_CUDA_CUH
#define MOE_CUDA_COMMON_CUDA_CUH

#include <float.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "core/internal.h"

/* A compile-time bool as a type, for generic lambdas compiled once per case (a tile with a second half, a block
 * whose scales need a wider path). */
template <bool B> struct moe_bool_tag {
    static constexpr bool value = B;
};

/* Records a failed CUDA call as the context's error and returns the matching status. */
extern "C" moe_status moe__cuda_fail(moe_ctx *ctx, cudaError_t err, const char *what, const char *file, int line);

#define MOE_CUDA_TRY(ctx, expr)                                                         \
    do {                                                                                \
        cudaError_t moe_cuda_e_ = (expr);                                               \
        if (moe_cuda_e_ != cudaSuccess) return moe__cuda_fail((ctx), moe_cuda_e_, #expr, __FILE__, __LINE__); \
    } while (0)

/* After a kernel launch: a launch error (no kernel image for this GPU, bad configuration) becomes a status. */
#define MOE_CUDA_LAUNCHED(ctx, kernel_name) MOE_CUDA_TRY((ctx), cudaGetLastError())

/* Makes the context's device current on this thread and resolves the stream (NULL: the context's). */
static inline cudaStream_t moe__cuda_enter(moe_ctx *ctx, void *stream) {
    cudaSetDevice(ctx->cuda.device);
    return (cudaStream_t)(stream ? stream : ctx->cuda.stream);
}

/* Programmatic dependent launch (sm_90 and later): a forward's kernels are launched so that each may be scheduled
 * while the one before it drains. Every kernel launched that way calls moe_pdl_wait() before it touches global
 * memory (it returns once the previous grid has completed and its writes are visible; a no-op otherwise), then
 * moe_pdl_launch_next(), which lets the next kernel of the stream be scheduled. */
__device__ __forceinline__ void moe_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void moe_pdl_launch_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* Whether to launch that way: sm_90 and later, unless the environment sets MOE_NO_PDL (to compare). The grouped
 * GEMMs are launched plainly: launched early, the second GEMM slowed decode down (H200, llama4-scout T = 1: 178 µs
 * against 142 with only the small kernels so launched; docs/performance.md); they still wait and release. */
bool moe__cuda_pdl(const moe_ctx *ctx);

/* kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch where pdl, in thread block
 * clusters of `cluster` CTAs (sm_90; grid a multiple) where cluster > 1. */
template <class... Params, class... Args>
cudaError_t moe_launch_ex(bool pdl, unsigned cluster, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args... args) {
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster, attr[n].val.clusterDim.y = 1, attr[n++].val.clusterDim.z = 1;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = stream;
    cfg.attrs = attr, cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <class... Params, class... Args>
cudaError_t moe_launch(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args... args) {
    return moe_launch_ex(pdl, 1, kernel, grid, block, smem, stream, args...);
}

/* The most CTAs of `kernel` (`threads` a CTA, no dynamic shared memory) one thread block cluster may hold here: 0
 * where the kernel's sm_90 code does not run (an older GPU, or a newer one running the portable sm_80 PTX, which
 * holds no cluster code), else `want` (non-portable above 8, at most 16) where the GPU schedules such a cluster,
 * else the portable 8. */
template <class... Params> int moe_cluster_limit(void (*kernel)(Params...), int threads, int want) {
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, kernel) != cudaSuccess || fa.ptxVersion < 90) {
        cudaGetLastError(); /* not an error: no clusters */
        return 0;
    }
    if (want > 8) {
        cudaLaunchAttribute a;
        a.id = cudaLaunchAttributeClusterDimension;
        a.val.clusterDim.x = (unsigned)want, a.val.clusterDim.y = 1, a.val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3((unsigned)want), cfg.blockDim = dim3((unsigned)threads), cfg.attrs = &a, cfg.numAttrs = 1;
        int clusters = 0;
        if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess &&
            cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0)
            return want;
        cudaGetLastError(); /* not an error: the portable size */
    }
    return 8;
}

/* Blocks for a grid-stride loop over n items of threads each: enough to fill the GPU, never past the limits. */
static inline unsigned moe__grid_for(const moe_ctx *ctx, int64_t n, int threads) {
    int64_t blocks = (n + threads - 1) / threads;
    int64_t cap = (int64_t)ctx->cuda.sm_count * 16;
    if (blocks > cap) blocks = cap;
    return blocks < 1 ? 1u : (unsigned)blocks;
}

/* Division by a run-time constant d >= 1 without a divide instruction (64-bit division is a long software
 * sequence on the GPU, and index maths runs once per 8 elements). For numerators below 2^31 it is one wide
 * multiply and a shift: with s = ceil(log2 d) and m = ceil(2^(31+s) / d), floor(n / d) = (n * m) >> (31 + s)
 * (Granlund and Montgomery, "Division by invariant integers using multiplication", 1994, theorem 4.2).
 * Larger numerators take the plain division; `fast` says which, decided once on the host. */
struct moe_divmod {
    int64_t d;
    uint64_t m;
    int shift;
    bool fast;

    /* limit: the largest numerator that will be divided */
    static moe_divmod make(int64_t d, int64_t limit) {
        moe_divmod r;
        r.d = d < 1 ? 1 : d;
        int s = 0;
        while ((int64_t)1 << s < r.d) s++;
        r.shift = 31 + s;
        r.m = (((uint64_t)1 << r.shift) + (uint64_t)r.d - 1) / (uint64_t)r.d;
        r.fast = limit < ((int64_t)1 << 31) && r.d < ((int64_t)1 << 31);
        return r;
    }
    __device__ __forceinline__ int64_t div(int64_t n) const {
        return fast ? (int64_t)(((uint64_t)(uint32_t)n * m) >> shift) : n / d;
    }
};

/* ---- element types of the unquantised side ---- */

__device__ __forceinline__ float moe_to_f32(float x) { return x; }
__device__ __forceinline__ float moe_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float moe_to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T moe_from_f32(float x);
template <> __device__ __forceinline__ float moe_from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 moe_from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half moe_from_f32<__half>(float x) { return __float2half_rn(x); }

/* 8 consecutive elements of T as raw bits: one 16-byte vector for 2-byte types, two for f32. Kernels load
 * several of these before touching any, so that each thread keeps 32-64 bytes of loads in flight. */
template <typename T> struct moe_raw8 {
    uint4 w[sizeof(T) / 2];
};

/* Elements [i, i + 8) of p; only the first `count` exist (the rest read as 0). vec: all 8 exist and are
 * 16-byte aligned, so whole vectors are loaded (through the read-only path). */
template <typename T>
__device__ __forceinline__ void moe_load_raw8(const T *p, int64_t i, int count, bool vec, moe_raw8<T> &r) {
    if (vec) {
#pragma unroll
        for (int h = 0; h < (int)(sizeof(T) / 2); h++) r.w[h] = __ldg(reinterpret_cast<const uint4 *>(p + i) + h);
    } else {
        T *e = reinterpret_cast<T *>(&r);
#pragma unroll
        for (int j = 0; j < 8; j++) e[j] = j < count ? p[i + j] : moe_from_f32<T>(0.0f);
    }
}

template <typename T> __device__ __forceinline__ void moe_unpack8(const moe_raw8<T> &r, float (&v)[8]) {
    if (std::is_same<T, __nv_bfloat16>::value) { /* bf16 -> f32 places the bits: one shift or mask an element */
        const uint32_t w[4] = {r.w[0].x, r.w[0].y, r.w[0].z, r.w[0].w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[2 * i] = __uint_as_float(w[i] << 16);
            v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
        }
    } else {
        const T *e = reinterpret_cast<const T *>(&r);
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = moe_to_f32(e[j]);
    }
}

/* max |x| over 8 raw elements and 0, NaN dropped and Inf kept (as a chain of fmaxf from 0 over |x| gives): bf16
 * and f16 two at a time (hmax2 returns the other operand of a NaN, and NaN when both are), converted at the end. */
template <typename T> __device__ __forceinline__ float moe_max_abs_raw8(const moe_raw8<T> &r) {
    if (sizeof(T) == 4) {
        float v[8], a = 0.0f;
        moe_unpack8(r, v);
#pragma unroll
        for (int j = 0; j < 8; j++) a = fmaxf(a, fabsf(v[j]));
        return a;
    } else {
        typedef typename std::conditional<std::is_same<T, __half>::value, __half2, __nv_bfloat162>::type T2;
        const uint32_t w[4] = {r.w[0].x & 0x7FFF7FFFu, r.w[0].y & 0x7FFF7FFFu, r.w[0].z & 0x7FFF7FFFu,
                               r.w[0].w & 0x7FFF7FFFu};
        const T2 *h = reinterpret_cast<const T2 *>(w);
        const T2 m = __hmax2(__hmax2(h[0], h[1]), __hmax2(h[2], h[3])); /* NaN only where all were NaN */
        return fmaxf(fmaxf(0.0f, moe_to_f32(m.x)), moe_to_f32(m.y));
    }
}

template <typename T>
__device__ __forceinline__ void moe_load8(const T *p, int64_t i, int count, bool vec, float (&v)[8]) {
    moe_raw8<T> r;
    moe_load_raw8(p, i, count, vec, r);
    moe_unpack8(r, v);
}

template <typename T>
__device__ __forceinline__ void moe_store8(T *p, int64_t i, int count, bool vec, const float (&v)[8]) {
    if (vec) {
        constexpr int per = 16 / sizeof(T);
#pragma unroll
        for (int h = 0; h < 8 / per; h++) {
            uint4 raw;
            T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
            for (int j = 0; j < per; j++) e[j] = moe_from_f32<T>(v[h * per + j]);
            reinterpret_cast<uint4 *>(p + i)[h] = raw;
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < count) p[i + j] = moe_from_f32<T>(v[j]);
    }
}

/* Loads of 8 elements each thread keeps in flight per loop iteration: 64 bytes of input. */
template <typename T> __host__ __device__ constexpr int moe_unroll() {
    return sizeof(T) == 4 ? 2 : 4;
}

/* ---- narrow formats through the CUDA toolkit's conversions ---- */

/* f32 -> E2M1 code, round to nearest even, saturating; NaN -> 0x7 (+6) as CUDA's conversion gives. Hopper
 * has no FP4 convert instruction, so: the E2M1 grid has step 1/2 on [0, 2], 1 on [2, 4] and 2 from 4 up. With
 * M = 1.5 * 2^23 (where the f32 step is 1), one FMA each rounds |x| to the nearest even multiple of each step:
 * c0 = M + rne(2|x|), c1 = M + 2 + rne(|x|), c2 = M + 4 + rne(|x| / 2), and each is the code on its own
 * interval. Off it, each is at least the right one (2a <= a + 2 iff a <= 2, a + 2 <= a/2 + 4 iff a <= 4, and
 * rne is monotone), so the code is min(c0, c1, c2, M + 7) read from the low mantissa bits. fminf drops the
 * NaNs, so NaN gives 7; the sign comes from fminf(x, FLT_MAX), which is negative for every negative x, -0 and
 * -Inf included, and positive for NaN. Checked against the CPU definition on all 2^32 inputs. */
__device__ __forceinline__ uint32_t moe_e2m1_code(float x) {
    const float m = 12582912.0f, a = fabsf(x);
    const float c = fminf(fminf(__fmaf_rn(a, 2.0f, m), __fmaf_rn(a, 1.0f, m + 2.0f)),
                          fminf(__fmaf_rn(a, 0.5f, m + 4.0f), m + 7.0f));
    return (__float_as_uint(c) & 0x7u) | ((__float_as_uint(fminf(x, FLT_MAX)) >> 28) & 0x8u);
}

/* The E2M1 codes of an f16 pair at bits 0..3 (low half) and 16..19 (high half): the same minimum of three
 * roundings as moe_e2m1_code with M = 1024 (where the f16 step is 1), the sign from hmin(h, 65504), which is
 * positive for NaN. Equal to the CPU definition on every f16 value (checked for all 2^16). */
__device__ __forceinline__ uint32_t moe_e2m1x2_f16(__half2 h) {
    const __half2 two = __float2half2_rn(2.0f), one = __float2half2_rn(1.0f), half = __float2half2_rn(0.5f);
    const __half2 m0 = __float2half2_rn(1024.0f), m1 = __float2half2_rn(1026.0f), m2 = __float2half2_rn(1028.0f);
    const __half2 cap = __float2half2_rn(1031.0f), top = __float2half2_rn(65504.0f), a = __habs2(h);
    const __half2 c = __hmin2(__hmin2(__hfma2(a, two, m0), __hfma2(a, one, m1)), __hmin2(__hfma2(a, half, m2), cap));
    const __half2 s = __hmin2(h, top);
    const uint32_t cb = *reinterpret_cast<const uint32_t *>(&c), sb = *reinterpret_cast<const uint32_t *>(&s);
    return (cb & 0x00070007u) | ((sb >> 12) & 0x00080008u);
}

/* Eight values -> E2M1 codes (element j in bits 4j..4j+3), a pair at a time in f16x2; pairs j and j + 4 share an
 * f16x2, so that the codes land in place with one shift. EXACT: each value converts to f16 exactly (or lies
 * below 2^-14 in magnitude, where every route gives a zero code), as bf16 or f16 inputs times a power of two do
 * (MX blocks); checked for every bf16 and f16 input times every power of two 2^-127..2^127. Otherwise the value
 * is rounded to f16 toward zero with a sticky bit in the last place (round to odd: 11 bits against E2M1's 2 keep
 * every midpoint on its side, so the second rounding is exact), the sticky bit set in the f32 input's bit 13
 * before the conversion (two integer operations; below 2^-14, where that bit falls under f16's last place, every
 * code is a zero); checked on all 2^32 f32 inputs on the CPU (scripts/check_e2m1.c), toward-zero emulated bit by
 * bit. */
template <bool EXACT> __device__ __forceinline__ uint32_t moe_e2m1x8_f16(const float *v) {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        __half2 h;
        if (EXACT) {
            h = __floats2half2_rn(v[j], v[j + 4]);
        } else {
            /* the sticky bit into bit 13, the f16 result's last place: u | ((u + 0x1FFF) & 0x2000) */
            const uint32_t lo = __float_as_uint(v[j]), hi = __float_as_uint(v[j + 4]);
            const float lo_j = __uint_as_float(lo | ((lo + 0x1FFFu) & 0x2000u));
            const float hi_j = __uint_as_float(hi | ((hi + 0x1FFFu) & 0x2000u));
            uint32_t r;
            asm("cvt.rz.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi_j), "f"(lo_j)); /* a to the high half */
            h = *reinterpret_cast<const __half2 *>(&r);
        }
        w |= moe_e2m1x2_f16(h) << (4 * j);
    }
    return w;
}

/* E2M1 code (low 4 bits) -> f32: exponent field e, mantissa bit m; e = 0 is the subnormal 0.5 * m. */
__device__ __forceinline__ float moe_e2m1_value(uint32_t code) {
    const uint32_t e = (code >> 1) & 3, m = code & 1;
    const float mag = e ? __uint_as_float(((e + 126) << 23) | (m << 22)) : 0.5f * (float)m;
    return __uint_as_float(__float_as_uint(mag) | (code & 0x8) << 28);
}

/* f32 -> E4M3/E5M2 (satfinite or not) / E2M1 (always saturating); code in the low bits. */
__device__ __forceinline__ uint8_t moe_encode(float x, moe_dtype elem, bool saturate = true) {
    __nv_saturation_t sat = saturate ? __NV_SATFINITE : __NV_NOSAT;
    switch (elem) {
    case MOE_DTYPE_E4M3: return __nv_cvt_float_to_fp8(x, sat, __NV_E4M3);
    case MOE_DTYPE_E5M2: return __nv_cvt_float_to_fp8(x, sat, __NV_E5M2);
    default: return (uint8_t)moe_e2m1_code(x);
    }
}

__device__ __forceinline__ float moe_decode(uint8_t code, moe_dtype elem) {
    switch (elem) {
    case MOE_DTYPE_E4M3: return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E4M3)));
    case MOE_DTYPE_E5M2: return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E5M2)));
    case MOE_DTYPE_E8M0: /* 2^(code - 127); 0x00 is the subnormal 2^-127, 0xFF NaN */
        return __uint_as_float(code == 0 ? 0x00400000u : code == 0xFF ? 0x7FC00000u : (uint32_t)code << 23);
    default: return moe_e2m1_value(code);
    }
}

/* Eight values encoded: FP8 into 8 bytes, E2M1 into 4 bytes (element 2i in the low nibble). */
__device__ __forceinline__ uint2 moe_encode8(const float (&v)[8], moe_dtype elem) {
    uint32_t w[2] = {0, 0};
    if (elem == MOE_DTYPE_E2M1) {
#pragma unroll
        for (int j = 0; j < 8; j++) w[0] |= moe_e2m1_code(v[j]) << (4 * j);
    } else {
        __nv_fp8_interpretation_t t = elem == MOE_DTYPE_E4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
        for (int j = 0; j < 8; j += 2)
            w[j / 4] |= (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(v[j], v[j + 1]), __NV_SATFINITE, t)
                        << (8 * (j % 4));
    }
    return make_uint2(w[0], w[1]);
}

/* E8M0 of |x| rounded toward zero or +Inf. */
__device__ __forceinline__ uint8_t moe_e8m0(float x, bool round_up, bool saturate) {
    return __nv_cvt_float_to_e8m0(x, saturate ? __NV_SATFINITE : __NV_NOSAT,
                                  round_up ? cudaRoundPosInf : cudaRoundZero);
}

/* 2^e as f32 for e in [-127, 127] (2^-127 is subnormal). */
__device__ __forceinline__ float moe_exp2i(int e) {
    return e == -127 ? __int_as_float(0x00400000) : __int_as_float((e + 127) << 23);
}

/* The threads of a block copy `bytes` bytes (a multiple of 4) from src to dst: 16 bytes a move when both ends and
 * the length allow it, else 4. */
__device__ __forceinline__ void moe_block_copy(char *dst, const char *src, int64_t bytes) {
    if (((uintptr_t)dst | (uintptr_t)src | (uintptr_t)bytes) % 16 == 0) {
        for (int64_t i = threadIdx.x; i < bytes / 16; i += blockDim.x)
            reinterpret_cast<uint4 *>(dst)[i] = reinterpret_cast<const uint4 *>(src)[i];
    } else {
        for (int64_t i = threadIdx.x; i < bytes / 4; i += blockDim.x)
            reinterpret_cast<uint32_t *>(dst)[i] = reinterpret_cast<const uint32_t *>(src)[i];
    }
}

#endif /* MOE_CUDA_COMMON_CUDA_CUH */
