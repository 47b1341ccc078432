/* bench/micro/decode_stream_fp4.cu — how fast the FP4 decode kernel's grids can stream their bytes at all, with no
 * arithmetic, against any kernel that reads the same bytes once (docs/performance.md, "Since 1877b75"). Not part of
 * the build:
 *   nvcc -std=c++17 -O3 -arch=sm_90a -o decode_stream_fp4 bench/micro/decode_stream_fp4.cu && ./decode_stream_fp4
 * Each CTA of 4 warps takes cper = 4 / ksplit column tiles of 16 weight rows, as grouped_gemm_fp4_decode.cu does:
 * the ksplit warps of a column tile take its 64-byte K blocks in turn (warp kw: blocks kw, kw + ksplit, ...; or,
 * as a variant, contiguous ranges), each through a 3-stage cp.async ring in the kernel's 40 KB of shared memory a
 * CTA (5 an SM), lane (g, q) copying 16 bytes at 16q of rows g and g + 8 (the kernel's pieces), and only adds what
 * lands. Optionally also the rows' MXFP4 scales (the kernel's 4-byte word a row and block, or 16-byte chunks of 4
 * blocks) and the token's pieces at T = 1. No tile search, split sum or epilogue. Shapes: the routed GEMMs of
 * GPT-OSS-120B, Qwen3-30B-A3B and DeepSeek-V3 at T = 1 (experts touched x rows x bytes a row, the kernel's ksplit),
 * each timed as REPS launches back to back over code buffers that rotate through more than twice the L2, so that no
 * launch finds its codes there (the scales and the token stay the same buffers, as the token does in a layer). */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include <vector>

#include "micro.cuh"

constexpr int kStages = 3;


/* kScale: 0 no scales; 1 the rows' scale words a block (a 4-byte copy a lane and row, through L1, as the kernel
 * copies its MXFP4 scales: one E8M0 byte a 32 codes); 2 the rows' scales in 16-byte chunks (4 K blocks' worth),
 * copied by the lanes of q = 0 with the first of the warp's blocks in a chunk into one of two chunk slots a warp.
 * kContig: the K split's warps take contiguous ranges of blocks instead of every ksplit-th. kTokens: the token's
 * pieces too (lanes of g = 0: 4 x 16 bytes a block through L1, as at T = 1). A CTA: group blockIdx.x of cper =
 * 4 / ksplit column tiles of 16 rows. */
template <int kScale, bool kContig, bool kTokens>
__global__ void __launch_bounds__(128, 5) stream_fp4(const uint8_t *w, const uint8_t *scales, const uint8_t *tok,
                                                    int64_t rows, int row_bytes, int ksplit, unsigned *out) {
    constexpr int kStageBytes = 1024 + 4 * 512 + 256; /* codes, token slots, scale words: the kernel's stage */
    constexpr int kWarpBytes = kStages * kStageBytes + 2 * 256; /* the ring, then two chunk slots (16 rows x 16 B) */
    extern __shared__ __align__(16) uint8_t ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int cper = 4 / ksplit, ct = warp / ksplit, kw = warp % ksplit;
    uint8_t *const mine = ring + warp * kWarpBytes;
    const uint32_t s0 = (uint32_t)__cvta_generic_to_shared(mine) + lane * 16;
    const uint32_t sc0 = (uint32_t)__cvta_generic_to_shared(mine) + 3072 + lane * 8;
    const uint32_t ch0 = (uint32_t)__cvta_generic_to_shared(mine) + kStages * kStageBytes + g * 16;
    const int nb = row_bytes / 64, nbw = (nb + ksplit - 1) / ksplit;
    const int first = kContig ? kw * nbw : kw, step = kContig ? 1 : ksplit;
    const int nk = kContig ? max(0, min(nb - first, nbw)) : (kw < nb ? (nb - kw + ksplit - 1) / ksplit : 0);
    const int scale_row = (row_bytes / 16 + 15) & ~15; /* E8M0 bytes a row, rows padded to 16 bytes */
    unsigned acc = 0;
    {
        const int64_t tile = (int64_t)blockIdx.x * cper + ct;
        if (tile * 16 >= rows) return;
        const uint8_t *r0 = w + (tile * 16 + g) * row_bytes + 16 * q, *r1 = r0 + 8 * (int64_t)row_bytes;
        const uint8_t *sr0 = scales + (tile * 16 + g) * scale_row, *sr1 = sr0 + 8 * (int64_t)scale_row;
        const uint8_t *t0 = tok + 64 * q;
        auto issue = [&](int i) {
            if (i < nk) {
                const int b = first + i * step; /* the block */
                const uint32_t s = s0 + (i % kStages) * kStageBytes;
                cp16(s, r0 + b * 64);
                cp16(s + 512, r1 + b * 64);
                if (kScale == 1) {
                    cp4(sc0 + (i % kStages) * kStageBytes, sr0 + b * 4);
                    cp4(sc0 + (i % kStages) * kStageBytes + 4, sr1 + b * 4);
                }
                if (kScale == 2 && q == 0 && (i == 0 || (b >> 2) != ((b - step) >> 2))) {
                    const uint32_t c = ch0 + ((b >> 2) & 1) * 256;
                    cp16ca(c, sr0 + (b >> 2) * 16);
                    cp16ca(c + 128, sr1 + (b >> 2) * 16);
                }
                if (kTokens && g == 0)
#pragma unroll
                    for (int j = 0; j < 4; j++) cp16ca(s + (2 + j) * 512, t0 + b * 256 + 16 * j);
            }
            commit();
        };
        for (int i = 0; i < kStages - 1; i++) issue(i);
        for (int i = 0; i < nk; i++) {
            issue(i + kStages - 1);
            waitg<kStages - 1>();
            const int b = first + i * step;
            const uint8_t *st = mine + (i % kStages) * kStageBytes;
            const uint4 *sl = reinterpret_cast<const uint4 *>(st) + lane;
            uint4 a = sl[0], c = sl[32];
            acc += a.x ^ a.y ^ a.z ^ a.w ^ c.x ^ c.y ^ c.z ^ c.w;
            if (kScale == 1) acc += *reinterpret_cast<const uint32_t *>(st + 3072 + lane * 8);
            if (kScale == 2)
                acc += mine[kStages * kStageBytes + ((b >> 2) & 1) * 256 + g * 16 + (b & 3) * 4 + q];
            if (kTokens && g == 0) {
                a = sl[64];
                acc += a.x ^ a.w;
            }
        }
        waitg<0>();
        __syncwarp();
    }
    if (acc == 0x12345678u) out[0] = acc;
}

/* The floor of any kernel that reads n bytes once: 256 threads a CTA, 8 CTAs an SM, each thread 4 uint4 loads in
 * flight at a time over a grid-stride walk (the same REPS and buffers as shape()). */
__global__ void __launch_bounds__(256) read_flat(const uint4 *w, int64_t n16, unsigned *out) {
    unsigned acc = 0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n16; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) v[u] = i + u * stride < n16 ? __ldcs(w + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < 4; u++) acc += v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (acc == 0x12345678u) out[0] = acc;
}

static int reps() {
    const char *e = getenv("REPS");
    return e ? atoi(e) : 20;
}

/* The median of 5 runs (after one dropped) of REPS launches back to back, µs a launch; launch(i) makes launch i of
 * the REPS * 6, each on the next of the rotating buffers. */
template <class Launch> static float median_us(Launch &&launch) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    std::vector<float> t;
    for (int run = 0; run < 6; run++) {
        cudaEventRecord(a);
        for (int i = 0; i < reps(); i++) launch(run * reps() + i);
        cudaEventRecord(b);
        if (cudaEventSynchronize(b) != cudaSuccess) return -1.0f;
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (run) t.push_back(ms * 1e3f / reps());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

/* One shape: rows x row_bytes at ksplit, with the kernel's grid. */
template <int kScale, bool kContig, bool kTokens>
static int shape(const char *name, int64_t rows, int row_bytes, int ksplit, uint8_t *pool, size_t pool_bytes,
                 unsigned *out, const uint8_t *scales, const uint8_t *tok) {
    const size_t bytes = (size_t)rows * row_bytes;
    const int nbuf = (int)std::min<size_t>(pool_bytes / bytes, 64);
    const int cper = 4 / ksplit;
    const unsigned grid = (unsigned)((rows / 16 + cper - 1) / cper);
    const int smem = 4 * (kStages * (1024 + 4 * 512 + 256) + 512); /* the kernel's ring: 5 CTAs an SM */
    CK(cudaFuncSetAttribute(stream_fp4<kScale, kContig, kTokens>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const float us = median_us([&](int i) {
        stream_fp4<kScale, kContig, kTokens><<<grid, 128, smem>>>(pool + (size_t)(i % nbuf) * bytes, scales, tok, rows,
                                                                   row_bytes, ksplit, out);
    });
    CK(cudaGetLastError());
    static const char *sc[] = {"-", "words", "chunks"};
    printf("%-20s scales %-6s %-6s %s tile %6lld rows x %5d B, ksplit %d, %5u CTAs: %7.2f us, %5.0f GB/s\n", name,
           sc[kScale], kContig ? "contig" : "interl", kTokens ? "tok" : "-", (long long)rows, row_bytes, ksplit, grid,
           us, bytes / (us * 1e-6) / 1e9);
    return 0;
}

/* The same bytes read once by read_flat. */
static int flat(const char *name, size_t bytes, uint8_t *pool, size_t pool_bytes, unsigned *out, int sms) {
    const int nbuf = (int)std::min<size_t>(pool_bytes / bytes, 64);
    const float us = median_us([&](int i) {
        const uint8_t *buf = pool + (size_t)(i % nbuf) * bytes;
        read_flat<<<sms * 8, 256>>>(reinterpret_cast<const uint4 *>(buf), (int64_t)(bytes / 16), out);
    });
    CK(cudaGetLastError());
    printf("%-22s flat read %9zu B: %7.2f us a launch, %5.0f GB/s\n", name, bytes, us, bytes / (us * 1e-6) / 1e9);
    return 0;
}

struct shape_t {
    const char *name;
    int64_t rows;
    int row_bytes, ksplit;
};

int main() {
    const size_t pool_bytes = (size_t)3 << 30; /* 3 GB */
    uint8_t *pool;
    unsigned *out;
    CK(cudaMalloc(&pool, pool_bytes));
    CK(cudaMalloc(&out, 4));
    CK(cudaMemset(pool, 1, pool_bytes));
    int sms;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    /* the routed GEMMs at T = 1 with the kernel's ksplit: GPT-OSS-120B (4 experts; GEMM 1 2 x 2880 rows, GEMM 2
     * 2880, K 2880), Qwen3-30B-A3B (8; 2 x 768 rows of K 2048, 2048 of K 768), DeepSeek-V3 (8; 2 x 2048 of K 7168,
     * 7168 of K 2048) */
    const shape_t shapes[] = {{"gpt-oss-120b gemm1", 4 * 5760, 1440, 2}, {"gpt-oss-120b gemm2", 4 * 2880, 1440, 2},
                              {"qwen3-30b-a3b gemm1", 8 * 1536, 1024, 2}, {"qwen3-30b-a3b gemm2", 8 * 2048, 384, 2},
                              {"deepseek-v3 gemm1", 8 * 4096, 3584, 2},   {"deepseek-v3 gemm2", 8 * 7168, 1024, 2}};
    /* scale bytes for the largest shape (one a 16 code bytes, rows of 16-byte multiples); a token row */
    uint8_t *scales, *tok;
    CK(cudaMalloc(&scales, (size_t)8 * 4096 * 240));
    CK(cudaMalloc(&tok, 7168 * 2 * 4));
    CK(cudaMemset(scales, 3, (size_t)8 * 4096 * 240));
    CK(cudaMemset(tok, 0, 7168 * 2 * 4));
    for (int i = 0; i < 2; i++)
        for (const shape_t &x : shapes) {
            const auto args = [&](auto f) {
                f(x.name, x.rows, x.row_bytes, x.ksplit, pool, pool_bytes, out, scales, tok);
            };
            args([](auto... a) { return shape<0, false, false>(a...); });
            if (!i) flat(x.name, (size_t)x.rows * x.row_bytes, pool, pool_bytes, out, sms);
            args([](auto... a) { return shape<0, false, true>(a...); });
            args([](auto... a) { return shape<1, false, true>(a...); });
            args([](auto... a) { return shape<2, false, true>(a...); });
            args([](auto... a) { return shape<0, true, true>(a...); });
            args([](auto... a) { return shape<1, true, true>(a...); });
            args([](auto... a) { return shape<2, true, true>(a...); });
        }
    return 0;
}
