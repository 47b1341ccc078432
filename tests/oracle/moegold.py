"""Reader/writer for the golden archive format (.moeg) shared by the oracle scripts and the C tests.

Layout (all integers little-endian):

    magic            8 bytes  b"MOEGOLD1"
    records until EOF, each:
      u32            name_len
      name_len bytes name (ASCII, no NUL)
      4 bytes        dtype code: b"u8\\0\\0" b"u16\\0" b"u32\\0" b"u64\\0" b"i64\\0" b"f32\\0" b"str\\0"
      u32            ndim
      i64[ndim]      shape
      payload        prod(shape) * itemsize bytes (row-major); str = UTF-8 bytes, shape [nbytes]

The writer emits records in the order they were added, so a script that adds records in a fixed order
produces byte-identical files on every run.  This module also holds the small helpers every script
shares and the C tests re-implement: splitmix64, the two random f32 bit-pattern sets and the chunked
FNV-1a 64 hash.
"""

import struct

import numpy as np

MAGIC = b"MOEGOLD1"

# dtype code <-> numpy little-endian dtype
_CODES = {
    b"u8\0\0": np.dtype("<u1"),
    b"u16\0": np.dtype("<u2"),
    b"u32\0": np.dtype("<u4"),
    b"u64\0": np.dtype("<u8"),
    b"i64\0": np.dtype("<i8"),
    b"f32\0": np.dtype("<f4"),
}
_BY_DTYPE = {v: k for k, v in _CODES.items()}
STR_CODE = b"str\0"


class Writer:
    """Collects records in insertion order; `save` writes them. Duplicate names are an error."""

    def __init__(self):
        self._records = []  # list of (name, code, shape tuple, payload bytes)
        self._names = set()

    def _add(self, name, code, shape, payload):
        if not name or not name.isascii() or "\0" in name:
            raise ValueError(f"bad record name {name!r}")
        if name in self._names:
            raise ValueError(f"duplicate record name {name!r}")
        self._names.add(name)
        self._records.append((name, code, tuple(int(d) for d in shape), payload))

    def add(self, name, arr):
        """Add a numpy array; its dtype must be one of u8/u16/u32/u64/i64/f32 (any byte order)."""
        arr = np.asarray(arr)
        dt = arr.dtype.newbyteorder("<")
        if dt not in _BY_DTYPE:
            raise TypeError(f"{name}: unsupported dtype {arr.dtype}")
        payload = np.ascontiguousarray(arr, dtype=dt).tobytes()
        self._add(name, _BY_DTYPE[dt], arr.shape, payload)

    def add_str(self, name, text):
        data = text.encode("utf-8")
        self._add(name, STR_CODE, (len(data),), data)

    def names(self):
        return [r[0] for r in self._records]

    def to_bytes(self):
        out = [MAGIC]
        for name, code, shape, payload in self._records:
            nb = name.encode("ascii")
            out.append(struct.pack("<I", len(nb)))
            out.append(nb)
            out.append(code)
            out.append(struct.pack("<I", len(shape)))
            out.append(struct.pack(f"<{len(shape)}q", *shape))
            out.append(payload)
        return b"".join(out)

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.to_bytes())


def read(path):
    """Return a dict name -> numpy array (or str for str records), in file order."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: bad magic")
    pos = 8
    out = {}
    while pos < len(data):
        (nlen,) = struct.unpack_from("<I", data, pos)
        pos += 4
        name = data[pos:pos + nlen].decode("ascii")
        pos += nlen
        code = data[pos:pos + 4]
        pos += 4
        (ndim,) = struct.unpack_from("<I", data, pos)
        pos += 4
        shape = struct.unpack_from(f"<{ndim}q", data, pos)
        pos += 8 * ndim
        count = int(np.prod(shape, dtype=np.int64)) if ndim else 1
        if code == STR_CODE:
            out[name] = data[pos:pos + count].decode("utf-8")
            pos += count
        else:
            dt = _CODES[code]
            nbytes = count * dt.itemsize
            out[name] = np.frombuffer(data[pos:pos + nbytes], dtype=dt).reshape(shape).copy()
            pos += nbytes
        if pos > len(data):
            raise ValueError(f"{path}: truncated record {name}")
    return out


# ----------------------------------------------------------------------------------------------
# Shared helpers (the C tests re-implement these exactly)

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_scalar(seed, n):
    """Plain-Python splitmix64: the first n outputs of a generator whose initial state is `seed`."""
    state = seed & MASK64
    out = []
    for _ in range(n):
        state = (state + GOLDEN) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def splitmix64(seed, n, start=0):
    """Vectorised splitmix64: outputs start .. start+n-1 (0-based) of the generator seeded with `seed`.

    Output i uses state seed + (i+1)*GOLDEN (mod 2^64); numpy uint64 array arithmetic wraps mod 2^64.
    """
    i = np.arange(start + 1, start + n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed & MASK64) + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


class Rng:
    """Sequential splitmix64 stream (used for all random test content, so no numpy Generator is involved)."""

    def __init__(self, seed):
        self.seed = seed
        self.pos = 0

    def u64(self, n):
        out = splitmix64(self.seed, n, self.pos)
        self.pos += n
        return out

    def u32(self, n):
        return (self.u64(n) & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def uniform(self, n):
        """float64 in [0, 1) from the top 53 bits (exact, no libm)."""
        return (self.u64(n) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


N_RANDOM = 1 << 20


def set_rand():
    """Set "rand": seed 1, pattern i = low 32 bits of output i. Returns uint32[N]."""
    return (splitmix64(1, N_RANDOM) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def set_near():
    """Set "near": seed 2; r = low 32 bits; exponent field 103 + ((r >> 23) % 48), r's sign and mantissa."""
    r = (splitmix64(2, N_RANDOM) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    sign = r >> np.uint32(31)
    e = np.uint32(103) + ((r >> np.uint32(23)) % np.uint32(48))
    mant = r & np.uint32(0x7FFFFF)
    return (sign << np.uint32(31)) | (e << np.uint32(23)) | mant


FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
CHUNK = 4096


def fnv1a64(data):
    """Plain-Python FNV-1a 64 of a bytes object (used to check the vectorised version)."""
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def _fnv_rows(mat):
    """FNV-1a 64 of each row of a uint8 matrix [rows, nbytes], vectorised over rows."""
    h = np.full(mat.shape[0], FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    with np.errstate(over="ignore"):
        for j in range(mat.shape[1]):
            h = (h ^ mat[:, j].astype(np.uint64)) * prime
    return h


def chunk_hash(arr):
    """Chunk hashes of a 1-D array: FNV-1a 64 over the little-endian bytes of each run of CHUNK elements
    (the last chunk may be shorter). Returns uint64[ceil(n / CHUNK)]."""
    arr = np.ascontiguousarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False).reshape(-1)
    n = arr.size
    nfull = n // CHUNK
    parts = []
    if nfull:
        full = arr[:nfull * CHUNK].view(np.uint8).reshape(nfull, CHUNK * arr.dtype.itemsize)
        parts.append(_fnv_rows(full))
    if n % CHUNK:
        tail = arr[nfull * CHUNK:].view(np.uint8).reshape(1, -1)
        parts.append(_fnv_rows(tail))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def canon_nan_f32(bits):
    """f32 bit patterns with every NaN replaced by 0x7FC00000."""
    bits = np.asarray(bits, dtype=np.uint32)
    isnan = ((bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)) & ((bits & np.uint32(0x7FFFFF)) != 0)
    return np.where(isnan, np.uint32(0x7FC00000), bits).astype(np.uint32)


def self_check():
    """Assert the vectorised helpers equal their plain-Python definitions."""
    ref = splitmix64_scalar(1, 8)
    assert [int(v) for v in splitmix64(1, 8)] == ref, "splitmix64 vectorised != scalar"
    assert [int(v) for v in splitmix64(1, 3, start=5)] == ref[5:8], "splitmix64 offset"
    # Known value of splitmix64 with seed 0 (the reference implementation's first output).
    assert splitmix64_scalar(0, 1)[0] == 0xE220A8397B1DCDAF, "splitmix64 seed-0 output"
    assert fnv1a64(b"") == FNV_OFFSET
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C, "FNV-1a 64 of 'a'"
    probe = np.arange(10000, dtype=np.uint16) * np.uint16(7)
    hs = chunk_hash(probe)
    raw = probe.astype("<u2").tobytes()
    want = [fnv1a64(raw[i:i + 2 * CHUNK]) for i in range(0, len(raw), 2 * CHUNK)]
    assert [int(v) for v in hs] == want, "chunk_hash != plain FNV"
    w = Writer()
    w.add("a", np.arange(6, dtype=np.uint32).reshape(2, 3))
    w.add_str("b", "x y\nz")
    w.add("c", np.zeros(0, dtype=np.uint8))
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.moeg")
        w.save(p)
        back = read(p)
    assert back["b"] == "x y\nz" and back["a"].shape == (2, 3) and back["c"].size == 0
    assert (back["a"] == np.arange(6).reshape(2, 3)).all()


if __name__ == "__main__":
    self_check()
    print("moegold self-check ok")
