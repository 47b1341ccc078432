#!/usr/bin/env python3
"""scripts/check_e2m1_f16.py — the f16x2 E2M1 encoder of src/cuda/common/cuda.cuh (moe_e2m1x8_exact_f16, used
for MX blocks of bf16/f16 input) emulated with numpy and compared with the CPU definition (src/formats/scalar.h, through a
small shared library built here): every bf16 and every f16 input times every power of two 2^-127..2^127, the
product rounded to f32 and then to f16 as the kernel does (k = 0 covers every f16 value). Not a test (a minute);
run from the repository root: python3 scripts/check_e2m1_f16.py"""
import ctypes, os, subprocess, tempfile
import numpy as np

def reference():
    d = tempfile.mkdtemp()
    src, lib = os.path.join(d, "shim.c"), os.path.join(d, "shim.so")
    open(src, "w").write('#include "formats/scalar.h"\n'
                         "void ref(const float *x, unsigned char *out, long n) {\n"
                         "    for (long i = 0; i < n; i++) out[i] = moe__e2m1_from_f32(x[i]);\n}\n")
    subprocess.check_call(["gcc", "-O2", "-shared", "-fPIC", "-std=c11", "-Isrc", "-Iinclude", src, "-o", lib, "-lm"])
    so = ctypes.CDLL(lib)
    def ref(v):
        out = np.zeros(v.size, np.uint8)
        so.ref(v.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(v.size))
        return out
    return ref

def f16_encoder(v):
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)                                  # cvt.rn.f16x2.f32
        a = np.abs(h).astype(np.float64)
        r = lambda t: t.astype(np.float16)                        # one rounding of an exact value: an HFMA2
        c = np.fmin(np.fmin(r(a * 2 + 1024), r(a + 1026)), np.fmin(r(a * 0.5 + 1028), np.float16(1031)))
    s = np.fmin(h, np.float16(65504))                             # hmin drops NaN, as np.fmin does
    return ((c.view(np.uint16) & 7) | ((s.view(np.uint16) >> 12) & 8)).astype(np.uint8)

def main():
    ref, bad = reference(), 0
    codes = np.arange(65536, dtype=np.uint32)
    inputs = {"bf16": (codes << 16).view(np.float32), "f16": codes.astype(np.uint16).view(np.float16).astype(np.float32)}
    for name, x in inputs.items():
        for k in range(-127, 128):
            with np.errstate(over="ignore", invalid="ignore"):
                v = (x * np.float32(np.ldexp(1.0, -k))).astype(np.float32)
            bad += int(np.count_nonzero(f16_encoder(v) != ref(v)))
    print(f"f16x2 encoder: {bad} inputs differ")
    return 1 if bad else 0

if __name__ == "__main__":
    raise SystemExit(main())
