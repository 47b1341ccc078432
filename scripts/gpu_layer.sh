#!/usr/bin/env bash
# scripts/gpu_layer.sh — the layer part of a GPU round: GPU tests against the CPU reference and the oracle,
# compute-sanitizer memcheck and racecheck over them, and `moe bench layer` when BENCH=1 (DTYPES: the expert
# storages to time, default bf16). Logs under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
TESTS="gpu_layer_random gpu_layer_tiles gpu_layer_sm90 gpu_layer_quant gpu_layer_w8a8 gpu_layer_w4a8 gpu_layer_golden gpu_layer_errors"
echo "=== layer tests" | tee -a "$OUT/summary.txt"
"$BUILD/moe_tests" --data tests/data $TESTS layer_ 2>&1 | tee "$OUT/layer-tests.log" | tail -40 | tee -a "$OUT/summary.txt"
echo "=== compute-sanitizer memcheck" | tee -a "$OUT/summary.txt"
compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/moe_tests" --data tests/data gpu_layer_tiles gpu_layer_sm90 gpu_layer_quant gpu_layer_w8a8 gpu_layer_golden gpu_layer_errors \
    > "$OUT/layer-memcheck.log" 2>&1
echo "exit $?" >> "$OUT/layer-memcheck.log"; tail -3 "$OUT/layer-memcheck.log" | tee -a "$OUT/summary.txt"
echo "=== compute-sanitizer racecheck" | tee -a "$OUT/summary.txt"
compute-sanitizer --tool racecheck --error-exitcode 9 "$BUILD/moe_tests" --data tests/data gpu_layer_tiles gpu_layer_sm90 gpu_layer_quant gpu_layer_w8a8 gpu_layer_golden \
    > "$OUT/layer-racecheck.log" 2>&1
echo "exit $?" >> "$OUT/layer-racecheck.log"; tail -3 "$OUT/layer-racecheck.log" | tee -a "$OUT/summary.txt"
if [ "${BENCH:-0}" = 1 ]; then
    MODELS=${MODELS:-qwen3-30b-a3b,qwen3-235b-a22b,deepseek-v3,mixtral-8x7b,gpt-oss-120b,olmoe,llama4-scout}
    for d in ${DTYPES:-bf16}; do
        echo "=== moe bench layer --dtype $d" | tee -a "$OUT/summary.txt"
        "$BUILD/moe" bench layer --model "$MODELS" --dtype "$d" ${TOKENS:+--tokens "$TOKENS"} \
            --json "$OUT/bench-layer-$d.json" 2>/dev/null | tee -a "$OUT/summary.txt"
    done
    [ "${PEER:-1}" = 1 ] || exit 0
    echo "=== torch-grouped peer" | tee -a "$OUT/summary.txt"
    python3 bench/peer_torch_grouped.py --model "$MODELS" --json "$OUT/bench-layer-torch.json" 2>&1 \
        | tee -a "$OUT/summary.txt"
fi
