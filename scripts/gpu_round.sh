#!/usr/bin/env bash
# scripts/gpu_round.sh — one round of GPU checks on the device machine, run from the repository root with the
# build folder(s) carried: the tests (GPU against the CPU reference), compute-sanitizer memcheck and racecheck
# over the GPU tests, a build without sm_90 code to show the unsupported-GPU error, and `moe bench formats`.
# Logs and results go under $OUT (default /tmp/moe-gpu).
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
step() { printf '\n=== %s\n' "$*" | tee -a "$OUT/summary.txt"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$OUT/summary.txt"
"$BUILD/moe" info | tee -a "$OUT/summary.txt"

step "tests (GPU tensors ${MOE_TEST_GPU_MIB:-64} MiB)"
"$BUILD/moe_tests" --data tests/data > "$OUT/tests.log" 2>&1
echo "exit $?" >> "$OUT/tests.log"
grep -E "^(ok|FAIL|skip)|passed|exit|^  " "$OUT/tests.log" | tail -40 | tee -a "$OUT/summary.txt"

if [ "${SANITIZE:-1}" = 1 ]; then
    # gpu_errors asks for 2^50 bytes on purpose; memcheck would report that refused cudaMalloc as an error.
    step "compute-sanitizer memcheck (GPU tests but gpu_errors, 2 MiB tensors)"
    MOE_TEST_GPU_MIB=2 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
        "$BUILD/moe_tests" --data tests/data gpu_scalar gpu_blocks gpu_swizzle > "$OUT/memcheck.log" 2>&1
    echo "exit $?" >> "$OUT/memcheck.log"
    tail -4 "$OUT/memcheck.log" | tee -a "$OUT/summary.txt"
    step "compute-sanitizer racecheck (GPU block tests, 2 MiB tensors)"
    MOE_TEST_GPU_MIB=2 compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$BUILD/moe_tests" --data tests/data gpu_blocks_golden gpu_swizzle > "$OUT/racecheck.log" 2>&1
    echo "exit $?" >> "$OUT/racecheck.log"
    tail -4 "$OUT/racecheck.log" | tee -a "$OUT/summary.txt"
    # the FP4 wgmma tile's mbarrier ring, its cases on that tile only (over both tiles it takes about 5 minutes)
    step "compute-sanitizer racecheck (gpu_layer_fp4_medium on the wgmma tile, 8 MiB tensors)"
    MOE_TEST_GPU_MIB=8 MOE_TEST_FP4_TILE=rs compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$BUILD/moe_tests" --data tests/data gpu_layer_fp4_medium > "$OUT/racecheck-fp4.log" 2>&1
    echo "exit $?" >> "$OUT/racecheck-fp4.log"
    tail -4 "$OUT/racecheck-fp4.log" | tee -a "$OUT/summary.txt"
    # the LARGE variant's walks (3 CTAs walking many tiles: the ring across tiles), about 5 minutes on an H100
    step "compute-sanitizer racecheck (gpu_layer_fp4_large, the walks only, 8 MiB tensors)"
    MOE_TEST_GPU_MIB=8 MOE_TEST_FP4_TILE=walk compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$BUILD/moe_tests" --data tests/data gpu_layer_fp4_large > "$OUT/racecheck-fp4-walk.log" 2>&1
    echo "exit $?" >> "$OUT/racecheck-fp4-walk.log"
    tail -4 "$OUT/racecheck-fp4-walk.log" | tee -a "$OUT/summary.txt"
fi

if [ -x build-sm80/moe ]; then
    step "a build with sm_80 code only, on this GPU (expect a clear MOE_ERR_UNSUPPORTED)"
    build-sm80/moe quantize --backend cuda --shape 4,64 2>&1 | tee -a "$OUT/summary.txt"
    build-sm80/moe info 2>&1 | tee -a "$OUT/summary.txt"
fi

if [ "${BENCH:-1}" = 1 ]; then
    step "moe bench formats"
    "$BUILD/moe" bench formats --json "$OUT/bench-formats.json" 2>&1 | tee "$OUT/bench.log" | tee -a "$OUT/summary.txt"
fi
