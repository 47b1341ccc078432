"""Regenerate every golden file: python3 tests/oracle/make_all.py [--twice]

Runs make_scalars.py, make_blocks.py, make_routing.py, make_layer.py and make_layer_quant.py (each asserts its own cross-checks and
exits non-zero on any disagreement), then prints the sha256 of each file written.  With --twice everything is
generated a second time and the two sets of hashes must be identical (the scripts are deterministic: fixed seeds,
splitmix64 for all random content, records written in a fixed order, no timestamps).
"""

import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "data"))
SCRIPTS = [("make_scalars.py", "scalars.moeg"), ("make_blocks.py", "blocks.moeg"), ("make_routing.py", "routing.moeg"),
           ("make_layer.py", "layer.moeg"), ("make_layer_quant.py", "layer_quant.moeg")]
BUDGET = 5_000_000   # bytes, all golden files together


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_all(verbose):
    hashes = {}
    for script, out in SCRIPTS:
        proc = subprocess.run([sys.executable, os.path.join(HERE, script)], capture_output=True, text=True)
        if verbose or proc.returncode:
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
        if proc.returncode:
            sys.exit(f"{script} failed (exit {proc.returncode})")
        path = os.path.join(DATA, out)
        hashes[out] = (sha256(path), os.path.getsize(path))
    return hashes


def main():
    twice = "--twice" in sys.argv[1:]
    first = run_all(verbose=True)
    for name, (h, size) in first.items():
        print(f"{h}  {size:8d}  tests/data/{name}")
    total = sum(size for _, size in first.values())
    print(f"total {total} bytes")
    if total > BUDGET:
        sys.exit(f"golden files exceed {BUDGET} bytes")
    if twice:
        second = run_all(verbose=False)
        if second != first:
            sys.exit(f"non-deterministic output: {first} vs {second}")
        print("second run: byte-identical")


if __name__ == "__main__":
    main()
