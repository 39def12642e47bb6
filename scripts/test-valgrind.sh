#!/bin/sh
# valgrind memcheck run of the integration tests: a separate copy of the
# tree built without sanitizers (-O1 -g, --disable-shared so that the
# programs are real executables, not libtool wrapper scripts), then make
# check of tests/test_client, tests/test_blip2ctl.sh, tests/test_infer_errors.sh,
# tests/test_e2e and tests/test_daemon.py with every program they start
# (daemon/blip2d, ctl/blip2ctl, model/blip2-infer, the fake daemon
# tests/test_client --serve, and tests/test_e2e and tests/test_client
# themselves) run under memcheck through small wrapper scripts given to the
# tests as $BLIP2D, $BLIP2CTL, $BLIP2_INFER, $FAKE_BLIP2D and LOG_COMPILER.
# The daemon is slow under memcheck (10-40 s to start, about a second per
# token): the daemon tests wait longer (BLIP2_TEST_TIMEOUT_SCALE), run fewer
# golden cases (BLIP2_TEST_CASES) and cap their long requests
# (BLIP2_TEST_MAX_TOKENS).
# One log per process; the run fails if a test fails or if a log shows an
# error (invalid read/write, uninitialised value, definite leak).
# tests/valgrind.supp holds third-party noise only, each entry explained.
# libvips gets its modules but those linking libhwy (VIPSHOME), and the f32
# products run off oneDNN (BLIP2_MATMUL=own): both below.
# Environment: VG_DIR (default: a new temporary directory, removed at the
# end unless VG_KEEP=1); VG_TESTS overrides the list of tests; the copy is
# the last commit (git archive HEAD), SAN_WORKTREE=1: the work tree;
# BLIP2_TEST_TIMEOUT_SCALE (default 30), BLIP2_TEST_CASES (2),
# BLIP2_TEST_MAX_TOKENS (20) are handed to the tests.
# Ends with "N passed, N failed".  See tests/SANITIZERS.md.
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
. "$top/scripts/tap-summary.sh"
san_dir VG blip2-vg
tests=${VG_TESTS:-tests/test_client tests/test_blip2ctl.sh tests/test_infer_errors.sh tests/test_e2e tests/test_daemon.py}
command -v valgrind >/dev/null 2>&1 || { echo "# valgrind not installed"; echo "0 passed, 1 failed"; exit 1; }

mkdir -p "$dir/src" "$dir/reports" "$dir/wrap" || { echo "0 passed, 1 failed"; exit 1; }
rm -f "$dir"/reports/*
# tests/test_blip2ctl.sh runs blip2ctl as another user too: its log must be
# writable to every user (sticky, as /tmp)
chmod 1777 "$dir/reports"
copy_tree "$dir/src" || exit 1

cd "$dir/src" || exit 1
echo "# valgrind: building in $dir/src (-O1 -g, static libraries)"
{ [ -x configure ] || autoreconf -fi; } >"$dir/build.log" 2>&1 &&
  { [ -f Makefile ] || ./configure --disable-shared CFLAGS="-O1 -g"; } >>"$dir/build.log" 2>&1 &&
  make -j"$(nproc)" >>"$dir/build.log" 2>&1 &&
  make -j"$(nproc)" check TESTS= >>"$dir/build.log" 2>&1 || {
    tail -n 30 "$dir/build.log" | sed 's/^/# /'; echo "0 passed, 1 failed"; exit 1; }

# the wrapper: memcheck, one log per process, exit code kept unless errors.
# --fair-sched=yes: memcheck runs one thread at a time, and with its default
# lock the daemon's compute threads (engine, pool, OpenBLAS) kept passing it
# among themselves while the I/O thread waited: a client's cancel was read
# only after 300+ tokens (tests/test_e2e 7).  Fair turns fix that.
vg="valgrind --tool=memcheck --fair-sched=yes --error-exitcode=99 --leak-check=full --show-leak-kinds=definite"
vg="$vg --errors-for-leak-kinds=definite --num-callers=40 --gen-suppressions=all"
vg="$vg --suppressions=$top/tests/valgrind.supp --log-file=$dir/reports/%q{VG_NAME}.%p.log"
mkwrap() {  # mkwrap NAME PROGRAM
  printf '#!/bin/sh\nVG_NAME=%s; export VG_NAME\nexec %s %s "$@"\n' "$1" "$vg" "$2" >"$dir/wrap/$1"
  chmod +x "$dir/wrap/$1"
}
mkwrap blip2d "$dir/src/daemon/blip2d"
mkwrap blip2ctl "$dir/src/ctl/blip2ctl"
mkwrap blip2-infer "$dir/src/model/blip2-infer"
mkwrap fake_blip2d "$dir/src/tests/test_client"
# LOG_COMPILER runs every test (no TEST_EXTENSIONS): scripts run as they are
printf '#!/bin/sh\nhead -c 4 "$1" | grep -q ELF || exec "$@"\nVG_NAME=$(basename "$1"); export VG_NAME\nexec %s "$@"\n' "$vg" >"$dir/wrap/run"
chmod +x "$dir/wrap/run"

# libvips' modules, but for those that link libhwy (the JPEG XL loader):
# libhwy runs rdtscp when it is loaded, which valgrind 3.19 cannot execute
# on some CPUs (SIGILL before any of our code runs; tests/SANITIZERS.md).
# libvips looks for its modules under $VIPSHOME/lib; none of the tests
# reads JPEG XL.
vlib=$(pkg-config --variable=libdir vips 2>/dev/null)
for m in "$vlib"/vips-modules-*; do
  [ -d "$m" ] || continue
  mdir="$dir/vipshome/lib/$(basename "$m")"
  mkdir -p "$mdir" && rm -f "$mdir"/*.so
  for so in "$m"/*.so; do
    [ -f "$so" ] || continue
    if ldd "$so" 2>/dev/null | grep -q libhwy; then echo "# valgrind: libvips module $(basename "$so") left out (libhwy)"
    else ln -s "$so" "$mdir/"; fi
  done
  VIPSHOME="$dir/vipshome"; export VIPSHOME
done

# f32 products on OpenBLAS and the engine's own kernels, not oneDNN: the
# JIT code of oneDNN 2.6's f32 gemm reads up to 32 bytes past the end of
# its own packing buffers, and memcheck cannot show who called that code
# (no unwind information), so no suppression could be narrower than "any
# 32-byte read" (tests/SANITIZERS.md).  Whether oneDNN ran at all was up to
# the timing that picks the faster backend.
BLIP2_MATMUL=own; export BLIP2_MATMUL

# the daemon tests, slowed down by memcheck (defaults: every case, waits
# for an unchecked daemon, no cap)
BLIP2_TEST_TIMEOUT_SCALE=${BLIP2_TEST_TIMEOUT_SCALE:-30}
BLIP2_TEST_CASES=${BLIP2_TEST_CASES:-2}
BLIP2_TEST_MAX_TOKENS=${BLIP2_TEST_MAX_TOKENS:-20}
export BLIP2_TEST_TIMEOUT_SCALE BLIP2_TEST_CASES BLIP2_TEST_MAX_TOKENS
t0=$(date +%s)
echo "# valgrind: make check TESTS='$tests'"
make check TESTS="$tests" LOG_COMPILER="$dir/wrap/run" \
  TESTS_ENVIRONMENT="BLIP2D=$dir/wrap/blip2d BLIP2CTL=$dir/wrap/blip2ctl \
    BLIP2_INFER=$dir/wrap/blip2-infer FAKE_BLIP2D=$dir/wrap/fake_blip2d; \
    export BLIP2D BLIP2CTL BLIP2_INFER FAKE_BLIP2D;" >"$dir/check.log" 2>&1
rc=$?
echo "# valgrind: tests took $(( $(date +%s) - t0 )) s"
tap_summary $tests
# every process's log: errors, definite leaks
n=0; bad=0
for r in "$dir"/reports/*.log; do
  [ -f "$r" ] || continue
  n=$((n + 1))
  if grep -q 'ERROR SUMMARY: [1-9]' "$r" || grep -q 'definitely lost: [1-9]' "$r"; then
    bad=$((bad + 1))
    echo "not ok - valgrind: $(basename "$r")"
    grep -v '^==[0-9]*== *$' "$r" | sed -n '1,80p' | sed 's/^/# /'
  fi
done
if [ "$bad" -eq 0 ] && [ "$n" -gt 0 ]; then
  echo "ok - valgrind: $n processes, no errors, no definite leaks"; pass=$((pass + 1))
else
  [ "$n" -gt 0 ] || echo "not ok - valgrind: no process ran under valgrind"
  fail=$((fail + 1))
fi
san_finish "$rc"
