#!/usr/bin/env bash
# scripts/gpu_route.sh — the routing part of a GPU round: GPU tests against the CPU reference, compute-sanitizer
# memcheck and racecheck over them, and `moe bench route`. Logs and results under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
BUILD=${BUILD:-build}
TESTS="gpu_route_random gpu_route_golden gpu_permute_random gpu_route_permute gpu_eplb_waterfill_stats gpu_route_errors"
echo "=== tests" | tee -a "$OUT/summary.txt"
"$BUILD/moe_tests" --data tests/data $TESTS route_ permute eplb expert_stats 2>&1 | tee "$OUT/route-tests.log" | tail -16 | tee -a "$OUT/summary.txt"
echo "=== compute-sanitizer memcheck" | tee -a "$OUT/summary.txt"
compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/moe_tests" --data tests/data $TESTS > "$OUT/route-memcheck.log" 2>&1
echo "exit $?" >> "$OUT/route-memcheck.log"; tail -3 "$OUT/route-memcheck.log" | tee -a "$OUT/summary.txt"
echo "=== compute-sanitizer racecheck" | tee -a "$OUT/summary.txt"
compute-sanitizer --tool racecheck --error-exitcode 9 "$BUILD/moe_tests" --data tests/data gpu_permute_random gpu_route_permute gpu_route_golden > "$OUT/route-racecheck.log" 2>&1
echo "exit $?" >> "$OUT/route-racecheck.log"; tail -3 "$OUT/route-racecheck.log" | tee -a "$OUT/summary.txt"
echo "=== moe bench route" | tee -a "$OUT/summary.txt"
"$BUILD/moe" bench route --json "$OUT/bench-route.json" 2>&1 | tee -a "$OUT/summary.txt"
"$BUILD/moe" bench route --dtype bf16 --json "$OUT/bench-route-bf16.json" 2>&1 | tee -a "$OUT/summary.txt"
"$BUILD/moe" bench route --route-only --json "$OUT/bench-route-only.json" 2>&1 | tee -a "$OUT/summary.txt"
