#!/usr/bin/env python3
"""scripts/search_fp4_layouts.py — cheap layouts of 8 E2M1 codes in a 32-bit word, for the FP4 decode kernel.

The kernel turns a pair of codes into a bf16 pair, each its value times 2^-126: lane 0's sign at bit 15 and its
exponent and mantissa bits (e1 e0 m) at 8, 7, 6; lane 1 the same 16 bits higher (the bits M below). Today's layout
(the checkpoint's: code i at bits 4i .. 4i + 3) takes a mask, a multiply and a mask a pair, and a shift a word: 13
operations for 4 pairs. A repacked layout (the codes' bits placed where the kernel wants them) could take fewer:
  - `w & M` (1 operation), or `(w << k) & M` (2), when the pair's bits lie at M - k;
  - `((w >> r) & A) * (2^a + 2^b) & M` (3, plus 1 for r > 0): two shifted copies that must not overlap (no
    carries) and must put no other bit on M.
This searches for 4 disjoint pairs (all 32 bits used) of those forms and prints the layouts found: with one or
two pairs of the first kind (at most three single-shift pairs fit a word, and three leave bits no multiply can
place). The best is 10 operations a word (docs/performance.md, "Since f117050").

  python3 scripts/search_fp4_layouts.py
"""
import itertools

M = [6, 7, 8, 15, 22, 23, 24, 31]  # the bf16 pair's bits: lane 0 m e0 e1 s, lane 1 the same
M_SET = set(M)


def shifted(k):
    """stored bits of a pair taken by (w << k) & M, or None when some would lie below bit 0"""
    s = [t - k for t in M]
    return s if min(s) >= 0 else None


def multiplied(free, r):
    """pairs ((w >> r) & A) * (2^a + 2^b) & M whose stored bits lie in free: (r, a, b, stored bits)"""
    out = []
    for a in range(32):
        for b in range(a + 1, 32):
            for choice in itertools.product((a, b), repeat=8):
                stored = [t - c + r for t, c in zip(M, choice)]
                if any(p < r or p > 31 or p not in free for p in stored) or len(set(stored)) < 8:
                    continue
                x = [p - r for p in stored]  # bits of w >> r
                if {p + a for p in x} & {p + b for p in x}:
                    continue  # the copies overlap: carries
                if any(p + (b if c == a else a) in M_SET for p, c in zip(x, choice)):
                    continue  # the other copy puts a bit on M
                out.append((r, a, b, tuple(stored)))
    return out


def main():
    found = 0
    for ks in [(0, 3, 6), (0, 3), (0, 4), (0, 5), (0, 6), (1, 4), (1, 5), (1, 6), (2, 5), (2, 6), (3, 6)]:
        used = set()
        for k in ks:
            used |= set(shifted(k))
        free = set(range(32)) - used
        opts = [o for r in range(25) for o in multiplied(free, r)]
        singles = sum(1 if k == 0 else 2 for k in ks)
        if len(ks) == 3:
            for o in opts[:1]:
                found += 1
                print("single shifts %s, multiply %s: %d operations a word" % (ks, o[:3], singles + 3 + (o[0] > 0)))
            continue
        best = None
        for o1, o2 in itertools.combinations(opts, 2):
            if not set(o1[3]) & set(o2[3]):
                # a shift of the word shared by both multiplies is counted once
                c = singles + 6 + len({o[0] for o in (o1, o2) if o[0] > 0})
                if best is None or c < best[0]:
                    best = (c, o1, o2)
        if best:
            found += 1
            print("single shifts %s, multiplies %s and %s: %d operations a word" % (ks, best[1][:3], best[2][:3], best[0]))
    print("layouts found:", found)


if __name__ == "__main__":
    main()
