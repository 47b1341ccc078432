/* grouped_gemm_fp8_decode.cu — W8A8's routed GEMMs at decode (the SMALL tile: 16 rows an expert) on the FP8 tensor
 * cores through mma.sync m16n8k32 (sm_89 and later; built into the sm_90a code). Contract in grouped_gemm.cuh
 * (moe_gemm_fp8, moe__cuda_grouped_gemm_fp8_decode); the arithmetic is the W8A8 tile's (grouped_gemm_sm90_fp8.cu):
 * each 128-wide K block's products summed on the tensor cores, then added to f32 accumulators times
 * a_scale(row) * b_scale(block).
 *
 * At decode an expert has a few rows, so the GEMM streams weights: a CTA of 4 warps takes one 16-row tile and 1, 2
 * or 4 column tiles of 16 B rows each (GLU: the gate and up rows of 8 output columns; plain: 16 columns), the 4, 2
 * or 1 warps of a column tile splitting K by 128-wide blocks (warp w of s takes blocks w, w + s, ...), and sums
 * their partial tiles in shared memory in warp order (deterministic). The weights are the mma's A operand
 * (M = 16 B rows) and the tokens its B operand (N = 8 rows a half tile; the second half runs only when the tile
 * has more than 8 rows), so no weight is converted: each lane copies 16 bytes of two weight rows and of its first
 * half's token row into its own slots of a per-warp ring in shared memory (cp.async, 3 stages), and reads back only
 * those; a second half's token rows (rare at decode) are read from global memory when used.
 * The reduction order inside a K block does not matter to an mma, so a lane's 16 contiguous bytes
 * (k = 64c + 16q .. + 15 of the block, q = lane % 4) feed two mma K slots of its own (bytes 8h .. 8h + 7 of chunk
 * c are mma 2c + h's slots 4q .. 4q + 3 and 16 + 4q .. 16 + 4q + 3) in A and B alike. A tile's scales are copied
 * to shared memory before its K loop, so that no block waits on a scale load.
 * GEMM 1 writes h in f32 (p.c32); moe__cuda_act_quant turns it into GEMM 2's codes. */
#include "cuda/common/cuda.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/formats/qformat.cuh"
#include "cuda/moe/gemm_decode.cuh"
#include "cuda/moe/grouped_gemm.cuh"

namespace {

constexpr int kWarps = kDecodeWarps;
constexpr int kStages = 3; /* K blocks a warp has in flight */
/* A warp's stage: its lanes' 16-byte pieces, slot i of lane l at (32 i + l) 16 bytes (each lane reads back only what
 * it copied, so no barrier is needed and no two lanes of a phase share a bank): slots 0-3 the weights w[h][c],
 * 4-5 the first half's tokens a[c] */
constexpr int kSlots = 6, kStageBytes = kSlots * 32 * 16;
/* 36 KB, then the tile's scales: with those and part, 5 CTAs an SM (registers bounded to allow 5; measured on the
 * H200 faster than 8 slots and 4 CTAs: DeepSeek-V3 W8A8 at T = 16, 1155 against 1206 us a layer) */
constexpr size_t kRing = (size_t)kWarps * kStages * kStageBytes;
constexpr int kCtasPerSm = 5;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
constexpr int kBK = 128; /* a scale block of K */

/* d += a (16 x 32, row) * b (32 x 8, col), E4M3 inputs, f32 accumulators. a0/a2: row g, a1/a3: row g + 8. */
__device__ __forceinline__ void mma_e4m3(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Block scale of B row `row` at K block kb; 0 for a row past N. */
template <int F>
__device__ __forceinline__ float b_scale(const moe_gemm_params &p, int g, int64_t row, int kb) {
    if (row < 0) return 0.0f;
    const int64_t i = g * p.bs.group_stride + (row >> 7) * p.bs.cols + (kb << 7 >> p.bs.col_shift);
    if (F == MOE_B_E4M3_F32) return __ldg(static_cast<const float *>(p.bs.scale) + i);
    return moe_decode(__ldg(static_cast<const uint8_t *>(p.bs.scale) + i), MOE_DTYPE_E8M0);
}

#endif

template <bool kGlu, int F>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm)
    gemm_fp8_decode_kernel(const moe_gemm_params p, const moe_gemm_fp8 f, int ksplit) {
    moe_pdl_wait();
    moe_pdl_launch_next();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    extern __shared__ uint4 smem_ring[];
    __shared__ float part[kWarps - 1][8][32]; /* by warp - 1: warp 0 always adds */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    /* the CTA's 4 warps: kWarps / ksplit column tiles of 16 B rows, each summed over K by ksplit warps */
    const int cper = kWarps / ksplit, ct = warp / ksplit, kw = warp - ct * ksplit;
    const uint4 *ring = smem_ring + warp * kStages * kSlots * 32 + lane;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    const int64_t K = p.k;
    const int kblocks = (p.k + kBK - 1) / kBK;
    /* the tile's scales: the column tiles' B halves (2 cper, kblocks), then the 16 rows' (16, kblocks) */
    float *scales = reinterpret_cast<float *>(smem_ring + kWarps * kStages * kSlots * 32);
    const float *sb = scales + 2 * ct * kblocks, *sa = scales + 2 * cper * kblocks;
    const int nk = kw < kblocks ? (kblocks - kw + ksplit - 1) / ksplit : 0; /* this warp's blocks */
    for (int64_t tile = blockIdx.x; tile < p.m_tiles * p.n_tiles; tile += gridDim.x) {
        moe_gemm_tile t; /* p.n_tiles counts groups of cper column tiles; t.tile_n is this warp's column tile */
        if (!moe_gemm_locate(p, kDecodeRows, tile, t)) continue; /* the same for the whole CTA */
        const int64_t tile_group_n = t.tile_n;
        t.tile_n = tile_group_n * cper + ct;
        const int64_t brow[2] = {moe_decode_b_row<kGlu>(p, t, g), moe_decode_b_row<kGlu>(p, t, g + 8)};
        const uint8_t *bsrc[2];
#pragma unroll
        for (int h = 0; h < 2; h++)
            bsrc[h] = static_cast<const uint8_t *>(p.b) + t.group * p.b_group_stride + (brow[h] < 0 ? 0 : brow[h] * K);
        auto a_row = [&](int n) { return moe_decode_a_row(p, t, n); };
        const bool two = a_row(8) >= 0; /* rows fill a tile from its start: past 8 only if row 8 is real */
        const uint8_t *asrc[2];
        bool a_in[2];
#pragma unroll
        for (int n = 0; n < 2; n++) {
            const int64_t a = a_row(g + 8 * n);
            a_in[n] = a >= 0 && (n == 0 || two);
            asrc[n] = f.a + (a < 0 ? 0 : a * K);
        }
        /* this warp's i-th block into stage i % kStages; a group committed either way, so that the counts match */
        auto issue = [&](int i) {
            if (i < nk) {
                const int kb = kw + i * ksplit;
                const uint32_t st = ring_s + (uint32_t)((i % kStages) * kSlots * 32 * 16);
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const int64_t off = (int64_t)kb * kBK + 64 * c + 16 * q;
                    const bool in = off < K; /* K % 16 == 0: the 16 bytes are all in or all out */
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        moe_decode_copy16_cg(st + (2 * h + c) * 512, bsrc[h] + (in ? off : 0),
                                             in && brow[h] >= 0 ? 16 : 0);
                    moe_decode_copy16_ca(st + (4 + c) * 512, asrc[0] + (in ? off : 0), in && a_in[0] ? 16 : 0);
                }
            }
            moe_cp_async_commit();
        };
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int i = 0; i < kStages - 1; i++) issue(i);
        /* while those land: the tile's scales into shared memory, so that no K block waits on a scale load. The
         * barrier before also ends the previous tile (its scale reads, and warp 0's reads of part). */
        __syncthreads();
        for (int i = threadIdx.x; i < (2 * cper + kDecodeRows) * kblocks; i += kWarps * 32) {
            const int r = i / kblocks, kb = i - r * kblocks;
            float v;
            if (r < 2 * cper) {
                moe_gemm_tile tr = t;
                tr.tile_n = tile_group_n * cper + (r >> 1);
                v = b_scale<F>(p, t.group, moe_decode_b_row<kGlu>(p, tr, 8 * (r & 1)), kb);
            } else {
                const int64_t a = a_row(r - 2 * cper);
                v = a < 0 ? 0.0f : __ldg(p.gather ? f.a_scale + a * kblocks + kb : f.a_scale + kb * f.a_scale_ld + a);
            }
            scales[i] = v;
        }
        __syncthreads();
        for (int i = 0; i < nk; i++) {
            issue(i + kStages - 1); /* into the stage read at i - 1 (by this lane, already in registers) */
            moe_cp_async_wait<kStages - 1>();
            const int kb = kw + i * ksplit;
            const uint4 *st = ring + (i % kStages) * kSlots * 32;
            uint4 w[2][2];
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int c = 0; c < 2; c++) w[h][c] = st[(2 * h + c) * 32];
            const float sb0 = sb[kb], sb1 = sb[kblocks + kb];
#pragma unroll
            for (int n = 0; n < 2; n++) {
                if (n == 1 && !two) break;
                uint4 a[2];
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const int64_t off = (int64_t)kb * kBK + 64 * c + 16 * q;
                    if (n == 0) a[c] = st[(4 + c) * 32];
                    else a[c] = a_in[1] && off < K ? __ldg(reinterpret_cast<const uint4 *>(asrc[1] + off))
                                                   : make_uint4(0, 0, 0, 0);
                }
                float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int c = j >> 1, h = j & 1;
                    const uint32_t *w0 = reinterpret_cast<const uint32_t *>(&w[0][c]);
                    const uint32_t *w1 = reinterpret_cast<const uint32_t *>(&w[1][c]);
                    const uint32_t *x = reinterpret_cast<const uint32_t *>(&a[c]);
                    mma_e4m3(tmp, w0[2 * h], w1[2 * h], w0[2 * h + 1], w1[2 * h + 1], x[2 * h], x[2 * h + 1]);
                }
                const float s0 = sa[(2 * q + 8 * n) * kblocks + kb], s1 = sa[(2 * q + 1 + 8 * n) * kblocks + kb];
                acc[n][0] = __fmaf_rn(tmp[0], s0 * sb0, acc[n][0]);
                acc[n][1] = __fmaf_rn(tmp[1], s1 * sb0, acc[n][1]);
                acc[n][2] = __fmaf_rn(tmp[2], s0 * sb1, acc[n][2]);
                acc[n][3] = __fmaf_rn(tmp[3], s1 * sb1, acc[n][3]);
            }
        }
        moe_cp_async_wait<0>(); /* the empty groups past nk */

        if (moe_decode_reduce(acc, part, warp, kw, ksplit, lane))
            moe_decode_epilogue<kGlu>(p, t, acc, brow, g, q, 1.0f);
    }
#endif
}

template <bool kGlu, int F>
moe_status launch(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, int64_t m_tiles, cudaStream_t st) {
    moe_gemm_params q = p;
    const int ksplit = moe_decode_ksplit((p.k + 127) / 128), cper = kWarps / ksplit;
    const int64_t col_tiles = kGlu ? (p.n + 7) / 8 : (p.n + 15) / 16;
    q.m_tiles = m_tiles, q.n_tiles = (col_tiles + cper - 1) / cper; /* groups of cper column tiles */
    const int64_t tiles = q.m_tiles * q.n_tiles, cap = (int64_t)1 << 30; /* a grid-stride loop past that */
    const dim3 grid((unsigned)(tiles < cap ? tiles : cap));
    const size_t smem = kRing + (size_t)(2 * cper + 16) * ((p.k + 127) / 128) * 4;
    MOE_CUDA_TRY(ctx, cudaFuncSetAttribute(gemm_fp8_decode_kernel<kGlu, F>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    MOE_CUDA_TRY(ctx, moe_launch(false, gemm_fp8_decode_kernel<kGlu, F>, grid, kWarps * 32, smem, st, q, f,
                                 ksplit));
    return MOE_OK;
}

} // namespace

moe_status moe__cuda_grouped_gemm_fp8_decode(moe_ctx *ctx, const moe_gemm_params &p, const moe_gemm_fp8 &f, bool glu,
                                             int64_t m_tiles, cudaStream_t stream) {
    if (m_tiles <= 0) return MOE_OK;
    const bool f32 = p.b_fmt == MOE_B_E4M3_F32;
    if (glu) return f32 ? launch<true, MOE_B_E4M3_F32>(ctx, p, f, m_tiles, stream)
                        : launch<true, MOE_B_E4M3_E8M0>(ctx, p, f, m_tiles, stream);
    return f32 ? launch<false, MOE_B_E4M3_F32>(ctx, p, f, m_tiles, stream)
               : launch<false, MOE_B_E4M3_E8M0>(ctx, p, f, m_tiles, stream);
}
