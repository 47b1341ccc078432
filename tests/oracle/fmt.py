"""Scalar number formats of docs/formats.md §1, three ways.

Every conversion here takes f32 values (a numpy float32 array of any shape) and returns codes:

* ``enc_*`` / ``dec_*``: the PRIMARY path, the one whose results are written to the golden files.
  It is numpy + ml_dtypes casts, with each place where the library differs from formats.md patched
  explicitly (see the comments and tests/oracle/README.md).
* ``defn_*``: an independent implementation of the definition with exact float64 arithmetic
  (frexp/ldexp/rint on values that are exact in float64) and our own decode tables built from the
  bit-field formulas. No ml_dtypes.
* ``torch_*``: the same results obtained through torch casts (torch's own quirks patched), where torch
  has the type.

make_scalars.py asserts that the three agree on every input it writes.
"""

import numpy as np
import ml_dtypes as md
import torch

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max
QNAN_BITS = 0x7FC00000


def bits(x):
    """f32 array -> uint32 bit patterns (copy)."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).copy()


def f32(b):
    """uint32 bit patterns -> f32 array (copy)."""
    return np.ascontiguousarray(b, dtype=np.uint32).view(np.float32).copy()


def f32s(bits_int):
    """One python int bit pattern -> np.float32 scalar."""
    return np.array([bits_int], dtype=np.uint32).view(np.float32)[0]


def nextup(x):
    return np.nextafter(F32(x), F32(np.inf), dtype=np.float32)


def nextdown(x):
    return np.nextafter(F32(x), F32(-np.inf), dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Format parameters.  emin = exponent of the smallest normal, mbits = mantissa bits, maxval = M.

class Fmt:
    def __init__(self, name, ebits, mbits, bias, kind, nbits):
        self.name, self.ebits, self.mbits, self.bias, self.kind, self.nbits = name, ebits, mbits, bias, kind, nbits
        self.emin = 1 - bias
        self.ncodes = 1 << nbits
        self.sign_bit = 1 << (nbits - 1)
        # decode table from the bit-field formula (float64, exact), NaN where the format says NaN
        codes = np.arange(self.ncodes, dtype=np.int64)
        s = (codes >> (ebits + mbits)) & 1
        e = (codes >> mbits) & ((1 << ebits) - 1)
        m = codes & ((1 << mbits) - 1)
        mag = np.where(e == 0, np.ldexp(m.astype(np.float64), self.emin - mbits),
                       np.ldexp((m + (1 << mbits)).astype(np.float64), e - bias - mbits))
        emax_field = (1 << ebits) - 1
        if kind == "ieee":      # all-ones exponent: Inf (m = 0) or NaN
            mag = np.where(e == emax_field, np.where(m == 0, np.inf, np.nan), mag)
        elif kind == "fn":      # E4M3FN: only s.1111.111 is NaN
            mag = np.where((e == emax_field) & (m == (1 << mbits) - 1), np.nan, mag)
        elif kind == "e2m1":    # no specials
            pass
        self.values64 = np.where(s == 1, -mag, mag)
        # positive finite codes in increasing order (codes 0 .. maxcode are monotone)
        pos = self.values64[: self.sign_bit]
        self.maxcode = int(np.nonzero(np.isfinite(pos))[0].max())
        self.pos_values = pos[: self.maxcode + 1]
        assert np.all(np.diff(self.pos_values) > 0)
        self.maxval = float(self.pos_values[-1])
        self.emax = int(np.frexp(self.maxval)[1]) - 1   # exponent of the largest normal

    def decode_f32(self):
        """Decode table as f32 (every value is exact in f32)."""
        return self.values64.astype(np.float32)


BF16 = Fmt("bf16", 8, 7, 127, "ieee", 16)
F16 = Fmt("f16", 5, 10, 15, "ieee", 16)
E4M3 = Fmt("e4m3", 4, 3, 7, "fn", 8)
E5M2 = Fmt("e5m2", 5, 2, 15, "ieee", 8)
E2M1 = Fmt("e2m1", 2, 1, 1, "e2m1", 4)

assert (E4M3.maxval, E5M2.maxval, E2M1.maxval) == (448.0, 57344.0, 6.0)
assert (E4M3.emax, E5M2.emax, E2M1.emax) == (8, 15, 2)
assert F16.maxval == 65504.0 and BF16.maxcode == 0x7F7F

ELEM = {"e4m3": E4M3, "e5m2": E5M2, "e2m1": E2M1}


# ------------------------------------------------------------------------------------------------
# Independent definition (float64, exact).

def defn_round(x, fmt):
    """Round f32 values to fmt's grid (RN-even, subnormals included) in float64.

    Returns (code_without_overflow_handling, overflow mask, nan mask).  overflow = |x| rounds above M
    (or is Inf).  Code has the sign bit set for negative inputs (incl. -0); undefined where nan/overflow.
    """
    x = np.asarray(x, dtype=np.float32)
    nan = np.isnan(x)
    with np.errstate(invalid="ignore"):             # signalling NaNs warn when widened
        ax = np.abs(x.astype(np.float64))
    fin = np.isfinite(ax)
    a = np.where(fin, ax, 0.0)
    _, e = np.frexp(a)                      # a = m * 2^e, m in [0.5, 1)  =>  floor(log2 a) = e - 1
    E = np.maximum(e - 1, fmt.emin)         # exponent of the binade, subnormal range uses emin
    quantum = np.ldexp(1.0, E - fmt.mbits)  # grid spacing in that binade
    qv = np.rint(a / quantum) * quantum     # exact: power-of-two scaling, np.rint ties to even
    over = (~fin | (qv > fmt.maxval)) & ~nan
    qv_ok = np.where(over | nan, 0.0, qv)
    code = np.searchsorted(fmt.pos_values, qv_ok)
    assert np.all(fmt.pos_values[code] == qv_ok), "rounded value not on the grid"
    code = code | np.where(np.signbit(x), fmt.sign_bit, 0)
    return code.astype(np.int64), over, nan


def defn_fp8(x, fmt, sat):
    code, over, nan = defn_round(x, fmt)
    sign = np.where(np.signbit(np.asarray(x, np.float32)), fmt.sign_bit, 0)
    if sat:
        ovc = fmt.maxcode | sign
    else:
        ovc = (0x7F if fmt is E4M3 else 0x7C) | sign      # E4M3: NaN with sign; E5M2: Inf with sign
    code = np.where(over, ovc, code)
    code = np.where(nan, 0x7F, code)
    return code.astype(np.uint8)


def defn_e2m1(x):
    code, over, nan = defn_round(x, E2M1)
    sign = np.where(np.signbit(np.asarray(x, np.float32)), 8, 0)
    code = np.where(over, 7 | sign, code)
    code = np.where(nan, 7, code)
    return code.astype(np.uint8)


def defn_half(x, fmt):
    """bf16 / f16 by definition: RN, overflow -> +-Inf, NaN -> 0x7FFF."""
    code, over, nan = defn_round(x, fmt)
    sign = np.where(np.signbit(np.asarray(x, np.float32)), 0x8000, 0)
    inf = 0x7F80 if fmt is BF16 else 0x7C00
    code = np.where(over, inf | sign, code)
    code = np.where(nan, 0x7FFF, code)
    return code.astype(np.uint16)


def defn_e8m0(x, mode, sat):
    """E8M0 by the definition (float64 frexp): rz = largest E with 2^(E-127) <= a, rp = smallest E with
    2^(E-127) >= a, E in [0, 254]; 255 -> 0xFE (sat) / 0xFF; NaN -> 0xFF."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        a = np.abs(x.astype(np.float64))
    nan = np.isnan(a)
    inf = np.isinf(a)
    af = np.where(nan | inf | (a == 0), 1.0, a)
    m, e = np.frexp(af)
    fl = e - 1                                  # floor(log2 a)
    ce = np.where(m == 0.5, e - 1, e)           # ceil(log2 a)
    E = (fl if mode == "rz" else ce) + 127
    E = np.where(a == 0, 0, E)
    E = np.maximum(E, 0)                        # below 2^-127: rz gives 0 (a < 2^-127), rp gives 0 (a <= 2^-127)
    over = inf | (E > 254)
    E = np.where(over, 0xFE if sat else 0xFF, E)
    E = np.where(nan, 0xFF, E)
    return E.astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# PRIMARY path: numpy / ml_dtypes casts plus explicit patches.

def _cast(x, dt):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, dtype=np.float32).astype(dt)


def enc_bf16(x):
    """ml_dtypes bfloat16 cast is RN with overflow -> Inf; it keeps NaN sign/payload (0x7FC0/0xFFC0),
    formats.md wants 0x7FFF for any NaN: patched."""
    x = np.asarray(x, dtype=np.float32)
    c = _cast(x, md.bfloat16).view(np.uint16).copy()
    c[np.isnan(x)] = 0x7FFF
    return c


def enc_f16(x):
    """numpy float16 cast (RN, subnormals, >= 65520 -> Inf); it keeps the NaN sign and payload
    (0x7F800001 -> 0x7C01): patched to 0x7FFF."""
    x = np.asarray(x, dtype=np.float32)
    c = _cast(x, np.float16).view(np.uint16).copy()
    c[np.isnan(x)] = 0x7FFF
    return c


def enc_e4m3(x, sat=True):
    """ml_dtypes float8_e4m3fn turns overflow (|x| > 464) and +-Inf into NaN with the sign kept
    (0x7F/0xFF): that is exactly formats.md's non-saturating result. For the saturating variant we clamp
    to +-448 first (np.clip maps +-Inf to +-448, keeps -0 and NaN). NaN keeps its sign in ml_dtypes
    (-NaN -> 0xFF); formats.md wants 0x7F: patched."""
    x = np.asarray(x, dtype=np.float32)
    xs = np.clip(x, F32(-448.0), F32(448.0)) if sat else x
    c = _cast(xs, md.float8_e4m3fn).view(np.uint8).copy()
    c[np.isnan(x)] = 0x7F
    return c


def enc_e5m2(x, sat=True):
    """ml_dtypes float8_e5m2: RN, overflow (>= 61440) and Inf -> +-Inf (= non-saturating result).
    Saturating: clamp to +-57344 first. NaN -> ml_dtypes gives 0x7E/0xFE: patched to 0x7F."""
    x = np.asarray(x, dtype=np.float32)
    xs = np.clip(x, F32(-57344.0), F32(57344.0)) if sat else x
    c = _cast(xs, md.float8_e5m2).view(np.uint8).copy()
    c[np.isnan(x)] = 0x7F
    return c


def enc_e2m1(x):
    """ml_dtypes float4_e2m1fn: RN, saturates |x| > 5 and +-Inf to +-6, keeps -0 (0x8).
    NaN: ml_dtypes gives 0x8 for +NaN and 0x0 for -NaN; formats.md (CUDA) wants 0x7: patched.
    Returns one code (0..15) per element, unpacked."""
    x = np.asarray(x, dtype=np.float32)
    c = _cast(x, md.float4_e2m1fn).view(np.uint8).copy() & 0x0F
    c[np.isnan(x)] = 0x7
    return c


def enc_e8m0(x, mode, sat):
    """E8M0 rz/rp from the f32 bit fields (ml_dtypes' cast rounds to nearest, so it cannot be used):
    normal |x| with biased exponent be and mantissa m: rz = be, rp = be + (m != 0);
    f32 subnormal or zero: rz = 0, rp = 1 if |x| > 2^-127 (bits > 0x00400000) else 0;
    rp = 255 (|x| > 2^127) or Inf -> 0xFE if sat else 0xFF; NaN -> 0xFF."""
    b = bits(x) & np.uint32(0x7FFFFFFF)
    be = (b >> np.uint32(23)).astype(np.int64)
    m = (b & np.uint32(0x7FFFFF)).astype(np.int64)
    normal = be >= 1
    if mode == "rz":
        E = np.where(normal, be, 0)
    else:
        E = np.where(normal, be + (m != 0), np.where(b > 0x00400000, 1, 0))
    inf = b == 0x7F800000
    nan = b > 0x7F800000
    E = np.where(inf | (E == 255), 0xFE if sat else 0xFF, E)
    E = np.where(nan, 0xFF, E)
    return E.astype(np.uint8)


CONVERSIONS = {
    # name: (function f32 -> codes, output dtype)
    "bf16": (enc_bf16, np.uint16),
    "f16": (enc_f16, np.uint16),
    "e4m3_sat": (lambda x: enc_e4m3(x, True), np.uint8),
    "e4m3_nosat": (lambda x: enc_e4m3(x, False), np.uint8),
    "e5m2_sat": (lambda x: enc_e5m2(x, True), np.uint8),
    "e5m2_nosat": (lambda x: enc_e5m2(x, False), np.uint8),
    "e2m1": (enc_e2m1, np.uint8),
    "e8m0_rz_sat": (lambda x: enc_e8m0(x, "rz", True), np.uint8),
    "e8m0_rz_nosat": (lambda x: enc_e8m0(x, "rz", False), np.uint8),
    "e8m0_rp_sat": (lambda x: enc_e8m0(x, "rp", True), np.uint8),
    "e8m0_rp_nosat": (lambda x: enc_e8m0(x, "rp", False), np.uint8),
}

DEFINITIONS = {
    "bf16": lambda x: defn_half(x, BF16),
    "f16": lambda x: defn_half(x, F16),
    "e4m3_sat": lambda x: defn_fp8(x, E4M3, True),
    "e4m3_nosat": lambda x: defn_fp8(x, E4M3, False),
    "e5m2_sat": lambda x: defn_fp8(x, E5M2, True),
    "e5m2_nosat": lambda x: defn_fp8(x, E5M2, False),
    "e2m1": defn_e2m1,
    "e8m0_rz_sat": lambda x: defn_e8m0(x, "rz", True),
    "e8m0_rz_nosat": lambda x: defn_e8m0(x, "rz", False),
    "e8m0_rp_sat": lambda x: defn_e8m0(x, "rp", True),
    "e8m0_rp_nosat": lambda x: defn_e8m0(x, "rp", False),
}


# Decoding (primary: ml_dtypes / numpy casts to f32; NaN entries -> canonical 0x7FC00000 bits).

def dec_table_bits(name):
    """Decode table of a 4/8-bit format as f32 bit patterns (NaN -> 0x7FC00000)."""
    dt = {"e4m3": md.float8_e4m3fn, "e5m2": md.float8_e5m2, "e8m0": md.float8_e8m0fnu}
    if name == "e2m1":
        codes = np.arange(16, dtype=np.uint8).view(md.float4_e2m1fn)
    else:
        codes = np.arange(256, dtype=np.uint8).view(dt[name])
    v = codes.astype(np.float32)
    out = bits(v)
    out[np.isnan(v)] = QNAN_BITS
    return out


def dec_table_f32(name):
    return f32(dec_table_bits(name))


def defn_e8m0_table_bits():
    E = np.arange(256)
    v = np.ldexp(1.0, E[:255] - 127).astype(np.float32)   # 2^-127 .. 2^127, exact (2^-127 subnormal)
    v = np.append(v, np.float32(np.nan))
    out = bits(v)
    out[255] = QNAN_BITS
    return out


def dec_half_bits(name):
    """All 65536 bf16 / f16 codes decoded to f32 bit patterns (NaN canonicalised)."""
    codes = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    v = codes.view(md.bfloat16 if name == "bf16" else np.float16).astype(np.float32)
    out = bits(v)
    out[np.isnan(v)] = QNAN_BITS
    return out


# ------------------------------------------------------------------------------------------------
# torch path (CPU).  torch 2.15 behaviours observed and patched:
#   bf16: RN; every NaN (0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF) -> 0xFFFF: patched to 0x7FFF.
#   f16: RN; NaN -> 0x7E00 / 0xFE00 (sign kept; 0xFFFFFFFF -> 0xFFFF): patched to 0x7FFF.
#   float8_e4m3fn: saturates finite overflow AND +-Inf to +-448 (= satfinite), NaN keeps sign: patched
#                  (we still clamp to +-448 first, so older torch versions give the same check).
#   float8_e5m2: overflow and Inf -> +-Inf (= nosat); NaN -> 0x7F/0xFF: patched to 0x7F.
#   float8_e8m0fnu: round to nearest (ties up), sign ignored, 0 -> 0x00: only used on powers of two.
#   float4_e2m1fn_x2: no cast from float exists, so E2M1 uses torch_e2m1 (threshold form) below.

def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy())


def torch_cast_bits(x, tdt):
    t = _t(x).to(tdt)
    if t.element_size() == 2:
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.view(torch.uint8).numpy().copy()


def torch_conv(name, x):
    """torch-based result of conversion `name`, or None where torch has no such cast."""
    x = np.asarray(x, dtype=np.float32)
    nan = np.isnan(x)
    if name == "bf16":
        c = torch_cast_bits(x, torch.bfloat16)
        c[nan] = 0x7FFF
    elif name == "f16":
        c = torch_cast_bits(x, torch.float16)
        c[nan] = 0x7FFF
    elif name == "e4m3_sat":
        # clamp first: torch 2.15 saturates on its own, torch <= 2.12 gave NaN (specs pitfall 1); the check is
        # about rounding, not about which overflow policy the installed torch has
        c = _t(x).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).view(torch.uint8).numpy().copy()
        c[nan] = 0x7F
    elif name == "e5m2_nosat":
        c = torch_cast_bits(x, torch.float8_e5m2)
        c[nan] = 0x7F
    elif name == "e5m2_sat":
        c = _t(x).clamp(-57344.0, 57344.0).to(torch.float8_e5m2).view(torch.uint8).numpy().copy()
        c[nan] = 0x7F
    elif name == "e2m1":
        c = torch_e2m1(_t(x)).numpy().astype(np.uint8)
    else:
        return None
    return c


def torch_e2m1(t):
    """f32 tensor -> E2M1 codes (int tensor), written from the RN-even thresholds of specs A5:
    |x| <= 0.25 -> 0, < 0.75 -> 0.5, <= 1.25 -> 1, < 1.75 -> 1.5, <= 2.5 -> 2, < 3.5 -> 3, <= 5 -> 4, else 6.
    Sign bit from signbit (so -0 and tiny negatives give 0x8); NaN -> 0x7."""
    a = t.abs()
    mag = torch.full(t.shape, 7, dtype=torch.int32)
    for hi, code, incl in ((5.0, 6, True), (3.5, 5, False), (2.5, 4, True), (1.75, 3, False),
                           (1.25, 2, True), (0.75, 1, False), (0.25, 0, True)):
        inside = (a <= hi) if incl else (a < hi)
        mag = torch.where(inside, torch.tensor(code, dtype=torch.int32), mag)
    code = mag | torch.where(torch.signbit(t), 8, 0).to(torch.int32)
    return torch.where(torch.isnan(t), torch.tensor(7, dtype=torch.int32), code)
