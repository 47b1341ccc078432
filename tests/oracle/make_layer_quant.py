"""Writes tests/data/layer_quant.moeg: the MoE layer over quantised experts (docs/layer.md section 5).  Never reads
src/.

Each case is a make_layer.py case (the same Hugging Face transformers block, router and checks) whose expert
weights w13 and w2 are first quantised here, in numpy, to a weight format (codes and block scales, each expert a
matrix of its own), and replaced by the values the codes stand for, decoded with ml_dtypes: code value * block
scale (* the NVFP4 decode global).  The block runs on those weights and must agree with make_layer.py's float64
implementation of docs/layer.md within 1e-6 (relative L2, per case and per token); `.out` is that float64 result
rounded to f32, which unlike the block's own f32 bits does not depend on the machine's BLAS.  The C test gives the
layer the codes and scales themselves.  The quantiser here is a plain one (amax / max code, E8M0 by RCEIL); what the file
pins is the decoding of codes and scales in the layer's layout, which must agree with ml_dtypes.

Records, besides make_layer.py's (README.md, "layer_quant.moeg"):
  layer_quant_cases  str, one case name per line
  case <c>: .fmt  str "kind=<moe_qformat_kind_name> scale=<f32|e8m0|e4m3> global=<none|decode|encode>"
            .q13 .q2   u8: the codes, one byte each (E2M1: two codes a byte, low nibble first), E matrices
            .s13 .s2   the scales in moe_quantize's linear layout (E matrices): u32 f32 bits, or u8 codes
  (no .w13 .w2: the weights are the codes)
            .g13 .g2   NVFP4: (E) f32 bits of the stored global (its convention in .fmt)
            .act       W8A8 cases only: str "kind=fp8_1x128 rule=<f32|rceil>", the experts' inputs quantised
                       (docs/layer.md section 6); .out is then the float64 contract of that section
            .sfmt .sq13 .sq2 .ss13 .ss2 [.sg13 .sg2]
                       quantised shared experts only (config.shared_format): the same for shared_w13 and shared_w2
                       (S matrices); .sw13 .sw2 then hold the values the codes stand for
"""

import os
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_layer as ml  # noqa: E402  (its main() is not run)
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

mg, LCfg, RCfg, F32 = ml.mg, ml.LCfg, ml.RCfg, np.float32
OUT = os.path.join(HERE, "..", "data", "layer_quant.moeg")
E4M3, E2M1, E8M0 = ml_dtypes.float8_e4m3fn, ml_dtypes.float4_e2m1fn, ml_dtypes.float8_e8m0fnu


class Fmt:
    """A weight format: element type, block (rows, cols; cols 0 = the whole row), scale type, NVFP4 global."""

    def __init__(self, kind, elem, block, scale, glob="none"):
        self.kind, self.elem, self.block, self.scale, self.glob = kind, elem, block, scale, glob

    def text(self):
        return f"kind={self.kind} scale={self.scale} global={self.glob}"


def quantize(f, w):
    """w (R, C) f32 -> codes (R, C) uint8 (E2M1: code per element), scales (SR, SC) (f32 or uint8), global (f32 or
    None), and the decoded values (R, C) f32."""
    R, C = w.shape
    br, bc = f.block[0], f.block[1] or C
    SR, SC = -(-R // br), -(-C // bc)
    emax = 448.0 if f.elem == "e4m3" else 6.0
    amax = np.zeros((SR, SC), dtype=np.float64)
    for i in range(SR):
        for j in range(SC):
            amax[i, j] = np.abs(w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]).max()
    g_dec = None
    if f.scale == "f32":
        s = np.where(amax > 0, amax / emax, 1.0).astype(F32)
        sval = s.astype(np.float64)
    elif f.scale == "e8m0":   # 2^ceil(log2(amax / emax))
        k = np.ceil(np.log2(np.maximum(amax, 2.0 ** -126) / emax)).astype(np.int64)
        s = (k + 127).astype(np.uint8)
        sval = np.asarray(s.view(E8M0), dtype=np.float64)
    else:                     # NVFP4: E4M3 block scales under a per-matrix f32 global g_dec = amax / (448 * 6)
        g_dec = F32(max(float(amax.max()), 1e-30) / (448.0 * 6.0))
        s = (amax / 6.0 / float(g_dec)).astype(F32).astype(E4M3)
        sval = np.asarray(s, dtype=np.float64) * float(g_dec)
        s = s.view(np.uint8)
    full = np.repeat(np.repeat(sval, br, axis=0), bc, axis=1)[:R, :C]
    q = np.where(full > 0, w / np.where(full > 0, full, 1.0), 0.0).astype(F32)
    codes = (q.astype(E4M3) if f.elem == "e4m3" else q.astype(E2M1))
    vals = (np.asarray(codes, dtype=np.float64) * full).astype(F32)   # ml_dtypes' decoding times the block scale
    return codes.view(np.uint8), s, g_dec, vals


def pack_e2m1(codes):
    """Codes (R, C) uint8 (low 4 bits) -> bytes (R, C / 2), element 2i in the low nibble."""
    c = codes.astype(np.uint8) & 0xF
    return (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8)


def quantize_experts(f, shared=None):
    """The routed experts' w13 and w2 in format f (records q13, s13, ...), and with `shared` the shared experts'
    sw13 and sw2 in that format (records sfmt, sq13, ss13, ...), each replaced by the values its codes stand for."""
    def replace(P):
        extra = {"fmt": f}
        sets = [("", f, ("w13", "w2"))] + ([("s", shared, ("sw13", "sw2"))] if shared else [])
        for pre, fm, mats in sets:
            if pre:
                extra[pre + "fmt"] = fm
            for m in mats:
                w, tag = P[m], m[m.index("w") + 1:]   # "13" or "2"
                qs, ss, gs, vs = [], [], [], []
                for e in range(w.shape[0]):
                    c, s, g, v = quantize(fm, w[e])
                    qs.append(pack_e2m1(c) if fm.elem == "e2m1" else c)
                    ss.append(s)
                    gs.append(g)
                    vs.append(v)
                extra[pre + "q" + tag] = np.stack(qs)
                extra[pre + "s" + tag] = np.stack(ss)
                if fm.glob != "none":
                    g = np.array(gs, dtype=F32)
                    extra[pre + "g" + tag] = g if fm.glob == "decode" else (F32(1.0) / g).astype(F32)
                P[m] = np.stack(vs)
        return extra
    return replace


def act_quant(v, rule):
    """docs/layer.md section 6: v (n) f32 -> its value after FP8 1x128 quantisation (docs/formats.md), in f32.  Per
    128 columns (the last group may be shorter): amax; rule "f32": s = RN(amax / 448) (1 for an all-zero group),
    codes = E4M3(RN(v / s)); rule "rceil": s = 2^k with k = ceil(log2 RN(amax / 448)) (-127 for zero), codes =
    E4M3(v * 2^-k); E4M3 rounding by ml_dtypes (to nearest even); the value is RN(code * s)."""
    v = np.asarray(v, dtype=F32)
    out = np.empty_like(v)
    for c0 in range(0, v.size, 128):
        blk = v[c0:c0 + 128]
        r = F32(F32(np.max(np.abs(blk))) / F32(448.0))
        if rule == "f32":
            s = r if r != 0 else F32(1.0)
            q = (blk / s).astype(F32)
        else:
            m, e = np.frexp(np.float64(r))          # r = m 2^e, m in [0.5, 1): ceil(log2 r) = e - (m == 0.5)
            k = -127 if r == 0 else min(max(int(e) - (1 if m == 0.5 else 0), -127), 127)
            s = F32(np.ldexp(1.0, k))
            q = (blk * F32(np.ldexp(1.0, -k))).astype(F32)
        out[c0:c0 + 128] = (np.asarray(q.astype(E4M3), dtype=F32) * s).astype(F32)
    return out


def contract_w8a8(c, rule):
    """docs/layer.md section 6 in float64 after each quantisation: x quantised per token (then weighted, with the
    weight on the input), h = act(w13 . x + b13) rounded to f32 and quantised, y = w2 . h + b2; the slots in order;
    then quantised shared experts (section 5) the same way over the quantised x, added unscaled (DeepSeek-V3)."""
    L, P, x, ids, w = c["L"], c["P"], c["x"], c["ids"], c["w"]
    f64 = np.float64
    out = np.zeros((x.shape[0], L.H), dtype=f64)

    def glu(a, n):
        g, u = (a[:n], a[n:]) if L.w13 == "concat" else (a[0::2], a[1::2])
        return ml.act_glu(L, ml.torch.from_numpy(g), ml.torch.from_numpy(u)).numpy()

    assert not L.S or ("sfmt" in c and not L.sgate)   # shared experts only quantised, and without Qwen2's gate
    for tok in range(x.shape[0]):
        for s in range(L.S):
            h = glu(P["sw13"][s].astype(f64) @ act_quant(x[tok], rule).astype(f64), L.Is)
            out[tok] += P["sw2"][s].astype(f64) @ act_quant(h.astype(F32), rule).astype(f64)
        for j in range(L.k):
            e = int(ids[tok, j])
            if e < 0:
                continue
            xin = act_quant(x[tok], rule).astype(f64)
            if L.woi:
                xin = xin * f64(w[tok, j])
            a = P["w13"][e].astype(f64) @ xin
            if P.get("b13") is not None:
                a = a + P["b13"][e].astype(f64)
            h = glu(a, L.I)
            y = P["w2"][e].astype(f64) @ act_quant(h.astype(F32), rule).astype(f64)
            if P.get("b2") is not None:
                y = y + P["b2"][e].astype(f64)
            out[tok] += y if L.woi else f64(w[tok, j]) * y
    return out


def make_w8a8(c, rule):
    """Turns the last case into a W8A8 one: .out becomes the contract with x and h quantised to FP8 1x128."""
    q = contract_w8a8(c, rule)
    moved = ml.rel_l2(q, c["out64"])
    if not 1e-3 < moved < 0.2:   # by about FP8's precision, and the quantisation cannot be a no-op
        ml.fail(f"{c['name']}: W8A8 moves the output by {moved:.3g}")
    ml.CHECKS.append(f"{c['name']}: W8A8 contract ({rule} scales) moves the output by {moved:.3g} (relative L2)")
    c["act"], c["out64"] = f"kind=fp8_1x128 rule={rule}", q


def build_cases():
    ts = ml.topk_softmax
    fp8_128 = Fmt("fp8_128x128", "e4m3", (128, 128), "f32")
    mxfp4 = Fmt("mxfp4", "e2m1", (1, 32), "e8m0")
    # DeepSeek-V3 routing and shared expert over 128x128 FP8 blocks (partial: the block is larger than the matrix);
    # every case has H and I multiples of 32, so that the GPU runs them too
    dsv3 = RCfg("grouped", "sigmoid", 4, 16, groups=4, tg=2, gscore="top2_sum", mask="neg_inf", renorm=1,
                scale=2.5, bias=1)
    ml.hf_case("q_dsv3_fp8_128x128_t9", "dsv3", 301, 9, LCfg(32, 32, 16, 4, dsv3, S=1, Is=32), n_shared_hf=1,
               weights=quantize_experts(fp8_128))
    # Mixtral over FP8 per row, and over MXFP8 (two 32-blocks a row of w13)
    ml.hf_case("q_mixtral_fp8_row_t9", "mixtral", 302, 9, LCfg(32, 32, 8, 2, ts(8, 2, 1)),
               weights=quantize_experts(Fmt("fp8_row", "e4m3", (1, 0), "f32")))
    ml.hf_case("q_mixtral_mxfp8_t9", "mixtral", 303, 9, LCfg(64, 32, 8, 2, ts(8, 2, 1)),
               weights=quantize_experts(Fmt("mxfp8", "e4m3", (1, 32), "e8m0")))
    # GPT-OSS over MXFP4 as its checkpoint ships it (interleaved w13, biases, clamped SwiGLU)
    gpt = LCfg(64, 32, 8, 4, RCfg("topk_softmax", "none", 4, 8), act="gptoss", w13="interleaved", gate_bias=1,
               b13=1, b2=1)
    ml.hf_case("q_gptoss_mxfp4_t9", "gptoss", 304, 9, gpt, weights=quantize_experts(mxfp4))
    # Qwen3 over NVFP4 with either global convention (16-blocks: two a row of w13 and of w2)
    for seed, glob in ((305, "decode"), (306, "encode")):
        ml.hf_case(f"q_qwen3_nvfp4_{glob}_t9", "qwen3", seed, 9, LCfg(32, 32, 16, 4, ts(16, 4, 1)),
                   weights=quantize_experts(Fmt("nvfp4", "e2m1", (1, 16), "e4m3", glob)))
    # W8A8 (docs/layer.md section 6): the block checks the routing and the layer over the FP8 weights as above;
    # .out is then the contract with x and h quantised to FP8 1x128, f32 scales and RCEIL powers of two
    for seed, model, rule in ((307, "qwen3", "f32"), (308, "mixtral", "rceil")):
        ml.hf_case(f"q_{model}_w8a8_{rule}_t9", model, seed, 9, LCfg(64, 96, 8, 2, ts(8, 2, 1)),
                   weights=quantize_experts(fp8_128))
        make_w8a8(ml.CASES[-1], rule)
    # DeepSeek-V3 as its checkpoint ships: the shared expert in FP8 128x128 too (section 5), with bf16 activations,
    # and with W8A8 (two shared experts of 32 fused into HF's one MLP of 64; their x and h quantised as well)
    ml.hf_case("q_dsv3_fp8_shared_fp8_t9", "dsv3", 309, 9, LCfg(32, 32, 16, 4, dsv3, S=1, Is=32), n_shared_hf=1,
               weights=quantize_experts(fp8_128, shared=fp8_128))
    ml.hf_case("q_dsv3_w8a8_shared_fp8_f32_t9", "dsv3", 310, 9, LCfg(64, 32, 16, 4, dsv3, S=2, Is=32),
               n_shared_hf=2, weights=quantize_experts(fp8_128, shared=fp8_128))
    make_w8a8(ml.CASES[-1], "f32")


def main():
    mg.self_check()
    build_cases()
    bits = ml.bits
    w = mg.Writer()
    w.add_str("layer_quant_cases", "\n".join(c["name"] for c in ml.CASES))
    for c in ml.CASES:
        f = c["fmt"]

        def experts(w_, n, c=c, f=f):   # the codes, scales and globals in place of .w13 and .w2
            w_.add_str(f"{n}.fmt", f.text())
            if "act" in c:
                w_.add_str(f"{n}.act", c["act"])
            for pre, fm in (("", f), ("s", c.get("sfmt"))):
                if fm is None:
                    continue
                if pre:
                    w_.add_str(f"{n}.sfmt", fm.text())
                for m in ("13", "2"):
                    w_.add(f"{n}.{pre}q{m}", c[pre + "q" + m].astype(np.uint8).reshape(-1))
                    s = c[pre + "s" + m]
                    w_.add(f"{n}.{pre}s{m}", bits(s).reshape(-1) if s.dtype == F32 else s.astype(np.uint8).reshape(-1))
                    if fm.glob != "none":
                        w_.add(f"{n}.{pre}g{m}", bits(c[pre + "g" + m]))

        c["src"] += f"; experts as {f.text()}" + (f", shared experts as {c['sfmt'].text()}" if "sfmt" in c else "")
        c["src"] += f", decoded by ml_dtypes {ml_dtypes.__version__}"
        ml.add_case(w, c, experts)
    w.save(OUT)
    assert list(mg.read(OUT)) == w.names()
    for line in ml.CHECKS:
        print("  " + line)
    print(f"layer_quant.moeg: {len(ml.CASES)} cases, {len(w.to_bytes())} bytes")


if __name__ == "__main__":
    main()
