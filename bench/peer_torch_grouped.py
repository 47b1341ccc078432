"""The torch-grouped peer of `moe bench layer`: the same MoE layer in PyTorch, with torch._grouped_mm (CUTLASS
grouped GEMM) for the experts and torch ops for the router, permute and scatter-add combine.

    python3 bench/peer_torch_grouped.py --model qwen3-30b-a3b,deepseek-v3 --tokens 1,16,128 --json out.json

Timed like `moe bench layer`: bf16 random weights at the model's shapes, two copies alternated so a step never
finds the previous step's experts in L2, a CUDA graph of back-to-back forwards (about 30 ms), the median of 5
replays. Needs a GPU and torch with torch._grouped_mm (2.8 or later).
"""

import argparse
import json
import math
import subprocess
import time

import torch

# H, I, E, k, router, shared experts S, their width Is (docs/performance.md, "Model shapes")
MODELS = {
    "qwen3-30b-a3b": (2048, 768, 128, 8, "softmax_renorm", 0, 0),
    "qwen3-235b-a22b": (4096, 1536, 128, 8, "softmax_renorm", 0, 0),
    "deepseek-v3": (7168, 2048, 256, 8, "deepseek_v3", 1, 2048),
    "mixtral-8x7b": (4096, 14336, 8, 2, "softmax_renorm", 0, 0),
    "gpt-oss-120b": (2880, 2880, 128, 4, "topk_softmax", 0, 0),
    "olmoe": (2048, 1024, 64, 8, "softmax", 0, 0),
    "llama4-scout": (5120, 8192, 16, 1, "sigmoid_top1", 1, 8192),
}


def route(logits, kind, k, bias):
    """ids (T, k) int64, weights (T, k) f32 in the models' own way."""
    if kind == "topk_softmax":
        v, ids = torch.topk(logits, k, dim=-1)
        return ids, torch.softmax(v, dim=-1)
    if kind == "sigmoid_top1":
        v, ids = torch.topk(logits, 1, dim=-1)
        return ids, torch.sigmoid(v)
    if kind == "deepseek_v3":
        s = torch.sigmoid(logits)
        b = s + bias
        T, E = s.shape
        g = b.view(T, 8, E // 8).topk(2, dim=-1)[0].sum(-1)
        keep = torch.zeros_like(g).scatter_(1, g.topk(4, dim=-1)[1], 1.0)
        b = b.masked_fill(keep.repeat_interleave(E // 8, dim=1) == 0, float("-inf"))
        ids = b.topk(k, dim=-1)[1]
        w = s.gather(1, ids)
        return ids, w / w.sum(-1, keepdim=True) * 2.5
    p = torch.softmax(logits, dim=-1)
    w, ids = torch.topk(p, k, dim=-1)
    if kind == "softmax_renorm":
        w = w / w.sum(-1, keepdim=True)
    return ids, w


class Layer:
    def __init__(self, model, seed):
        H, I, E, k, kind, S, Is = MODELS[model]
        self.H, self.I, self.E, self.k, self.kind, self.S = H, I, E, k, kind, S
        gen = torch.Generator(device="cuda").manual_seed(seed)
        scale = 1.0 / math.sqrt(H)
        def rnd(*shape, dtype=torch.bfloat16, s=scale):
            return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32) * s).to(dtype)
        self.gate = rnd(E, H, dtype=torch.float32)
        self.w13 = rnd(E, 2 * I, H)  # our layout; _grouped_mm takes (E, K, N): a transposed view
        self.w2 = rnd(E, H, I)
        self.bias = rnd(E, dtype=torch.float32, s=0.01)
        self.sw13 = rnd(2 * S * Is, H) if S else None
        self.sw2 = rnd(H, S * Is) if S else None
        self.Is = S * Is

    def forward(self, x):
        T, H, I, E, k = x.shape[0], self.H, self.I, self.E, self.k
        logits = x.float() @ self.gate.t()
        ids, w = route(logits, self.kind, k, self.bias)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        token = order // k
        a = x.index_select(0, token)
        h13 = torch._grouped_mm(a, self.w13.transpose(1, 2), offs=offs)
        h = torch.nn.functional.silu(h13[:, :I]) * h13[:, I:]
        y = torch._grouped_mm(h, self.w2.transpose(1, 2), offs=offs)
        y = (y.float() * w.reshape(-1).index_select(0, order).unsqueeze(1))
        out = torch.zeros(T, H, dtype=torch.float32, device=x.device).index_add_(0, token, y)
        if self.S:
            s13 = x @ self.sw13.t()
            out += (torch.nn.functional.silu(s13[:, :self.Is]) * s13[:, self.Is:]) @ self.sw2.t()
        return out.to(torch.bfloat16)


def time_layer(layers, x, reps_opt=0, idle_ms=500):
    for l in layers:
        l.forward(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(4):
        layers[i % 2].forward(x)
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / 4
    reps = reps_opt or max(2, min(200, int(0.030 / per) if per > 0 else 200))
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(2):
            layers[i].forward(x)
        with torch.cuda.graph(g, stream=s):
            for i in range(reps):
                layers[i % 2].forward(x)
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    torch.cuda.synchronize()
    time.sleep(idle_ms / 1000)  # as moe bench layer --idle-ms: each point starts from the same power state
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6 / reps)
    return sorted(times)[2], reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-30b-a3b,deepseek-v3,mixtral-8x7b")
    ap.add_argument("--tokens", default="1,16,128,1024,8192")
    ap.add_argument("--json")
    ap.add_argument("--reps", type=int, default=0, help="forwards per timing (default: about 30 ms of work)")
    ap.add_argument("--idle-ms", type=int, default=500, help="idle time before each point's timings")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    dev = torch.cuda.get_device_name()
    print(f"torch-grouped peer: torch {torch.__version__}, on {dev}")
    print(f"{'model':16s} {'T':>6s} {'us':>10s}")
    results = []
    for model in args.model.split(","):
        layers = [Layer(model, 1), Layer(model, 2)]
        H = layers[0].H
        x_all = (torch.randn(max(tokens), H, device="cuda", generator=torch.Generator(device="cuda").manual_seed(11))
                 .to(torch.bfloat16))
        for T in tokens:
            us, reps = time_layer(layers, x_all[:T], args.reps, args.idle_ms)
            print(f"{model:16s} {T:6d} {us:10.1f}", flush=True)
            results.append({"model": model, "tokens": T, "us": us, "reps": reps})
        del layers, x_all
        torch.cuda.empty_cache()
    if args.json:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
        except OSError:
            commit = "unknown"
        with open(args.json, "w") as f:
            json.dump({"bench": "layer-peer-torch-grouped", "device": dev, "torch": torch.__version__,
                       "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "idle_ms": args.idle_ms,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
