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

for prog in blip2ctl blip2d blip2-infer; do
  if [ -s "$T/$prog.flags" ]; then
    grep -- '^--' "$T/$prog.flags" >"$T/$prog.long"
    covers "completion/$prog completes every long option of $prog" "$T/$prog.long" "$SRC/completion/$prog"
  fi
done

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
  for m in blip2d.8 blip2ctl.1 blip2-infer.1 blip2-convert.1 libblip2client.3; do
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

# ---- issue 14: the docs as a new user and a packager read them -----------------
# building from git: autogen.sh, and make dist for packagers
[ -x "$SRC/autogen.sh" ] && grep -q 'autoreconf -fi' "$SRC/autogen.sh" &&
  grep -q '^    \./autogen\.sh' "$SRC/README.md" && grep -q 'make dist' "$SRC/README.md" &&
  grep -q 'autogen.sh' "$SRC/Makefile.am"
report $((1 - $?)) "autogen.sh makes ./configure; README's recipe runs it and names make dist" ""
# every question in an example is quoted (unquoted, the shell globs ? and *)
grep -n 'blip2ctl .*ask [^ ]* [^"\\-]' "$SRC/README.md" "$SRC"/docs/*.md "$SRC"/man/*.in | grep -v 'ask IMAGE' | grep -v -- '--op ask' >"$T/unquoted"
grep -n 'quoting is optional' "$SRC/README.md" "$SRC"/docs/*.md "$SRC"/man/*.in >>"$T/unquoted"
[ ! -s "$T/unquoted" ]
report $((1 - $?)) "every ask example quotes its question" "$(head -5 "$T/unquoted")"
# -V output as documented
if [ -x "$CTL" ]; then
  v=$("$CTL" -V)
  grep -qF "$v" "$SRC/docs/blip2ctl.md" && grep -qF "$v" "$SRC/man/blip2ctl.1.in"
  report $((1 - $?)) "docs/blip2ctl.md and blip2ctl(1) show what -V prints ($v)" ""
fi
# --temperature 0 is greedy, in help, man page and docs
grep -q 'temperature.*0 = greedy' "$T/ctl.help" 2>/dev/null || "$CTL" --help >"$T/ctl.help" 2>&1
grep -q '0 = greedy' "$T/ctl.help" && grep -q '0 means greedy' "$SRC/docs/blip2ctl.md" && grep -q '0 means greedy' "$SRC/man/blip2ctl.1.in"
report $((1 - $?)) "--temperature 0 = greedy: --help, docs, man page" ""
# socket activation by hand: systemd-socket-activate listens once, so no --idle-exit there
grep -h 'systemd.*socket.*activate -l' "$SRC/docs/blip2d.md" >"$T/sa"
sed 's/\\-/-/g' "$SRC/man/blip2d.8.in" | grep 'systemd-socket-activate -l' >>"$T/sa"
[ -s "$T/sa" ] && ! grep -q 'idle-exit' "$T/sa"
report $((1 - $?)) "the socket-activation examples leave --idle-exit out" "$(cat "$T/sa")"
# libblip2client(3), and man blip2c_connect finds it
for f in connect caption ask generate submit process features_get status_get; do
  grep -qx '.so man3/libblip2client.3' "$SRC/man/blip2c_$f.3" || echo "blip2c_$f.3"
done >"$T/so"
[ -f "$SRC/man/libblip2client.3.in" ] && [ ! -s "$T/so" ]
report $((1 - $?)) "libblip2client(3), with blip2c_connect(3) and the other main calls pointing to it" "$(cat "$T/so")"
# the image formats: the same accepted list in README, man pages and docs
for f in "$SRC/README.md" "$SRC/man/blip2d.8.in" "$SRC/man/blip2ctl.1.in" "$SRC/man/blip2-infer.1.in" "$SRC/docs/blip2d.md"; do
  sed 's/\\-/-/g' "$f" | tr '\n' ' ' | grep -q 'PNG, JPEG, WebP, GIF (first frame) and TIFF' || echo "$f"
done >"$T/fmt"
[ ! -s "$T/fmt" ]
report $((1 - $?)) "README, man pages, docs/blip2d.md: one list of accepted formats" "missing in: $(cat "$T/fmt")"
grep -q 'HEIC' "$SRC/README.md" && grep -q 'JPEG XL' "$SRC/README.md"
report $((1 - $?)) "README names the formats that are refused" ""
# README "Models": every checkpoint, size per type, RAM, caption time
sed -n '/^## Models/,/^## /p' "$SRC/README.md" >"$T/models"
for w in blip2-opt-2.7b blip2-flan-t5-xl blip2-opt-6.7b blip2-flan-t5-xxl 'f32 / f16, bf16 / q8_0' RAM 'caption' 'bench/model_sizes.py'; do
  grep -q -- "$w" "$T/models" || echo "$w"
done >"$T/mm"
[ ! -s "$T/mm" ]
report $((1 - $?)) "README Models: checkpoints, sizes per type, RAM, caption time, where they come from" "missing: $(cat "$T/mm")"
if command -v python3 >/dev/null && [ -f "$SRC/tests/golden/real/blip2-opt-2.7b.config.effective-4.37.2.json" ]; then
  python3 "$SRC/bench/model_sizes.py" "$SRC"/tests/golden/real/*.config.effective-4.37.2.json >"$T/sizes"
  ok=1
  while read -r name _ _ _ _ f32 _ _ f16 _ _ q8 _; do
    grep -q "$f32 / $f16 / $q8 GB" "$T/models" || ok=0
  done <"$T/sizes"
  report $ok "README Models: the sizes are what bench/model_sizes.py computes from the real configs" "$(cat "$T/sizes")"
fi

echo "1..$n"
[ $failed -eq 0 ]
