#!/usr/bin/env bash
# scripts/gpu_ep.sh — the expert-parallel part of a GPU round (the two-GPU machine): the layer's GPU tests (the
# stages EP reuses), the EP tests over NCCL, compute-sanitizer memcheck over them. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
export NCCL_NVLS_ENABLE=0 # never NVLink multicast on the shared machines
# libnccl.so.2: the system's, else the one PyTorch's wheels bring
if ! ldconfig -p | grep -q libnccl.so.2; then
    NCCL_LIB=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
    export LD_LIBRARY_PATH=${NCCL_LIB:-}:${LD_LIBRARY_PATH:-}
fi
nvidia-smi -L | tee -a "$OUT/summary.txt"
echo "=== layer + ep tests" | tee -a "$OUT/summary.txt"
"$BUILD/moe_tests" --data tests/data gpu_layer gpu_ep ep_ 2>&1 | tee "$OUT/ep-tests.log" | tail -30 | tee -a "$OUT/summary.txt"
echo "=== compute-sanitizer memcheck (gpu_ep)" | tee -a "$OUT/summary.txt"
compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/moe_tests" --data tests/data gpu_ep \
    > "$OUT/ep-memcheck.log" 2>&1
echo "exit $?" >> "$OUT/ep-memcheck.log"; tail -3 "$OUT/ep-memcheck.log" | tee -a "$OUT/summary.txt"
