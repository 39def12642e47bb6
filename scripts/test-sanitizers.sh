#!/bin/sh
# Runs the whole test suite (make check) in a separate copy of the tree built
# with AddressSanitizer + UndefinedBehaviorSanitizer (./configure
# --enable-sanitizers, -O1), leak detection on, stopping at the first report.
# The copy is the last commit (git archive HEAD; SAN_WORKTREE=1: the work
# tree's tracked and new files instead), so an in-tree build is left alone.  Ends with "N passed, N failed".
# Environment: SAN_DIR (default: a new temporary directory, removed at the
# end unless SAN_KEEP=1); extra arguments go to ./configure.
# See tests/SANITIZERS.md.
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
. "$top/scripts/tap-summary.sh"
san_dir SAN blip2-asan

mkdir -p "$dir/src" || { echo "0 passed, 1 failed"; exit 1; }
copy_tree "$dir/src" || exit 1

ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0"
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export ASAN_OPTIONS UBSAN_OPTIONS
# the golden reruns on packed files: f32 (exact path) and bf16 (the typed
# products) are enough here; f16 and q8_0 take the same code (q8_0's own
# kernels: tests/test_gguf_q8, tests/test_wkernels).  Keeps CI short.
GGUF_TYPES=${GGUF_TYPES:-f32 bf16}
# an instrumented daemon starts and answers several times slower, more so
# beside the parallel golden runs: the tests' waits (never their bounds)
# are doubled (tests/b2test.py SCALE, tests/lib.sh wait_socket)
BLIP2_TEST_TIMEOUT_SCALE=${BLIP2_TEST_TIMEOUT_SCALE:-2}
export GGUF_TYPES BLIP2_TEST_TIMEOUT_SCALE

echo "# sanitizers: building and testing in $dir/src (ASan+UBSan, -O1)"
cd "$dir/src" && sh scripts/test.sh --enable-sanitizers CFLAGS="-O1 -g" "$@" >"$dir/check.log" 2>&1
rc=$?
# the failing tests' logs, for the CI output
for t in $(find tests -name '*.trs' 2>/dev/null); do
  if grep -q '^:test-result: \(FAIL\|XPASS\|ERROR\)' "$t"; then
    echo "# --- ${t%.trs}.log"
    sed -n '1,200p' "${t%.trs}.log" | sed 's/^/# /'
  fi
done
tail -n 1 "$dir/check.log" | grep -q '^[0-9]* passed, [0-9]* failed$' || {
  tail -n 40 "$dir/check.log" | sed 's/^/# /'; echo "0 passed, 1 failed"; exit 1; }
tail -n 1 "$dir/check.log"
exit $rc
