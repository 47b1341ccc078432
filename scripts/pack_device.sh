#!/usr/bin/env bash
# scripts/pack_device.sh — packs the stripped build/moe and build/moe_tests into build/bundle.txz, small enough to
# carry to the GPU machine; there: tar -xJf build/bundle.txz -C build
set -e
mkdir -p build/dev
strip -o build/dev/moe build/moe
strip -o build/dev/moe_tests build/moe_tests
tar -C build/dev -cf - moe moe_tests | xz -T2 -6 > build/bundle.txz
ls -la build/bundle.txz
