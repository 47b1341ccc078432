#!/usr/bin/env bash
# scripts/gpu_rs_decode.sh [tests|sanitize|bench|ncu|all|ksplit] — the first GPU round of the wgmma decode kernel
# (grouped_gemm_rs_decode.cu, opt-in with MOE_GEMM_W4A8_DECODE=1 for MXFP4 and NVFP4 weights and
# MOE_GEMM_W8A8_RS_DECODE=1 for FP8 ones), in parts that each fit one device call (default: all, which is the first
# four):
#  tests  gpu_layer_w4a8 (every case on the kernel and on the bf16 path, MXFP4 and NVFP4) and gpu_layer_w8a8 (each
#         decode case on it and on the mma.sync kernel);
#  sanitize  compute-sanitizer memcheck and racecheck of both;
#  bench  `moe bench layer` with and without each opt-in, alternated twice in one binary: --dtype w4a8 and
#         w4a8-nvfp4 beside mxfp4 and nvfp4 (bf16 inputs), and --dtype w8a8;
#  ncu    Nsight Compute of GEMM 1 at T = 1 on each kernel and the one it replaces;
#  ksplit the kernel's K split forced to 1, 2 and 4 (MOE_GEMM_RS_KSPLIT), and the one-wave rule (wave), against its
#         rule, at T = 1, 4, 16, to retune the rule in launch();
#  repro  gpu_layer_w4a8 at one seed (SEED, default the one whose H 160, I 96 case failed under memcheck at 2dd4379)
#         twice plainly and once under memcheck, then at three fresh seeds: a fault that depends on timing moves,
#         numerics of the seed's inputs do not;
#  stalls Nsight Compute's warp-state, scheduler, memory and source sections of GEMM 1 at T = 1 on the kernel
#         (GPT-OSS-120B W4A8, DeepSeek-V3 W4A8-NVFP4 and W8A8): where its warps wait;
#  fuzz   gpu_api_fuzz (the API on the GPU fed random, mostly invalid input) plainly and under memcheck;
#  pipe   the pipelined variant (MOE_GEMM_RS_PIPE=1: MXFP4 at up to 2 rows a tile and FP8, block j's wgmmas in
#         flight while block j - 1's are added): racecheck of gpu_layer_w4a8 and gpu_layer_w8a8 (whose decode
#         cases run it too; `tests` runs them plainly), then `moe bench layer` at T = 1, 2 with and without it,
#         alternated twice.
# Logs and JSON under $OUT; the summary in $OUT/summary.txt. Not yet timed on a GPU: if a part passes the device's
# 10-minute limit, split it (REPS=1, then REPS=2; FP4_MODELS, FP8_MODELS, TOKENS narrower).
set -u
PART=${1:-all}
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
M="$BUILD/moe"
TOKENS=${TOKENS:-1,2,4,8,16,64}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt"
for t in gpu_layer_w4a8 gpu_layer_w8a8; do
    if [ "$PART" = tests ] || [ "$PART" = all ]; then
        echo "=== $t" | tee -a "$OUT/summary.txt"
        "$BUILD/moe_tests" --data tests/data $t > "$OUT/$t.log" 2>&1
        echo "exit $?" >> "$OUT/$t.log"; tail -3 "$OUT/$t.log" | tee -a "$OUT/summary.txt"
    fi
    if [ "$PART" = sanitize ] || [ "$PART" = all ]; then
        for tool in memcheck racecheck; do
            echo "=== compute-sanitizer $tool $t" | tee -a "$OUT/summary.txt"
            compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/moe_tests" --data tests/data $t \
                > "$OUT/$t-$tool.log" 2>&1
            echo "exit $?" >> "$OUT/$t-$tool.log"; tail -2 "$OUT/$t-$tool.log" | tee -a "$OUT/summary.txt"
        done
    fi
done
bench() { # dtype models tag [env]
    echo "=== $1 $3" | tee -a "$OUT/summary.txt"
    env $4 "$M" bench layer --model "$2" --tokens "$TOKENS" --dtype "$1" --idle-ms 50 \
        --json "$OUT/bench-$1-$3.json" 2>/dev/null | tee -a "$OUT/summary.txt"
}
FP4_MODELS=${FP4_MODELS:-gpt-oss-120b,gpt-oss-20b,deepseek-v3,qwen3-235b-a22b}
FP8_MODELS=${FP8_MODELS:-deepseek-v3,qwen3-30b-a3b,qwen3-235b-a22b}
if [ "$PART" = bench ] || [ "$PART" = all ]; then
    for rep in ${REPS:-1 2}; do
        for w in w4a8 w4a8-nvfp4; do
            bench $w "$FP4_MODELS" "rs-$rep" MOE_GEMM_W4A8_DECODE=1
            bench $w "$FP4_MODELS" "bf16path-$rep" MOE_GEMM_W4A8_DECODE=0
        done
        bench mxfp4 "$FP4_MODELS" "$rep" MOE_GEMM_W4A8_DECODE=0
        bench nvfp4 "$FP4_MODELS" "$rep" MOE_GEMM_W4A8_DECODE=0
        bench w8a8 "$FP8_MODELS" "rs-$rep" MOE_GEMM_W8A8_RS_DECODE=1
        bench w8a8 "$FP8_MODELS" "mma-$rep" MOE_GEMM_W8A8_RS_DECODE=0
    done
fi
METRICS=gpu__time_duration.sum,smsp__inst_executed.sum,smsp__issue_active.avg.per_cycle_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active
ncu1() { # tag kernel-regex model dtype [env]
    env $5 ncu --clock-control none --cache-control all -k "regex:$2" --launch-count 2 --page raw --csv \
        --metrics "$METRICS" "$M" bench layer --model "$3" --tokens 1 --dtype "$4" --reps 1 --idle-ms 0 \
        > "$OUT/ncu-$1.csv" 2>&1
}
if [ "$PART" = ncu ] || [ "$PART" = all ]; then
    ncu1 w4a8-rs gemm_rs_decode gpt-oss-120b w4a8 MOE_GEMM_W4A8_DECODE=1
    ncu1 w4a8-bf16path gemm_fp4_decode gpt-oss-120b w4a8 MOE_GEMM_W4A8_DECODE=0
    ncu1 w4a8-nvfp4-rs gemm_rs_decode deepseek-v3 w4a8-nvfp4 MOE_GEMM_W4A8_DECODE=1
    ncu1 w4a8-nvfp4-bf16path gemm_fp4_decode deepseek-v3 w4a8-nvfp4 MOE_GEMM_W4A8_DECODE=0
    ncu1 w8a8-rs gemm_rs_decode deepseek-v3 w8a8 MOE_GEMM_W8A8_RS_DECODE=1
    ncu1 w8a8-mma gemm_fp8_decode deepseek-v3 w8a8 MOE_GEMM_W8A8_RS_DECODE=0
fi
if [ "$PART" = ksplit ]; then
    for rep in ${REPS:-1 2}; do
        for ks in rule wave 1 2 4; do
            e="MOE_GEMM_W4A8_DECODE=1 MOE_GEMM_W8A8_RS_DECODE=1"
            [ $ks = rule ] || e="$e MOE_GEMM_RS_KSPLIT=$ks"
            TOKENS=1,4,16 bench w4a8 "$FP4_MODELS" "ks$ks-$rep" "$e"
            TOKENS=1,4,16 bench w4a8-nvfp4 "$FP4_MODELS" "ks$ks-$rep" "$e"
            TOKENS=1,4,16 bench w8a8 "$FP8_MODELS" "ks$ks-$rep" "$e"
        done
    done
fi
if [ "$PART" = repro ]; then
    SEED=${SEED:-54937075}
    run_seed() { # tag seed [prefix...]
        local tag=$1 seed=$2
        shift 2
        MOE_TEST_SEED=$seed timeout 240 "$@" "$BUILD/moe_tests" --data tests/data gpu_layer_w4a8 > "$OUT/repro-$tag.log" 2>&1
        echo "exit $?" >> "$OUT/repro-$tag.log"
        echo "=== repro $tag (seed $seed)" | tee -a "$OUT/summary.txt"
        grep -E "H 160|FAIL|passed|ERROR SUMMARY|exit" "$OUT/repro-$tag.log" | tee -a "$OUT/summary.txt"
    }
    run_seed plain1 "$SEED"
    run_seed plain2 "$SEED"
    run_seed memcheck "$SEED" compute-sanitizer --tool memcheck --error-exitcode 9
    for s in 1 2 3; do run_seed fresh$s $((SEED + 7919 * s)); done
fi
if [ "$PART" = fuzz ]; then
    for tool in plain memcheck; do
        pre=""
        [ $tool = memcheck ] && pre="compute-sanitizer --tool memcheck --error-exitcode 9"
        timeout 300 $pre "$BUILD/moe_tests" --data tests/data gpu_api_fuzz > "$OUT/fuzz-$tool.log" 2>&1
        echo "exit $?" >> "$OUT/fuzz-$tool.log"
        echo "=== gpu_api_fuzz $tool" | tee -a "$OUT/summary.txt"
        tail -4 "$OUT/fuzz-$tool.log" | tee -a "$OUT/summary.txt"
    done
fi
if [ "$PART" = pipe ]; then
    for t in gpu_layer_w4a8 gpu_layer_w8a8; do # their decode cases run the pipelined variant too
        echo "=== racecheck $t" | tee -a "$OUT/summary.txt"
        timeout 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$BUILD/moe_tests" --data tests/data $t \
            > "$OUT/pipe-racecheck-$t.log" 2>&1
        echo "exit $?" >> "$OUT/pipe-racecheck-$t.log"; grep -E "pipelined" "$OUT/pipe-racecheck-$t.log" | head -4 |
            tee -a "$OUT/summary.txt"; tail -2 "$OUT/pipe-racecheck-$t.log" | tee -a "$OUT/summary.txt"
    done
    for rep in ${REPS:-1 2}; do
        for pipe in 0 1; do
            TOKENS=1,2 bench w4a8 "$FP4_MODELS" "pipe$pipe-$rep" "MOE_GEMM_W4A8_DECODE=1 MOE_GEMM_RS_PIPE=$pipe"
            TOKENS=1,2 bench w8a8 "$FP8_MODELS" "pipe$pipe-$rep" "MOE_GEMM_W8A8_RS_DECODE=1 MOE_GEMM_RS_PIPE=$pipe"
        done
    done
fi
SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis --section InstructionStats --section SourceCounters"
ncu_stalls() { # tag model dtype env
    echo "=== ncu stalls $1" | tee -a "$OUT/summary.txt"
    env $4 timeout 150 ncu --clock-control none --cache-control all -k "regex:gemm_rs_decode" --launch-count 1 $SECTIONS \
        "$M" bench layer --model "$2" --tokens 1 --dtype "$3" --reps 1 --idle-ms 0 > "$OUT/ncu-stalls-$1.txt" 2>&1
    echo "exit $?" >> "$OUT/ncu-stalls-$1.txt"
    grep -E "Duration|DRAM Throughput|Issue Slots Busy|Warp Cycles Per Issued|Achieved Occupancy|exit" "$OUT/ncu-stalls-$1.txt" |
        tee -a "$OUT/summary.txt"
}
if [ "$PART" = stalls ]; then
    ncu_stalls w4a8-gptoss120b gpt-oss-120b w4a8 MOE_GEMM_W4A8_DECODE=1
    ncu_stalls w4a8-nvfp4-dsv3 deepseek-v3 w4a8-nvfp4 MOE_GEMM_W4A8_DECODE=1
    ncu_stalls w8a8-dsv3 deepseek-v3 w8a8 MOE_GEMM_W8A8_RS_DECODE=1
fi
echo "=== done $PART" | tee -a "$OUT/summary.txt"
