/* quantize.cu — quantisation kernels for every block format (docs/formats.md §2), bit-identical to the CPU
 * reference. Memory-bound: each thread owns 8 consecutive elements (one 16-byte load for bf16/f16, two for
 * f32); a block's threads meet through warp shuffles.
 *
 *   row blocks (1x128, MX 1x32, NVFP4 1x16): one pass; a block is 16, 4 or 2 neighbouring threads
 *   FP8_ROW, FP8_128X128 (a block of at most 32 KB, 16-byte aligned rows): a CTA stages a block in shared memory
 *                 with cp.async, two blocks deep, so the next block's loads fly while this one is reduced and
 *                 encoded from shared memory
 *   other FP8_ROW: one CTA per row, two passes over the row (the second from L2)
 *   other FP8_128X128: one CTA per tile, the tile held in registers between the amax and the encode
 *   FP8_TENSOR and the NVFP4 global scale: an amax pass (atomicMax) and a one-thread finalise first
 * No host synchronisation; 64-bit indices; grid-stride loops, so no grid dimension grows past its limit. */
#include "cuda/common/mma.cuh"
#include "cuda/formats/qformat.cuh"

namespace {

constexpr int kThreads = 256;

/* Max of |x| over a CTA (NaN dropped), broadcast to every thread. All threads must call it. */
__device__ float cta_max(float a, float *shared) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = a;
    __syncthreads();
    a = shared[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) a = fmaxf(a, shared[w]);
    __syncthreads(); /* shared is reused by the next call */
    return a;
}

__device__ __forceinline__ float max_abs8(const float (&v)[8]) {
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) a = fmaxf(a, fabsf(v[j]));
    return a;
}

/* amax of the whole tensor into *slot (as uint bits: non-negative floats order like their bits). */
template <typename T> __global__ void amax_kernel(const T *x, int64_t n, bool vec, unsigned *slot) {
    __shared__ float shared[kThreads / 32];
    constexpr int U = moe_unroll<T>();
    float a = 0.0f;
    const int64_t per_iter = (int64_t)blockDim.x * 8 * U;
    for (int64_t base = (int64_t)blockIdx.x * per_iter; base < n; base += (int64_t)gridDim.x * per_iter) {
        moe_raw8<T> raw[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t i = base + ((int64_t)u * blockDim.x + threadIdx.x) * 8;
            const int count = (int)max((int64_t)0, min((int64_t)8, n - i));
            moe_load_raw8(x, i, count, vec && count == 8, raw[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float v[8];
            moe_unpack8(raw[u], v);
            a = fmaxf(a, max_abs8(v));
        }
    }
    a = cta_max(a, shared);
    if (threadIdx.x == 0) atomicMax(slot, __float_as_uint(a));
}

/* Turns the amax in *slot into the per-tensor number: the FP8_TENSOR scale or the NVFP4 global scale. */
__global__ void finalize_kernel(moe_qparams p) {
    float a = fminf(__uint_as_float(*reinterpret_cast<unsigned *>(p.global)), FLT_MAX);
    if (p.kind == MOE_QFORMAT_FP8_TENSOR) {
        *static_cast<float *>(p.scale) = moe_scale_from_amax(p, fmaxf(a, p.amax_floor)).value;
    } else {
        float g = p.global_conv == MOE_NVFP4_GLOBAL_ENCODE ? __fdiv_rn(2688.0f, a) : __fdiv_rn(a, 2688.0f);
        *p.global = isfinite(g) && g > 0.0f && isfinite(__frcp_rn(g)) ? g : 1.0f;
    }
}

/* FP8_TENSOR: q = enc(x / s) with the one scale s. */
template <typename T> __global__ void quantize_tensor_kernel(moe_qparams p, int64_t n) {
    constexpr int U = moe_unroll<T>();
    const T *x = static_cast<const T *>(p.x);
    const moe_block_scale s = {*static_cast<const float *>(p.scale), 0.0f, 0, true};
    const bool vec = p.vec && n % 8 == 0;
    const int64_t per_iter = (int64_t)blockDim.x * 8 * U;
    for (int64_t base = (int64_t)blockIdx.x * per_iter; base < n; base += (int64_t)gridDim.x * per_iter) {
        moe_raw8<T> raw[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t i = base + ((int64_t)u * blockDim.x + threadIdx.x) * 8;
            const int count = (int)max((int64_t)0, min((int64_t)8, n - i));
            if (count > 0) moe_load_raw8(x, i, count, vec, raw[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t i = base + ((int64_t)u * blockDim.x + threadIdx.x) * 8;
            const int count = (int)max((int64_t)0, min((int64_t)8, n - i));
            if (count == 0) continue;
            float v[8];
            moe_unpack8(raw[u], v);
            moe_apply_scale(v, s);
            moe_store_codes(p, i, count, vec, v);
        }
    }
}

/* 16 consecutive elements of a row: two 8-element loads. Elements past the row's end read as 0. */
template <typename T> struct raw16 {
    moe_raw8<T> h[2];
};

template <typename T, bool FULL = false>
__device__ __forceinline__ void load16(const T *row, int64_t c, int64_t cols, bool vec, raw16<T> &r) {
    if (FULL) { /* all 16 exist and are aligned */
        moe_load_raw8(row, c, 8, true, r.h[0]);
        moe_load_raw8(row, c + 8, 8, true, r.h[1]);
        return;
    }
    const int count = (int)max((int64_t)0, min((int64_t)16, cols - c));
    moe_load_raw8(row, c, min(count, 8), vec && count >= 8, r.h[0]);
    moe_load_raw8(row, c + 8, max(count - 8, 0), vec && count == 16, r.h[1]);
}

template <typename T> __device__ __forceinline__ void unpack16(const raw16<T> &r, float (&v)[16]) {
    float (&lo)[8] = *reinterpret_cast<float(*)[8]>(&v[0]);
    float (&hi)[8] = *reinterpret_cast<float(*)[8]>(&v[8]);
    moe_unpack8(r.h[0], lo);
    moe_unpack8(r.h[1], hi);
}

/* Encodes 16 scaled values as ELEM and stores the elements [i, i + count) of the tensor. vec: count == 16 and
 * the 16 (FP8) or 8 (E2M1) bytes are aligned for one store. E2M1 runs in f16x2 (moe_e2m1x8_f16); EXACT: the
 * values convert to f16 exactly. */
template <moe_dtype ELEM, bool EXACT = false>
__device__ __forceinline__ void store16(uint8_t *data, int64_t i, int count, bool vec, const float (&v)[16]) {
    if (ELEM == MOE_DTYPE_E2M1) {
        const uint32_t w[2] = {moe_e2m1x8_f16<EXACT>(&v[0]), moe_e2m1x8_f16<EXACT>(&v[8])};
        if (vec) {
            *reinterpret_cast<uint2 *>(data + i / 2) = make_uint2(w[0], w[1]);
        } else {
#pragma unroll
            for (int j = 0; j < 16; j += 2) /* compile-time indices keep w in registers */
                if (j < count) data[(i + j) / 2] = (uint8_t)(w[j / 8] >> (4 * (j % 8)));
        }
    } else {
        const __nv_fp8_interpretation_t t = ELEM == MOE_DTYPE_E4M3 ? __NV_E4M3 : __NV_E5M2;
        uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < 16; j += 2)
            w[j / 4] |= (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(v[j], v[j + 1]), __NV_SATFINITE, t)
                        << (8 * (j % 4));
        if (vec) {
            *reinterpret_cast<uint4 *>(data + i) = make_uint4(w[0], w[1], w[2], w[3]);
        } else {
#pragma unroll
            for (int j = 0; j < 16; j++)
                if (j < count) data[i + j] = (uint8_t)(w[j / 4] >> (8 * (j % 4)));
        }
    }
}

/* The scale kinds a kernel is compiled for. */
enum { kScaleF32 = 0, kScalePow2 = 1, kScaleNvfp4 = 2 };

/* Divides (f32 rule) or multiplies (powers of two, NVFP4) 16 values of a block with amax a by its scale. */
template <int SCALE> __device__ __forceinline__ void scale16(float (&v)[16], const moe_block_scale &s, float a) {
    const moe_divider d = SCALE == kScaleF32 ? moe_make_divider(s.value, a) : moe_divider{1.0f, 1.0f, true};
    moe_scale_values<SCALE == kScaleF32>(v, s, d);
}

__device__ __forceinline__ float max_abs16(const float (&v)[16]) {
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; j++) a = fmaxf(a, fabsf(v[j]));
    return a;
}

/* One step of a warp along a row in the row-block kernel: U parts of 32 x 16 elements, lane l taking the 16 at
 * (32 u + l) * 16 (loads first); the BLOCK / 16 lanes that share a block meet through shuffles. FULL: the step
 * lies inside the row and every access is aligned for whole vectors (no per-part checks). */
template <typename T, int BLOCK, moe_dtype ELEM, int SCALE, int U, bool FULL>
__device__ __forceinline__ void quantize_row_step(const moe_qparams &p, const T *xr, int64_t row, int64_t c0, int lane,
                                                  bool linear, int64_t b, int64_t r, int64_t srow, float g_enc,
                                                  float g_dec) {
    constexpr int LANES = BLOCK / 16;
    raw16<T> raw[U];
#pragma unroll
    for (int u = 0; u < U; u++) load16<T, FULL>(xr, c0 + (u * 32 + lane) * 16, p.cols, p.vec, raw[u]);
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int64_t c = c0 + (u * 32 + lane) * 16;
        const int count = FULL ? 16 : (int)max((int64_t)0, min((int64_t)16, p.cols - c));
        float v[16];
        unpack16(raw[u], v);
        float a = fmaxf(moe_max_abs_raw8(raw[u].h[0]), moe_max_abs_raw8(raw[u].h[1]));
#pragma unroll
        for (int o = LANES / 2; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        if (count == 0) continue;
        a = moe_finish_amax(a, p.amax_floor);
        const moe_block_scale s = SCALE == kScaleNvfp4 ? moe_nvfp4_scale(a, g_enc, g_dec) : moe_scale_from_amax(p, a);
        if (lane % LANES == 0) moe_store_scale(p, linear ? srow + c / BLOCK : moe_scale_index(p, b, r, c / BLOCK), s);
        scale16<SCALE>(v, s, a);
        /* bf16/f16 times a power of two is exact in f16 */
        store16<ELEM, sizeof(T) == 2 && SCALE == kScalePow2>(p.data, row * p.cols + c, count,
                                                             FULL || (p.vec16 && count == 16), v);
    }
}

/* Row blocks of BLOCK elements (1x128: 128, MX: 32, NVFP4: 16). A warp walks a row in steps of U x 512 elements
 * (quantize_row_step); row-level index maths happens once per row, never per element. */
template <typename T, int BLOCK, moe_dtype ELEM, int SCALE>
__global__ void __launch_bounds__(kThreads, 3) quantize_row_blocks_kernel(moe_qparams p) {
    constexpr int U = sizeof(T) == 4 ? 1 : 2, STEP = 32 * 16 * U;
    const T *x = static_cast<const T *>(p.x);
    const int lane = threadIdx.x % 32;
    float g_enc = 1.0f, g_dec = 1.0f;
    if (SCALE == kScaleNvfp4) moe_nvfp4_pair(p, *p.global, g_enc, g_dec);
    const bool linear = p.layout != MOE_SCALE_SWIZZLED_128X4;
    const int64_t total_rows = p.batch * p.rows, n_warps = (int64_t)gridDim.x * (kThreads / 32);
    for (int64_t row = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; row < total_rows; row += n_warps) {
        const T *xr = x + row * p.cols;
        const int64_t b = p.by_rows.div(row), r = row - b * p.rows;
        const int64_t srow = linear ? moe_scale_index(p, b, r, 0) : 0; /* the row's first scale */
        int64_t c0 = 0; /* steps are uniform across the warp: shuffles are safe */
        if (p.vec16)
            for (; c0 + STEP <= p.cols; c0 += STEP)
                quantize_row_step<T, BLOCK, ELEM, SCALE, U, true>(p, xr, row, c0, lane, linear, b, r, srow, g_enc,
                                                                  g_dec);
        for (; c0 < p.cols; c0 += STEP)
            quantize_row_step<T, BLOCK, ELEM, SCALE, U, false>(p, xr, row, c0, lane, linear, b, r, srow, g_enc, g_dec);
    }
}

/* FP8_ROW: one CTA of 128 threads per row. Rows of up to kRowSegs * 2048 elements stay in registers between the
 * amax and the encode (one pass over memory); longer rows are read a second time. */
constexpr int kRowSegs = 4, kRowThreads = 128;

template <typename T, moe_dtype ELEM, int SCALE>
__global__ void __launch_bounds__(kRowThreads) quantize_rows_kernel(moe_qparams p) {
    __shared__ float shared[kRowThreads / 32];
    const T *x = static_cast<const T *>(p.x);
    const int64_t seg = kRowThreads * 16; /* elements per segment of the row */
    const bool in_registers = p.cols <= kRowSegs * seg;
    for (int64_t row = blockIdx.x; row < p.batch * p.rows; row += gridDim.x) {
        const T *xr = x + row * p.cols;
        raw16<T> raw[kRowSegs];
        float a = 0.0f, v[16];
#pragma unroll
        for (int k = 0; k < kRowSegs; k++) {
            load16(xr, k * seg + threadIdx.x * 16, p.cols, p.vec, raw[k]);
            unpack16(raw[k], v);
            a = fmaxf(a, max_abs16(v));
        }
        for (int64_t c0 = kRowSegs * seg; c0 < p.cols; c0 += seg) { /* only rows too long for registers */
            raw16<T> extra;
            load16(xr, c0 + threadIdx.x * 16, p.cols, p.vec, extra);
            unpack16(extra, v);
            a = fmaxf(a, max_abs16(v));
        }
        a = moe_finish_amax(cta_max(a, shared), p.amax_floor);
        const moe_block_scale s = moe_scale_from_amax(p, a);
        if (threadIdx.x == 0) {
            const int64_t b = p.by_rows.div(row);
            moe_store_scale(p, moe_scale_index(p, b, row - b * p.rows, 0), s);
        }
        for (int64_t c0 = 0, k = 0; c0 < p.cols; c0 += seg, k++) {
            const int64_t c = c0 + threadIdx.x * 16;
            const int count = (int)max((int64_t)0, min((int64_t)16, p.cols - c));
            if (in_registers) {
#pragma unroll
                for (int kk = 0; kk < kRowSegs; kk++) /* compile-time index keeps raw in registers */
                    if (kk == k) unpack16(raw[kk], v);
            } else {
                raw16<T> again;
                load16(xr, c, p.cols, p.vec, again);
                unpack16(again, v);
            }
            if (count == 0) continue;
            scale16<SCALE>(v, s, a);
            store16<ELEM>(p.data, row * p.cols + c, count, p.vec16 && count == 16, v);
        }
    }
}

/* FP8_128X128: one CTA per tile: 8 groups of 16 columns x 32 rows, 4 passes down the tile, all kept in
 * registers (as raw input bits) between the tile's amax and the encode. */
template <typename T, moe_dtype ELEM, int SCALE>
__global__ void __launch_bounds__(kThreads) quantize_tiles_kernel(moe_qparams p) {
    __shared__ float shared[kThreads / 32];
    const T *x = static_cast<const T *>(p.x);
    const int64_t tiles = p.batch * p.scale_rows * p.scale_cols;
    const int cg = threadIdx.x % 8, rg = threadIdx.x / 8;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int64_t b = t / (p.scale_rows * p.scale_cols), tr = t / p.scale_cols % p.scale_rows,
                      tc = t % p.scale_cols;
        const int64_t c = tc * 128 + cg * 16;
        const int count = (int)max((int64_t)0, min((int64_t)16, p.cols - c));
        raw16<T> raw[4];
        float a = 0.0f, v[16];
#pragma unroll
        for (int pass = 0; pass < 4; pass++) {
            const int64_t r = tr * 128 + pass * 32 + rg;
            load16(x + (b * p.rows + min(r, p.rows - 1)) * p.cols, c, r < p.rows ? p.cols : 0, p.vec, raw[pass]);
            unpack16(raw[pass], v);
            a = fmaxf(a, max_abs16(v));
        }
        a = moe_finish_amax(cta_max(a, shared), p.amax_floor);
        const moe_block_scale s = moe_scale_from_amax(p, a);
        if (threadIdx.x == 0) moe_store_scale(p, moe_scale_index(p, b, tr, tc), s);
#pragma unroll
        for (int pass = 0; pass < 4; pass++) {
            const int64_t r = tr * 128 + pass * 32 + rg;
            if (r >= p.rows || count == 0) continue;
            unpack16(raw[pass], v);
            scale16<SCALE>(v, s, a);
            store16<ELEM>(p.data, (b * p.rows + r) * p.cols + c, count, p.vec16 && count == 16, v);
        }
    }
}

/* ---- FP8_ROW and FP8_128X128 through shared memory ----
 * A block (one row, or one 128 x 128 tile) is a list of slots of 8 elements (16 bytes of bf16/f16, 32 of f32):
 * a row's slot k holds columns [8k, 8k + 8); a tile's slot k holds row k / 16 and columns 8 (k % 16) + [0, 8)
 * of the tile, and slots past the tensor's edge are left out. At most kSlots slots: a row is owned by a CTA of
 * 128 threads (at least 56 elements a thread at 7168 columns, so the per-block work stays small beside the
 * elements'), a tile by one of 256. */
constexpr int kSlots = 2048, kStageBytes = 32768;

template <bool TILE> __host__ __device__ constexpr int staged_threads() { return TILE ? 256 : 128; }

struct staged_block {
    int64_t first;    /* element index of slot 0 */
    int64_t pitch;    /* elements between tile rows (the tensor's columns) */
    int slots;        /* a row's slots; a tile spans kSlots, some of them left out */
    int rows, chunks; /* a tile's rows and slots per row inside the tensor */
    int64_t scale;    /* index of the block's scale */
};

template <bool TILE> __device__ __forceinline__ staged_block staged_geometry(const moe_qparams &p, int64_t blk) {
    staged_block g;
    if (TILE) {
        const int64_t per = p.scale_rows * p.scale_cols, b = blk / per, tr = blk % per / p.scale_cols,
                      tc = blk % p.scale_cols;
        g.first = (b * p.rows + tr * 128) * p.cols + tc * 128;
        g.pitch = p.cols;
        g.slots = kSlots;
        g.rows = (int)min((int64_t)128, p.rows - tr * 128);
        g.chunks = (int)min((int64_t)16, (p.cols - tc * 128) / 8);
        g.scale = moe_scale_index(p, b, tr, tc);
    } else {
        const int64_t b = p.by_rows.div(blk);
        g.first = blk * p.cols;
        g.pitch = 0;
        g.slots = (int)(p.cols / 8);
        g.rows = 1;
        g.chunks = 0;
        g.scale = moe_scale_index(p, b, blk - b * p.rows, 0);
    }
    return g;
}

/* Element index of a tile's slot k, or -1 when the slot lies outside the tensor. */
__device__ __forceinline__ int64_t staged_tile_slot(const staged_block &g, int k) {
    return k / 16 < g.rows && k % 16 < g.chunks ? g.first + (k / 16) * g.pitch + (k % 16) * 8 : -1;
}

/* Calls f(k, e) for each slot k this thread owns and its element index e (a row's slots run contiguously; a
 * tile's are checked against the tensor's edges). */
template <bool TILE, typename F> __device__ __forceinline__ void staged_for_each(const staged_block &g, F f) {
    constexpr int THREADS = staged_threads<TILE>();
    if (TILE && g.rows == 128 && g.chunks == 16) { /* a whole tile: slot i * THREADS + t is 16 i rows below t's */
        const int64_t e = g.first + (threadIdx.x / 16) * g.pitch + (threadIdx.x % 16) * 8;
#pragma unroll
        for (int i = 0; i < kSlots / THREADS; i++) f(i * THREADS + threadIdx.x, e + i * (THREADS / 16) * g.pitch);
    } else if (TILE) {
#pragma unroll
        for (int i = 0; i < kSlots / THREADS; i++) {
            const int k = i * THREADS + threadIdx.x;
            const int64_t e = staged_tile_slot(g, k);
            if (e >= 0) f(k, e);
        }
    } else {
#pragma unroll 4
        for (int k = threadIdx.x; k < g.slots; k += THREADS) f(k, g.first + 8 * (int64_t)k);
    }
}

template <typename T, moe_dtype ELEM, int SCALE, bool TILE>
__global__ void __launch_bounds__(staged_threads<TILE>()) quantize_staged_kernel(moe_qparams p, int64_t blocks) {
    constexpr int THREADS = staged_threads<TILE>();
    extern __shared__ uint4 stage_mem[];
    __shared__ float shared[THREADS / 32];
    const int stage_slots = TILE ? kSlots : (int)(p.cols / 8);
    moe_raw8<T> *const stage = reinterpret_cast<moe_raw8<T> *>(stage_mem); /* two stages of stage_slots */
    const T *x = static_cast<const T *>(p.x);
    auto load = [&](const staged_block &blk, moe_raw8<T> *dst) {
        staged_for_each<TILE>(blk, [&](int k, int64_t e) {
#pragma unroll
            for (int h = 0; h < (int)(sizeof(T) / 2); h++)
                moe_cp_async16(&dst[k].w[h], x + e + h * (16 / (int)sizeof(T)), 16);
        });
    };
    staged_block g = staged_geometry<TILE>(p, blockIdx.x);
    if ((int64_t)blockIdx.x < blocks) load(g, stage);
    moe_cp_async_commit();
    for (int64_t blk = blockIdx.x, n = 0; blk < blocks; blk += gridDim.x, n++) {
        moe_raw8<T> *const cur = stage + (n & 1) * stage_slots;
        const staged_block next = staged_geometry<TILE>(p, blk + gridDim.x);
        if (blk + gridDim.x < blocks) load(next, stage + ((n + 1) & 1) * stage_slots);
        moe_cp_async_commit();
        moe_cp_async_wait<1>(); /* this block's copies have landed; the next block's may still fly */
        __syncthreads();
        float a = 0.0f;
        staged_for_each<TILE>(g, [&](int k, int64_t) { a = fmaxf(a, moe_max_abs_raw8(cur[k])); });
        a = moe_finish_amax(cta_max(a, shared), p.amax_floor);
        const moe_block_scale s = moe_scale_from_amax(p, a);
        if (threadIdx.x == 0) moe_store_scale(p, g.scale, s);
        const moe_divider d = SCALE == kScaleF32 ? moe_make_divider(s.value, a) : moe_divider{1.0f, 1.0f, true};
        staged_for_each<TILE>(g, [&](int k, int64_t e) {
            const moe_raw8<T> raw = cur[k]; /* read again: registers are kept for more CTAs */
            float v[8];
            moe_unpack8(raw, v);
            moe_scale_values<SCALE == kScaleF32>(v, s, d);
            *reinterpret_cast<uint2 *>(p.data + e) = moe_encode8(v, ELEM);
        });
        __syncthreads(); /* cur is free for the block after next */
        g = next;
    }
}

/* The staged kernel for FP8_ROW (TILE false) or FP8_128X128, as many CTAs as fit on the GPU at once. */
template <typename T, bool TILE>
moe_status launch_staged(moe_ctx *ctx, const moe_qlayout *l, const moe_qparams &p, cudaStream_t st) {
    const bool e4 = l->f.elem == MOE_DTYPE_E4M3, f32 = l->f.rule == MOE_SCALE_F32;
    void (*kernel)(moe_qparams, int64_t) =
        e4 ? (f32 ? quantize_staged_kernel<T, MOE_DTYPE_E4M3, kScaleF32, TILE>
                  : quantize_staged_kernel<T, MOE_DTYPE_E4M3, kScalePow2, TILE>)
           : (f32 ? quantize_staged_kernel<T, MOE_DTYPE_E5M2, kScaleF32, TILE>
                  : quantize_staged_kernel<T, MOE_DTYPE_E5M2, kScalePow2, TILE>);
    const int64_t blocks = TILE ? p.batch * p.scale_rows * p.scale_cols : p.batch * p.rows;
    const int smem = 2 * (int)(TILE ? kSlots : p.cols / 8) * (int)sizeof(moe_raw8<T>);
    const int threads = staged_threads<TILE>();
    int per_sm = 0;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    MOE_CUDA_TRY(ctx, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    const int64_t fit = (int64_t)ctx->cuda.sm_count * (per_sm > 0 ? per_sm : 1);
    kernel<<<(unsigned)(blocks < fit ? blocks : fit), threads, smem, st>>>(p, blocks);
    return MOE_OK;
}

/* Whether FP8_ROW / FP8_128X128 go through shared memory: whole 16-byte slots, and a block of at most 32 KB. */
template <typename T> bool use_staged(const moe_qlayout *l, const moe_qparams &p) {
    const int64_t bytes = l->f.kind == MOE_QFORMAT_FP8_ROW ? p.cols * (int64_t)sizeof(T) : kSlots * (int64_t)sizeof(moe_raw8<T>);
    return p.vec && bytes <= kStageBytes;
}

template <typename T> moe_status launch(moe_ctx *ctx, const moe_qlayout *l, const moe_qparams &p, cudaStream_t st) {
    const int64_t n = p.batch * p.rows * p.cols;
    const moe_qformat_kind kind = l->f.kind;
    if ((kind == MOE_QFORMAT_FP8_TENSOR || kind == MOE_QFORMAT_NVFP4) && !l->f.static_scale) {
        /* the amax goes through the f32 slot that ends up holding the per-tensor number */
        moe_qparams pf = p;
        if (kind == MOE_QFORMAT_FP8_TENSOR) pf.global = static_cast<float *>(p.scale);
        unsigned *slot = reinterpret_cast<unsigned *>(pf.global);
        MOE_CUDA_TRY(ctx, cudaMemsetAsync(slot, 0, sizeof(unsigned), st));
        const bool vec = (uintptr_t)p.x % 16 == 0;
        if (n > 0) {
            amax_kernel<T><<<moe__grid_for(ctx, (n + 7) / 8, kThreads), kThreads, 0, st>>>(
                static_cast<const T *>(p.x), n, vec, slot);
            MOE_CUDA_LAUNCHED(ctx, "amax_kernel");
        }
        if (kind == MOE_QFORMAT_FP8_TENSOR) {
            finalize_kernel<<<1, 1, 0, st>>>(pf);
        } else {
            finalize_kernel<<<1, 1, 0, st>>>(p);
        }
        MOE_CUDA_LAUNCHED(ctx, "finalize_kernel");
    }
    if (n == 0) return MOE_OK;
    switch (kind) {
    case MOE_QFORMAT_FP8_TENSOR:
        quantize_tensor_kernel<T><<<moe__grid_for(ctx, (n + 8 * moe_unroll<T>() - 1) / (8 * moe_unroll<T>()), kThreads),
                                    kThreads, 0, st>>>(p, n);
        break;
    case MOE_QFORMAT_FP8_ROW: {
        if (use_staged<T>(l, p)) {
            moe_status rc = launch_staged<T, false>(ctx, l, p, st);
            if (rc != MOE_OK) return rc;
            break;
        }
        const unsigned grid = moe__grid_for(ctx, p.batch * p.rows * kRowThreads, kRowThreads);
        const bool e4 = l->f.elem == MOE_DTYPE_E4M3, f32 = l->f.rule == MOE_SCALE_F32;
        if (e4 && f32) quantize_rows_kernel<T, MOE_DTYPE_E4M3, kScaleF32><<<grid, kRowThreads, 0, st>>>(p);
        if (e4 && !f32) quantize_rows_kernel<T, MOE_DTYPE_E4M3, kScalePow2><<<grid, kRowThreads, 0, st>>>(p);
        if (!e4 && f32) quantize_rows_kernel<T, MOE_DTYPE_E5M2, kScaleF32><<<grid, kRowThreads, 0, st>>>(p);
        if (!e4 && !f32) quantize_rows_kernel<T, MOE_DTYPE_E5M2, kScalePow2><<<grid, kRowThreads, 0, st>>>(p);
        break;
    }
    case MOE_QFORMAT_FP8_128X128: {
        if (use_staged<T>(l, p)) {
            moe_status rc = launch_staged<T, true>(ctx, l, p, st);
            if (rc != MOE_OK) return rc;
            break;
        }
        const unsigned grid = moe__grid_for(ctx, p.batch * p.scale_rows * p.scale_cols * kThreads, kThreads);
        const bool e4 = l->f.elem == MOE_DTYPE_E4M3, f32 = l->f.rule == MOE_SCALE_F32;
        if (e4 && f32) quantize_tiles_kernel<T, MOE_DTYPE_E4M3, kScaleF32><<<grid, kThreads, 0, st>>>(p);
        if (e4 && !f32) quantize_tiles_kernel<T, MOE_DTYPE_E4M3, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        if (!e4 && f32) quantize_tiles_kernel<T, MOE_DTYPE_E5M2, kScaleF32><<<grid, kThreads, 0, st>>>(p);
        if (!e4 && !f32) quantize_tiles_kernel<T, MOE_DTYPE_E5M2, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        break;
    }
    default: {
        /* a warp per row; 8 rows per CTA */
        const unsigned grid = moe__grid_for(ctx, p.batch * p.rows * 32, kThreads);
        const bool pow2 = l->f.rule != MOE_SCALE_F32;
        if (kind == MOE_QFORMAT_NVFP4)
            quantize_row_blocks_kernel<T, 16, MOE_DTYPE_E2M1, kScaleNvfp4><<<grid, kThreads, 0, st>>>(p);
        else if (kind == MOE_QFORMAT_MXFP4)
            quantize_row_blocks_kernel<T, 32, MOE_DTYPE_E2M1, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        else if (kind == MOE_QFORMAT_MXFP8 && l->f.elem == MOE_DTYPE_E4M3)
            quantize_row_blocks_kernel<T, 32, MOE_DTYPE_E4M3, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        else if (kind == MOE_QFORMAT_MXFP8)
            quantize_row_blocks_kernel<T, 32, MOE_DTYPE_E5M2, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        else if (l->f.elem == MOE_DTYPE_E4M3 && pow2)
            quantize_row_blocks_kernel<T, 128, MOE_DTYPE_E4M3, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        else if (l->f.elem == MOE_DTYPE_E4M3)
            quantize_row_blocks_kernel<T, 128, MOE_DTYPE_E4M3, kScaleF32><<<grid, kThreads, 0, st>>>(p);
        else if (pow2)
            quantize_row_blocks_kernel<T, 128, MOE_DTYPE_E5M2, kScalePow2><<<grid, kThreads, 0, st>>>(p);
        else
            quantize_row_blocks_kernel<T, 128, MOE_DTYPE_E5M2, kScaleF32><<<grid, kThreads, 0, st>>>(p);
    }
    }
    MOE_CUDA_LAUNCHED(ctx, "quantize kernel");
    return MOE_OK;
}

} // namespace

extern "C" moe_status moe__cuda_quantize(moe_ctx *ctx, const moe_qlayout *l, const moe_tensor *x, moe_qtensor *q,
                                         void *stream) {
    cudaStream_t st = moe__cuda_enter(ctx, stream);
    /* the swizzled layout promises zero padding */
    if (l->f.layout == MOE_SCALE_SWIZZLED_128X4 && l->scale_bytes)
        MOE_CUDA_TRY(ctx, cudaMemsetAsync(q->scale, 0, l->scale_bytes, st));
    moe_qparams p = moe__qparams(l, x->data, q);
    switch (x->dtype) {
    case MOE_DTYPE_F32: return launch<float>(ctx, l, p, st);
    case MOE_DTYPE_BF16: return launch<__nv_bfloat16>(ctx, l, p, st);
    default: return launch<__half>(ctx, l, p, st);
    }
}
