#!/usr/bin/env bash
# scripts/pack_device.sh — packs the stripped build/moe and build/moe_tests into build/bundle.txz, small enough to
# carry to the GPU machine; there: tar -xJf build/bundle.txz -C build. With MPI=1 it also packs an MPI build of
# the tests as build/mpi/moe_tests (for mpirun there) and then rebuilds without MPI, so that the main binaries
# need no MPI library on the GPU machine.
set -e
mkdir -p build/dev/mpi
files="moe moe_tests"
if [ "${MPI:-0}" = 1 ]; then
    make -j2 MPI=1 build/moe_tests >/dev/null
    strip -o build/dev/mpi/moe_tests build/moe_tests
    files="$files mpi/moe_tests"
fi
make -j2 MPI=0 build/moe build/moe_tests >/dev/null
strip -o build/dev/moe build/moe
strip -o build/dev/moe_tests build/moe_tests
tar -C build/dev -cf - $files | xz -T2 -6 > build/bundle.txz
ls -la build/bundle.txz
