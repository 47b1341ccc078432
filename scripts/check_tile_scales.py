#!/usr/bin/env python3
"""scripts/check_tile_scales.py — the FP4 decode kernel's tile scales (grouped_gemm_fp4_decode.cu, kTile) on the
host: the runs of a column tile's scale rows (fp4_tile_runs_of), their copy as aligned words into shared memory
(fp4_run_bytes a run) and each lane's word and byte there (toff, shift, a block of sstep bytes further each K
block), written again here from the kernel's arithmetic, against the scale each lane must apply: byte 4b + q of its
row for MXFP4, bytes 8b + 2q and 8b + 2q + 1 for NVFP4 (b the block). Random shapes: plain and GLU (concatenated or
interleaved w13), N and K of any allowed size, column tiles past N, the K split over 2 or 4 warps, and scale
arrays 0-3 bytes past a word (MXFP4; NVFP4 0 or 2). Also asserts that no copy reads past the word that holds the
array's last byte and that the runs stay inside their shared memory. Run by hand: python3 scripts/check_tile_scales.py
(prints the reads checked and the wrong ones; a build of the arithmetic without the run's lead byte gives
some 70% wrong)."""

import random


def runs_of(glu, interleaved, n, tile_n):
    """fp4_tile_runs_of: two runs (first row, rows) of consecutive B rows."""
    if not glu:
        runs = []
        for h in range(2):
            first = tile_n * 16 + 8 * h
            runs.append((first, max(0, min(n - first, 8))))
        return runs
    col0 = tile_n * 8
    cols = max(0, min(n - col0, 8))
    if interleaved:
        return [(2 * col0, 2 * cols), (0, 0)]
    return [(col0, cols), (n + col0, cols)]


def b_row(glu, interleaved, n, tile_n, m):
    """moe_decode_b_row: the B row of M row m, -1 past N."""
    if glu:
        col = tile_n * 8 + (m & 7)
        if col >= n:
            return -1
        return 2 * col + (m >> 3) if interleaved else (m >> 3) * n + col
    row = tile_n * 16 + m
    return row if row < n else -1


def run_bytes(cols):
    return (8 * cols + 8 + 15) // 16 * 16


def check(rng):
    """One random shape; returns (reads checked, wrong)."""
    glu = rng.random() < 0.6
    interleaved = glu and rng.random() < 0.5
    mx = rng.random() < 0.7
    K = 32 * rng.randint(1, 300)
    n = 8 * rng.randint(1, 80) if glu else 16 * rng.randint(1, 40)
    group_shift = 5 if mx else 4
    cols = K >> group_shift  # scale bytes a row
    rows_total = 2 * n if glu else n
    base = rng.randint(0, 3) if mx else 2 * rng.randint(0, 1)
    group_stride = rows_total * cols
    size = base + 2 * group_stride
    salt = rng.randint(1, 1 << 30)

    def mem(a):  # the scale array's bytes; None past the word that holds its last byte
        return (a * 2654435761 + salt) >> 11 & 255 if 0 <= a < ((size + 3) & ~3) else None

    ksplit = rng.choice([2, 4])
    kblocks = (K + 127) // 128
    tile_n = rng.randint(0, ((n + 7) // 8 if glu else (n + 15) // 16) + 1)
    sg = base + rng.randint(0, 1) * group_stride
    runs = runs_of(glu, interleaved, n, tile_n)
    rb = run_bytes(cols)
    smem = [None] * (2 * rb)
    for h, (first, rows) in enumerate(runs):  # the copies
        start = sg + first * cols
        lead = start & 3
        words = (lead + rows * cols + 3) >> 2 if rows else 0
        for w in range(4 * words):
            assert mem(start - lead + w) is not None, "a copy past the array"
            assert h * rb + w < 2 * rb, "a run past its shared memory"
            smem[h * rb + w] = mem(start - lead + w)
    sstep = ksplit * (128 >> group_shift)
    reads = wrong = 0
    for kw in range(ksplit):
        nk = (kblocks - kw + ksplit - 1) // ksplit if kw < kblocks else 0
        for lane in range(32):
            g, q = lane >> 2, lane & 3
            kin = (K - 32 * q + 127) // 128 - kw
            nin = 0 if kin <= 0 else (kin + ksplit - 1) // ksplit
            for h in range(2):
                row = b_row(glu, interleaved, n, tile_n, g + 8 * h)
                if row < 0:
                    continue
                hr = 0 if interleaved else h
                first = runs[hr][0]
                lead = (sg + first * cols) & 3
                at = hr * rb + lead + (row - first) * cols + ((kw * 128 + 32 * q) >> group_shift)
                toff, byte = at & ~3, at & 3
                for i in range(min(nk, nin)):
                    reads += 1
                    word = smem[toff + i * sstep: toff + i * sstep + 4]
                    b = kw + i * ksplit
                    if mx:
                        got, want = word[byte], mem(sg + row * cols + 4 * b + q)
                    else:
                        got = (word[byte], word[byte + 1])
                        want = (mem(sg + row * cols + 8 * b + 2 * q), mem(sg + row * cols + 8 * b + 2 * q + 1))
                    wrong += got != want
    return reads, wrong


def main():
    rng = random.Random(1)
    reads = wrong = 0
    for _ in range(3000):
        r, w = check(rng)
        reads += r
        wrong += w
    print(f"reads checked {reads}, wrong {wrong}")


if __name__ == "__main__":
    main()
