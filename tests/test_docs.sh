#!/bin/sh
# test_docs.sh - the documentation knows every flag: each option that
# `blip2d --help`, `blip2ctl --help` and `blip2-infer --help` print is in
# the program's man page (and blip2d's and blip2ctl's in docs/*.md), and
# every option of blip2ctl is completed by completion/blip2ctl.  The man
# pages also pass `groff -ww` without a warning, and nothing refers to a
# numbered section of bench/README.md (its figures moved to
# bench/RESULTS.md).  TAP output.
set -u
SRC=${BLIP2_TOP_SRCDIR:-.}
BLD=${BLIP2_TOP_BUILDDIR:-.}
DAEMON=${BLIP2D:-$BLD/daemon/blip2d}
CTL=${BLIP2CTL:-$BLD/ctl/blip2ctl}
INFER=${BLIP2_INFER:-$BLD/model/blip2-infer}
CONVERT=${BLIP2_CONVERT:-$BLD/model/blip2-convert}
T=$(mktemp -d "${TMPDIR:-/tmp}/b2docs.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
n=0; failed=0
report() { # report OK NAME DETAIL
  n=$((n + 1))
  if [ "$1" -eq 1 ]; then echo "ok $n - $2"
  else echo "not ok $n - $2"; echo "# $3"; failed=$((failed + 1)); fi
}

# the options a --help output lists: --long and -x (short) forms, from the
# lines that start with an option
flags() {
  "$1" --help 2>&1 | grep '^ *-' | grep -o -- '--[a-z][a-z0-9-]*\|^ *-[a-zA-Z],' |
    sed 's/^ *//; s/,$//' | sort -u
}
# man source with \- turned into -
plain_man() { sed 's/\\-/-/g' "$1"; }

# covers WHAT FLAGS-FILE TEXT-FILE: every flag occurs in the text as a word
covers() {
  missing=
  for f in $(cat "$2"); do
    grep -q -- "\(^\|[^a-zA-Z0-9-]\)$f\([^a-zA-Z0-9-]\|$\)" "$3" || missing="$missing $f"
  done
  [ -z "$missing" ]
  report $((1 - $?)) "$1 ($(wc -l <"$2") flags)" "missing:$missing"
}

for prog in blip2d blip2ctl blip2-infer blip2-convert; do
  case $prog in
    blip2d) bin=$DAEMON man=$SRC/man/blip2d.8.in md=$SRC/docs/blip2d.md ;;
    blip2ctl) bin=$CTL man=$SRC/man/blip2ctl.1.in md=$SRC/docs/blip2ctl.md ;;
    blip2-infer) bin=$INFER man=$SRC/man/blip2-infer.1.in md= ;;
    blip2-convert) bin=$CONVERT man=$SRC/man/blip2-convert.1.in md=$SRC/docs/blip2ctl.md ;;
  esac
  if [ ! -x "$bin" ]; then
    n=$((n + 1)); echo "ok $n - # SKIP $bin not built"; continue
  fi
  flags "$bin" >"$T/$prog.flags"
  [ -s "$T/$prog.flags" ]
  report $((1 - $?)) "$prog --help lists options" "$(head -5 "$T/$prog.flags")"
  plain_man "$man" >"$T/$prog.man"
  covers "$(basename "$man" .in) names every option of $prog --help" "$T/$prog.flags" "$T/$prog.man"
  [ -n "$md" ] && covers "$(basename "$md") names every option of $prog --help" "$T/$prog.flags" "$md"
done

if [ -s "$T/blip2ctl.flags" ]; then
  grep -- '^--' "$T/blip2ctl.flags" >"$T/ctl.long"
  covers "completion/blip2ctl completes every long option of blip2ctl" "$T/ctl.long" "$SRC/completion/blip2ctl"
fi

# the completion itself, without bash-completion installed
if command -v bash >/dev/null 2>&1; then
  got=$(cd "$T" && : >photo.png && bash -c '
    . "$1"
    c() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _blip2ctl; echo "${COMPREPLY[*]}"; }
    c blip2ctl ""; c blip2ctl --num-be; c blip2ctl --json caption pho; c blip2ctl --seed 3 a; c blip2ctl ask photo.png wh
  ' sh "$SRC/completion/blip2ctl" 2>&1)
  want='caption ask chat status ping features convert enqueue results queue-status
--num-beams
photo.png
ask

'
  [ "$got" = "$(printf '%s' "$want")" ]
  report $((1 - $?)) "completion: commands, options, image files, free-text questions" "got: $got"
fi

# the man pages format without warnings
if command -v groff >/dev/null 2>&1; then
  for m in blip2d.8 blip2ctl.1 blip2-infer.1 blip2-convert.1; do
    sed 's/@[a-zA-Z_]*@/X/g' "$SRC/man/$m.in" >"$T/$m"
    groff -man -ww -z "$T/$m" >"$T/warn" 2>&1 && [ ! -s "$T/warn" ]
    report $((1 - $?)) "groff -man -ww: $m formats cleanly" "$(head -c 800 "$T/warn")"
  done
else
  n=$((n + 1)); echo "ok $n - # SKIP groff not found"
fi

# bench/README.md says how to run; the figures are dated entries of
# bench/RESULTS.md, so a reference to a numbered section of bench/README.md
# (which it no longer has) points nowhere
stale=$(cd "$SRC" && grep -rnI --exclude-dir=golden --exclude-dir=xdg-cache 'bench/README\(\.md\)\{0,1\},\{0,1\} *section' \
  README.md docs man model libipc client ctl daemon bench tests 2>/dev/null |
  grep -v '^tests/test_docs.sh:' | head -5)
[ -z "$stale" ]
report $((1 - $?)) "no reference to a section of bench/README.md (figures: bench/RESULTS.md)" "$stale"

echo "1..$n"
[ $failed -eq 0 ]
