#!/usr/bin/env bash
# scripts/gpu_kernel_times.sh — the GEMM launches of one layer forward, timed by Nsight Compute for several variants
# side by side (builds, or one build under environment settings, e.g. an experiment's switches): per launch its µs,
# tensor-pipe activity and DRAM bytes read and written. VARIANTS: space-separated name=binary[,VAR=value ...]
# (default "a=build/moe"); KERNEL, a regex of the kernels' names (default the Hopper wgmma tiles), MODEL, DTYPE, T,
# LAUNCHES (matching launches from the first, default 4), VARIANT_TIMEOUT (seconds a variant may take, default 300:
# a hung experiment costs no more), EXTRA_METRICS (more ncu metrics, comma-separated, printed after the others).
# Free clocks, caches as they are. Under $OUT it writes one table (kernel-times.txt) and one archive of the raw CSV
# files, since a device call brings back only a few files.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
VARIANTS=${VARIANTS:-a=build/moe}
KERNEL=${KERNEL:-gemm_fp8_kernel|gemm_sm90_tma_kernel|gemm_fp4_rs}
MODEL=${MODEL:-deepseek-v3}
DTYPE=${DTYPE:-w8a8}
T=${T:-8192}
LAUNCHES=${LAUNCHES:-4}
raw=$(mktemp -d)
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum
metrics=$metrics,sm__pipe_tensor_op_hmma_type_hmma_hgmma_qgmma_cycles_active.avg.pct_of_peak_sustained_active
metrics=$metrics${EXTRA_METRICS:+,$EXTRA_METRICS}
for v in $VARIANTS; do
    name=${v%%=*}
    spec=${v#*=}
    bin=${spec%%,*}
    envs=()
    [ "$spec" != "$bin" ] && IFS=, read -ra envs <<< "${spec#*,}"
    env "${envs[@]}" timeout "${VARIANT_TIMEOUT:-300}" ncu --clock-control none --metrics "$metrics" \
        -k "regex:$KERNEL" --launch-count "$LAUNCHES" --csv \
        "$bin" bench layer --model "$MODEL" --dtype "$DTYPE" --tokens "$T" --reps 1 --idle-ms 0 \
        > "$raw/kt-$name.csv" 2>&1 || echo "failed: $v" >> "$raw/failed.txt"
done
EXTRA_METRICS=${EXTRA_METRICS:-} python3 - "$raw" "$MODEL $DTYPE T = $T" $VARIANTS <<'PY' | tee "$OUT/kernel-times.txt"
import csv, os, sys
raw, what, variants = sys.argv[1], sys.argv[2], [v.split("=", 1)[0] for v in sys.argv[3:]]
extra = [m for m in os.environ["EXTRA_METRICS"].split(",") if m]
def launches(name):
    """[(kernel, grid, {metric: value})] in launch order, from ncu's --csv rows (the log lines before them skipped)"""
    out = {}
    try:
        rows = list(csv.reader(open(f"{raw}/kt-{name}.csv", errors="replace")))
    except OSError:
        return []
    head = next((r for r in rows if r[:1] == ["ID"]), None)
    if not head:
        return []
    col = {c: i for i, c in enumerate(head)}
    for r in rows[rows.index(head) + 1:]:
        if len(r) != len(head) or not r[0].isdigit():
            continue
        key = int(r[0])
        try:  # ncu writes "n/a" for a metric it could not collect
            value = float(r[col["Metric Value"]].replace(",", "") or 0)
        except ValueError:
            value = float("nan")
        out.setdefault(key, (r[col["Kernel Name"]], r[col["Grid Size"]], {}))[2][r[col["Metric Name"]]] = value
    return [out[k] for k in sorted(out)]
def num(m, k, scale=1.0):
    return m.get(k, float("nan")) * scale
print(f"{what}: µs, tensor pipe %, DRAM GB read / written" + "".join(f", {m}" for m in extra) + ", a launch a row")
data = {v: launches(v) for v in variants}
for v in variants:
    print(f"== {v}" + ("" if data[v] else ": no launches (see its CSV)"))
    for i, (kernel, grid, m) in enumerate(data[v]):
        print(f"  {i} {kernel.split('(')[0][:48]:48s} {grid:>12s} {num(m, 'gpu__time_duration.sum', 1e-3):10.1f}"
              f" {num(m, next((k for k in m if 'tensor' in k), '')):6.1f}"
              f" {num(m, 'dram__bytes_read.sum', 1e-9):7.2f} {num(m, 'dram__bytes_write.sum', 1e-9):6.2f}"
              + "".join(f" {num(m, k):10.4g}" for k in extra))
base = variants[0]
for v in variants[1:]:
    pairs = list(zip(data[base], data[v]))
    if pairs:
        print(f"{v} against {base}: " + ", ".join(
            f"{i}: {100 * (b[2].get('gpu__time_duration.sum', 0) / a[2].get('gpu__time_duration.sum', 1) - 1):+.1f}%"
            for i, (a, b) in enumerate(pairs)))
PY
tar -C "$raw" -cJf "$OUT/kernel-times-raw.txz" .
rm -rf "$raw"
