/* bench/micro/decode_stream.cu — the DRAM read rate of the decode kernels' access pattern, apart from their
 * arithmetic (docs/performance.md, "Since 7cb063e"). Not part of the build:
 *   nvcc -O3 -arch=sm_90a -o decode_stream bench/micro/decode_stream.cu && ./decode_stream
 * (REPS=n: timings a variant; SMEM=bytes: shared memory a CTA, to cap the CTAs an SM)
 * Each CTA of 4 warps streams the weight rows of one 16-row tile (or, persistent, of several) through a per-warp
 * cp.async ring of 3 stages of 16 rows x 128 bytes, as grouped_gemm_fp8_decode.cu does, and only XORs what lands:
 * row-major weights with the warps on interleaved 128-byte K blocks (the kernels' order) or on contiguous K
 * ranges, a packed layout (a warp's stage contiguous), one tile a CTA or persistent CTAs, a continuous ring across
 * tiles, and a tile prologue of dependent loads. Shapes: DeepSeek-V3's GEMM 1 and GEMM 2 over 8 experts. Its CTAs
 * take 24 KB of shared memory and 30-48 registers a thread, so up to 9 fit an SM (the kernels: 5). */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include <vector>

#include "micro.cuh"

constexpr int kStages = 3;
/* shared memory a CTA: the ring's 24 KB, or SMEM bytes (SMEM=42000: the decode kernels' 5 CTAs an SM) */
static int ring_smem() {
    const char *e = getenv("SMEM");
    return e && atoi(e) > 4 * kStages * 2048 ? atoi(e) : 4 * kStages * 2048;
}
static int reps() {
    const char *e = getenv("REPS");
    return e ? atoi(e) : 21;
}

/* A warp's stage: the 16 rows x 128 bytes of K block kb of the row-major tile at base (or, packed, the block's
 * 2 KB at base + kb * 2048), 4 pieces of 16 bytes a lane. kPattern 0: 8 lanes a row, each copy instruction 4 whole
 * 128-byte lines; 1: the decode kernels' pieces until 2026-12-03 (lane g, q: rows g and g + 8, bytes 16q and
 * 64 + 16q, an instruction 8 half lines); 2: rows g and g + 8, bytes 32q and 32q + 16 (an instruction touches every
 * sector of 8 lines, half of each). */
template <bool kPacked, int kPattern = 0>
__device__ __forceinline__ void copy_block(uint32_t st, const uint8_t *base, int64_t K, int kb, int lane) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int piece = j * 32 + lane;
        int r = piece >> 3, c = piece & 7; /* row, 16-byte column piece */
        if (kPattern == 1) r = (lane >> 2) + 8 * (j >> 1), c = (lane & 3) + 4 * (j & 1);
        if (kPattern == 2) r = (lane >> 2) + 8 * (j >> 1), c = 2 * (lane & 3) + (j & 1);
        cp16(st + piece * 16,
             kPacked ? base + (int64_t)kb * 2048 + piece * 16 : base + (int64_t)r * K + kb * 128 + c * 16);
    }
}

/* What a lane does with its pieces of a landed stage: XORs them into accum (so that the loads are kept). */
__device__ __forceinline__ void use_block(const uint4 *st, int lane, unsigned &accum) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint4 v = st[j * 32 + lane];
        accum += v.x ^ v.y ^ v.z ^ v.w;
    }
}

// mode 0: row-major W (rows x K), tile = 16 rows, warp w takes K blocks w, w+4, ... (128 B per row per block)
// mode 1: packed: tile's blocks contiguous [kb][16][128]
// mode 2: row-major, warp w takes contiguous K range (blocks w*nb/4 ...)
// modes 5, 6: mode 0 with copy_block's pieces patterns 1 and 2
// rows_per_slot: each lane copies 4 x 16 B per stage (16 rows x 128 B = 2048 B = 128 x 16 B; 32 lanes x 4)
template <int MODE>
__global__ void __launch_bounds__(128, 5)
    stream_kernel(const uint8_t *w, int64_t rows, int64_t K, int64_t tiles, unsigned *out) {
    extern __shared__ uint4 ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint4 *my = ring + warp * kStages * 128;
    const uint32_t my_s = (uint32_t)__cvta_generic_to_shared(my);
    const int nb = (int)(K / 128);
    const int nk = nb / 4;
    unsigned accum = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const uint8_t *base = w + tile * 16 * K;
        auto issue = [&](int i) {
            if (i < nk) {
                const int kb = MODE == 2 ? warp * nk + i : warp + 4 * i;
                copy_block<MODE == 1, MODE == 5 ? 1 : MODE == 6 ? 2 : 0>(my_s + (i % kStages) * 2048, base, K, kb,
                                                                          lane);
            }
            commit();
        };
        for (int i = 0; i < kStages - 1; i++)
            issue(i);
        for (int i = 0; i < nk; i++) {
            issue(i + kStages - 1);
            waitg<kStages - 1>();
            const uint4 *st = my + (i % kStages) * 128;
            use_block(st, lane, accum);
        }
        waitg<0>();
        __syncthreads();
    }
    if (accum == 0x12345678u)
        out[0] = accum;
}

/* Times launch(grid, smem, buffer, tiles) over reps() runs (the first dropped; the two buffers alternate, so that
 * no run finds the last one's bytes in L2) and prints the median rate. */
template <class Kernel, class Launch>
int timed(const char *name, Kernel *kernel, int64_t rows, int64_t K, int grid_cap, Launch launch) {
    const int64_t tiles = rows / 16;
    const int smem = ring_smem();
    CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const int grid = (int)std::min<int64_t>(tiles, grid_cap);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    std::vector<float> t;
    for (int rep = 0; rep < reps(); rep++) {
        cudaEventRecord(a);
        launch(grid, smem, rep & 1, tiles);
        cudaEventRecord(b);
        CK(cudaEventSynchronize(b));
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (rep)
            t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    const double bytes = (double)rows * K;
    printf("%-28s rows %7lld K %5lld grid %6d: median %8.2f us  %6.0f GB/s  (min %8.2f us)\n", name, (long long)rows,
           (long long)K, grid, t[t.size() / 2] * 1e3, bytes / (t[t.size() / 2] * 1e-3) / 1e9, t[0] * 1e3);
    return 0;
}

template <int MODE> int run(const char *name, uint8_t *buf[2], int64_t rows, int64_t K, int grid_cap) {
    unsigned *out;
    CK(cudaMalloc(&out, 4));
    const int r = timed(name, stream_kernel<MODE>, rows, K, grid_cap, [&](int grid, int smem, int i, int64_t tiles) {
        stream_kernel<MODE><<<grid, 128, smem>>>(buf[i], rows, K, tiles, out);
    });
    cudaFree(out);
    return r;
}

// mode 3: persistent CTAs, one continuous ring across tiles (next tile's blocks issued before this tile's end),
// a barrier at each tile's end (the split-K reduction's). mode 4: one tile a CTA with a scale prologue of
// dependent loads (row id, then scale) and a barrier before the loop.
template <int MODE>
__global__ void __launch_bounds__(128, 5) stream2_kernel(const uint8_t *w, int64_t rows, int64_t K, int64_t tiles,
                                                         const int *rowsrc, const float *sc, unsigned *out) {
    extern __shared__ uint4 ring[];
    __shared__ float scales[16 * 64];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint4 *my = ring + warp * kStages * 128;
    const uint32_t my_s = (uint32_t)__cvta_generic_to_shared(my);
    const int nb = (int)(K / 128), nk = nb / 4;
    unsigned accum = 0;
    if (MODE == 3) {
        const int64_t my_tiles = (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x;
        const int64_t total = my_tiles * nk;
        auto issue = [&](int64_t j) {
            if (j < total) {
                const int64_t t = blockIdx.x + (j / nk) * gridDim.x;
                const int kb = warp + 4 * (int)(j % nk);
                const uint8_t *base = w + t * 16 * K;
                copy_block<false>(my_s + (j % kStages) * 2048, base, K, kb, lane);
            }
            commit();
        };
        for (int i = 0; i < kStages - 1; i++)
            issue(i);
        for (int64_t j = 0; j < total; j++) {
            issue(j + kStages - 1);
            waitg<kStages - 1>();
            const uint4 *st = my + (j % kStages) * 128;
            use_block(st, lane, accum);
            if (j % nk == nk - 1)
                __syncthreads();
        }
        waitg<0>();
    } else {
        for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            const uint8_t *base = w + tile * 16 * K;
            auto issue = [&](int i) {
                if (i < nk) {
                    const int kb = warp + 4 * i;
                    copy_block<false>(my_s + (i % kStages) * 2048, base, K, kb, lane);
                }
                commit();
            };
            for (int i = 0; i < kStages - 1; i++)
                issue(i);
            __syncthreads();
            for (int i = threadIdx.x; i < 18 * nb; i += 128) {
                const int r = i / nb, kb = i - r * nb;
                const int a = __ldg(rowsrc + (tile * 16 + r) % 4096);
                scales[i % 1024] = __ldg(sc + ((int64_t)a * nb + kb) % 65536);
            }
            __syncthreads();
            for (int i = 0; i < nk; i++) {
                issue(i + kStages - 1);
                waitg<kStages - 1>();
                const uint4 *st = my + (i % kStages) * 128;
                use_block(st, lane, accum);
                accum += __float_as_uint(scales[(warp + 4 * i) % 1024]);
            }
            waitg<0>();
            __syncthreads();
        }
    }
    if (accum == 0x12345678u)
        out[0] = accum;
}

template <int MODE>
int run2(const char *name, uint8_t *buf[2], int64_t rows, int64_t K, int grid_cap, const int *rs, const float *sc) {
    unsigned *out;
    CK(cudaMalloc(&out, 4));
    const int r = timed(name, stream2_kernel<MODE>, rows, K, grid_cap, [&](int grid, int smem, int i, int64_t tiles) {
        stream2_kernel<MODE><<<grid, 128, smem>>>(buf[i], rows, K, tiles, rs, sc, out);
    });
    cudaFree(out);
    return r;
}

int main() {
    const size_t bytes = (size_t)32768 * 7168;
    uint8_t *buf[2];
    CK(cudaMalloc(&buf[0], bytes));
    CK(cudaMalloc(&buf[1], bytes));
    cudaMemset(buf[0], 1, bytes);
    cudaMemset(buf[1], 2, bytes);
    // simple copy-like read reference: cudaMemcpy D2D
    {
        uint8_t *dst;
        CK(cudaMalloc(&dst, bytes));
        cudaEvent_t a, b;
        cudaEventCreate(&a);
        cudaEventCreate(&b);
        std::vector<float> t;
        for (int rep = 0; rep < 11; rep++) {
            cudaEventRecord(a);
            cudaMemcpyAsync(dst, buf[rep & 1], bytes, cudaMemcpyDeviceToDevice);
            cudaEventRecord(b);
            cudaEventSynchronize(b);
            float ms;
            cudaEventElapsedTime(&ms, a, b);
            t.push_back(ms);
        }
        std::sort(t.begin(), t.end());
        printf("memcpy d2d %zu B: %.2f us, %.0f GB/s (read+write)\n", bytes, t[5] * 1e3,
               2.0 * bytes / (t[5] * 1e-3) / 1e9);
        cudaFree(dst);
    }
    int sm;
    cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, 0);
    const int big = 1 << 30;
    // GEMM1 shape: 8 experts x 4096 rows x 7168
    run<0>("rowmajor interleaved", buf, 32768, 7168, big);
    run<1>("packed", buf, 32768, 7168, big);
    run<2>("rowmajor contiguous-K", buf, 32768, 7168, big);
    run<0>("rowmajor interleaved pers", buf, 32768, 7168, sm * 5);
    run<1>("packed pers", buf, 32768, 7168, sm * 5);
    // GEMM2 shape: 8 experts x 7168 rows x 2048
    run<0>("G2 rowmajor interleaved", buf, 57344, 2048, big);
    run<1>("G2 packed", buf, 57344, 2048, big);
    run<0>("G2 rowmajor interleaved pers", buf, 57344, 2048, sm * 5);
    run<1>("G2 packed pers", buf, 57344, 2048, sm * 5);
    // repeat first for noise
    run<0>("rowmajor interleaved", buf, 32768, 7168, big);
    run<1>("packed", buf, 32768, 7168, big);
    // the pieces' patterns (copy_block), twice
    for (int i = 0; i < 2; i++) {
        run<0>("lines", buf, 32768, 7168, big);
        run<5>("half lines (kernels before)", buf, 32768, 7168, big);
        run<6>("32q + 16c", buf, 32768, 7168, big);
        run<0>("G2 lines", buf, 57344, 2048, big);
        run<5>("G2 half lines", buf, 57344, 2048, big);
        run<6>("G2 32q + 16c", buf, 57344, 2048, big);
    }

    int *rs;
    float *sc;
    CK(cudaMalloc(&rs, 4096 * 4));
    CK(cudaMalloc(&sc, 65536 * 4));
    cudaMemset(rs, 0, 4096 * 4);
    cudaMemset(sc, 0, 65536 * 4);
    for (int i = 0; i < 2; i++) {
        run2<3>("continuous ring pers", buf, 32768, 7168, sm * 5, rs, sc);
        run2<3>("continuous ring pers x4", buf, 32768, 7168, sm * 4, rs, sc);
        run2<4>("tile+prologue", buf, 32768, 7168, big, rs, sc);
        run2<3>("G2 continuous ring pers", buf, 57344, 2048, sm * 5, rs, sc);
        run2<4>("G2 tile+prologue", buf, 57344, 2048, big, rs, sc);
    }
    return 0;
}
