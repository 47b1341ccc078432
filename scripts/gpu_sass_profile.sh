#!/usr/bin/env bash
# scripts/gpu_sass_profile.sh — where a kernel's warps spend their time, instruction by instruction: Nsight Compute's
# warp-state samples of one launch (KERNEL, a regex; default the FP4 decode GEMMs) in one layer forward, per SASS
# instruction, summed over the kernel's parts: before its first tensor-core instruction (the tile's lookup, pointers,
# the ring's first copies), the K loop (from there to the last backward branch), and after it (the split's sum and
# the epilogue). MODEL, DTYPE, T, LAUNCH (which matching launch: 0 GEMM 1, 1 GEMM 2) narrow it. Files under $OUT.
set -u
OUT=${OUT:-/tmp/moe-gpu}
mkdir -p "$OUT"
M=${BUILD:-build}/moe
MODEL=${MODEL:-gpt-oss-120b}
DTYPE=${DTYPE:-mxfp4}
T=${T:-1}
KERNEL=${KERNEL:-gemm_fp4_decode}
LAUNCH=${LAUNCH:-0}
rep="$OUT/sass-$MODEL-$DTYPE-t$T-$LAUNCH"
ncu --clock-control none --cache-control all -k "regex:$KERNEL" --launch-skip "$LAUNCH" --launch-count 1 \
    --section SourceCounters --section WarpStateStats -f -o "$rep" \
    "$M" bench layer --model "$MODEL" --tokens "$T" --dtype "$DTYPE" --reps 1 --idle-ms 0 > "$rep.log" 2>&1
ncu --import "$rep.ncu-rep" --page source --print-source sass --csv > "$rep.csv" 2>&1
python3 - "$rep.csv" <<'PY'
import csv, re, sys
rows = list(csv.reader(open(sys.argv[1])))
hi = next((i for i, r in enumerate(rows) if any("Address" in c for c in r)), None)
if hi is None:
    print("no source page in", sys.argv[1]); print("".join(open(sys.argv[1]).readlines()[:20])); sys.exit(0)
h = rows[hi]
ca = next(i for i, c in enumerate(h) if "Address" in c)
cs = next(i for i, c in enumerate(h) if c.strip() == "Source")
cw = next(i for i, c in enumerate(h) if "Sampling (All" in c)
ins = []
for r in rows[hi + 1:]:
    if len(r) <= max(ca, cs, cw): continue
    try: ins.append((int(r[ca], 16), r[cs].strip(), float(r[cw].replace(",", "") or 0)))
    except ValueError: pass
ins.sort()
first_mma = next((i for i, x in enumerate(ins) if re.search(r"\b(HMMA|HGMMA|QGMMA)\b", x[1])), len(ins))
# the loop ends at its last backward branch (a target address below the branch), or else at the last mma
last_back = max((i for i, x in enumerate(ins) if re.search(r"\b(HMMA|HGMMA|QGMMA)\b", x[1])), default=first_mma)
for i, (a, s, _) in enumerate(ins):
    m = re.search(r"BRA.*0x([0-9a-f]+)", s)
    if m and int(m.group(1), 16) < a and i > first_mma: last_back = i
total = sum(x[2] for x in ins) or 1.0
parts = [("before the first mma", ins[:first_mma]), ("the K loop", ins[first_mma:last_back + 1]),
         ("after the loop", ins[last_back + 1:])]
print(f"{len(ins)} instructions, {total:.0f} samples")
for name, p in parts:
    print(f"  {name:22s} {len(p):5d} instructions  {100 * sum(x[2] for x in p) / total:5.1f}% of the samples")
print("  the 20 instructions with the most samples:")
for a, s, w in sorted(ins, key=lambda x: -x[2])[:20]:
    print(f"    {a:#07x} {100 * w / total:5.1f}%  {s[:90]}")
PY
