#!/usr/bin/env bash
# scripts/gpu_fp4_split.sh [tests|sanitize|bench|min] — the GPU round of the FP4 decode kernel's split walk
# (grouped_gemm_fp4_decode.cu: every CTA slot filled, each warp the same share of the (tile, K block) units, the
# pieces of a tile added by its last warp), in parts that each fit one device call:
#  tests     the whole suite (gpu_layer_fp4_decode runs each case by the rule, a tile a CTA, the split walk at a
#            block a warp and the register tile; every layer test replays its graph over a poisoned workspace);
#  sanitize  compute-sanitizer memcheck and racecheck of gpu_layer_fp4_decode;
#  bench     `moe bench layer --dtype mxfp4|nvfp4` a tile a CTA (MOE_GEMM_FP4_SPLIT=0), on the split walk (=1) and
#            by the rule, alternated REPS times in one binary;
#  min       the split walk's least K blocks a warp (MOE_GEMM_FP4_SPLIT_MIN 4, 8, 16) at T = 1 and 16.
# Logs and JSON under $OUT; the summary in $OUT/summary.txt (and on stdout).
set -u
PART=${1:-tests}
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
M="$BUILD/moe"
TOKENS=${TOKENS:-1,4,16,64,128}
MODELS=${MODELS:-gpt-oss-120b,gpt-oss-20b,deepseek-v3,qwen3-235b-a22b,qwen3-30b-a3b}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
case "$PART" in
tests)
    "$BUILD/moe_tests" --data tests/data > "$OUT/tests.log" 2>&1
    echo "exit $?" >> "$OUT/tests.log"
    grep -E "^(FAIL|fail)|passed|GRAPH REPLAY DIFFERS" "$OUT/tests.log" | tail -20 | tee -a "$OUT/summary.txt"
    grep -E "split walk|a tile a CTA" "$OUT/tests.log" | head -8 | tee -a "$OUT/summary.txt"
    ;;
sanitize)
    for tool in memcheck racecheck; do
        echo "=== compute-sanitizer $tool gpu_layer_fp4_decode" | tee -a "$OUT/summary.txt"
        timeout 240 compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 9 "$BUILD/moe_tests" \
            --data tests/data gpu_layer_fp4_decode > "$OUT/fp4-$tool.log" 2>&1
        echo "exit $?" >> "$OUT/fp4-$tool.log"
        tail -3 "$OUT/fp4-$tool.log" | tee -a "$OUT/summary.txt"
    done
    ;;
bench)
    for rep in ${REPS:-1 2}; do
        for dt in ${DTYPES:-mxfp4 nvfp4}; do
            for mode in 0 1 rule; do
                echo "=== $dt split=$mode rep $rep" | tee -a "$OUT/summary.txt"
                if [ $mode = rule ]; then e=""; else e="MOE_GEMM_FP4_SPLIT=$mode"; fi
                env $e "$M" bench layer --model "$MODELS" --tokens "$TOKENS" --dtype $dt --idle-ms 50 \
                    --json "$OUT/bench-$dt-split$mode-$rep.json" 2>&1 | tee -a "$OUT/summary.txt"
            done
        done
    done
    ;;
min)
    for n in 4 8 16; do
        for dt in ${DTYPES:-mxfp4}; do
            echo "=== $dt split=1 min=$n" | tee -a "$OUT/summary.txt"
            MOE_GEMM_FP4_SPLIT=1 MOE_GEMM_FP4_SPLIT_MIN=$n "$M" bench layer --model "$MODELS" --tokens 1,16 \
                --dtype $dt --idle-ms 50 --json "$OUT/bench-$dt-min$n.json" 2>&1 | tee -a "$OUT/summary.txt"
        done
    done
    ;;
esac
