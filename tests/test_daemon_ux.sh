#!/bin/sh
# test_daemon_ux.sh - what a user sees of blip2d when running it by hand
# (issue 14): log lines with time stamps on a terminal or in a file and
# sd-daemon "<N>" priorities only under journald ($JOURNAL_STREAM), one
# info line per connection, "is not a socket" and a missing socket
# directory explained, -V, --max-pixels, and the weights cache: the
# default type (auto: the best for this CPU), the conversion said in the
# log, stale cache files removed; OMP_WAIT_POLICY=PASSIVE set by starting
# again (blip2_process_prepare).  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
tmpdir b2dux
M=$GOLDEN/opt-tiny
IMG=$GOLDEN/images/chelsea.png

# run_daemon LOG ARGS...: start blip2d (stderr appended to LOG), wait for
# its socket $T/s.sock; DPID
run_daemon() {
  log=$1; shift
  rm -f "$T/s.sock"
  "$DAEMON" --socket "$T/s.sock" -t 1 "$@" 2>>"$log" &
  DPID=$!
  PIDS="$PIDS $DPID"
  wait_socket "$T/s.sock" 600
}
stop_daemon() { kill "$DPID" 2>/dev/null; wait "$DPID" 2>/dev/null; }

# ---- log lines ---------------------------------------------------------------
run_daemon "$T/plain.log" --model "$M" --no-weights-cache
"$CTL" -s "$T/s.sock" ping >/dev/null 2>&1
"$CTL" -s "$T/s.sock" caption "$IMG" >/dev/null 2>&1
"$CTL" -s "$T/s.sock" --max-new-tokens 2048 caption "$IMG" >/dev/null 2>"$T/err2"; st2=$?
stop_daemon
grep -q '^<[0-9]>' "$T/plain.log"
report $? "not under journald: no <N> priority prefixes" "$(head -3 "$T/plain.log")"
bad=$(grep -cv '^[0-9]\{4\}-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]\.[0-9]\{3\} blip2d\[[0-9]*\]: \(info\|warning\|error\|debug\): ' "$T/plain.log")
[ -s "$T/plain.log" ] && [ "$bad" -eq 0 ]
report $((1 - $?)) "... every line 'YYYY-MM-DD HH:MM:SS.mmm blip2d[PID]: level: message'" "$(head -3 "$T/plain.log")"
conns=$(grep -c 'connection [0-9]' "$T/plain.log")
[ "$conns" -eq 3 ] && grep -q 'connection [0-9]* (pid [0-9]* uid [0-9]* gid [0-9]*) closed' "$T/plain.log"
report $((1 - $?)) "one info line per connection (three clients: three lines, pid/uid/gid on it)" "$(grep connection "$T/plain.log")"

: >"$T/journal.log"
JOURNAL_STREAM=$(stat -c '%d:%i' "$T/journal.log"); export JOURNAL_STREAM
run_daemon "$T/journal.log" --model "$M" --no-weights-cache
stop_daemon
unset JOURNAL_STREAM
bad=$(grep -cv '^<[3-7]>' "$T/journal.log")
[ -s "$T/journal.log" ] && [ "$bad" -eq 0 ] && ! grep -q 'blip2d\[' "$T/journal.log"
report $((1 - $?)) "under journald (\$JOURNAL_STREAM is stderr): '<N>message', no time or pid of our own" "$(head -3 "$T/journal.log")"
grep -q '^<6>loading ' "$T/journal.log"
report $((1 - $?)) "... info lines are <6>" "$(head -3 "$T/journal.log")"

# ---- sockets -----------------------------------------------------------------
printf 'keep me\n' >"$T/notasocket"
"$DAEMON" --model "$M" --no-weights-cache --socket "$T/notasocket" 2>"$T/err"; st=$?
[ $st -eq 1 ] && grep -q "notasocket: the file exists and is not a socket" "$T/err" && [ "$(cat "$T/notasocket")" = "keep me" ]
report $((1 - $?)) "--socket naming a regular file: 'is not a socket', the file left alone" "status $st: $(cat "$T/err")"
"$DAEMON" --model "$M" --no-weights-cache --socket "$T/nodir/blip2.sock" 2>"$T/err"; st=$?
[ $st -eq 1 ] && grep -q "the directory $T/nodir does not exist" "$T/err" && grep -q 'systemd-tmpfiles' "$T/err"
report $((1 - $?)) "a socket in a missing directory: explained (tmpfiles, --socket)" "status $st: $(cat "$T/err")"
"$DAEMON" -V >"$T/out" 2>&1; st=$?
[ $st -eq 0 ] && grep -q '^blip2d [0-9]' "$T/out"
report $((1 - $?)) "-V prints the version" "status $st: $(cat "$T/out")"

# ---- --max-pixels, and a max_new_tokens the model has no room for ----------------
run_daemon "$T/px.log" --model "$M" --no-weights-cache --max-pixels 1000
"$CTL" -s "$T/s.sock" caption "$IMG" >/dev/null 2>"$T/err"; st=$?
stop_daemon
[ $st2 -eq 2 ] && grep -q 'max_new_tokens 2048 is too many for this model: its [0-9]* positions hold the image.s [0-9]* query tokens, the prompt.s 1 token and at most [0-9]* new tokens' "$T/err2" &&
  ! grep -q '(0 tokens)' "$T/err2"
report $((1 - $?)) "--max-new-tokens 2048: says how many new tokens fit (no 'prompt (0 tokens)')" "status $st2: $(cat "$T/err2")"
[ $st -eq 2 ] && grep -q 'above the limit of 1000' "$T/err"
report $((1 - $?)) "--max-pixels 1000: a larger image is refused (exit 2)" "status $st: $(cat "$T/err")"

# ---- the weights cache -------------------------------------------------------
cp -r "$M" "$T/model"
C=$T/cache
(unset BLIP2_WEIGHTS_TYPE; run_daemon "$T/auto.log" --model "$T/model" --weights-cache "$C"; stop_daemon)
want=$(sed -n 's/.*a folder is converted there once, as \([a-z0-9_]*\): the best type for this CPU.*/\1/p' "$T/auto.log")
ls "$C" >"$T/ls"
[ -n "$want" ] && [ "$want" != f32 ] && [ "$(grep -c "^model-[0-9a-f]\{16\}-$want.gguf\$" "$T/ls")" -eq 1 ]
report $((1 - $?)) "default --weights-type: auto, the best type for this CPU ($want), not the checkpoint's f32" "$(cat "$T/ls") $(head -5 "$T/auto.log")"
grep -q 'converting the folder into the weights cache, once: .*model-.*gguf' "$T/auto.log" &&
  grep -q 'converted into the weights cache in [0-9]* s' "$T/auto.log"
report $((1 - $?)) "... the log says what is converted, where, and how long it took" "$(grep -i convert "$T/auto.log")"
run_daemon "$T/f32.log" --model "$T/model" --weights-cache "$C" --weights-type f32
"$CTL" -s "$T/s.sock" caption "$IMG" >"$T/cap32" 2>&1
stop_daemon
"$DAEMON" --help | grep -q 'f32 keeps an f32 checkpoint exact'
report $((1 - $?)) "--help documents auto and f32" ""
grep -q "also in the weights cache: .*-$want.gguf" "$T/f32.log"
report $((1 - $?)) "... another type of the same folder is kept and named in the log" "$(grep cache "$T/f32.log")"
old=$(ls "$C" | grep -- '-f32.gguf$')
# the folder changes: the next start converts it again and removes the old file
touch "$T/model/model.safetensors"
tmpname=.$(ls "$C" | grep -- '-f32.gguf$' | head -1).tmp-AbC123
: >"$C/$tmpname"
touch -d '2 hours ago' "$C/$tmpname"
run_daemon "$T/f32b.log" --model "$T/model" --weights-cache "$C" --weights-type f32
stop_daemon
ls -a "$C" >"$T/ls2"
n32=$(grep -c -- '-f32.gguf$' "$T/ls2")
[ "$n32" -eq 1 ] && ! grep -qx "$old" "$T/ls2" && ! grep -q 'tmp-AbC123' "$T/ls2" &&
  grep -q "removed .*$old" "$T/f32b.log"
report $((1 - $?)) "a changed folder: the stale cache file and a dead conversion's .tmp file removed (and logged)" "$(cat "$T/ls2") $(grep -i cache "$T/f32b.log")"
grep -q -- "-$want.gguf" "$T/ls2"
report $? "... the file of the other type (now stale too) removed as well" "$(cat "$T/ls2")"

# ---- oneDNN's idle OpenMP threads sleep (blip2_process_prepare) ---------------
# omp_env: the OMP_WAIT_POLICY line of the running daemon's own environment
omp_env() { tr '\0' '\n' <"/proc/$DPID/environ" 2>/dev/null | grep '^OMP_WAIT_POLICY='; }
saved_owp=${OMP_WAIT_POLICY-unset}
unset OMP_WAIT_POLICY GOMP_SPINCOUNT
run_daemon "$T/omp.log" --model "$M" --no-weights-cache
e1=$(omp_env)
"$CTL" -s "$T/s.sock" caption "$IMG" >/dev/null 2>&1; st=$?
stop_daemon
[ "$e1" = "OMP_WAIT_POLICY=PASSIVE" ] && [ $st -eq 0 ]
report $((1 - $?)) "started without OMP_WAIT_POLICY: the same process (pid) goes on with OMP_WAIT_POLICY=PASSIVE, and serves" "environ of $DPID: '$e1'; caption status $st"
OMP_WAIT_POLICY=ACTIVE run_daemon "$T/omp.log" --model "$M" --no-weights-cache
e2=$(omp_env)
stop_daemon
[ "$e2" = "OMP_WAIT_POLICY=ACTIVE" ]
report $((1 - $?)) "... a user's OMP_WAIT_POLICY is kept" "environ of $DPID: '$e2'"
LD_PRELOAD=$T/vgpreload_memcheck-amd64-linux.so run_daemon "$T/omp.log" --model "$M" --no-weights-cache
e3=$(omp_env)
stop_daemon
[ -z "$e3" ]
report $((1 - $?)) "... under valgrind (its vgpreload in LD_PRELOAD) not started again" "environ of $DPID: '$e3'"
[ "$saved_owp" != unset ] && { OMP_WAIT_POLICY=$saved_owp; export OMP_WAIT_POLICY; }

echo "1..$n"
[ $failed -eq 0 ]
