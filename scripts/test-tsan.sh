#!/bin/sh
# ThreadSanitizer run of the concurrency tests: a separate copy of the tree
# built with -fsanitize=thread (-O1 -g), then make check of the tests that
# exercise threads: tests/test_kernels (compute pool, model/compute/pool.c),
# tests/test_model (two models from four threads), tests/test_client (the
# client library), and the daemon (libuv loop, prep pool, engine thread,
# compute pool: scheduler, cancellation, batched decode, disconnects,
# shutdown) under tests/test_e2e, tests/test_daemon.py and tests/test_load.py,
# with fewer golden cases and a shorter load (BLIP2_TEST_CASES, LOAD_SECONDS,
# LOAD_CONNECTIONS), long requests capped (BLIP2_TEST_MAX_TOKENS) and longer
# waits (BLIP2_TEST_TIMEOUT_SCALE).  Every
# report goes to a file (log_path); the run fails if a test fails or if any
# report was written.  tests/tsan.supp says what is suppressed and why.
# Environment: TSAN_DIR (default: a new temporary directory, removed at the
# end unless TSAN_KEEP=1); TSAN_TESTS overrides the list of tests; the copy
# is the last commit (git archive HEAD), SAN_WORKTREE=1: the work tree;
# BLIP2_TEST_CASES (default 6), LOAD_SECONDS (3), LOAD_CONNECTIONS (16),
# BLIP2_TEST_MAX_TOKENS (100), BLIP2_TEST_TIMEOUT_SCALE (10) are handed to
# the tests.
# Ends with "N passed, N failed".  See tests/SANITIZERS.md.
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
. "$top/scripts/tap-summary.sh"
san_dir TSAN blip2-tsan
tests=${TSAN_TESTS:-tests/test_kernels tests/test_model tests/test_client tests/test_e2e tests/test_daemon.py tests/test_load.py}

mkdir -p "$dir/src" "$dir/reports" || { echo "0 passed, 1 failed"; exit 1; }
rm -f "$dir"/reports/tsan.*
copy_tree "$dir/src" || exit 1

cd "$dir/src" || exit 1
echo "# tsan: building in $dir/src (-fsanitize=thread -O1)"
{ [ -x configure ] || autoreconf -fi; } >"$dir/build.log" 2>&1 &&
  { [ -f Makefile ] || ./configure CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=thread" \
    LDFLAGS="-fsanitize=thread"; } >>"$dir/build.log" 2>&1 &&
  make -j"$(nproc)" >>"$dir/build.log" 2>&1 || {
    tail -n 30 "$dir/build.log" | sed 's/^/# /'; echo "0 passed, 1 failed"; exit 1; }

TSAN_OPTIONS="suppressions=$top/tests/tsan.supp log_path=$dir/reports/tsan halt_on_error=0 second_deadlock_stack=1 history_size=4"
# the daemon tests, shortened (defaults: every case, 6 s of load from 64
# connections, requests of up to 1500 tokens, waits for an unsanitised daemon)
BLIP2_TEST_CASES=${BLIP2_TEST_CASES:-6}
LOAD_SECONDS=${LOAD_SECONDS:-3}
LOAD_CONNECTIONS=${LOAD_CONNECTIONS:-16}
BLIP2_TEST_MAX_TOKENS=${BLIP2_TEST_MAX_TOKENS:-100}
BLIP2_TEST_TIMEOUT_SCALE=${BLIP2_TEST_TIMEOUT_SCALE:-10}
export TSAN_OPTIONS BLIP2_TEST_CASES LOAD_SECONDS LOAD_CONNECTIONS BLIP2_TEST_MAX_TOKENS BLIP2_TEST_TIMEOUT_SCALE
t0=$(date +%s)
echo "# tsan: make check TESTS='$tests'"
make -j"$(nproc)" check TESTS="$tests" >"$dir/check.log" 2>&1
rc=$?
tap_summary $tests
echo "# tsan: tests took $(( $(date +%s) - t0 )) s"
n=$(ls "$dir"/reports 2>/dev/null | wc -l)
if [ "$n" -gt 0 ]; then
  echo "not ok - ThreadSanitizer wrote $n report file(s):"
  for r in "$dir"/reports/*; do sed -n '1,60p' "$r" | sed 's/^/# /'; done
  fail=$((fail + 1))
else
  echo "ok - no ThreadSanitizer reports"; pass=$((pass + 1))
fi
san_finish "$rc"
