#!/bin/sh
# Builds blip2d and runs the whole test suite (make check); ends with the
# line "N passed, N failed".  Extra arguments go to ./configure.
set -u
cd "$(dirname "$0")/.."
sh scripts/build.sh "$@" || { echo "0 passed, 1 failed"; exit 1; }
make -j"$(nproc)" check
rc=$?
pass=0; fail=0
for t in $(find tests -name '*.trs'); do
  p=$(grep -c '^:test-result: \(PASS\|XFAIL\)' "$t"); f=$(grep -c '^:test-result: \(FAIL\|XPASS\|ERROR\)' "$t")
  pass=$((pass + p)); fail=$((fail + f))
done
[ "$rc" -eq 0 ] || [ "$fail" -gt 0 ] || fail=1
# a recap of what failed, just above the summary line, so that a CI log
# cut to its tail still names the failing checks and shows their context
if [ "$fail" -gt 0 ]; then
  for t in $(find tests -name '*.trs'); do
    grep -q '^:test-result: \(FAIL\|XPASS\|ERROR\)' "$t" || continue
    echo "# --- failed in ${t%.trs}.log:"
    grep -E '^(not ok|FAIL|ERROR|Bail out)' "${t%.trs}.log" | head -n 20 | sed 's/^/#   /'
    echo "# --- its last lines:"
    tail -n 25 "${t%.trs}.log" | sed 's/^/#   /'
  done
fi
echo "$pass passed, $fail failed"
exit $rc
