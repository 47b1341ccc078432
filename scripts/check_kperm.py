#!/usr/bin/env python3
"""scripts/check_kperm.py — the FP4 wgmma tile's K order, checked on the host (no GPU).

Three statements of the order must agree (grouped_gemm_fp4_rs.cu and gemm_tile.cuh state them in C; this script
restates each from its comment, independently):
  1. moe_gemm_kperm_slot: within a span of 32, natural n = 8q + 2j + h + 4e lies at slot 16j + 8h + 2q + e;
  2. the rewrite (kperm_rows_kernel): out chunk m (slots 8m .. 8m + 7), word c = byte permute of words m / 2 and
     m / 2 + 2 of natural chunk c, low halves (0x5410) for m even, high halves (0x7632) for m odd;
  3. the A fragments: thread q of a quad holds, in k16 step j of a span, K slots 16j + 8h + 2q + e the natural
     values 8q + 2j + h + 4e (its word of 8 codes, pairs (n, n + 4) from fp4_pair).
Also that the order is a permutation of each span and leaves spans in place, so 1x128 quantisation groups (and any
group of whole spans) see the same values.
"""


def slot(n):
    r, q = n & 7, (n >> 3) & 3
    return (n & ~31) + 16 * ((r >> 1) & 1) + 8 * (r & 1) + 2 * q + (r >> 2)


def prmt(a, b, sel):
    """PTX prmt.b32 (default mode) on 4-byte tuples: byte i of the result is byte sel[i] of (a, b)."""
    src = a + b
    return tuple(src[(sel >> (4 * i)) & 7] for i in range(4))


def main():
    bad = 0
    # 1: a permutation of each span, spans in place
    for base in (0, 32, 4096 - 32):
        got = sorted(slot(base + n) for n in range(32))
        bad += got != list(range(base, base + 32))
    # 2: the rewrite; element x's two bytes are ('x', 0) and ('x', 1); word w of chunk c holds 8c + 2w, 8c + 2w + 1
    word = lambda c, w: ((8 * c + 2 * w, 0), (8 * c + 2 * w, 1), (8 * c + 2 * w + 1, 0), (8 * c + 2 * w + 1, 1))
    for m in range(4):
        for c in range(4):
            out = prmt(word(c, m // 2), word(c, m // 2 + 2), 0x7632 if m & 1 else 0x5410)
            for e in range(2):
                lo, hi = out[2 * e], out[2 * e + 1]
                bad += lo[0] != hi[0] or lo[1] != 0 or hi[1] != 1 or slot(lo[0]) != 8 * m + 2 * c + e
    # 3: the A fragments
    for q in range(4):
        for j in range(2):
            for h in range(2):
                for e in range(2):
                    bad += slot(8 * q + 2 * j + h + 4 * e) != 16 * j + 8 * h + 2 * q + e
    print(f"K order: {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
