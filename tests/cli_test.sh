#!/usr/bin/env bash
# cli_test.sh — the `moe` program's command line: small runs of each command succeed (exit 0) and say what they
# did; bad options fail with exit 2 and a line naming the option, before any work; nothing crashes (a sanitizer
# build turns any memory error or undefined behaviour into another exit code, which fails here).
# Usage: tests/cli_test.sh [path/to/moe]   (default build/moe; `make sanitize` runs it on build-san/moe)
set -u
MOE=${1:-build/moe}
failed=0 ran=0
dir=$(mktemp -d) && trap 'rm -rf "$dir"' EXIT
out=$dir/out

# expect RC PATTERN ARGS...: runs `moe ARGS` on the CPU; the exit code must be RC and stdout + stderr must match
# PATTERN (an extended regular expression).
expect() {
    local rc=$1 pattern=$2 got
    shift 2
    ran=$((ran + 1))
    timeout 120 "$MOE" "$@" > "$out" 2>&1
    got=$?
    if [ "$got" -ne "$rc" ] || ! grep -Eq -- "$pattern" "$out"; then
        failed=$((failed + 1))
        echo "FAIL: moe $* -> exit $got (want $rc), output (want /$pattern/):"
        sed 's/^/    /' "$out" | tail -5
    fi
}

# what works
expect 0 'moe 0\.'                         version
expect 0 'computes on'                     info
expect 0 'mxfp4 .*4\.250'                  quantize --backend cpu --shape 4,64
expect 0 'nvfp4 '                          quantize --backend cpu --shape 3,32 --format nvfp4 --global encode --amax-floor 0.5
expect 0 'qwen3-30b-a3b'                   bench route --backend cpu --model qwen3-30b-a3b --tokens 1,16 --reps 1
expect 0 'GB/s'                            bench formats --backend cpu --mib 1 --iters 1 --repeat 1 --threads 1
expect 0 'olmoe +1 '                       bench layer --backend cpu --model olmoe --tokens 1 --reps 1
expect 0 'bf16 gate'                       bench layer --backend cpu --model olmoe --tokens 1 --reps 1 --gate-bf16
expect 0 'a2a'                             bench ep --backend cpu --tokens 4 --reps 1
# --output writes the codes and scales, which --input reads back as raw values of their size (64 bf16 values)
expect 0 'mxfp8 '                          quantize --backend cpu --shape 2,64 --format mxfp8 --output "$dir/q"
[ "$(stat -c %s "$dir/q.data")" = 128 ] && [ "$(stat -c %s "$dir/q.scale")" = 4 ] ||
    { failed=$((failed + 1)); echo "FAIL: --output wrote $(stat -c %s "$dir/q.data" "$dir/q.scale" | tr '\n' ' ')"; }
expect 0 'q.data'                          quantize --backend cpu --shape 1,64 --dtype bf16 --input "$dir/q.data"
expect 1 'expected 128 f32 values'         quantize --backend cpu --shape 2,64 --input "$dir/q.data"

# what must fail before any work, naming the option
expect 2 'unknown command'                 frobnicate
expect 2 '--threads'                       quantize --threads -3
expect 2 '--threads'                       quantize --threads 100000
expect 2 '--threads'                       bench formats --threads abc
expect 2 '--seed'                          quantize --seed 12x
expect 2 '--amax-floor'                    quantize --format mxfp4 --amax-floor nan
expect 2 '--amax-floor'                    quantize --format mxfp4 --amax-floor -1
expect 2 'go with one --format'            quantize --amax-floor 1
expect 2 'go with one --format'            quantize --rule floor
expect 2 '--layout'                        quantize --format mxfp4 --layout diagonal
expect 2 '--global'                        quantize --format nvfp4 --global both
expect 2 '--rule'                          quantize --format mxfp8 --rule nearest
expect 2 '--shape'                         quantize --shape 0,0
expect 2 '--shape'                         quantize --shape 99999999999,99999999
expect 2 '--shape'                         quantize --shape 4,-4
expect 2 'unknown distribution'            quantize --shape 4,32 --dist weird
expect 2 '--reps'                          bench route --backend cpu --reps -1
expect 2 '--reps'                          bench route --backend cpu --reps 1e3
expect 2 '--reps'                          bench layer --backend cpu --reps 99999999
expect 2 '--idle-ms'                       bench layer --backend cpu --idle-ms 10s
expect 2 '--cols'                          bench formats --cols 0
expect 2 '--repeat'                        bench formats --repeat 65
expect 2 '--mib'                           bench formats --mib -1
expect 2 '--ranks'                         bench ep --ranks 9
expect 2 '--skew'                          bench ep --skew inf
expect 2 '--eplb-interval'                 bench ep --eplb-interval -2
expect 2 'tokens'                          bench route --backend cpu --tokens 0
expect 2 'tokens'                          bench route --backend cpu --tokens 1,,2
expect 2 'no layer preset is called "no-such-model"'  bench layer --backend cpu --model qwen3-30b-a3b,no-such-model
expect 2 'no router preset is called "gpt-5"'         bench route --backend cpu --model gpt-5
expect 2 'no layer preset is called "x"'              tune --model x
expect 2 '--tiles takes small, medium32, medium and large' tune --tiles medium,huge
expect 2 'usage: moe bench layer'                     bench layer --backend cpu --tiles large
expect 2 'dtype'                           bench layer --backend cpu --dtype int3

echo "cli_test: $ran runs of $MOE, $failed failed"
[ "$failed" -eq 0 ]
