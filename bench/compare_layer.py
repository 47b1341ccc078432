"""Merges a `moe bench layer --json` run with the torch-grouped peer of the same run
(bench/peer_torch_grouped.py) and the vLLM-triton column of docs/performance.md into one results file, and
prints the side-by-side table.

    python3 bench/compare_layer.py moe.json torch.json bench/results/<date>-layer-<device>-<commit>.json
"""

import json
import sys

# docs/performance.md, "Peers measured side by side" (H200, BF16, µs): vLLM's Triton fused_moe, best of 10 tile
# configs per point, its align step not counted. Not re-measured here (vLLM is not installed on the GPU machine).
VLLM_TRITON_H200 = {
    ("qwen3-30b-a3b", 1): 37, ("qwen3-30b-a3b", 16): 211, ("qwen3-30b-a3b", 128): 308,
    ("qwen3-30b-a3b", 1024): 422, ("qwen3-30b-a3b", 8192): 1742,
    ("deepseek-v3", 1): 193, ("deepseek-v3", 16): 1966, ("deepseek-v3", 128): 4929,
    ("deepseek-v3", 1024): 5718, ("deepseek-v3", 8192): 13985,
    ("mixtral-8x7b", 1): 192, ("mixtral-8x7b", 16): 657, ("mixtral-8x7b", 128): 726,
    ("mixtral-8x7b", 1024): 1748, ("mixtral-8x7b", 8192): 10824,
}


def main():
    moe_path, torch_path, out_path = sys.argv[1:4]
    moe = json.load(open(moe_path))
    peer = json.load(open(torch_path))
    torch_us = {(r["model"], r["tokens"]): r["us"] for r in peer["results"]}
    h200 = "H200" in moe["device"]
    rows = []
    print("| model | T | experts touched | moe µs | limit µs | % of limit | TFLOP/s | torch-grouped µs | "
          "moe / torch | vLLM-triton µs (docs) | moe / vLLM |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in moe["results"]:
        key = (r["model"], r["tokens"])
        t = torch_us.get(key)
        v = VLLM_TRITON_H200.get(key) if h200 else None
        row = dict(r, torch_grouped_us=t, ratio_to_torch_grouped=(r["us"] / t if t else None),
                   vllm_triton_us_docs=v, ratio_to_vllm_triton=(r["us"] / v if v else None))
        rows.append(row)
        fmt = lambda x, f: (f % x) if x is not None else "—"
        print(f"| {r['model']} | {r['tokens']} | {r['experts_touched']} | {r['us']:.1f} | {r['limit_us']:.1f} | "
              f"{r['pct_of_limit']:.1f} | {r['tflops']:.1f} | {fmt(t, '%.1f')} | "
              f"{fmt(row['ratio_to_torch_grouped'], '%.2f')} | {fmt(v, '%d')} | "
              f"{fmt(row['ratio_to_vllm_triton'], '%.2f')} |")
    doc = {k: v for k, v in moe.items() if k != "results"}
    doc["peers"] = {"torch_grouped": {k: v for k, v in peer.items() if k != "results"},
                    "vllm_triton": "docs/performance.md (H200 table), not re-measured"}
    doc["results"] = rows
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
