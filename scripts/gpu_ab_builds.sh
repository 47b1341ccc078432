#!/usr/bin/env bash
# scripts/gpu_ab_builds.sh — `moe bench layer` with two builds of moe on one GPU, alternated (A, B, A, B ...) so that
# clocks and the card's state weigh on both alike; the means and the change of B against A per point. A and B name
# the binaries (default build/moe_a, build/moe_b: build one with BUILD=build-a and carry both, stripped and packed as
# scripts/pack_device.sh does); DTYPES, MODELS, TOKENS, ROUNDS narrow it. JSON files and a summary under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
A=${A:-build/moe_a}
B=${B:-build/moe_b}
DTYPES=${DTYPES:-mxfp4 nvfp4 bf16 w8a8}
MODELS=${MODELS:-gpt-oss-120b,qwen3-30b-a3b,deepseek-v3}
TOKENS=${TOKENS:-1,4,16,64}
ROUNDS=${ROUNDS:-2}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
for r in $(seq 1 "$ROUNDS"); do
    for v in a b; do
        bin=$A; [ $v = b ] && bin=$B
        for d in $DTYPES; do
            "$bin" bench layer --model "$MODELS" --dtype "$d" --tokens "$TOKENS" --idle-ms 50 \
                --json "$OUT/layer-$d-$v-$r.json" > /dev/null 2>&1 || echo "failed: $bin $d round $r"
        done
    done
done
python3 - "$OUT" "$ROUNDS" $DTYPES <<'PY' | tee "$OUT/summary.txt"
import json, sys
out, rounds, dtypes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for d in dtypes:
    us = {}
    for v in "ab":
        for r in range(1, rounds + 1):
            for x in json.load(open(f"{out}/layer-{d}-{v}-{r}.json"))["results"]:
                us.setdefault((x["model"], x["tokens"], v), []).append(x["us"])
    print(d)
    for (m, t, v) in sorted(k for k in us if k[2] == "a"):
        a = sum(us[(m, t, "a")]) / rounds
        b = sum(us[(m, t, "b")]) / rounds
        print(f"  {m:16s} T = {t:5d}  A {a:9.2f}  B {b:9.2f}  {100 * (b / a - 1):+6.1f}%")
PY
