#!/usr/bin/env bash
# scripts/gpu_w4a8.sh — the first GPU round of the W4A8 decode kernel (grouped_gemm_rs_decode.cu, opt-in with
# MOE_GEMM_W4A8_DECODE=1): its test on the kernel and the bf16 path, compute-sanitizer memcheck and racecheck of it,
# `moe bench layer --dtype w4a8` with the kernel and without (alternated twice, one binary) beside --dtype mxfp4, and
# Nsight Compute of GEMM 1 at T = 1 on both kernels. Logs and JSON under $OUT (one device call: about 5 minutes).
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
M="$BUILD/moe"
MODELS=${MODELS:-gpt-oss-120b,gpt-oss-20b,deepseek-v3,qwen3-235b-a22b}
TOKENS=${TOKENS:-1,2,4,8,16,64}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt"
echo "=== gpu_layer_w4a8" | tee -a "$OUT/summary.txt"
"$BUILD/moe_tests" --data tests/data gpu_layer_w4a8 > "$OUT/w4a8-test.log" 2>&1
echo "exit $?" >> "$OUT/w4a8-test.log"; tail -3 "$OUT/w4a8-test.log" | tee -a "$OUT/summary.txt"
for tool in memcheck racecheck; do
    echo "=== compute-sanitizer $tool" | tee -a "$OUT/summary.txt"
    compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/moe_tests" --data tests/data gpu_layer_w4a8 \
        > "$OUT/w4a8-$tool.log" 2>&1
    echo "exit $?" >> "$OUT/w4a8-$tool.log"; tail -2 "$OUT/w4a8-$tool.log" | tee -a "$OUT/summary.txt"
done
for rep in 1 2; do
    for v in kernel bf16path; do
        echo "=== w4a8 $v $rep" | tee -a "$OUT/summary.txt"
        if [ $v = kernel ]; then export MOE_GEMM_W4A8_DECODE=1; else unset MOE_GEMM_W4A8_DECODE; fi
        "$M" bench layer --model "$MODELS" --tokens "$TOKENS" --dtype w4a8 --idle-ms 50 \
            --json "$OUT/bench-w4a8-$v-$rep.json" 2>/dev/null | tee -a "$OUT/summary.txt"
    done
    unset MOE_GEMM_W4A8_DECODE
    echo "=== mxfp4 $rep" | tee -a "$OUT/summary.txt"
    "$M" bench layer --model "$MODELS" --tokens "$TOKENS" --dtype mxfp4 --idle-ms 50 \
        --json "$OUT/bench-mxfp4-$rep.json" 2>/dev/null | tee -a "$OUT/summary.txt"
done
METRICS=gpu__time_duration.sum,smsp__inst_executed.sum,smsp__issue_active.avg.per_cycle_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active
MOE_GEMM_W4A8_DECODE=1 ncu --clock-control none --cache-control all -k regex:gemm_w4a8_decode --launch-count 2 --page raw \
    --csv --metrics "$METRICS" "$M" bench layer --model gpt-oss-120b --tokens 1 --dtype w4a8 --reps 1 --idle-ms 0 \
    > "$OUT/ncu-w4a8-kernel.csv" 2>&1
ncu --clock-control none --cache-control all -k regex:gemm_fp4_decode --launch-count 2 --page raw --csv \
    --metrics "$METRICS" "$M" bench layer --model gpt-oss-120b --tokens 1 --dtype w4a8 --reps 1 --idle-ms 0 \
    > "$OUT/ncu-w4a8-bf16path.csv" 2>&1
echo "=== done" | tee -a "$OUT/summary.txt"
