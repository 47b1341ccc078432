"""Writes tests/data/blocks.moeg: block-scaled quantisation golden data (docs/formats.md §2, §3).

For every case <c> (list in record `cases`):
  <c>.cfg  str   "kind=.. elem=.. rule=.. scale=.. layout=.. global=.. static=.. floor=XXXXXXXX input=.."
  <c>.x    u32   input f32 bits, real tensor shape (rank 1..3)
  <c>.q    u8    element codes, flat [numel] (FP8) or packed [numel/2] (FP4, element 2i in the low nibble)
  <c>.s    u8    raw scale buffer in its layout (f32 scales as 4 LE bytes; E8M0/E4M3 one byte; swizzled incl. 0 pad)
  <c>.g    u32   NVFP4 only: the global scale as stored (computed for dynamic, given for static)
  <c>.y    u32   dequantised f32 bits, shape of .x, NaN -> 0x7FC00000
plus swizzle-only records swz.<b>x<r>x<c>.in / .out.

The numbers come from a numpy implementation of formats.md (quantize_np, every operation an explicit
np.float32 operation).  It is cross-checked against an independent torch implementation (quantize_torch; for
NVFP4 the vLLM `ref_nvfp4_quant` recipe as formats.md §2.4 restates it), against gpt-oss's MXFP4 decoding
(LUT + torch.ldexp) for the MXFP4 linear cases, and the swizzle against the offset formula, the
reshape/permute form and the specs A6.7 test vectors.  Any disagreement raises.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as TF

sys.dont_write_bytecode = True          # keep tests/oracle free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moegold as mg  # noqa: E402
import fmt  # noqa: E402
from fmt import F32, FLT_MAX, bits, f32, f32s  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "blocks.moeg")

R6 = f32s(0x3E2AAAAB)                 # RN(1/6)
assert R6 == F32(1) / F32(6)
NV_2688 = F32(2688.0)                 # 448 * 6, exact
FLOOR_ROW = 0x3B000000                # 1/512 (vLLM's 1/(448*512) scale floor, as an amax floor)
FLOOR_DS = int(bits(F32(1e-4))[0])     # 1e-4 (DeepSeek-V3)
assert f32s(FLOOR_ROW) == F32(1) / F32(512) and FLOOR_DS == 0x38D1B717

CHECKS = []


def fail(msg):
    raise AssertionError(msg)


# ------------------------------------------------------------------------------------------------
# Case description

class Case:
    def __init__(self, name, kind, elem, rule, shape, *, scale=None, layout="linear", glob="none", static=0,
                 floor=0, inp="f32", static_scale=None, content="blocks", specials=None, seed=None):
        self.name, self.kind, self.elem, self.rule, self.shape = name, kind, elem, rule, tuple(shape)
        if scale is None:
            scale = {"f32": "f32", "e4m3": "e4m3"}.get(rule, "e8m0")
        self.scale, self.layout, self.glob, self.static, self.floor = scale, layout, glob, static, floor
        self.inp, self.static_scale, self.content, self.specials = inp, static_scale, content, specials
        self.seed = seed
        # block geometry along (R, C); fp8_tensor is handled as one block over everything
        self.blk = {"fp8_tensor": None, "fp8_row": (1, None), "fp8_1x128": (1, 128), "fp8_128x128": (128, 128),
                    "mxfp8": (1, 32), "mxfp4": (1, 32), "nvfp4": (1, 16)}[kind]
        self.fmt = fmt.ELEM[elem]
        self.validate()

    def validate(self):
        fp8 = self.kind.startswith("fp8")
        assert self.layout == "linear" or self.kind in ("mxfp8", "mxfp4", "nvfp4")
        assert (self.glob != "none") == (self.kind == "nvfp4")
        assert self.static == 0 or self.kind in ("fp8_tensor", "nvfp4")
        if fp8:
            assert self.elem in ("e4m3", "e5m2") and self.rule in ("f32", "floor", "ceil", "rceil")
            assert self.scale == "f32" or (self.rule != "f32" and self.scale == "e8m0")
            assert self.kind != "fp8_tensor" or self.rule == "f32"
        elif self.kind == "nvfp4":
            assert self.elem == "e2m1" and self.rule == "e4m3" and self.scale == "e4m3" and self.floor == 0
        else:
            assert self.rule in ("floor", "ceil", "rceil") and self.scale == "e8m0"
            assert self.elem == ("e2m1" if self.kind == "mxfp4" else self.elem)
        C = self.shape[-1]
        if self.kind in ("mxfp8", "mxfp4"):
            assert C % 32 == 0
        if self.kind == "nvfp4":
            assert C % 16 == 0

    def cfg(self):
        return (f"kind={self.kind} elem={self.elem} rule={self.rule} scale={self.scale} layout={self.layout} "
                f"global={self.glob} static={self.static} floor={self.floor:08x} input={self.inp}")

    def brc(self):
        """(batch, R, C) view of the shape: rank 1 is one row."""
        s = self.shape
        if len(s) == 1:
            return 1, 1, s[0]
        return int(np.prod(s[:-2], dtype=np.int64)), s[-2], s[-1]

    def block_shape(self):
        B, R, C = self.brc()
        if self.blk is None:
            return None
        br, bc = self.blk
        return br, (C if bc is None else bc)


# ------------------------------------------------------------------------------------------------
# Shared block helpers (numpy)

def abs_nan0(x):
    """|x| with NaN -> 0 (NaN elements are ignored by the block amax)."""
    a = np.abs(x)
    return np.where(np.isnan(a), F32(0), a).astype(np.float32)


def finish_amax(a, floor_bits):
    """formats.md 2.1 after the max: a = min(a, FLT_MAX), then max(a, amax_floor)."""
    a = np.minimum(a, FLT_MAX)
    return np.maximum(a, f32s(floor_bits)).astype(np.float32)


def block_amax_np(x3, br, bc):
    """Per-block amax of x3 [B, R, C] over (br x bc) blocks; partial edge blocks hold only the existing
    elements (zero padding gives the same max). Returns [B, ceil(R/br), ceil(C/bc)]."""
    B, R, C = x3.shape
    nR, nC = -(-R // br), -(-C // bc)
    pad = np.zeros((B, nR * br, nC * bc), dtype=np.float32)
    pad[:, :R, :C] = abs_nan0(x3)
    return pad.reshape(B, nR, br, nC, bc).max(axis=(2, 4))


def expand_np(s, br, bc, R, C):
    """Per-block values [B, nR, nC] -> per-element [B, R, C]."""
    return np.repeat(np.repeat(s, br, axis=1), bc, axis=2)[:, :R, :C]


def pow2_f32(k):
    """2^k as f32 for integer k in [-127, 127] (2^-127 is the f32 subnormal 0x00400000); exact."""
    k = np.asarray(k)
    assert np.all((k >= -127) & (k <= 127))
    return np.ldexp(1.0, k.astype(np.int64)).astype(np.float32)


def ue8m0_k_np(a, rule, f):
    """formats.md 2.3: the power-of-two exponent k of each block from its amax a (f32 array)."""
    if rule == "rceil":
        v = (a / F32(f.maxval)).astype(np.float32)                  # one fp32 division
        k = fmt.enc_e8m0(v, "rp", True).astype(np.int64) - 127       # E8M0 of v rounded toward +Inf, sat
    else:
        m, e = np.frexp(a.astype(np.float64))                         # exact: a = m 2^e, m in [0.5, 1)
        lg = (e - 1) if rule == "floor" else np.where(m == 0.5, e - 1, e)   # floor / ceil of log2 a
        k = np.where(a == 0, -127, lg - f.emax)
    return np.clip(k, -127, 127).astype(np.int64)


def enc_elem(v, elem):
    """Element encoder: saturating E4M3 / E5M2, or E2M1 (always saturating)."""
    return {"e4m3": lambda t: fmt.enc_e4m3(t, True), "e5m2": lambda t: fmt.enc_e5m2(t, True),
            "e2m1": fmt.enc_e2m1}[elem](v)


def dec_elem(q, elem):
    return fmt.dec_table_f32(elem)[q]


# ------------------------------------------------------------------------------------------------
# Swizzled 128x4 layout (formats.md §3)

def swz_dims(R, C):
    return -(-R // 128) * 128, -(-C // 4) * 4


def swz_offset(r, c, Cp):
    """formats.md §3 offset formula (numpy integer arrays or ints)."""
    return ((r // 128) * (Cp // 4) * 512 + (c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + (c % 4))


def swizzle_offsets(mat):
    """mat [B, R, C] bytes -> flat [B * Rp * Cp] via the offset formula; padding 0."""
    B, R, C = mat.shape
    Rp, Cp = swz_dims(R, C)
    out = np.zeros(B * Rp * Cp, dtype=mat.dtype)
    r, c = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    off = swz_offset(r, c, Cp)
    for b in range(B):
        out[b * Rp * Cp + off] = mat[b]
    return out


def swizzle_permute(mat):
    """The same through padding + view [Rp/128, 4, 32, Cp/4, 4] + permute (0, 3, 2, 1, 4) per matrix."""
    B, R, C = mat.shape
    Rp, Cp = swz_dims(R, C)
    pad = np.zeros((B, Rp, Cp), dtype=mat.dtype)
    pad[:, :R, :C] = mat
    v = pad.reshape(B, Rp // 128, 4, 32, Cp // 4, 4).transpose(0, 1, 4, 3, 2, 5)
    return np.ascontiguousarray(v).reshape(-1)


def swizzle(mat):
    a, b = swizzle_offsets(mat), swizzle_permute(mat)
    if not np.array_equal(a, b):
        fail(f"swizzle offset formula != reshape/permute for shape {mat.shape}")
    return a


def check_swizzle_vectors():
    R, C = 300, 10
    Rp, Cp = swz_dims(R, C)
    assert (Rp, Cp) == (384, 12) and Rp * Cp == 4608
    for (r, c), want in (((5, 2), 82), ((37, 5), 597), ((130, 0), 1568), ((299, 9), 4277), ((0, 4), 512),
                         ((32, 0), 4), ((64, 3), 11)):
        if swz_offset(r, c, Cp) != want:
            fail(f"swizzle offset ({r},{c}) = {swz_offset(r, c, Cp)}, spec {want}")
    # the permute form puts byte (r, c) at the formula's offset: tag each entry with its own index
    idx = np.arange(R * C, dtype=np.int64).reshape(1, R, C) + 1
    perm = swizzle_permute(idx)
    for (r, c), want in (((5, 2), 82), ((37, 5), 597), ((130, 0), 1568), ((299, 9), 4277)):
        if perm[want] != r * C + c + 1:
            fail(f"permute form does not place ({r},{c}) at {want}")
    # the mapping is a bijection onto the non-padding bytes
    r, c = np.meshgrid(np.arange(Rp), np.arange(Cp), indexing="ij")
    offs = swz_offset(r, c, Cp).reshape(-1)
    assert np.array_equal(np.sort(offs), np.arange(Rp * Cp))
    CHECKS.append("swizzle: specs A6.7 vectors (R=300, C=10: 7 offsets, 4608 bytes), permute form places the "
                  "same bytes, offset map is a bijection of Rp*Cp")


# ------------------------------------------------------------------------------------------------
# numpy reference quantiser (the source of the golden values)

def nvfp4_global_np(x, case):
    """Returns (stored global scale, g_enc, g_dec) per formats.md 2.4."""
    if case.static:
        stored = F32(case.static_scale)
    else:
        A = np.minimum(abs_nan0(x).max(initial=F32(0)), FLT_MAX)            # 2.1 with floor 0
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            cand = (NV_2688 / A) if case.glob == "encode" else (A / NV_2688)
        with np.errstate(over="ignore", divide="ignore"):
            usable = np.isfinite(cand) and cand > 0 and np.isfinite(F32(1) / F32(cand))
        stored = F32(cand) if usable else F32(1)
    with np.errstate(over="ignore", divide="ignore"):
        inv = F32(1) / stored
    return (stored, stored, inv) if case.glob == "encode" else (stored, inv, stored)


def quantize_np(x, case):
    """Returns dict with q (codes, [B, R, C] uint8, unpacked), sc (scales before layout), scale_bytes,
    g (stored global or None), y (f32 [B, R, C])."""
    B, R, C = case.brc()
    x3 = x.reshape(B, R, C)
    f = case.fmt
    M = F32(f.maxval)
    err = np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore")
    res = {"g": None}
    if case.kind == "fp8_tensor":
        if case.static:
            s = F32(case.static_scale)
        else:
            a = finish_amax(abs_nan0(x3).max(initial=F32(0)), case.floor)
            s = F32(a / M)
            s = F32(1) if s == 0 else s
        with err:
            q = enc_elem((x3 / s).astype(np.float32), case.elem)
            y = (dec_elem(q, case.elem) * s).astype(np.float32)
        sc = np.array([s], dtype=np.float32)
        res.update(q=q, sc=sc, scale_bytes=sc.view(np.uint8).copy(), y=y)
        return res

    br, bc = case.block_shape()
    a = finish_amax(block_amax_np(x3, br, bc), case.floor)          # [B, nR, nC]
    if case.kind == "nvfp4":
        stored, g_enc, g_dec = nvfp4_global_np(x3, case)
        with err:
            sf = fmt.enc_e4m3((g_enc * (a * R6)).astype(np.float32), True)          # step 1
            p = (dec_elem(sf, "e4m3") * g_dec).astype(np.float32)                   # step 2
            o = np.where(p == 0, F32(0), F32(1) / p).astype(np.float32)
            q = fmt.enc_e2m1((x3 * expand_np(o, br, bc, R, C)).astype(np.float32))  # step 3
            y = ((dec_elem(q, "e2m1") * expand_np(dec_elem(sf, "e4m3"), br, bc, R, C)).astype(np.float32)
                 * g_dec).astype(np.float32)
        res.update(q=q, sc=sf, g=stored, y=y)
        sbytes = sf
    elif case.rule == "f32":
        s = (a / M).astype(np.float32)
        s = np.where(s == 0, F32(1), s).astype(np.float32)
        se = expand_np(s, br, bc, R, C)
        with err:
            q = enc_elem((x3 / se).astype(np.float32), case.elem)
            y = (dec_elem(q, case.elem) * se).astype(np.float32)
        res.update(q=q, sc=s, y=y)
        sbytes = s
    else:
        k = ue8m0_k_np(a, case.rule, f)
        with err:
            q = enc_elem((x3 * expand_np(pow2_f32(-k), br, bc, R, C)).astype(np.float32), case.elem)
            y = (dec_elem(q, case.elem) * expand_np(pow2_f32(k), br, bc, R, C)).astype(np.float32)
        if case.scale == "e8m0":
            sbytes = (k + 127).astype(np.uint8)
        else:
            sbytes = pow2_f32(k)
        res.update(q=q, sc=sbytes, y=y)
    # scale buffer bytes in the layout
    if case.layout == "swizzled":
        assert sbytes.dtype == np.uint8
        res["scale_bytes"] = swizzle(sbytes)
    else:
        res["scale_bytes"] = np.ascontiguousarray(sbytes).reshape(-1).view(np.uint8).copy()
    return res


# ------------------------------------------------------------------------------------------------
# torch cross-check implementation (written independently of the numpy one)

def t_enc(v, elem):
    """torch element encoders: clamp then cast for FP8 (torch's own saturation is not relied on), NaN -> 0x7F;
    E2M1 through the threshold encoder fmt.torch_e2m1."""
    if elem == "e2m1":
        return fmt.torch_e2m1(v).to(torch.uint8)
    m, dt = (448.0, torch.float8_e4m3fn) if elem == "e4m3" else (57344.0, torch.float8_e5m2)
    c = v.clamp(-m, m).to(dt).view(torch.uint8)
    return torch.where(torch.isnan(v), torch.tensor(0x7F, dtype=torch.uint8), c)


E2M1_LUT = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                        dtype=torch.float32)


def t_dec(q, elem):
    if elem == "e2m1":
        return E2M1_LUT[q.long()]
    dt = torch.float8_e4m3fn if elem == "e4m3" else torch.float8_e5m2
    return q.view(dt).to(torch.float32)


def t_amax(x, br, bc):
    """[B, R, C] -> [B, nR, nC] block amax: NaN -> 0, +-Inf -> FLT_MAX (nan_to_num), zero padding."""
    B, R, C = x.shape
    nR, nC = -(-R // br), -(-C // bc)
    a = torch.nan_to_num(x.abs(), nan=0.0, posinf=float(FLT_MAX))
    a = TF.pad(a, (0, nC * bc - C, 0, nR * br - R))
    return a.view(B, nR, br, nC, bc).amax(dim=(2, 4))


def t_expand(s, br, bc, R, C):
    return s.repeat_interleave(br, dim=1).repeat_interleave(bc, dim=2)[:, :R, :C]


def t_log2_floor_ceil(v):
    """floor and ceil of log2 v for v > 0 via torch.frexp (v = m 2^e, m in [0.5, 1))."""
    m, e = torch.frexp(v)
    e = e.to(torch.int64)
    return e - 1, torch.where(m == 0.5, e - 1, e)


def quantize_torch(x_np, case):
    B, R, C = case.brc()
    x = torch.from_numpy(x_np.reshape(B, R, C).copy())
    f = case.fmt
    M = float(f.maxval)
    floor = torch.tensor(float(f32s(case.floor)), dtype=torch.float32)
    if case.kind == "fp8_tensor":
        if case.static:
            s = torch.tensor(float(F32(case.static_scale)), dtype=torch.float32)
        else:
            a = torch.maximum(torch.nan_to_num(x.abs(), nan=0.0, posinf=float(FLT_MAX)).amax(), floor)
            s = a / M
            s = torch.where(s == 0, torch.ones_like(s), s)
        q = t_enc(x / s, case.elem)
        return {"q": q.numpy(), "sc": s.reshape(1).numpy(), "y": (t_dec(q, case.elem) * s).numpy(), "g": None}
    br, bc = case.block_shape()
    a = torch.maximum(t_amax(x, br, bc), floor)
    if case.kind == "nvfp4":
        return ref_nvfp4_quant_torch(x, case, a)
    if case.rule == "f32":
        s = a / M
        s = torch.where(s == 0, torch.ones_like(s), s)
        se = t_expand(s, br, bc, R, C)
        q = t_enc(x / se, case.elem)
        return {"q": q.numpy(), "sc": s.numpy(), "y": (t_dec(q, case.elem) * se).numpy(), "g": None}
    if case.rule == "rceil":
        v = a / M
        _, ce = t_log2_floor_ceil(torch.where(v == 0, torch.ones_like(v), v))
        k = torch.where(v == 0, torch.full_like(ce, -127), ce)
    else:
        fl, ce = t_log2_floor_ceil(torch.where(a == 0, torch.ones_like(a), a))
        k = torch.where(a == 0, torch.full_like(fl, -127), (fl if case.rule == "floor" else ce) - f.emax)
    k = k.clamp(-127, 127)
    up = torch.pow(torch.tensor(2.0, dtype=torch.float64), k.double()).float()      # 2^k, exact
    down = torch.pow(torch.tensor(2.0, dtype=torch.float64), (-k).double()).float()
    q = t_enc(x * t_expand(down, br, bc, R, C), case.elem)
    y = t_dec(q, case.elem) * t_expand(up, br, bc, R, C)
    sc = (k + 127).to(torch.uint8).numpy() if case.scale == "e8m0" else up.numpy()
    return {"q": q.numpy(), "sc": sc, "y": y.numpy(), "g": None}


def ref_nvfp4_quant_torch(x, case, a):
    """vLLM's `ref_nvfp4_quant` recipe as formats.md 2.4 restates it, in torch float32:
    scale = g_enc * (vec_max * (1/6)); scale = clamp(scale, max=448).to(e4m3).float();
    output_scale = reciprocal(scale * g_dec) with reciprocal(0) = 0; q = fp4(clamp(x * output_scale, -6, 6)).
    Differences from vLLM's test helper, all following formats.md: the block amax ignores NaN and saturates Inf
    (vLLM: torch.max propagates NaN); g_dec/g_enc are the pair of 2.4 (vLLM always uses 1/global_scale); the
    FP4 cast is the code-producing threshold encoder with the sign from signbit and NaN -> 0x7 (vLLM's
    float-valued cast_to_fp4 takes the sign from torch.sign and keeps NaN)."""
    B, R, C = x.shape
    if case.static:
        stored = torch.tensor(float(F32(case.static_scale)), dtype=torch.float32)
    else:
        A = torch.nan_to_num(x.abs(), nan=0.0, posinf=float(FLT_MAX)).amax()
        # tensor / tensor: torch computes `python_scalar / tensor` as scalar * reciprocal(tensor), which is
        # not correctly rounded (2688 / FLT_MAX gives 0x05280000 instead of 0x05280001)
        c2688 = torch.tensor(2688.0, dtype=torch.float32)
        cand = torch.div(c2688, A) if case.glob == "encode" else torch.div(A, c2688)
        ok = bool(torch.isfinite(cand)) and bool(cand > 0) and bool(torch.isfinite(1.0 / cand))
        stored = cand if ok else torch.tensor(1.0, dtype=torch.float32)
    inv = 1.0 / stored
    g_enc, g_dec = (stored, inv) if case.glob == "encode" else (inv, stored)
    r6 = torch.tensor(1.0, dtype=torch.float32) / 6.0
    vec_max = a                                                     # [B, R, C/16]
    scale = g_enc * (vec_max * r6)
    sf = scale.clamp(max=448.0).to(torch.float8_e4m3fn)
    sf_code = sf.view(torch.uint8)
    if torch.isnan(scale).any():
        fail(f"{case.name}: NaN block scale in the torch reference")
    sf_f = sf.to(torch.float32)
    p = sf_f * g_dec
    out_scale = torch.where(p == 0, torch.zeros_like(p), 1.0 / p)
    xs = (x.view(B, R, C // 16, 16) * out_scale.unsqueeze(-1)).clamp(-6.0, 6.0)
    q = fmt.torch_e2m1(xs).to(torch.uint8).view(B, R, C)
    y = (E2M1_LUT[q.long()].view(B, R, C // 16, 16) * sf_f.unsqueeze(-1)) * g_dec
    return {"q": q.numpy(), "sc": sf_code.numpy(), "y": y.reshape(B, R, C).numpy(), "g": stored.reshape(1).numpy()}


def gptoss_mxfp4_decode(blocks, scales):
    """gpt-oss's MXFP4 checkpoint decoding: blocks [..., G, 16] uint8 (low nibble = even element), scales
    [..., G] E8M0 bytes; value = LUT[nibble] * 2^(scale - 127) via torch.ldexp. Returns [..., G * 32] f32."""
    lut = E2M1_LUT
    b = torch.from_numpy(blocks).long()
    lo, hi = lut[b & 0x0F], lut[b >> 4]
    vals = torch.stack((lo, hi), dim=-1).reshape(*blocks.shape[:-1], 32)
    exp = torch.from_numpy(scales.astype(np.int32)) - 127
    out = torch.ldexp(vals, exp.unsqueeze(-1))
    return out.reshape(*blocks.shape[:-2], -1).numpy()


# ------------------------------------------------------------------------------------------------
# Test content (all randomness from splitmix64 so it is reproducible everywhere; no libm calls)

def rand_normal(rng, n):
    """Approximately N(0, 1): sum of 12 uniforms minus 6 (Irwin-Hall), in float64, rounded to f32."""
    u = rng.uniform(12 * n).reshape(n, 12)
    acc = np.zeros(n, dtype=np.float64)
    for j in range(12):                      # fixed summation order (np.sum's pairwise order is an impl detail)
        acc = acc + u[:, j]
    return (acc - 6.0).astype(np.float32)


def rand_logu(rng, n, lo=-20, hi=20):
    """Log-uniform magnitudes 2^lo .. 2^(hi+1) with random sign: the f32 fields are drawn directly."""
    r = rng.u64(n)
    sign = (r >> np.uint64(63)).astype(np.uint32)
    e = (127 + lo + ((r >> np.uint64(32)) % np.uint64(hi - lo + 1))).astype(np.uint32)
    m = (r & np.uint64(0x7FFFFF)).astype(np.uint32)
    return f32((sign << np.uint32(31)) | (e << np.uint32(23)) | m)


def rand_mixed(rng, n, lo=-20, hi=20):
    pick = (rng.u64(n) & np.uint64(1)).astype(bool)
    return np.where(pick, rand_normal(rng, n), rand_logu(rng, n, lo, hi)).astype(np.float32)


def rand_int(rng, lo, hi):
    return lo + int(rng.u64(1)[0] % np.uint64(hi - lo + 1))


def rand_sign(rng, n):
    return np.where((rng.u64(n) & np.uint64(1)) == 1, F32(-1), F32(1)).astype(np.float32)


def put(rng, v, value):
    """Write `value` at a random position of v (returns the position)."""
    i = rand_int(rng, 0, v.size - 1)
    v[i] = value
    return i


def top_of_block(case):
    """Scaled-domain amax T for which the block's scale is exactly 2^j when amax = T * 2^j (see fill())."""
    f = case.fmt
    if case.rule == "ceil":
        return 2.0 ** f.emax          # ceil(log2(2^emax 2^j)) - emax = j
    return f.maxval                   # f32: s = M 2^j / M = 2^j; rceil: v = 2^j; floor: floor(log2 M) = emax


def fill(kind, n, rng, case):
    """Values of one block of n elements holding the named special content."""
    f = case.fmt
    if kind == "zero":
        v = np.zeros(n, dtype=np.float32)
        v[rand_int(rng, 0, n - 1)] = F32(-0.0)
        return v
    if kind in ("nan", "pinf", "ninf"):
        v = rand_mixed(rng, n)
        put(rng, v, {"nan": f32s(0x7FC00000), "pinf": F32(np.inf), "ninf": F32(-np.inf)}[kind])
        if kind == "nan" and n > 2:
            put(rng, v, f32s(0xFFC00000))                               # a negative NaN as well
        return v
    if kind == "allnan":
        return np.where(rand_sign(rng, n) > 0, f32s(0x7FC00000), f32s(0xFFC00000)).astype(np.float32)
    if kind == "tiny":                                                  # f32 subnormals, random sign
        m = (rng.u32(n) & np.uint32(0x7FFFFF)) | np.uint32(1)
        return (f32(m) * rand_sign(rng, n)).astype(np.float32)
    if kind == "huge":                                                  # |x| in [2^125, 2^128): around 1e38
        e = (252 + rng.u32(n) % np.uint32(3)).astype(np.uint32)
        m = rng.u32(n) & np.uint32(0x7FFFFF)
        return (f32((e << np.uint32(23)) | m) * rand_sign(rng, n)).astype(np.float32)
    if kind in ("exactmax", "ties"):
        j = rand_int(rng, -8, 8)
        T = top_of_block(case) if case.kind != "nvfp4" else 6.0
        scale = 2.0 ** j
        if kind == "exactmax":
            v = rand_mixed(rng, n, -6, 6).astype(np.float64)
            v = v / (np.abs(v).max() * 1.0001) * T                      # strictly inside (-T, T)
        else:                                                           # grid midpoints below T (ties)
            pv = f.pos_values[f.pos_values <= T]
            mids = (pv[:-1] + pv[1:]) / 2
            pick = rng.u64(n) % np.uint64(mids.size)
            v = mids[pick.astype(np.int64)] * rand_sign(rng, n).astype(np.float64)
        v = v.astype(np.float32).astype(np.float64) * scale             # exact power-of-two scaling
        v[rand_int(rng, 0, n // 2)] = T * scale                        # the block max, hit exactly
        if n > 1:
            v[rand_int(rng, n // 2 + 1, n - 1) if n > 2 else 1] = -T * scale
        out = v.astype(np.float32)
        assert np.array_equal(out.astype(np.float64), v)
        return out
    if kind == "random":
        return rand_mixed(rng, n)
    if kind in ("nvprobe_b", "nvprobe_c"):
        return nvfp4_probe(kind, n, rng, case)
    raise ValueError(kind)


def nvfp4_probe(kind, n, rng, case):
    """An NVFP4 block (static global scale) built so that the golden values pin the operation order of 2.4:
    its amax a makes sf = e4m3(g_enc * (a * r6)) differ from (g_enc * a) * r6 ("nvprobe_b") or from
    g_enc * (a / 6) ("nvprobe_c"), and its other elements sit next to E2M1 ties so that q = enc(x * o) with
    o = 1 / (dec(sf) * g_dec) differs from x * ((1 / dec(sf)) * g_enc) or x * (g_enc / dec(sf))."""
    assert case.kind == "nvfp4" and case.static and n == 16
    stored = F32(case.static_scale)
    inv = F32(1) / stored
    g_enc, g_dec = (stored, inv) if case.glob == "encode" else (inv, stored)
    e4 = lambda v: int(fmt.enc_e4m3(np.array([v], np.float32), True)[0])
    sf_ref = lambda a: e4(g_enc * (a * R6))
    sf_alt = {"nvprobe_b": lambda a: e4((g_enc * a) * R6), "nvprobe_c": lambda a: e4(g_enc * (a / F32(6)))}[kind]
    # a near an E4M3 rounding midpoint of the scale: E4M3 mids between 16 and 256 (away from saturation)
    mids = [(lo + hi) / 2 for lo, hi in zip(fmt.E4M3.pos_values[:-1], fmt.E4M3.pos_values[1:]) if 16 <= lo < 256]
    a = None
    for _ in range(200):
        m = mids[rand_int(rng, 0, len(mids) - 1)]
        a0 = F32(m * 6.0 / float(g_enc))
        cand = f32(np.arange(int(bits(a0)[0]) - 64, int(bits(a0)[0]) + 65, dtype=np.uint32))
        hits = [c for c in cand if sf_ref(c) != sf_alt(c)]
        if hits:
            a = hits[rand_int(rng, 0, len(hits) - 1)]
            break
    if a is None:
        fail(f"{case.name}: no amax found for {kind}")
    sf = sf_ref(a)
    p = F32(fmt.dec_table_f32("e4m3")[sf] * g_dec)
    o_ref = F32(1) / p
    o_alts = [(F32(1) / fmt.dec_table_f32("e4m3")[sf]) * g_enc, g_enc / fmt.dec_table_f32("e4m3")[sf]]
    vals = [a, -F32(a * F32(0.5))]
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    for t in ties * 2:
        if len(vals) == n:
            break
        x0 = F32(t / float(o_ref))
        cand = f32(np.arange(int(bits(x0)[0]) - 8, int(bits(x0)[0]) + 9, dtype=np.uint32))
        qref = fmt.enc_e2m1((cand * o_ref).astype(np.float32))
        diff = np.zeros(cand.size, dtype=bool)
        for oa in o_alts:
            diff |= fmt.enc_e2m1((cand * F32(oa)).astype(np.float32)) != qref
        pick = cand[diff] if diff.any() else cand[(cand * o_ref).astype(np.float32) == F32(t)]
        if pick.size == 0:
            pick = cand[8:9]
        x = pick[rand_int(rng, 0, pick.size - 1)]
        vals.append(x if rand_int(rng, 0, 1) else -x)
    v = np.array(vals, dtype=np.float32)
    assert np.abs(v[1:]).max() <= a
    return v


DEFAULT_SPECIALS = ["zero", "nan", "pinf", "ninf", "exactmax", "tiny", "huge", "ties", "allnan"]


def make_input(case):
    """The input tensor of a case (f32, case.shape)."""
    rng = mg.Rng(case.seed)
    B, R, C = case.brc()
    if callable(case.content):
        x = case.content(rng, case)
    else:
        br, bc = case.block_shape()
        nR, nC = -(-R // br), -(-C // bc)
        x = np.zeros((B, nR * br, nC * bc), dtype=np.float32)
        nblocks = B * nR * nC
        specials = case.specials if case.specials is not None else DEFAULT_SPECIALS
        specials = specials[:nblocks]
        # spread the special blocks evenly over the block index space (row-major over B, nR, nC)
        where = {(i * nblocks) // len(specials): s for i, s in enumerate(specials)} if specials else {}
        for blk in range(nblocks):
            b, rest = divmod(blk, nR * nC)
            i, jc = divmod(rest, nC)
            r0, c0 = i * br, jc * bc
            rr, cc = min(br, R - r0), min(bc, C - c0)          # the block's real extent
            vals = fill(where.get(blk, "random"), rr * cc, rng, case)
            x[b, r0:r0 + rr, c0:c0 + cc] = vals.reshape(rr, cc)
        x = x[:, :R, :C]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(case.shape)
    if case.inp == "bf16":
        # make every value bf16-representable (RN), keeping NaN as the quiet NaN 0x7FC00000
        hb = fmt.enc_bf16(x).astype(np.uint32) << np.uint32(16)
        hb = np.where(np.isnan(x), np.uint32(0x7FC00000), hb)
        x = f32(hb).reshape(case.shape)
    return x


# fp8_tensor contents (one block over the whole tensor, so they are built per case)

def content_tensor_mixed(rng, case):
    v = rand_mixed(rng, int(np.prod(case.shape)), -8, 8)
    put(rng, v, f32s(0x7FC00000))
    put(rng, v, F32(-0.0))
    put(rng, v, f32s(0x00000005))                                   # a subnormal
    return v.reshape(case.shape)


def content_tensor_ties(rng, case):
    n = int(np.prod(case.shape))
    return fill("ties", n, rng, case).reshape(case.shape)


def content_tensor_static(rng, case):
    """Static scale s: values up to ~4x s*M so that x/s overflows the element range (saturation), plus
    +-Inf, NaN, -0, subnormals, the exact overflow threshold and the max times s."""
    n = int(np.prod(case.shape))
    s = F32(case.static_scale)
    M = case.fmt.maxval
    v = (rand_normal(rng, n) * F32(M / 2) * s).astype(np.float32)
    for val in (np.inf, -np.inf, np.nan, -0.0, 1e-42, -3e-39, 1e38, -1e38):
        put(rng, v, F32(val))
    put(rng, v, F32(M) * s)
    put(rng, v, -(F32(M) * s))
    return v.reshape(case.shape)


def content_tensor_zero(rng, case):
    n = int(np.prod(case.shape))
    v = np.zeros(n, dtype=np.float32)
    v[1] = F32(-0.0)
    v[5] = f32s(0x7FC00000)
    v[9] = f32s(0xFFC00000)
    return v.reshape(case.shape)


def content_tensor_inf(rng, case):
    v = rand_mixed(rng, int(np.prod(case.shape)))
    put(rng, v, F32(np.inf))
    put(rng, v, F32(1e38))
    return v.reshape(case.shape)


def content_all_zero(rng, case):
    return np.zeros(case.shape, dtype=np.float32)


def content_tiny(rng, case):
    n = int(np.prod(case.shape))
    return fill("tiny", n, rng, case).reshape(case.shape)


def content_with_inf(rng, case):
    v = rand_mixed(rng, int(np.prod(case.shape)))
    put(rng, v, F32(np.inf))
    put(rng, v, F32(-np.inf))
    put(rng, v, f32s(0x7FC00000))
    return v.reshape(case.shape)


# ------------------------------------------------------------------------------------------------
# Case list

NV_DYN_SPECIALS = ["zero", "nan", "exactmax", "tiny", "ties", "allnan"]     # no +-Inf/huge: dynamic global
NV_PROBES = ["nvprobe_b", "nvprobe_c"] * 4                                  # operation-order probes (static)

CASES = [
    # FP8_TENSOR (rule f32; preset floor 0)
    Case("fp8_tensor_e4m3_dyn_3x200", "fp8_tensor", "e4m3", "f32", (3, 200), content=content_tensor_mixed),
    Case("fp8_tensor_e5m2_dyn_ties_2x3x64_bf16", "fp8_tensor", "e5m2", "f32", (2, 3, 64), inp="bf16",
         content=content_tensor_ties),
    Case("fp8_tensor_e4m3_static_4x64", "fp8_tensor", "e4m3", "f32", (4, 64), static=1, static_scale=0.37,
         content=content_tensor_static),
    Case("fp8_tensor_e5m2_static_3x32", "fp8_tensor", "e5m2", "f32", (3, 32), static=1, static_scale=0.37,
         content=content_tensor_static),
    Case("fp8_tensor_e4m3_zero_64", "fp8_tensor", "e4m3", "f32", (64,), content=content_tensor_zero),
    Case("fp8_tensor_e4m3_inf_1x64", "fp8_tensor", "e4m3", "f32", (1, 64), content=content_tensor_inf),
    # FP8_ROW (preset floor 1/512; one case with floor 0)
    Case("fp8_row_e4m3_f32_10x200", "fp8_row", "e4m3", "f32", (10, 200), floor=FLOOR_ROW),
    Case("fp8_row_e5m2_f32_floor0_10x200", "fp8_row", "e5m2", "f32", (10, 200), floor=0),
    Case("fp8_row_e4m3_rceil_e8m0_10x200", "fp8_row", "e4m3", "rceil", (10, 200), floor=FLOOR_ROW),
    Case("fp8_row_e4m3_f32_300_bf16", "fp8_row", "e4m3", "f32", (300,), floor=FLOOR_ROW, inp="bf16",
         specials=["nan"]),
    # FP8_1X128 (preset floor 1e-4)
    Case("fp8_1x128_e4m3_f32_8x300", "fp8_1x128", "e4m3", "f32", (8, 300), floor=FLOOR_DS),
    Case("fp8_1x128_e4m3_rceil_f32_8x300_bf16", "fp8_1x128", "e4m3", "rceil", (8, 300), scale="f32",
         floor=FLOOR_DS, inp="bf16"),
    Case("fp8_1x128_e5m2_rceil_e8m0_3x200", "fp8_1x128", "e5m2", "rceil", (3, 200), floor=FLOOR_DS),
    Case("fp8_1x128_e4m3_floor_e8m0_8x300", "fp8_1x128", "e4m3", "floor", (8, 300), floor=FLOOR_DS),
    Case("fp8_1x128_e4m3_ceil_f32_3x200", "fp8_1x128", "e4m3", "ceil", (3, 200), scale="f32", floor=FLOOR_DS),
    Case("fp8_1x128_e5m2_f32_2x4x200", "fp8_1x128", "e5m2", "f32", (2, 4, 200), floor=FLOOR_DS),
    # FP8_128X128 (preset floor 1e-4)
    Case("fp8_128x128_e4m3_f32_130x300", "fp8_128x128", "e4m3", "f32", (130, 300), floor=FLOOR_DS,
         specials=["zero", "nan", "pinf", "exactmax", "tiny", "ties"]),
    Case("fp8_128x128_e4m3_rceil_e8m0_2x130x260", "fp8_128x128", "e4m3", "rceil", (2, 130, 260),
         floor=FLOOR_DS),
    Case("fp8_128x128_e5m2_f32_3x200", "fp8_128x128", "e5m2", "f32", (3, 200), floor=FLOOR_DS,
         specials=["ninf", "exactmax"]),
    Case("fp8_128x128_e4m3_ceil_e8m0_130x40", "fp8_128x128", "e4m3", "ceil", (130, 40), floor=FLOOR_DS,
         specials=["ties", "huge"]),
    # MXFP8 (E8M0 scales, floor 0)
    Case("mxfp8_e4m3_rceil_linear_5x96", "mxfp8", "e4m3", "rceil", (5, 96)),
    Case("mxfp8_e5m2_rceil_swizzled_129x64", "mxfp8", "e5m2", "rceil", (129, 64), layout="swizzled"),
    Case("mxfp8_e4m3_floor_linear_2x5x64", "mxfp8", "e4m3", "floor", (2, 5, 64)),
    Case("mxfp8_e5m2_floor_swizzled_5x96", "mxfp8", "e5m2", "floor", (5, 96), layout="swizzled"),
    Case("mxfp8_e4m3_ceil_swizzled_5x96_bf16", "mxfp8", "e4m3", "ceil", (5, 96), layout="swizzled", inp="bf16"),
    Case("mxfp8_e5m2_ceil_linear_5x96", "mxfp8", "e5m2", "ceil", (5, 96)),
    Case("mxfp8_e4m3_rceil_swizzled_1x32", "mxfp8", "e4m3", "rceil", (1, 32), layout="swizzled",
         specials=["exactmax"]),
    # MXFP4
    Case("mxfp4_rceil_linear_5x96", "mxfp4", "e2m1", "rceil", (5, 96)),
    Case("mxfp4_rceil_swizzled_129x64", "mxfp4", "e2m1", "rceil", (129, 64), layout="swizzled"),
    Case("mxfp4_floor_linear_5x96", "mxfp4", "e2m1", "floor", (5, 96)),
    Case("mxfp4_floor_swizzled_2x5x64", "mxfp4", "e2m1", "floor", (2, 5, 64), layout="swizzled"),
    Case("mxfp4_ceil_linear_2x5x64", "mxfp4", "e2m1", "ceil", (2, 5, 64)),
    Case("mxfp4_ceil_swizzled_5x96_bf16", "mxfp4", "e2m1", "ceil", (5, 96), layout="swizzled", inp="bf16"),
    Case("mxfp4_rceil_linear_1x64", "mxfp4", "e2m1", "rceil", (1, 64), specials=["ties"]),
    Case("mxfp4_rceil_swizzled_1x32", "mxfp4", "e2m1", "rceil", (1, 32), layout="swizzled", specials=[]),
    Case("mxfp4_floor_linear_64", "mxfp4", "e2m1", "floor", (64,), specials=["exactmax"]),
    # NVFP4 (E4M3 block scales, global scale; floor 0)
    Case("nvfp4_enc_dyn_linear_5x96", "nvfp4", "e2m1", "e4m3", (5, 96), glob="encode",
         specials=NV_DYN_SPECIALS),
    Case("nvfp4_dec_dyn_swizzled_5x96", "nvfp4", "e2m1", "e4m3", (5, 96), glob="decode", layout="swizzled",
         specials=NV_DYN_SPECIALS),
    Case("nvfp4_enc_static_swizzled_129x64", "nvfp4", "e2m1", "e4m3", (129, 64), glob="encode",
         layout="swizzled", static=1, static_scale=1234.5, specials=DEFAULT_SPECIALS + NV_PROBES),
    Case("nvfp4_dec_static_linear_5x96", "nvfp4", "e2m1", "e4m3", (5, 96), glob="decode", static=1,
         static_scale=F32(1) / F32(1234.5), specials=DEFAULT_SPECIALS + NV_PROBES),
    Case("nvfp4_enc_dyn_swizzled_1x16", "nvfp4", "e2m1", "e4m3", (1, 16), glob="encode", layout="swizzled",
         specials=[]),
    Case("nvfp4_dec_dyn_linear_2x5x64_bf16", "nvfp4", "e2m1", "e4m3", (2, 5, 64), glob="decode", inp="bf16",
         specials=NV_DYN_SPECIALS),
    Case("nvfp4_enc_dyn_linear_zero_1x32", "nvfp4", "e2m1", "e4m3", (1, 32), glob="encode",
         content=content_all_zero),
    Case("nvfp4_enc_dyn_linear_tiny_2x32", "nvfp4", "e2m1", "e4m3", (2, 32), glob="encode", content=content_tiny),
    # a tensor amax so small that g = A / 2688 is subnormal and 1 / g overflows: the global scale falls back to 1
    Case("nvfp4_dec_dyn_linear_tiny_2x32", "nvfp4", "e2m1", "e4m3", (2, 32), glob="decode", content=content_tiny),
    Case("nvfp4_enc_dyn_linear_inf_3x32", "nvfp4", "e2m1", "e4m3", (3, 32), glob="encode",
         content=content_with_inf),
    Case("nvfp4_dec_dyn_swizzled_inf_3x32", "nvfp4", "e2m1", "e4m3", (3, 32), glob="decode", layout="swizzled",
         content=content_with_inf),
]

for _i, _c in enumerate(CASES):
    _c.seed = 1000 + _i                    # fixed per position in the list
assert len({c.name for c in CASES}) == len(CASES)

SWZ_SHAPES = [(1, 1, 1), (1, 300, 10), (1, 128, 4), (1, 129, 5), (2, 200, 7)]


# ------------------------------------------------------------------------------------------------

def check_case(case, x, res):
    """Cross-checks of one case against the torch implementation (and gpt-oss decoding for MXFP4)."""
    B, R, C = case.brc()
    t = quantize_torch(x, case)
    tag = "vLLM ref_nvfp4_quant recipe (torch)" if case.kind == "nvfp4" else "torch re-implementation"
    if not np.array_equal(t["q"].reshape(B, R, C), res["q"]):
        bad = np.argwhere(t["q"].reshape(B, R, C) != res["q"])[:3]
        fail(f"{case.name}: q differs from {tag} at {bad.tolist()}")
    if not np.array_equal(np.asarray(t["sc"]).reshape(-1).view(np.uint8), np.asarray(res["sc"]).reshape(-1).view(np.uint8)):
        fail(f"{case.name}: scales differ from {tag}")
    ty = mg.canon_nan_f32(bits(t["y"].astype(np.float32)))
    ny = mg.canon_nan_f32(bits(res["y"]))
    if not np.array_equal(ty.reshape(-1), ny.reshape(-1)):
        i = np.nonzero(ty.reshape(-1) != ny.reshape(-1))[0][:3]
        fail(f"{case.name}: y differs from {tag} at flat {i.tolist()}")
    if case.kind == "nvfp4" and bits(t["g"])[0] != bits(np.array([res["g"]], np.float32))[0]:
        fail(f"{case.name}: global scale differs from {tag}")
    done = [tag + " (q, scales, y" + (", g)" if case.kind == "nvfp4" else ")")]
    if case.kind == "mxfp4" and case.layout == "linear":
        G = C // 32
        blocks = pack_fp4(res["q"]).reshape(B, R, G, 16)
        scales = np.asarray(res["sc"], dtype=np.uint8).reshape(B, R, G)
        yg = gptoss_mxfp4_decode(blocks, scales).reshape(B, R, C)
        if not np.array_equal(bits(yg), mg.canon_nan_f32(bits(res["y"]))):
            fail(f"{case.name}: gpt-oss decode != y")
        done.append("gpt-oss MXFP4 decode (LUT + torch.ldexp) == y")
    if case.layout == "swizzled":
        done.append("swizzle formula == permute form")
    if case.inp == "bf16":
        xb = bits(x)
        if not np.all((xb & np.uint32(0xFFFF)) == 0):
            fail(f"{case.name}: input not bf16-representable")
        done.append("input bf16-representable")
    return done


def check_nvfp4_order_sensitivity(case, x):
    """For the static NVFP4 cases with probe blocks: the golden q/scales must tell formats.md's operation
    order apart from the plausible alternatives (so a C kernel using one of them fails its test)."""
    B, R, C = case.brc()
    x3 = x.reshape(B, R, C)
    stored, g_enc, g_dec = nvfp4_global_np(x3, case)
    a = finish_amax(block_amax_np(x3, 1, 16), 0)
    e4 = lambda v: fmt.enc_e4m3(v.astype(np.float32), True)
    dec4 = fmt.dec_table_f32("e4m3")
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        sf = e4(g_enc * (a * R6))
        for label, alt in (("(g_enc*a)*r6", e4((g_enc * a) * R6)), ("g_enc*(a/6)", e4(g_enc * (a / F32(6))))):
            if np.array_equal(alt, sf):
                fail(f"{case.name}: scales do not distinguish sf = {label}")
        p = (dec4[sf] * g_dec).astype(np.float32)
        o = np.where(p == 0, F32(0), F32(1) / p).astype(np.float32)
        q = fmt.enc_e2m1((x3 * expand_np(o, 1, 16, R, C)).astype(np.float32))
        for label, oa in (("(1/sf)*g_enc", (F32(1) / dec4[sf]) * g_enc), ("g_enc/sf", g_enc / dec4[sf])):
            oa = np.where(p == 0, F32(0), oa).astype(np.float32)
            if np.array_equal(fmt.enc_e2m1((x3 * expand_np(oa, 1, 16, R, C)).astype(np.float32)), q):
                fail(f"{case.name}: q does not distinguish o = {label}")
    return "order probes: sf != (g_enc*a)*r6 and g_enc*(a/6) somewhere, q != with o = (1/sf)*g_enc or g_enc/sf"


def f32_rule_sensitivity(case, x, res, found):
    """Records whether this F32-rule case tells s = a / M from a * (1/M), and q = enc(x / s) from
    enc(x * (1/s)) (the reciprocal-multiply shortcuts DeepGEMM-style helpers take)."""
    if case.kind.startswith("fp8") and case.rule == "f32" and not case.static:
        B, R, C = case.brc()
        x3 = x.reshape(B, R, C)
        M = F32(case.fmt.maxval)
        if case.kind == "fp8_tensor":
            a = finish_amax(abs_nan0(x3).max(initial=F32(0)), case.floor).reshape(1, 1, 1)
            br, bc = R, C
        else:
            br, bc = case.block_shape()
            a = finish_amax(block_amax_np(x3, br, bc), case.floor)
        s_alt = (a * (F32(1) / M)).astype(np.float32)
        s_alt = np.where(s_alt == 0, F32(1), s_alt)
        if not np.array_equal(bits(s_alt).reshape(-1), bits(res["sc"]).reshape(-1)):
            found.add("s = a * (1/M)")
        s = np.asarray(res["sc"], dtype=np.float32).reshape(a.shape)
        se = expand_np(s, br, bc, R, C)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            q_alt = enc_elem((x3 * (F32(1) / se)).astype(np.float32), case.elem)
        if not np.array_equal(q_alt, res["q"]):
            found.add("q = enc(x * (1/s))")


def pack_fp4(q):
    """E2M1 codes (any shape, even count) -> bytes, element 2i in the low nibble."""
    flat = q.reshape(-1).astype(np.uint8)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def main():
    mg.self_check()
    check_swizzle_vectors()
    w = mg.Writer()
    w.add_str("cases", "\n".join(c.name for c in CASES))
    found = set()
    for case in CASES:
        x = make_input(case)
        res = quantize_np(x, case)
        done = check_case(case, x, res)
        if case.specials is not None and any(k.startswith("nvprobe") for k in case.specials):
            done.append(check_nvfp4_order_sensitivity(case, x))
        CHECKS.append(f"{case.name}: " + "; ".join(done))
        f32_rule_sensitivity(case, x, res, found)
        q = pack_fp4(res["q"]) if case.elem == "e2m1" else res["q"].reshape(-1).astype(np.uint8)
        w.add_str(f"{case.name}.cfg", case.cfg())
        w.add(f"{case.name}.x", bits(x))
        w.add(f"{case.name}.q", q)
        w.add(f"{case.name}.s", res["scale_bytes"].astype(np.uint8))
        if case.kind == "nvfp4":
            w.add(f"{case.name}.g", bits(np.array([res["g"]], dtype=np.float32)))
        w.add(f"{case.name}.y", mg.canon_nan_f32(bits(res["y"])).reshape(case.shape))
    # swizzle-only records: random non-zero bytes (1..255) so padding zeros are distinguishable
    rng = mg.Rng(77)
    for b, r, c in SWZ_SHAPES:
        inp = (np.uint64(1) + rng.u64(b * r * c) % np.uint64(255)).astype(np.uint8).reshape(b, r, c)
        name = f"swz.{b}x{r}x{c}"
        w.add(f"{name}.in", inp)
        w.add(f"{name}.out", swizzle(inp))
    want = {"s = a * (1/M)", "q = enc(x * (1/s))"}
    if found != want:
        fail(f"F32-rule cases do not distinguish: {sorted(want - found)}")
    CHECKS.append("F32 rule: the golden data tells s = a / M from a * (1/M) and enc(x / s) from enc(x * (1/s))")
    CHECKS.append(f"swizzle-only records {[f'{b}x{r}x{c}' for b, r, c in SWZ_SHAPES]}: formula == permute form")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    w.save(OUT)
    back = mg.read(OUT)
    assert list(back) == w.names()
    print(f"wrote {os.path.normpath(OUT)}: {len(CASES)} cases, {len(w.names())} records, "
          f"{os.path.getsize(OUT)} bytes")
    print("cross-checks passed:")
    for c in CHECKS:
        print("  " + c)


if __name__ == "__main__":
    main()
