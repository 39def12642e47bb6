# tap-summary.sh - sourced by scripts/test-tsan.sh and test-valgrind.sh:
# after `make check TESTS=...`, one line per test from its .trs file and
# the totals in $pass and $fail.
#
#   tap_summary TEST...   (run in the build tree the tests ran in)
tap_summary() {
  pass=0; fail=0
  for t in "$@"; do
    trs=$t.trs
    [ -f "$trs" ] || { fail=$((fail + 1)); echo "not ok - $t did not run"; continue; }
    p=$(grep -c '^:test-result: \(PASS\|XFAIL\)' "$trs"); f=$(grep -c '^:test-result: \(FAIL\|XPASS\|ERROR\)' "$trs")
    pass=$((pass + p)); fail=$((fail + f))
    if [ "$f" -gt 0 ]; then
      echo "not ok - $t: $f failed"; grep -a '^not ok\|^#' "$t.log" | head -n 40 | sed 's/^/# /'
    else
      echo "ok - $t ($p checks)"
    fi
  done
}
