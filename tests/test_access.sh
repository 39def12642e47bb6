#!/bin/sh
# test_access.sh - a client outside blip2d's --allow-uid/--allow-gid lists
# learns why it was turned away: blip2ctl exits 1 with the daemon's
# permission_denied message (not "connection lost", not "is it a blip2d
# socket?"), however the daemon's close races the client's hello; a listed
# uid is served.  Real daemon, tiny model, no root needed.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
tmpdir b2access
start() { # start SOCKET ARGS...: a daemon on SOCKET
  s=$1; shift
  "$DAEMON" --model "$GOLDEN/opt-tiny" --socket "$s" -t 1 -q "$@" 2>>"$T/daemon.err" &
  PIDS="$PIDS $!"
  wait_socket "$s" 300
}

me=$(id -u)
other=4242; [ "$me" -eq 4242 ] && other=4243
start "$T/deny.sock" --allow-uid "$other" --allow-gid "$other"
start "$T/allow.sock" --allow-uid "$other,$me"

good=1 detail=
for i in 1 2 3 4 5 6 7 8; do  # the close may come before or after the hello is written
  "$CTL" --socket "$T/deny.sock" ping >"$T/out" 2>"$T/err"; st=$?
  if [ $st -ne 1 ] || ! grep -q 'refused the connection: .*may not use blip2d' "$T/err" ||
     grep -q 'connection lost\|is it a blip2d socket' "$T/err"; then
    good=0 detail="try $i: status $st; $(head -c 400 "$T/err")"
    break
  fi
done
report $good "uid outside the allow lists: exit 1 with the daemon's permission_denied message, 8 times" "$detail"
grep -qF "$T/deny.sock" "$T/err"
report $((1 - $?)) "... the message names the socket" "$(head -c 400 "$T/err")"
"$CTL" --socket "$T/deny.sock" caption "$GOLDEN/images/camera.png" >"$T/out" 2>"$T/err"; st=$?
[ $st -eq 1 ] && grep -q 'may not use blip2d' "$T/err"
report $((1 - $?)) "caption is refused the same way" "status $st; $(head -c 400 "$T/err")"
"$CTL" --socket "$T/allow.sock" ping >"$T/out" 2>"$T/err"; st=$?
[ $st -eq 0 ] && grep -q '^pong from blip2d' "$T/out"
report $((1 - $?)) "a listed uid is served" "status $st; $(head -c 400 "$T/err")"

echo "1..$n"
[ $failed -eq 0 ]
