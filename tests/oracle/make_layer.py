"""Writes tests/data/layer.moeg: golden data for one MoE layer (docs/layer.md; routing per docs/routing.md;
background specs.md B1-B9).  Never reads src/.

Record layout (README.md, section "layer.moeg", has the full list):
  layer_cases   str, one case name per line
  case <c>:     .cfg .src .x .gate [.gate_bias] .logits [.bias] .w13 .w2 [.b13] [.b2] [.sw13 .sw2] [.sgate]
                .ids .weights .out
Integers are i64, floats are u32 f32 bit patterns.

Every case runs a real Hugging Face transformers MoE block (tiny config, f32, every parameter set here from
splitmix64).  The same case is computed by our own torch implementation of docs/layer.md (the contract) in f32
and in float64, with the routing from make_routing.py's docs references (`ref_route`/`torch_route`, equal bit for
bit); the HF output must agree with both within 1e-6 relative L2 (per token as well as per case), and `.out` stores
the float64 contract rounded to f32: the HF block's own f32 bits depend on the machine's kernels, this does not.  The module's router outputs must equal the docs routing (ids exactly, weights
within 1e-6 relative), and its logits the exact integer product.  Anything that disagrees raises.

Values: x, gate weights and w13 are small integers times powers of two, so the logits and (except with Llama-4's
weight on the input) the first GEMM are exact in f32, independent of the summation order.
"""

import logging
import math
import os
import sys

# Pin torch's CPU kernels (see make_routing.py) and MKL's code path, so that the stored HF outputs do not depend on
# the machine's vector ISA.  Must be set before torch (and MKL) is loaded.
os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
os.environ["MKL_CBWR"] = "AVX2"

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.dont_write_bytecode = True          # keep tests/oracle free of __pycache__
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import moegold as mg  # noqa: E402
import make_routing as mr  # noqa: E402  (docs routing references, near-tie test; its main() is not run)

torch.set_num_threads(1)
import transformers  # noqa: E402
from transformers import (DeepseekV3Config, Gemma4TextConfig, GptOssConfig, Llama4TextConfig,  # noqa: E402
                          MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE  # noqa: E402
from transformers.models.gemma4.modeling_gemma4 import Gemma4TextExperts  # noqa: E402
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP  # noqa: E402
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock  # noqa: E402
from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock  # noqa: E402
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: E402

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)

OUT = os.path.join(HERE, "..", "data", "layer.moeg")
TF_VERSION = transformers.__version__
assert TF_VERSION == "5.23.0", f"pinned transformers 5.23.0 expected, found {TF_VERSION}"

F32 = np.float32
RCfg = mr.RCfg
bits = mr.bits
hex32 = mr.hex32
fail = mr.fail

XSH = 9                  # x: integers in [-2^9, 2^9) times 2^-9, so |x| < 1, std ~0.577
TOL = 1e-6               # HF output vs the contract (relative L2, per case and per token)
SIZE_BUDGET = 1_500_000  # bytes for layer.moeg
GPTOSS_ALPHA = 1.702
GPTOSS_LIMIT = 7.0

CASES = []       # dicts, in file order
CHECKS = []      # one line per case: what was asserted
DIFFS = []       # HF behaviour that differs from docs/layer.md (observed or read; printed, listed in the README)
STATS = {"hf_vs_c32": (0.0, ""), "hf_vs_c64": (0.0, ""), "c32_vs_c64": (0.0, ""), "row": (0.0, ""),
         "hfw_vs_docs": (0.0, ""), "ne_bits": [0, 0]}


def note_max(key, val, name):
    if val > STATS[key][0]:
        STATS[key] = (val, name)


# ================================================================================================
# Layer configuration

class LCfg:
    def __init__(self, H, I, E, k, rcfg, *, act="silu", w13="concat", woi=0, S=0, Is=0, sgate=0, gate_bias=0,
                 b13=0, b2=0):
        assert act in ("silu", "gelu", "gelu_tanh", "gptoss") and w13 in ("concat", "interleaved")
        assert H <= 64 and I <= 96 and E <= 16 and rcfg.E == E and rcfg.k == k
        assert not woi or k == 1
        assert (S == 0) == (Is == 0) and (not sgate or S > 0)
        self.H, self.I, self.E, self.k, self.r = H, I, E, k, rcfg
        self.act, self.w13, self.woi, self.S, self.Is, self.sgate = act, w13, int(woi), S, Is, int(sgate)
        self.gate_bias, self.b13, self.b2 = int(gate_bias), int(b13), int(b2)
        # alpha/limit are used by act=gptoss only; other activations write 0
        self.alpha = F32(GPTOSS_ALPHA) if act == "gptoss" else F32(0)
        self.limit = F32(GPTOSS_LIMIT) if act == "gptoss" else F32(0)

    def text(self):
        r = self.r
        return (f"H={self.H} I={self.I} E={self.E} k={self.k} act={self.act} w13={self.w13} "
                f"alpha={hex32(self.alpha)} limit={hex32(self.limit)} weight_on_input={self.woi} shared={self.S} "
                f"shared_I={self.Is} shared_gate={self.sgate} kind={r.kind} score={r.score} groups={r.groups} "
                f"topk_groups={r.tg} group_score={r.gscore} mask={r.mask} renorm={r.renorm} scale={hex32(r.scale)} "
                f"bias={r.bias} gate_bias={self.gate_bias} b13={self.b13} b2={self.b2}")


# ================================================================================================
# Random content (splitmix64 only): integers in [-2^9, 2^9) times a power of two

def amp_pow(n, in_std, target):
    """Exponent p of the amplitude 2^p of uniform weights so that a dot product of n terms with inputs of standard
    deviation in_std has a standard deviation near target (uniform [-A, A) has std A / sqrt(3))."""
    return int(round(math.log2(target * math.sqrt(3.0) / (math.sqrt(n) * in_std))))


def grid(rng, shape, p):
    """Integers in [-2^9, 2^9) (returned) and the f32 values ints * 2^(p - 9), in [-2^p, 2^p)."""
    n = int(np.prod(shape))
    ints = mr.rand_ints(rng, n, -(1 << 9), 1 << 9).reshape(shape)
    return ints, (ints.astype(np.float64) * 2.0 ** (p - 9)).astype(F32)


def draw_params(rng, L, *, target13=1.5, h_std=1.0):
    """Gate, biases and expert weights, in a fixed order from the stream."""
    H, I, E = L.H, L.I, L.E
    P = {}
    P["pg"] = amp_pow(H, 0.577, 1.5)
    P["gate_int"], P["gate"] = grid(rng, (E, H), P["pg"])
    if L.gate_bias:   # on the logit grid 2^(pg - 18), in [-2^pg, 2^pg)
        P["gb_int"] = mr.rand_ints(rng, E, -(1 << 18), 1 << 18)
        P["gate_bias"] = (P["gb_int"].astype(np.float64) * 2.0 ** (P["pg"] - 18)).astype(F32)
    if L.r.bias:      # e_score_correction_bias in [-0.25, 0.25), as in routing.moeg
        P["bias"] = (mr.rand_ints(rng, E, -256, 256).astype(np.float64) * 2.0 ** -10).astype(F32)
    p13 = amp_pow(H, 0.577, target13)
    _, P["w13"] = grid(rng, (E, 2 * I, H), p13)
    if L.b13:         # on the product grid 2^(p13 - 18), in [-2^(p13 - 2), 2^(p13 - 2)): a = w13 x + b13 stays exact
        b = mr.rand_ints(rng, E * 2 * I, -(1 << 16), 1 << 16).reshape(E, 2 * I)
        P["b13"] = (b.astype(np.float64) * 2.0 ** (p13 - 18)).astype(F32)
    p2 = amp_pow(I, h_std, 1.0)
    _, P["w2"] = grid(rng, (E, H, I), p2)
    if L.b2:
        _, P["b2"] = grid(rng, (E, H), -2)
    if L.S:
        _, P["sw13"] = grid(rng, (L.S, 2 * L.Is, H), amp_pow(H, 0.577, target13))
        _, P["sw2"] = grid(rng, (L.S, H, L.Is), amp_pow(L.Is, 1.0, 1.0))
    if L.sgate:
        _, P["sgate"] = grid(rng, (1, H), amp_pow(H, 0.577, 1.5))
    P["p13"] = p13
    return P


def draw_x(rng, T, L, P):
    """Hidden-state rows whose exact logits give no near-tie at adjacent ranks (docs order: the top k+1 selection
    values and the top topk_groups+1 group scores differ by more than 1e-4 relative, 1e-5 absolute with a bias).
    Rows that fail are redrawn from the same stream."""
    rows, logits = [], []
    for _ in range(T):
        for _ in range(1000):
            xi = mr.rand_ints(rng, L.H, -(1 << XSH), 1 << XSH)
            acc = P["gate_int"] @ xi
            if L.gate_bias:
                acc = acc + P["gb_int"]
            assert (np.abs(acc) <= (1 << 24)).all()
            lg = (acc.astype(np.float64) * 2.0 ** (P["pg"] - 9 - XSH)).astype(F32)
            _, _, _, info = mr.ref_route(L.r, lg[None, :], P.get("bias"))
            if mr.row_clear(info[0], abs_floor=1e-5 if L.r.bias else 0.0):
                break
        else:
            fail("could not draw a row without near-ties")
        rows.append(xi)
        logits.append(lg)
    xi = np.array(rows, dtype=np.int64).reshape(T, L.H)
    # w13 x is exact too: |sum| <= H * 2^9 * 2^9 <= 2^24 units (plus b13 < 2^16 units)
    assert L.H * (1 << 18) + (1 << 16 if L.b13 else 0) <= (1 << 24) + (1 << 16)
    x = (xi.astype(np.float64) * 2.0 ** -XSH).astype(F32)
    return x, np.array(logits, dtype=F32).reshape(T, L.E)


# ================================================================================================
# The contract (docs/layer.md), written here in torch; dtype f32 (the stored comparison) or float64

def t_sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def act_glu(L, g, u):
    dt = g.dtype
    if L.act == "silu":
        return (g * t_sigmoid(g)) * u
    if L.act == "gelu":
        return (0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0)))) * u
    if L.act == "gelu_tanh":
        c = math.sqrt(2.0 / math.pi)
        return (0.5 * g * (1.0 + torch.tanh(c * (g + 0.044715 * g * g * g)))) * u
    alpha = torch.tensor(float(L.alpha), dtype=dt)     # the f32 value of the .cfg bits
    limit = torch.tensor(float(L.limit), dtype=dt)
    gp = torch.minimum(g, limit)
    up = torch.clamp(u, -limit, limit)
    return gp * t_sigmoid(alpha * gp) * (up + 1.0)


def ffn(L, w13, b13, w2, b2, xin, stats=None):
    a = w13 @ xin
    if b13 is not None:
        a = a + b13
    n = w13.shape[0] // 2
    if L.w13 == "concat":
        g, u = a[:n], a[n:]
    else:
        g, u = a[0::2], a[1::2]
    if stats is not None:
        stats["a"].append(a)
        if L.act == "gptoss":
            stats["g_hi"] += int((g > float(L.limit)).sum())
            stats["u_hi"] += int((u > float(L.limit)).sum())
            stats["u_lo"] += int((u < -float(L.limit)).sum())
    h = act_glu(L, g, u)
    y = w2 @ h
    if b2 is not None:
        y = y + b2
    return y


def contract(L, P, x, ids, w, dtype, stats=None):
    """docs/layer.md: routed slots in slot order, then + g_s * sum_s FFN_s(x)."""
    T = x.shape[0]

    def t(a):
        return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype)

    X, W = t(x), t(w)
    w13, w2, b13, b2 = t(P["w13"]), t(P["w2"]), t(P.get("b13")), t(P.get("b2"))
    out = torch.zeros(T, L.H, dtype=dtype)
    for tok in range(T):
        acc = torch.zeros(L.H, dtype=dtype)
        for j in range(L.k):
            e = int(ids[tok, j])
            if e < 0:
                continue
            xin = X[tok] * W[tok, j] if L.woi else X[tok]
            y = ffn(L, w13[e], None if b13 is None else b13[e], w2[e], None if b2 is None else b2[e], xin, stats)
            acc = acc + (y if L.woi else W[tok, j] * y)
        if L.S:
            sw13, sw2 = t(P["sw13"]), t(P["sw2"])
            sh = torch.zeros(L.H, dtype=dtype)
            for s in range(L.S):
                sh = sh + ffn(L, sw13[s], None, sw2[s], None, X[tok])
            if L.sgate:
                gs = t_sigmoid(t(P["sgate"])[0] @ X[tok])
                sh = gs * sh
            acc = acc + sh
        out[tok] = acc
    return out


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ================================================================================================
# Hugging Face blocks

def small_cfg(cls, H, **kw):
    base = dict(hidden_size=H, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                experts_implementation="eager")
    base.update(kw)
    return cls(**base)


def set_params(block, values):
    """Copy every parameter (and the named buffers) of the block; every parameter must be given."""
    names = {n for n, _ in block.named_parameters()}
    missing = names - set(values)
    if missing:
        fail(f"{type(block).__name__}: parameters not set: {sorted(missing)}")
    state = dict(block.named_parameters())
    state.update(dict(block.named_buffers()))
    with torch.no_grad():
        for n, v in values.items():
            v = torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            if tuple(state[n].shape) != tuple(v.shape):
                fail(f"{type(block).__name__}.{n}: shape {tuple(state[n].shape)} vs {tuple(v.shape)}")
            state[n].copy_(v)


def run_hf(block, router, x):
    """Run the whole block on x (1, T, H); return its output (T, H) and the router's outputs (forward hook)."""
    T, H = x.shape
    got = []
    hook = router.register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        res = block(torch.from_numpy(x).view(1, T, H))
    hook.remove()
    assert len(got) == 1
    out = res[0] if isinstance(res, tuple) else res
    assert out.dtype == torch.float32
    return out.detach().reshape(T, H).numpy().astype(F32), got[0]


def shared_mlp_params(prefix, P, L):
    """Our S shared experts (S, 2Is, H) / (S, H, Is) as one HF gate_proj/up_proj/down_proj MLP of width S*Is
    (DeepSeek's n_shared_experts > 1 is one fused MLP: the sum of the S FFNs equals the fused FFN)."""
    sw13, sw2, Is = P["sw13"], P["sw2"], L.Is
    return {f"{prefix}.gate_proj.weight": np.concatenate([sw13[s, :Is] for s in range(L.S)], axis=0),
            f"{prefix}.up_proj.weight": np.concatenate([sw13[s, Is:] for s in range(L.S)], axis=0),
            f"{prefix}.down_proj.weight": np.concatenate([sw2[s] for s in range(L.S)], axis=1)}


def ids_from_dense(scores):
    s = scores.detach().numpy()
    nz = [np.flatnonzero(r) for r in s]
    if any(len(z) != 1 for z in nz):
        fail("Llama-4: expected one non-zero score per row")
    ids = np.array([[z[0]] for z in nz], dtype=np.int64).reshape(-1, 1)
    w = np.array([[r[z[0]]] for r, z in zip(s, nz)], dtype=F32).reshape(-1, 1)
    return ids, w


def hf_case(name, model, seed, T, L, *, n_shared_hf=None, weights=None):
    """weights (make_layer_quant.py): a function P -> dict that replaces P's w13 and w2 (and records what else it
    returns in the case) before the block runs; the first GEMM is then not exact and is not checked to be."""
    rng = mg.Rng(seed)
    P = draw_params(rng, L, target13=4.0, h_std=8.0) if L.act == "gptoss" else draw_params(rng, L)
    extra = weights(P) if weights else {}
    x, exact = draw_x(rng, T, L, P)
    H, I, E, k = L.H, L.I, L.E, L.k
    hf_act = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "gptoss": "silu"}[L.act]
    w13, w2 = P["w13"], P["w2"]
    ordered = True
    extra_checks = []
    if model == "mixtral":
        conf = small_cfg(MixtralConfig, H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k,
                         hidden_act=hf_act)
        block = MixtralSparseMoeBlock(conf)
        router = block.gate
        vals = {"gate.weight": P["gate"], "experts.gate_up_proj": w13, "experts.down_proj": w2}
        src = (f"MixtralSparseMoeBlock (MixtralTopKRouter: softmax, topk, renorm; MixtralExperts gate_up_proj "
               f"(E, 2I, H) chunked [gate; up], act {hf_act})")
    elif model in ("qwen3", "qwen2", "olmoe"):
        if model == "qwen3":
            conf = small_cfg(Qwen3MoeConfig, H, intermediate_size=8, moe_intermediate_size=I, num_experts=E,
                             num_experts_per_tok=k, norm_topk_prob=bool(L.r.renorm), decoder_sparse_step=1,
                             mlp_only_layers=[], hidden_act=hf_act)
            block = Qwen3MoeSparseMoeBlock(conf)
            src = f"Qwen3MoeSparseMoeBlock (Qwen3MoeTopKRouter: softmax, topk, norm_topk_prob={bool(L.r.renorm)}"
        elif model == "qwen2":
            conf = small_cfg(Qwen2MoeConfig, H, intermediate_size=8, moe_intermediate_size=I, num_experts=E,
                             num_experts_per_tok=k, norm_topk_prob=bool(L.r.renorm), decoder_sparse_step=1,
                             mlp_only_layers=[], shared_expert_intermediate_size=L.Is, hidden_act=hf_act)
            block = Qwen2MoeSparseMoeBlock(conf)
            src = (f"Qwen2MoeSparseMoeBlock (Qwen2MoeTopKRouter: softmax, topk, norm_topk_prob={bool(L.r.renorm)}; "
                   "shared_expert Qwen2MoeMLP gated by sigmoid(shared_expert_gate(x))")
        else:
            conf = small_cfg(OlmoeConfig, H, intermediate_size=I, num_experts=E, num_experts_per_tok=k,
                             norm_topk_prob=bool(L.r.renorm), hidden_act=hf_act)
            block = OlmoeSparseMoeBlock(conf)
            src = f"OlmoeSparseMoeBlock (OlmoeTopKRouter: softmax, topk, norm_topk_prob={bool(L.r.renorm)}"
        src += f"; experts gate_up_proj (E, 2I, H) chunked [gate; up], act {hf_act})"
        router = block.gate
        vals = {"gate.weight": P["gate"], "experts.gate_up_proj": w13, "experts.down_proj": w2}
        if model == "qwen2":
            vals.update(shared_mlp_params("shared_expert", P, L))
            vals["shared_expert_gate.weight"] = P["sgate"]
    elif model == "dsv3":
        r = L.r
        conf = small_cfg(DeepseekV3Config, H, intermediate_size=8, moe_intermediate_size=I, n_routed_experts=E,
                         num_experts_per_tok=k, n_group=r.groups, topk_group=r.tg,
                         routed_scaling_factor=float(r.scale), n_shared_experts=n_shared_hf, first_k_dense_replace=0,
                         hidden_act=hf_act)
        assert conf.norm_topk_prob is True and n_shared_hf * I == L.S * L.Is
        block = DeepseekV3MoE(conf)
        router = block.gate
        vals = {"gate.weight": P["gate"], "gate.e_score_correction_bias": torch.from_numpy(P["bias"]),
                "experts.gate_up_proj": w13, "experts.down_proj": w2}
        vals.update(shared_mlp_params("shared_experts", P, L))
        ordered = False
        src = (f"DeepseekV3MoE (DeepseekV3TopkRouter: sigmoid, e_score_correction_bias, top2-sum groups, -inf mask, "
               f"topk sorted=False, w/(sum+1e-20) x {float(r.scale)}; DeepseekV3Experts gate_up_proj (E, 2I, H) "
               f"chunked [gate; up]; shared_experts DeepseekV3MLP of width moe_intermediate_size x "
               f"n_shared_experts = {n_shared_hf} x {I}, added unscaled)")
        if L.S > 1:
            src += f", stored as S = {L.S} shared experts of width {L.Is} (rows/columns split in order)"
    elif model == "gptoss":
        conf = small_cfg(GptOssConfig, H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k,
                         head_dim=8)
        assert conf.swiglu_alpha == GPTOSS_ALPHA and conf.swiglu_limit == GPTOSS_LIMIT
        block = GptOssMLP(conf)
        router = block.router
        vals = {"router.weight": P["gate"], "router.bias": P["gate_bias"],
                "experts.gate_up_proj": np.ascontiguousarray(w13.transpose(0, 2, 1)),
                "experts.gate_up_proj_bias": P["b13"],
                "experts.down_proj": np.ascontiguousarray(w2.transpose(0, 2, 1)),
                "experts.down_proj_bias": P["b2"]}
        src = ("GptOssMLP (GptOssTopKRouter: Linear with bias, topk of the logits, softmax over the k; GptOssExperts "
               "gate_up_proj (E, H, 2I) with interleaved columns (gate = 0::2, up = 1::2) + gate_up_proj_bias, "
               "clamped SwiGLU alpha 1.702 limit 7.0, down_proj (E, I, H) + down_proj_bias)")
    elif model == "llama4":
        conf = small_cfg(Llama4TextConfig, H, intermediate_size=I, intermediate_size_mlp=8, num_local_experts=E,
                         num_experts_per_tok=1, head_dim=8, hidden_act=hf_act)
        assert L.Is == I     # Llama4TextMoe's shared expert has the experts' intermediate_size
        block = Llama4TextMoe(conf)
        router = block.router
        vals = {"router.weight": P["gate"],
                "experts.gate_up_proj": np.ascontiguousarray(w13.transpose(0, 2, 1)),
                "experts.down_proj": np.ascontiguousarray(w2.transpose(0, 2, 1))}
        vals.update(shared_mlp_params("shared_expert", P, L))
        src = ("Llama4TextMoe (Llama4Router: topk(1) of the logits, sigmoid; every expert runs on x * score with "
               "score 0 for the others; Llama4TextExperts gate_up_proj (E, H, 2I) chunked [gate | up] on the last "
               "axis, down_proj (E, I, H); shared_expert Llama4TextMLP added unscaled)")
    else:
        fail(model)
    set_params(block, vals)
    out, rout = run_hf(block, router, x)

    # ---- router outputs vs the docs references
    if model == "llama4":
        scores, lg = rout
        lib_ids, lib_w = ids_from_dense(scores)
    else:
        lg, lib_w, lib_ids = rout
        lib_ids, lib_w = lib_ids.numpy(), lib_w.detach().numpy()
    logits = mr.check_logits(name, lg, exact)
    ids, w, inv, _ = mr.both_refs(L.r, logits, P.get("bias"))
    assert inv == 0 and (ids >= 0).all()
    hf_w = mr.compare_lib(name, L.r, lib_ids, lib_w, ids, w, ordered=ordered)
    note_max("hfw_vs_docs", float(np.max(np.abs(hf_w.astype(np.float64) - w) / np.abs(w))), name)

    # ---- extra cross-check: Gemma-4's expert class on the same routing gives the same bits
    if model == "qwen3" and L.act == "gelu_tanh":
        gconf = Gemma4TextConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E, top_k_experts=k,
                                 hidden_activation="gelu_pytorch_tanh", enable_moe_block=True, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, experts_implementation="eager")
        gex = Gemma4TextExperts(gconf)
        set_params(gex, {"gate_up_proj": w13, "down_proj": w2})
        with torch.no_grad():
            gout = gex(torch.from_numpy(x), torch.from_numpy(lib_ids), torch.from_numpy(lib_w)).numpy()
        if not np.array_equal(bits(gout), bits(out)):
            fail(f"{name}: Gemma4TextExperts differs from Qwen3MoeExperts")
        extra_checks.append("Gemma4TextExperts (gelu_pytorch_tanh) on the same routing == the block output, bitwise")
        src += "; Gemma4TextExperts gives the same bits"

    # ---- the contract, f32 and float64, docs routing; f32 also with the module's own routing weights
    st = {"a": [], "g_hi": 0, "u_hi": 0, "u_lo": 0}
    c32 = contract(L, P, x, ids, w, torch.float32, st).numpy()
    c64 = contract(L, P, x, ids, w, torch.float64).numpy()
    c32h = contract(L, P, x, ids, hf_w, torch.float32).numpy()
    if not L.woi and not weights:   # the first GEMM is exact: f32 equals float64
        a64 = {"a": [], "g_hi": 0, "u_hi": 0, "u_lo": 0}
        contract(L, P, x, ids, w, torch.float64, a64)
        for a, b in zip(st["a"], a64["a"]):
            if not np.array_equal(a.numpy().astype(np.float64), b.numpy()):
                fail(f"{name}: w13 x (+ b13) is not exact in f32")
        extra_checks.append("w13 x (+ b13) exact in f32")
    if L.act == "gptoss":
        if T > 1 and not (st["g_hi"] and st["u_hi"] and st["u_lo"]):
            fail(f"{name}: the clamps are not exercised ({st['g_hi']}, {st['u_hi']}, {st['u_lo']})")
        extra_checks.append(f"clamps hit: g > limit {st['g_hi']}x, u > limit {st['u_hi']}x, u < -limit {st['u_lo']}x")
    e32, e64, e3264, e32h = rel_l2(out, c32), rel_l2(out, c64), rel_l2(c32, c64), rel_l2(out, c32h)
    rows = max(max(rel_l2(out[t], c64[t]), rel_l2(out[t], c32[t])) for t in range(T))
    for v, what in ((e32, "HF vs contract f32"), (e64, "HF vs contract f64"), (e3264, "contract f32 vs f64"),
                    (e32h, "HF vs contract f32 with HF routing weights"), (rows, "worst token")):
        if not v < TOL:
            fail(f"{name}: {what}: relative L2 {v:.3g} >= {TOL}")
    note_max("hf_vs_c32", e32, name)
    note_max("hf_vs_c64", e64, name)
    note_max("c32_vs_c64", e3264, name)
    note_max("row", rows, name)
    STATS["ne_bits"][0] += int((bits(out) != bits(c32)).sum())
    STATS["ne_bits"][1] += out.size
    rms = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    if not 0.1 <= rms <= 10:
        fail(f"{name}: output rms {rms} not O(1)")
    order = "same order" if ordered else "as sets"
    CHECKS.append(f"{name}: module logits == exact integer product; ids == docs refs ({order}); "
                  f"weights within 1e-6 rel; rel L2 vs contract f32 {e32:.2g}, f64 {e64:.2g}, worst token {rows:.2g}; "
                  f"out rms {rms:.3g}" + "".join("; " + c for c in extra_checks))
    CASES.append(dict(name=name, L=L, P=P, x=x, logits=logits, ids=ids, w=w, out=out, out64=c64,
                      src=f"transformers {TF_VERSION} {src}", **extra))


# ================================================================================================
# Probes: HF behaviour compared with docs/layer.md (printed; listed in the README)

def probes():
    D = DIFFS
    # GPT-OSS multiplies by the Python float alpha: torch rounds it to f32 first (the .cfg stores those bits)
    g = torch.from_numpy((mr.rand_ints(mg.Rng(901), 4096, -(1 << 20), 1 << 20) * 2.0 ** -17).astype(F32))
    a = g * GPTOSS_ALPHA
    b = g * torch.tensor(GPTOSS_ALPHA, dtype=torch.float32)
    c = (g.double() * GPTOSS_ALPHA).float()
    same_f32 = bool(torch.equal(a, b))
    n_f64 = int((a != c).sum())
    if not same_f32:
        fail("torch f32 tensor * 1.702 is not the product with f32(1.702)")
    D.append(("GptOssExperts", "gate * self.alpha (Python float 1.702)",
              f"f32 product with f32(1.702) = 0x{hex32(GPTOSS_ALPHA)} ({n_f64}/4096 differ from rounding the "
              "float64 product)", "alpha given as f32 bits in .cfg", "cfg alpha=3fd9db23"))
    D.append(("every HF expert class (index_add_ per expert)", "combine of the k slots",
              "out += w * y in increasing expert id (Llama-4: shared(x) + the sum over all E experts of "
              "expert(x * score), the unselected ones giving exact zeros)", "slot order (docs/layer.md step 3)",
              f"last bits only: {STATS['ne_bits'][0]} of {STATS['ne_bits'][1]} stored outputs differ in bits from our "
              "f32 contract implementation (this, MKL's GEMM summation order and torch's vectorised silu/erf/tanh/exp "
              f"together); largest relative L2 {STATS['hf_vs_c32'][0]:.2g}"))
    for lib, inp, got, docs, handling in D:
        print(f"  DIFF {lib}: {inp}: library {got}; docs {docs}; handling: {handling}")


# ================================================================================================
# Cases

def topk_softmax(E, k, renorm):
    return RCfg("topk", "softmax", k, E, renorm=renorm)


def build_cases():
    # Mixtral (silu; softmax, topk, renorm)
    hf_case("mixtral_e8k2_t1", "mixtral", 201, 1, LCfg(16, 16, 8, 2, topk_softmax(8, 2, 1)))
    hf_case("mixtral_e8k2_t33", "mixtral", 202, 33, LCfg(32, 40, 8, 2, topk_softmax(8, 2, 1)))
    # exact-erf GELU GLU through the Mixtral block (hidden_act="gelu")
    hf_case("mixtral_gelu_e8k2_t5", "mixtral", 203, 5, LCfg(16, 24, 8, 2, topk_softmax(8, 2, 1), act="gelu"))
    # Qwen3-MoE (norm_topk_prob true)
    hf_case("qwen3_e16k4_norm_t5", "qwen3", 211, 5, LCfg(24, 16, 16, 4, topk_softmax(16, 4, 1)))
    hf_case("qwen3_e16k4_norm_t33", "qwen3", 212, 33, LCfg(32, 16, 16, 4, topk_softmax(16, 4, 1)))
    # tanh-GELU GLU (Gemma-4's expert activation) through the Qwen3 block; Gemma4TextExperts cross-checked
    hf_case("qwen3_gelu_tanh_e8k2_t33", "qwen3", 213, 33,
            LCfg(16, 16, 8, 2, topk_softmax(8, 2, 1), act="gelu_tanh"))
    # Qwen2-MoE: norm false, one shared expert gated by sigmoid(x . shared_gate)
    hf_case("qwen2_e8k2_shared_t1", "qwen2", 221, 1,
            LCfg(16, 8, 8, 2, topk_softmax(8, 2, 0), S=1, Is=32, sgate=1))
    hf_case("qwen2_e8k4_shared_h64_t33", "qwen2", 222, 33,
            LCfg(64, 16, 8, 4, topk_softmax(8, 4, 0), S=1, Is=96, sgate=1))
    # OLMoE (norm false)
    hf_case("olmoe_e16k4_nonorm_t5", "olmoe", 231, 5, LCfg(16, 16, 16, 4, topk_softmax(16, 4, 0)))
    # DeepSeek-V3 noaux_tc: E = 16 in 4 groups, keep 2, k = 4, x 2.5, HF's -inf mask
    dsv3 = RCfg("grouped", "sigmoid", 4, 16, groups=4, tg=2, gscore="top2_sum", mask="neg_inf", renorm=1,
                scale=2.5, bias=1)
    hf_case("dsv3_e16k4_g4tg2_t33", "dsv3", 241, 33, LCfg(32, 16, 16, 4, dsv3, S=1, Is=16), n_shared_hf=1)
    hf_case("dsv3_e16k4_g4tg2_s2_t5", "dsv3", 242, 5, LCfg(16, 8, 16, 4, dsv3, S=2, Is=8), n_shared_hf=2)
    # GPT-OSS: router bias, topk_softmax, interleaved w13 with biases, clamped SwiGLU
    def gpt(H, I, E, k):
        return LCfg(H, I, E, k, RCfg("topk_softmax", "none", k, E), act="gptoss", w13="interleaved", gate_bias=1,
                    b13=1, b2=1)
    hf_case("gptoss_e4k2_i96_t1", "gptoss", 251, 1, gpt(16, 96, 4, 2))
    hf_case("gptoss_e8k4_t5", "gptoss", 252, 5, gpt(16, 32, 8, 4))
    hf_case("gptoss_e8k4_t33", "gptoss", 253, 33, gpt(32, 24, 8, 4))
    # Llama-4: sigmoid top-1, weight on the input, one shared expert (plain add)
    def l4(H, I, E):
        return LCfg(H, I, E, 1, RCfg("topk", "sigmoid", 1, E), woi=1, S=1, Is=I)
    hf_case("llama4_e8k1_t1", "llama4", 261, 1, l4(16, 16, 8))
    hf_case("llama4_e16k1_t33", "llama4", 262, 33, l4(32, 16, 16))


def f32_of_hex(h):
    return np.array([int(h, 16)], dtype=np.uint32).view(F32)[0]


def readback_check(path):
    """Recompute every case from the file alone, the way a C test reads it: parse .cfg, re-route the stored logits
    (docs references, bitwise equal to .ids/.weights), check logits = x . gate^T (+ gate_bias) exactly, and run the
    float64 contract on the stored records (within TOL of .out)."""
    back = mg.read(path)
    keys = ["H", "I", "E", "k", "act", "w13", "alpha", "limit", "weight_on_input", "shared", "shared_I",
            "shared_gate", "kind", "score", "groups", "topk_groups", "group_score", "mask", "renorm", "scale", "bias",
            "gate_bias", "b13", "b2"]
    for n in back["layer_cases"].split("\n"):
        toks = back[f"{n}.cfg"].split(" ")
        if [t.split("=")[0] for t in toks] != keys:
            fail(f"{n}: .cfg keys {toks}")
        c = {t.split("=")[0]: t.split("=")[1] for t in toks}
        i = {q: int(c[q]) for q in ("H", "I", "E", "k", "weight_on_input", "shared", "shared_I", "shared_gate",
                                    "groups", "topk_groups", "renorm", "bias", "gate_bias", "b13", "b2")}
        r = RCfg(c["kind"], c["score"], i["k"], i["E"], groups=i["groups"], tg=i["topk_groups"],
                 gscore=c["group_score"], mask=c["mask"], renorm=i["renorm"], scale=f32_of_hex(c["scale"]),
                 bias=i["bias"])
        L = LCfg(i["H"], i["I"], i["E"], i["k"], r, act=c["act"], w13=c["w13"], woi=i["weight_on_input"],
                 S=i["shared"], Is=i["shared_I"], sgate=i["shared_gate"], gate_bias=i["gate_bias"], b13=i["b13"],
                 b2=i["b2"])
        if L.text() != back[f"{n}.cfg"] or hex32(L.alpha) != c["alpha"] or hex32(L.limit) != c["limit"]:
            fail(f"{n}: .cfg does not round-trip")

        def f(key):
            k2 = f"{n}.{key}"
            return back[k2].view(F32) if k2 in back else None

        x, gate, gb, logits = f("x"), f("gate"), f("gate_bias"), f("logits")
        T = x.shape[0]
        ex = x.astype(np.float64) @ gate.astype(np.float64).T
        if gb is not None:
            ex = ex + gb.astype(np.float64)
        if not np.array_equal(ex.astype(F32), logits) or not np.array_equal(ex, logits.astype(np.float64)):
            fail(f"{n}: .logits != x . gate^T (+ gate_bias) exactly")
        ids, w, _, _ = mr.both_refs(r, logits, f("bias"))
        if not (np.array_equal(ids, back[f"{n}.ids"]) and np.array_equal(bits(w), back[f"{n}.weights"])):
            fail(f"{n}: stored routing differs from the docs references")
        P = {q: f(q) for q in ("w13", "w2", "b13", "b2", "sw13", "sw2", "sgate")}
        P = {q: v for q, v in P.items() if v is not None}
        shapes = {"w13": (L.E, 2 * L.I, L.H), "w2": (L.E, L.H, L.I), "b13": (L.E, 2 * L.I), "b2": (L.E, L.H),
                  "sw13": (L.S, 2 * L.Is, L.H), "sw2": (L.S, L.H, L.Is), "sgate": (1, L.H)}
        for q, v in P.items():
            if v.shape != shapes[q]:
                fail(f"{n}.{q}: shape {v.shape}")
        want = {"b13": L.b13, "b2": L.b2, "sw13": L.S > 0, "sw2": L.S > 0, "sgate": L.sgate}
        if any(bool(want[q]) != (q in P) for q in want) or (f("bias") is not None) != bool(r.bias) or \
                (gb is not None) != bool(L.gate_bias) or logits.shape != (T, L.E) or back[f"{n}.out"].shape != (T, L.H):
            fail(f"{n}: records do not match .cfg")
        c64 = contract(L, P, x, ids, w, torch.float64).numpy()
        e = rel_l2(f("out"), c64)
        if not e < TOL:
            fail(f"{n}: read back: relative L2 {e:.3g}")
    return len(back["layer_cases"].split("\n"))


def add_case(w, c, experts=None):
    """The records of case c; experts(w, n) writes the routed experts' records (default: .w13 and .w2)."""
    n, L, P = c["name"], c["L"], c["P"]
    w.add_str(f"{n}.cfg", L.text())
    w.add_str(f"{n}.src", c["src"])
    w.add(f"{n}.x", bits(c["x"]))
    w.add(f"{n}.gate", bits(P["gate"]))
    if L.gate_bias:
        w.add(f"{n}.gate_bias", bits(P["gate_bias"]))
    w.add(f"{n}.logits", bits(c["logits"]))
    if L.r.bias:
        w.add(f"{n}.bias", bits(P["bias"]))
    if experts:
        experts(w, n)
    else:
        w.add(f"{n}.w13", bits(P["w13"]))
        w.add(f"{n}.w2", bits(P["w2"]))
    if L.b13:
        w.add(f"{n}.b13", bits(P["b13"]))
    if L.b2:
        w.add(f"{n}.b2", bits(P["b2"]))
    if L.S:
        w.add(f"{n}.sw13", bits(P["sw13"]))
        w.add(f"{n}.sw2", bits(P["sw2"]))
    if L.sgate:
        w.add(f"{n}.sgate", bits(P["sgate"]))
    w.add(f"{n}.ids", c["ids"].astype(np.int64))
    w.add(f"{n}.weights", bits(c["w"]))
    w.add(f"{n}.out", bits(c["out64"].astype(F32)))   # the float64 contract: the same bits on any machine


def main():
    mg.self_check()
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        print(f"warning: torch uses {torch.backends.cpu.get_cpu_capability()} CPU kernels, not AVX2", file=sys.stderr)
    build_cases()
    probes()

    w = mg.Writer()
    w.add_str("layer_cases", "\n".join(c["name"] for c in CASES))
    for c in CASES:
        add_case(w, c)
    data = w.to_bytes()
    if len(data) > SIZE_BUDGET:
        fail(f"layer.moeg is {len(data)} bytes, over the {SIZE_BUDGET} budget")
    w.save(OUT)
    back = mg.read(OUT)
    assert list(back) == w.names()
    nread = readback_check(OUT)
    CHECKS.append(f"read back: {nread} cases recomputed from the file alone (.cfg parsed; logits exact; routing "
                  f"bitwise; float64 contract within {TOL} of .out)")
    for line in CHECKS:
        print("  " + line)
    print(f"layer.moeg: {len(CASES)} cases, {len(data)} bytes; transformers {TF_VERSION}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()} kernels), numpy {np.__version__}")
    for key, what in (("hf_vs_c32", "HF vs contract f32"), ("hf_vs_c64", "HF vs contract float64"),
                      ("c32_vs_c64", "contract f32 vs float64"), ("row", "worst single token"),
                      ("hfw_vs_docs", "HF routing weights vs docs refs (max relative)")):
        v, case = STATS[key]
        print(f"  largest {what}: {v:.3g} ({case})")


if __name__ == "__main__":
    main()
