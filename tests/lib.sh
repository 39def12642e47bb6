# lib.sh - what the shell tests that run daemons share (test_access.sh,
# test_collect.sh, test_socket_order.sh).  Not a test itself; a test sources
# it from its own directory, so that it is found from a VPATH build and
# `make distcheck` too:
#
#     . "$(dirname "$0")/lib.sh"
#     tmpdir b2name
#
# It unsets BLIP2_SOCKET (the tests choose their sockets), and gives
#   tmpdir NAME       T: a new directory ${TMPDIR:-/tmp}/NAME.XXXXXX; at exit
#                     the processes in $PIDS are killed and T is removed (made
#                     writable first: tests leave mode-000 files in it)
#   report OK NAME DETAIL   one TAP check: OK 1 passes; on a failure DETAIL
#                     follows as a comment line; counts in n and failed
#   wait_socket PATH TRIES  until PATH is a socket, at most TRIES x 0.05 s
# and the test ends with
#     echo "1..$n"
#     [ $failed -eq 0 ]
unset BLIP2_SOCKET
n=0; failed=0
PIDS=
T=

_lib_cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null; done
  if [ -n "$T" ]; then
    chmod -R u+rwx "$T" 2>/dev/null
    rm -rf "$T"
  fi
}

tmpdir() { # tmpdir NAME
  T=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX") || exit 1
  trap _lib_cleanup EXIT
}

report() { # report OK NAME DETAIL
  n=$((n + 1))
  if [ "$1" -eq 1 ]; then echo "ok $n - $2"
  else echo "not ok $n - $2"; echo "# $3"; failed=$((failed + 1)); fi
}

wait_socket() { # wait_socket PATH TRIES
  _i=0
  while [ ! -S "$1" ] && [ $_i -lt "$2" ]; do sleep 0.05; _i=$((_i + 1)); done
}
