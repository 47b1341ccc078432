"""Checks the shared-memory layout of the W8A8 GLU epilogue in 2026-12-07-w8a8-glu-epilogue-8-lanes-a-row-built.diff
without a GPU: every reading lane finds the (gate, up) pair of the column it quantises (BM 128 and 64, concatenated
and interleaved gate/up), and the staging stores and reading loads take the fewest shared-memory wavefronts
(model: a request takes as many wavefronts as the most distinct 4-byte words any one bank serves). It also counts
the landed layout's reads (8fcfb16: rows of 264 floats, a lane's 4 columns 8 floats apart)."""

L_NEW, L_OLD = 2 * 128 + 4, 2 * 128 + 8  # floats a staged row


def wavefronts(byte_addrs, width):
    banks = {}
    for a in byte_addrs:
        for w in range(width // 4):
            banks.setdefault((a // 4 + w) % 32, set()).add(a // 4 + w)
    return max(len(v) for v in banks.values())


def stage(bm, interleaved, consumers, L):
    """{(row, float offset): ('g' | 'u', column)} after warp w of each consumer staged one 8-row group, and the
    wavefronts of each store instruction. acc[h][4j + 2i + e]: row lane / 4 (+ 8i), B row h * 128 + c0 + 8j +
    2 (lane % 4) + e of the box pair (concatenated: box 0 gate, box 1 up; interleaved: gate, up alternate)."""
    kwn = 128 if bm == 128 else 64
    buf, waves = {}, []
    for cw in consumers:
        c0 = 0 if bm == 128 else 64 * cw
        for j in range(kwn // 8):
            for e_store in ((None,) if not interleaved else (0, 1)):
                addrs = []
                for lane in range(32):
                    row = lane >> 2
                    if not interleaved:  # one 16-byte store: columns c, c + 1
                        c = c0 + 8 * j + 2 * (lane & 3)
                        at = row * L + 2 * c
                        for k, v in enumerate((('g', c), ('u', c), ('g', c + 1), ('u', c + 1))):
                            buf[(row, at + k)] = v
                        addrs.append(4 * at)
                    else:  # one 8-byte store: box e's B rows c0 + 8j + 2 (lane % 4) + {0, 1}, gate and up of a column
                        e = e_store
                        c = e * 64 + (c0 + 8 * j + 2 * (lane & 3)) // 2
                        at = row * L + 2 * c
                        buf[(row, at)], buf[(row, at + 1)] = ('g', c), ('u', c)
                        addrs.append(4 * at)
                waves.append(wavefronts(addrs, 16 if not interleaved else 8))
    return buf, waves


ok = True
for bm in (128, 64):
    for interleaved in (False, True):
        buf, waves = stage(bm, interleaved, (0, 1) if bm == 64 else (0,), L_NEW)
        reads = []
        for it in ((0, 1) if bm == 128 else (0, 1)):  # BM 64: consumer cw takes it = cw
            for k in range(4):
                for half in (0, 1):
                    addrs = []
                    for lane in range(32):
                        rr, quad = 4 * it + (lane >> 3), lane & 7
                        at = rr * L_NEW + 64 * k + 8 * quad + 4 * half
                        addrs.append(4 * at)
                        for x in range(4):
                            want = ('g' if x % 2 == 0 else 'u', 32 * k + 4 * quad + 2 * half + x // 2)
                            if buf.get((rr, at + x)) != want:
                                ok = False
                                print('mismatch', bm, interleaved, rr, want, buf.get((rr, at + x)))
                    reads.append(wavefronts(addrs, 16))
        print(f'BM {bm:3d} {"interleaved " if interleaved else "concatenated"}: store wavefronts {sorted(set(waves))} '
              f'(a {"16" if not interleaved else "8"}-byte store a lane), load wavefronts {sorted(set(reads))} '
              f'(16 bytes a lane; 4 is the least for 512 bytes)')
old = [wavefronts([4 * (rr * L_OLD + 8 * lane + 4 * half) for lane in range(32)], 16) for rr in range(8)
       for half in (0, 1)]
print(f'landed layout (a row a warp, 4 columns a lane): load wavefronts {sorted(set(old))}, 16 a row against 8')
print('columns ok' if ok else 'MISMATCH')
