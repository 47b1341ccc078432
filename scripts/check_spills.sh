#!/usr/bin/env bash
# scripts/check_spills.sh — compiles the Hopper (sm_90a) code of every CUDA source with ptxas's spill warnings made
# errors, and fails if any kernel spills registers to local memory (issue 6: the compiler's resource report shows
# no spills in the hot kernels). The portable sm_80 code is not checked: Hopper never runs it. Run by .ci/run
# when nvcc is there; by hand: bash scripts/check_spills.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ls src/cuda/*.cu src/cuda/*/*.cu | xargs -P "$(nproc)" -I{} sh -c \
    '"$0" -std=c++17 -O3 -DNDEBUG -fmad=false -gencode=arch=compute_90a,code=sm_90a -Xptxas -warn-spills \
         -Werror all-warnings -Iinclude -Isrc -DMOE_WITH_CUDA -DMOE_CUDA_ARCHS="\"sm_90a\"" -c {} -o "$1/$(basename {}).o"' \
    "$NVCC" "$out"
echo "no register spills in the sm_90a code of $(ls src/cuda/*.cu src/cuda/*/*.cu | wc -l) CUDA sources"
