#!/usr/bin/env bash
# scripts/probe_requant_flip.sh [SEED] — whether a W4A8 layer case's CPU output moves when GEMM 1 is only summed in
# another order: gpu_layer_w4a8's "H 160, I 96" MXFP4 case (its problem seed is the test seed + 2114) run on the CPU
# reference as it is and with GEMM 1's sums in double (a copy of src/moe/layer_cpu.c changed in one line, linked
# ahead of libmoe.a), and each token's relative L2 difference printed. Where one token moves by about 2e-2, h's
# requantisation to FP8 flipped a code: the order of f32 sums alone decides that token, as on the GPU. Needs a
# built tree (make MPI=0).
set -eu
SEED=${1:-54937075}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
python3 - "$W/layer_cpu_double.c" <<'PY'
import sys
s = open("src/moe/layer_cpu.c").read()
old = """        float s = 0.0f;
        for (int c = 0; c < H; c++) s += row[c] * x[c];
        a[r] = b13 ? s + b13[r] : s;"""
assert old in s, "moe_ffn_up's sum changed: update scripts/probe_requant_flip.sh"
open(sys.argv[1], "w").write(s.replace(old, """        double s = 0.0;
        for (int c = 0; c < H; c++) s += (double)row[c] * x[c];
        a[r] = b13 ? (float)s + b13[r] : (float)s;"""))
PY
CF="-std=c11 -D_POSIX_C_SOURCE=200809L -O2 -fopenmp -Iinclude -Isrc -Itests -DMOE_WITH_CUDA"
LIBS="build/libmoe.a -l:libjansson.a -lm -L/usr/local/cuda/lib64 -lnccl -lcudart_static -ldl -lrt -lpthread -lstdc++"
OBJS=$(ls build/tests/*.o | grep -v -e /main.o -e /test_)
cc $CF -c "$W/layer_cpu_double.c" -o "$W/layer_cpu_double.o"
cc $CF scripts/probe_requant_flip.c $OBJS $LIBS -o "$W/float"
cc $CF scripts/probe_requant_flip.c "$W/layer_cpu_double.o" $OBJS $LIBS -o "$W/double"
S=$((SEED + 2114))
"$W/float" $S 5 160 96 5 > "$W/float.bin"
"$W/double" $S 5 160 96 5 > "$W/double.bin"
python3 - "$W/float.bin" "$W/double.bin" 5 160 <<'PY'
import array, math, sys
a, b = (array.array("f", open(f, "rb").read()) for f in sys.argv[1:3])
T, H = int(sys.argv[3]), int(sys.argv[4])
tok = [math.sqrt(sum((b[t*H+h] - a[t*H+h])**2 for h in range(H)) / sum(a[t*H+h]**2 for h in range(H))) for t in range(T)]
num = sum((b[i] - a[i])**2 for i in range(T*H)); den = sum(a[i]**2 for i in range(T*H))
print("GEMM 1 in double against f32: rel L2 %.2e; by token: %s" % (math.sqrt(num/den), " ".join("%.1e" % x for x in tok)))
PY
