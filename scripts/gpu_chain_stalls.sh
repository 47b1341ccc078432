#!/usr/bin/env bash
# scripts/gpu_chain_stalls.sh — the decode chain's kernels at T = 1 under Nsight Compute, each alone, with caches
# flushed before each (cold: code and data from DRAM, as after the long GEMMs of a model) and not flushed (warm):
# duration, instructions and the warps' stall reasons (what share waits on instruction fetch). MODELS, DTYPE narrow
# it. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
M=${BUILD:-build}/moe
MODELS=${MODELS:-qwen3-30b-a3b deepseek-v3}
DTYPE=${DTYPE:-mxfp4}
METRICS=gpu__time_duration.sum,smsp__inst_executed.sum,smsp__inst_executed.max
for s in no_instruction long_scoreboard short_scoreboard wait barrier branch_resolving membar math_pipe_throttle \
         lg_throttle mio_throttle dispatch_stall selected not_selected sleeping misc drain imc_miss; do
    METRICS=$METRICS,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio
done
for m in $MODELS; do
    for c in all none; do
        f="$OUT/ncu-stalls-$m-$DTYPE-t1-$c.csv"
        ncu --clock-control none --cache-control $c -k "regex:gate|route|gemm|combine" --launch-count 6 --page raw \
            --csv --metrics "$METRICS" "$M" bench layer --model "$m" --tokens 1 --dtype "$DTYPE" --reps 1 \
            --idle-ms 0 > "$f" 2>&1
        echo "== $m $DTYPE T=1 caches $c"
        python3 - "$f" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if len(rows) < 3:
    print("".join(open(sys.argv[1]).readlines()[-5:]))
    sys.exit(0)
h = rows[0]
def col(r, name):
    return r[h.index(name)].replace(",", "")
for r in rows[2:]:
    st = {c.split("stalled_")[1].split("_per")[0]: float(col(r, c) or 0) for c in h if "issue_stalled_" in c}
    top = sorted(st.items(), key=lambda kv: -kv[1])[:5]
    print(f"  {r[h.index('Kernel Name')][:44]:44s} {float(col(r, 'gpu__time_duration.sum')) / 1000:7.2f} us "
          f"inst max/SMSP {col(r, 'smsp__inst_executed.max'):>7s} stalls/issue: "
          + " ".join(f"{k} {v:.2f}" for k, v in top))
PY
    done
done
