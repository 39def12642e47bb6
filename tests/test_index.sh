#!/bin/sh
# test_index.sh - tests/README.md, the index of the tests, stays complete:
# every test `make check` runs (each entry of TESTS in Makefile.am, the
# programs of check_PROGRAMS included), every libFuzzer target
# (tests/fuzz/fuzz_*.c) and every test script (scripts/test*.sh) has a row
# there, and every row names a file that exists.  A row is a table line of
# tests/README.md whose first cell holds the path in backquotes: `NAME`,
# or `NAME.c` for a program built from NAME.c.  Reads the sources only
# (Makefile.am's variables are expanded here, as make would), so it needs
# no build.  TAP output, one check per test.
set -u
SRC=${BLIP2_TOP_SRCDIR:-.}
INDEX=$SRC/tests/README.md
n=0; failed=0
report() { # report OK NAME DETAIL
  n=$((n + 1))
  if [ "$1" -eq 1 ]; then echo "ok $n - $2"
  else echo "not ok $n - $2"; echo "# $3"; failed=$((failed + 1)); fi
}

if [ ! -r "$INDEX" ] || [ ! -r "$SRC/Makefile.am" ]; then
  echo "not ok 1 - tests/README.md and Makefile.am readable"
  echo "# in $SRC"
  echo "1..1"
  exit 1
fi

# The words of TESTS, with the variables of Makefile.am expanded (an
# assignment with =, := or +=, continuation lines joined, conditionals
# ignored: a test inside `if` is listed too); a reference to a variable
# Makefile.am does not set ($(EXEEXT) ...) expands to nothing.
tests_of_makefile() {
  awk '
    { line = line $0 }
    /\\$/ { sub(/\\$/, "", line); next }
    {
      if (match(line, /^[A-Za-z_][A-Za-z0-9_]*[ \t]*(\+|:)?=/)) {
        name = line; sub(/[ \t]*(\+|:)?=.*/, "", name)
        val = line; sub(/^[^=]*=/, "", val); sub(/#.*/, "", val)
        if (line ~ /^[A-Za-z0-9_]*[ \t]*\+=/) vars[name] = vars[name] " " val
        else vars[name] = val
      }
      line = ""
    }
    function expand(s, depth,   out, i, w, nw, ws, v, pre, post) {
      if (depth > 20) return ""
      out = ""
      nw = split(s, ws, /[ \t]+/)
      for (i = 1; i <= nw; i++) {
        w = ws[i]
        while (match(w, /\$[({][A-Za-z_][A-Za-z0-9_]*[)}]/)) {
          v = substr(w, RSTART + 2, RLENGTH - 3)
          pre = substr(w, 1, RSTART - 1); post = substr(w, RSTART + RLENGTH)
          w = pre ((v in vars) ? expand(vars[v], depth + 1) : "") post
        }
        if (w != "") out = out " " w
      }
      return out
    }
    END {
      nw = split(expand(vars["TESTS"], 0), ws, /[ \t]+/)
      for (i = 1; i <= nw; i++) if (ws[i] != "" && !seen[ws[i]]++) print ws[i]
    }' "$SRC/Makefile.am"
}

# the first cells of the index's table rows, backquotes removed
rows() {
  sed -n 's/^| *`\([^`]*\)`.*/\1/p' "$INDEX"
}
rows >"${TMPDIR:-/tmp}/b2index.$$" || exit 1
ROWS=${TMPDIR:-/tmp}/b2index.$$
trap 'rm -f "$ROWS"' EXIT

has_row() { # has_row NAME: a row for NAME or NAME.c
  grep -qxF -- "$1" "$ROWS" || grep -qxF -- "$1.c" "$ROWS"
}

list=$(tests_of_makefile)
[ -n "$list" ]
report $((1 - $?)) "Makefile.am lists tests ($(echo $list | wc -w) in TESTS)" "no TESTS found in $SRC/Makefile.am"

for t in $list; do
  has_row "$t"
  report $((1 - $?)) "$t (TESTS) has a row in tests/README.md" \
    "add a row for $t to tests/README.md: file, what it checks, level, time, environment"
done
for f in "$SRC"/tests/fuzz/fuzz_*.c "$SRC"/scripts/test*.sh; do
  [ -e "$f" ] || continue
  t=${f#"$SRC"/}
  has_row "$t"
  report $((1 - $?)) "$t has a row in tests/README.md" \
    "add a row for $t to tests/README.md: file, what it checks, level, time, environment"
done

# no row for a test that is gone
stale=
for r in $(cat "$ROWS"); do
  case $r in
  tests/*|scripts/*) [ -e "$SRC/$r" ] || [ -e "$SRC/$r.c" ] || stale="$stale $r" ;;
  esac
done
[ -z "$stale" ]
report $((1 - $?)) "every row of tests/README.md names an existing file" "no such file:$stale"

echo "1..$n"
[ "$failed" -eq 0 ]
