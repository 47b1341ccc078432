#!/usr/bin/env python3
"""scripts/count_sass_loop.py — instructions a K block in the main loop of the decode kernels, from their SASS.

The loop is the smallest backward branch whose range holds the given number of tensor-core instructions (HMMA,
QGMMA, HGMMA: the main loop unrolled over the stages); its instructions are divided by the blocks it holds (those
instructions over the ones a block issues). Paths behind a warp vote (VOTE.ANY then a branch: the kernels' rare
wide-scale paths) are counted apart. A static count, not a measurement of time: it says how many instructions a
warp issues a block on the common path.

  cuobjdump -sass build/src/cuda/moe/grouped_gemm_rs_decode.o > /tmp/k.sass
  python3 scripts/count_sass_loop.py /tmp/k.sass --mma-per-block 4 --loop-mma 16
  (the FP4 decode kernel, one half of a tile: --mma-per-block 8, --loop-mma 48 for MXFP4, whose wide-scale path
  doubles the loop's HMMA, 24 for NVFP4; the W8A8 mma.sync one: 8 and 24, two halves 16 and 48)
"""
import argparse
import re
from collections import Counter


def functions(text, arch):
    """(name, [(address, instruction)]) for each function of the given sm_ code section."""
    for part in re.split(r"code for sm_", text)[1:]:
        if not part.startswith(arch):
            continue
        for f in re.split(r"\n\s*Function : ", part)[1:]:
            ins = []
            for line in f.split("\n"):
                m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
                if m:
                    ins.append((int(m.group(1), 16), m.group(2).strip()))
            yield f.split("\n")[0].strip(), ins


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sass")
    ap.add_argument("--arch", default="90a")
    ap.add_argument("--mma-per-block", type=int, required=True, help="tensor-core instructions a K block issues")
    ap.add_argument("--loop-mma", type=int, required=True, help="tensor-core instructions the main loop holds")
    ap.add_argument("--match", default="", help="only functions whose name holds this")
    a = ap.parse_args()
    for name, ins in functions(open(a.sass).read(), a.arch):
        if a.match not in name:
            continue
        mma = [x for x, t in ins if re.search(r"\b(HMMA|QGMMA|HGMMA)\b", t)]
        if not mma:
            continue
        # the smallest loop (a backward branch and its target) that holds loop_mma tensor-core instructions
        best = None
        for x, t in ins:
            m = re.search(r"BRA (0x[0-9a-f]+)", t)
            if not m or int(m.group(1), 16) >= x:
                continue
            lo = int(m.group(1), 16)
            if sum(1 for y in mma if lo <= y <= x) == a.loop_mma and (best is None or x - lo < best[1] - best[0]):
                best = (lo, x)
        if best:
            report(name, ins, mma, best, a.mma_per_block)


def report(name, ins, mma, loop, mma_per_block):
    body = [(x, t) for x, t in ins if loop[0] <= x <= loop[1]]
    rare = set()  # addresses on the paths behind votes
    for i, (x, t) in enumerate(body):
        v = re.match(r"VOTE\.ANY (P\d)", t)
        if not v:
            continue
        # the first branch on the vote's predicate within a few instructions
        for y, u in body[i + 1:i + 12]:
            m = re.match(r"@(!?)" + v.group(1) + r" BRA (0x[0-9a-f]+)", u)
            if not m:
                continue
            target = int(m.group(2), 16)
            if m.group(1):  # taken when no lane voted: the rare path falls through up to the target
                rare |= {z for z, _ in body if y < z < target}
            else:  # the rare path starts at the target; the common one jumps over it to the join
                before = [w for z, w in body if z < target][-1]
                j = re.match(r"BRA (0x[0-9a-f]+)", before)
                if j:
                    rare |= {z for z, _ in body if target <= z < int(j.group(1), 16)}
            break
    blocks = sum(1 for x in mma if loop[0] <= x <= loop[1] and x not in rare) / mma_per_block
    ops = Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for x, t in body if x not in rare)
    print(f"{name}\n  loop {len(body)} instructions, {blocks:g} blocks, behind votes {len(rare)}: "
          f"{(len(body) - len(rare)) / blocks:.1f} a block on the common path")
    print("  common path, a block: " + ", ".join(f"{k} {v / blocks:g}" for k, v in ops.most_common(14)))


if __name__ == "__main__":
    main()
