#!/bin/sh
# test_socket_order.sh - which socket blip2ctl (libblip2client) uses:
# --socket, else $BLIP2_SOCKET (alone), else $XDG_RUNTIME_DIR/blip2.sock (a
# user's daemon), then /run/blip2/blip2.sock (the system daemon); and -v
# says which and why.  Fake daemons from tests/fake_server.c
# (`test_client --serve PATH`).  The fall-back to the system socket is
# tried in a private mount namespace with a tmpfs on /run (root and
# unshare(1) needed; skipped otherwise), so the real /run is never touched.
set -u
FAKE=${FAKE_BLIP2D:-tests/test_client}
. "$(dirname "$0")/lib.sh"
tmpdir b2sock
serve() { # serve PATH: a fake daemon listening on PATH
  "$FAKE" --serve "$1" >/dev/null 2>&1 &
  PIDS="$PIDS $!"
  wait_socket "$1" 100
}
# used STATUS PATH ORIGIN NAME -- command...: exit STATUS and, when 0, -v
# reports "connected to PATH (ORIGIN)"
used() {
  want=$1 path=$2 origin=$3 name=$4; shift 5
  "$@" >"$T/out" 2>"$T/err" </dev/null; got=$?
  good=0
  if [ "$got" -eq "$want" ]; then
    if [ "$want" -ne 0 ] || grep -qF "connected to $path ($origin)" "$T/err"; then good=1; fi
  fi
  report $good "$name" "status $got (want $want); stderr: $(head -c 500 "$T/err")"
}

mkdir -p "$T/xdg" "$T/empty" "$T/env"
serve "$T/xdg/blip2.sock"
serve "$T/env/b.sock"
serve "$T/explicit.sock"

XDG_RUNTIME_DIR=$T/xdg; export XDG_RUNTIME_DIR
used 0 "$T/xdg/blip2.sock" '$XDG_RUNTIME_DIR' "no --socket, no \$BLIP2_SOCKET: the user socket in \$XDG_RUNTIME_DIR" -- \
  "$CTL" -v ping
BLIP2_SOCKET=$T/env/b.sock; export BLIP2_SOCKET
used 0 "$T/env/b.sock" '$BLIP2_SOCKET' "\$BLIP2_SOCKET comes before the user socket" -- "$CTL" -v ping
used 0 "$T/explicit.sock" 'explicit' "--socket comes before \$BLIP2_SOCKET" -- "$CTL" -v --socket "$T/explicit.sock" ping
BLIP2_SOCKET=$T/env/missing.sock
used 3 - - "a dead \$BLIP2_SOCKET is not replaced by another socket" -- "$CTL" -v ping
grep -qF "$T/env/missing.sock" "$T/err" && ! grep -qF "$T/xdg/blip2.sock" "$T/err"
report $((1 - $?)) "... the message names \$BLIP2_SOCKET's path only" "$(head -c 500 "$T/err")"
BLIP2_SOCKET=; export BLIP2_SOCKET
used 0 "$T/xdg/blip2.sock" '$XDG_RUNTIME_DIR' "an empty \$BLIP2_SOCKET counts as unset" -- "$CTL" -v ping
unset BLIP2_SOCKET

# no user socket: the system socket is tried next, and both are named
XDG_RUNTIME_DIR=$T/empty
used 3 - - "no user socket and no system daemon: exit 3" -- "$CTL" ping
grep -qF "$T/empty/blip2.sock (from \$XDG_RUNTIME_DIR)" "$T/err" &&
  grep -qF "/run/blip2/blip2.sock (from system default)" "$T/err"
report $((1 - $?)) "... the message names the user socket, then the system socket" "$(head -c 500 "$T/err")"
unset XDG_RUNTIME_DIR
used 3 - - "no \$XDG_RUNTIME_DIR: only the system socket is tried" -- "$CTL" ping
grep -qF "/run/blip2/blip2.sock (from system default)" "$T/err" && ! grep -q 'XDG_RUNTIME_DIR)' "$T/err"
report $((1 - $?)) "... and named" "$(head -c 500 "$T/err")"

# the fall-back itself, with a system socket in a private /run
if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null 2>&1 ||
   ! unshare -m --propagation private true 2>/dev/null; then
  n=$((n + 1)); echo "ok $n - # SKIP fall-back to /run/blip2/blip2.sock: needs root and unshare -m"
else
  cat >"$T/ns.sh" <<'EOF'
set -u
mount -t tmpfs -o mode=0755 blip2-test /run || exit 10
mkdir -p /run/blip2
"$FAKE" --serve /run/blip2/blip2.sock >/dev/null 2>&1 &
f=$!
i=0
while [ ! -S /run/blip2/blip2.sock ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
XDG_RUNTIME_DIR=$T/empty "$CTL" -v ping
st=$?
kill $f
exit $st
EOF
  FAKE=$FAKE CTL=$CTL T=$T unshare -m --propagation private sh "$T/ns.sh" >"$T/out" 2>"$T/err"
  st=$?
  if [ $st -eq 10 ]; then
    n=$((n + 1)); echo "ok $n - # SKIP fall-back to /run/blip2/blip2.sock: cannot mount a tmpfs here"
  else
    good=0
    [ $st -eq 0 ] && grep -qF "connected to /run/blip2/blip2.sock (system default)" "$T/err" && good=1
    report $good "no user socket: falls back to the system socket /run/blip2/blip2.sock, and -v says so" \
      "status $st; stderr: $(head -c 500 "$T/err")"
  fi
fi

echo "1..$n"
[ $failed -eq 0 ]
