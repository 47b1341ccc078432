/* bench/micro/grid_barrier.cu — what a step of a decode chain costs at its boundary, for a design that would run the
 * chain (gate, routing, GEMM 1, h's codes, GEMM 2, combine) as one persistent kernel: a kernel boundary in a CUDA
 * graph (plain launches, and programmatic dependent launches as the layer's chain uses them) against a grid-wide
 * barrier inside one cooperative kernel (cooperative_groups' grid sync, and a counter with a generation word).
 * Not part of the build:
 *   nvcc -std=c++17 -O3 -arch=sm_90a -o grid_barrier bench/micro/grid_barrier.cu && ./grid_barrier
 * Every step is empty but for one word each CTA writes and the next step reads (what a barrier must make visible):
 * the numbers are the boundaries' own latency, for grids of 1 to 5 CTAs an SM of 128 threads. */
#include <cooperative_groups.h>
#include <cstdio>
#include <cuda_runtime.h>

#include "micro.cuh"

namespace cg = cooperative_groups;

constexpr int kSteps = 64, kReps = 20;

/* A step: read the word the previous step's CTA (b + 1) % grid wrote, write this CTA's. */
__device__ __forceinline__ void step_body(unsigned *words, int step) {
    if (threadIdx.x == 0) {
        const unsigned prev = ((volatile unsigned *)words)[(blockIdx.x + 1) % gridDim.x];
        words[blockIdx.x] = prev + (unsigned)step;
    }
}

__global__ void step_plain(unsigned *words, int step) { step_body(words, step); }

__global__ void step_pdl(unsigned *words, int step) {
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    step_body(words, step);
}

__global__ void steps_coop(unsigned *words) {
    cg::grid_group grid = cg::this_grid();
    for (int s = 0; s < kSteps; s++) {
        step_body(words, s);
        grid.sync();
    }
}

/* A hand-rolled barrier: each CTA's thread 0 fences its writes, adds one to the counter; the last of a round resets
 * it and bumps the generation, which the others spin on. */
__device__ __forceinline__ void counter_barrier(unsigned *count, volatile unsigned *gen, unsigned &my_gen) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(count, 1u) == gridDim.x - 1) {
            *count = 0;
            __threadfence();
            *gen = my_gen + 1;
        } else {
            while (*gen == my_gen) {
            }
        }
        __threadfence();
    }
    my_gen++;
    __syncthreads();
}

__global__ void steps_counter(unsigned *words, unsigned *count, unsigned *gen) {
    unsigned my_gen = *(volatile unsigned *)gen;
    for (int s = 0; s < kSteps; s++) {
        step_body(words, s);
        counter_barrier(count, gen, my_gen);
    }
}

static int time_graph(cudaStream_t st, cudaGraphExec_t exec, float &us) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(exec, st)); /* warm-up */
    CK(cudaEventRecord(a, st));
    for (int r = 0; r < kReps; r++) CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    us = ms * 1000.0f / (kReps * kSteps);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 0;
}

int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    unsigned *words, *count, *gen;
    CK(cudaMalloc(&words, 4 * 8192));
    CK(cudaMalloc(&count, 4));
    CK(cudaMalloc(&gen, 4));
    CK(cudaMemset(words, 0, 4 * 8192));
    CK(cudaMemset(count, 0, 4));
    CK(cudaMemset(gen, 0, 4));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    printf("%s, %d SMs; µs a step boundary (%d steps a graph, %d replays)\n", prop.name, sms, kSteps, kReps);
    printf("%10s %12s %12s %14s %16s\n", "CTAs/SM", "plain", "PDL", "grid.sync", "counter barrier");
    for (int per = 1; per <= 5; per += 2) {
        const int ctas = sms * per;
        float us[4] = {0, 0, 0, 0};
        for (int v = 0; v < 4; v++) {
            cudaGraph_t graph;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            if (v < 2) {
                for (int s = 0; s < kSteps; s++) {
                    cudaLaunchConfig_t cfg = {};
                    cudaLaunchAttribute attr;
                    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
                    attr.val.programmaticStreamSerializationAllowed = 1;
                    cfg.gridDim = dim3(ctas), cfg.blockDim = dim3(128), cfg.stream = st;
                    cfg.attrs = v == 1 ? &attr : nullptr, cfg.numAttrs = v == 1 ? 1 : 0;
                    CK(cudaLaunchKernelEx(&cfg, v == 1 ? step_pdl : step_plain, words, s));
                }
            } else if (v == 2) {
                void *args[] = {&words};
                CK(cudaLaunchCooperativeKernel((void *)steps_coop, dim3(ctas), dim3(128), args, 0, st));
            } else {
                void *args[] = {&words, &count, &gen};
                CK(cudaLaunchCooperativeKernel((void *)steps_counter, dim3(ctas), dim3(128), args, 0, st));
            }
            CK(cudaStreamEndCapture(st, &graph));
            cudaGraphExec_t exec;
            CK(cudaGraphInstantiate(&exec, graph, 0));
            if (time_graph(st, exec, us[v])) return 1;
            cudaGraphExecDestroy(exec);
            cudaGraphDestroy(graph);
        }
        printf("%10d %12.2f %12.2f %14.2f %16.2f\n", per, us[0], us[1], us[2], us[3]);
    }
    CK(cudaGetLastError());
    return 0;
}
