#!/bin/sh
# test_golden_portable.sh - the golden tests (OPT, then Flan-T5 without the
# 16-bit copies) again with the portable C kernels forced
# (BLIP2_KERNELS=portable), so the path that CPUs without AVX2 take
# reproduces the reference too.  One TAP stream: the T5 test numbers
# continue after the OPT ones.
export BLIP2_KERNELS=portable
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
./tests/test_golden >"$out"; rc1=$?
./tests/test_golden_t5 cases >>"$out"; rc2=$?
awk '/^1\.\./ { next }
     /^(not )?ok [0-9]+/ { n++; sub(/ok [0-9]+/, "ok " n) }
     { print }
     END { print "1.." n }' "$out"
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
