# tap-summary.sh - sourced by scripts/test-sanitizers.sh, test-tsan.sh and
# test-valgrind.sh, which build and test a copy of the tree.
#
#   san_dir PREFIX NAME   $dir: ${PREFIX}_DIR, else a new temporary
#                         directory NAME.XXXXXX removed at exit (unless
#                         ${PREFIX}_KEEP=1); world-readable
#   copy_tree DEST        the last commit (git archive HEAD), or with
#                         SAN_WORKTREE=1 the work tree's tracked and new
#                         files, unpacked into DEST (run from the top)
#   tap_summary TEST...   after `make check TESTS=...`, one line per test
#                         from its .trs file and the totals in $pass and
#                         $fail (run in the build tree the tests ran in)
#   san_finish RC         "N passed, N failed" (a failed make, RC != 0,
#                         counts as one failure); returns 0 when none failed
san_dir() {
  eval "_san_given=\${$1_DIR:-} _san_keep=\${$1_KEEP:-0}"
  dir=${_san_given:-$(mktemp -d "${TMPDIR:-/tmp}/$2.XXXXXX")}
  trap '[ "$_san_keep" = 1 ] || [ -n "$_san_given" ] || rm -rf "$dir"' EXIT
  trap 'exit 130' INT TERM
  # world-readable: tests/test_daemon.py runs clients as another uid (as root)
  chmod 755 "$dir" 2>/dev/null
}

copy_tree() {
  if [ "${SAN_WORKTREE:-0}" = 1 ]; then  # the work tree: tracked and new files
    git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null
  else                                    # the last commit
    git archive HEAD
  fi | tar -xf - -C "$1" || { echo "# cannot copy the tree"; echo "0 passed, 1 failed"; return 1; }
}

san_finish() {
  [ "$1" -eq 0 ] || [ "$fail" -gt 0 ] || fail=1
  echo "$pass passed, $fail failed"
  [ "$fail" -eq 0 ]
}

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
