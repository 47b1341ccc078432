#!/usr/bin/env bash
# scripts/gpu_chain.sh — each kernel of one MoE layer forward at decode, timed alone by Nsight Compute (caches flushed,
# kernels serialised, so no PDL overlap), beside the layer's CUDA-graph time from `moe bench layer`: the difference
# is what the launches' boundaries cost in the graph. MODELS, DTYPES, TOKENS narrow it. Logs under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
M=${BUILD:-build}/moe
MODELS=${MODELS:-gpt-oss-120b qwen3-30b-a3b deepseek-v3}
DTYPES=${DTYPES:-mxfp4 bf16}
TOKENS=${TOKENS:-1}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
for d in $DTYPES; do
    for m in $MODELS; do
        for t in $TOKENS; do
            f="$OUT/ncu-chain-$m-$d-t$t.csv"
            # the forward's kernels only (not the weights' quantisation before it)
            ncu --clock-control none --cache-control all -k "regex:gate|route|gemm|combine|fake_quant" \
                --launch-count 12 --page raw --csv \
                --metrics gpu__time_duration.sum,launch__grid_size "$M" bench layer --model "$m" --tokens "$t" \
                --dtype "$d" --reps 1 --idle-ms 0 > "$f" 2>&1
            echo "== $m $d T=$t (ncu, µs each)"
            python3 - "$f" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
h = rows[0]; k = h.index("Kernel Name"); d = h.index("gpu__time_duration.sum"); g = h.index("launch__grid_size")
div = {"ns": 1000.0, "nsecond": 1000.0, "us": 1.0, "usecond": 1.0, "ms": 0.001, "msecond": 0.001}[rows[1][d]]
for r in rows[2:]:
    print(f"  {r[k][:60]:60s} grid {r[g]:>6s} {float(r[d].replace(',', '')) / div:8.2f}")
PY
        done
    done
    "$M" bench layer --model "$(echo $MODELS | tr ' ' ,)" --tokens "$TOKENS" --dtype "$d" --idle-ms 50 \
        --json "$OUT/layer-$d.json" 2>/dev/null
done
