# lib.sh - what the shell tests share (those that run daemons: test_access.sh,
# test_collect.sh, test_socket_order.sh, ...; those that run a TAP program
# several times: test_golden_gguf.sh, test_golden_bf16.sh, test_golden_int8.sh).  Not a test
# itself; a test sources
# it from its own directory, so that it is found from a VPATH build and
# `make distcheck` too:
#
#     . "$(dirname "$0")/lib.sh"
#     tmpdir b2name
#
# It unsets BLIP2_SOCKET (the tests choose their sockets), sets DAEMON, CTL
# and GOLDEN (the programs under test and the golden folder: $BLIP2D,
# $BLIP2CTL, $GOLDEN_DIR, else the build tree's) and PY, and gives
#   tmpdir NAME       T: a new directory ${TMPDIR:-/tmp}/NAME.XXXXXX; at exit
#                     the processes in $PIDS are killed and T is removed (made
#                     writable first: tests leave mode-000 files in it)
#   report OK NAME DETAIL   one TAP check: OK 1 passes; on a failure DETAIL
#                     follows as a comment line; counts in n and failed
#   wait_socket PATH TRIES  until PATH is a socket, at most TRIES x 0.05 s
#   tap_labelled LABEL CMD...  runs the TAP program CMD and prints its checks
#                     with "[LABEL] " before each name, without its plan; an
#                     exit status other than 0 with no "not ok" becomes one
#   golden_onednn LABEL VAR=VALUE...  tap_labelled on tests/test_golden (or
#                     TEST=./tests/test_golden_t5) in that environment, every
#                     product of one row or more sent to oneDNN
#   tap_renumber      a filter: the checks of several runs numbered as one
#                     plan, printed at the end
# and the test ends with
#     echo "1..$n"
#     [ $failed -eq 0 ]
unset BLIP2_SOCKET
DAEMON=${BLIP2D:-daemon/blip2d}
CTL=${BLIP2CTL:-ctl/blip2ctl}
GOLDEN=${GOLDEN_DIR:-tests/golden}
PY=/usr/bin/python3
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

wait_socket() { # wait_socket PATH TRIES (of 50 ms; times BLIP2_TEST_TIMEOUT_SCALE, rounded up)
  _i=0
  _n=$(awk -v t="$2" -v s="${BLIP2_TEST_TIMEOUT_SCALE:-1}" 'BEGIN { n = t * (s < 1 ? 1 : s); print (n == int(n)) ? n : int(n) + 1 }')
  while [ ! -S "$1" ] && [ $_i -lt "$_n" ]; do sleep 0.05; _i=$((_i + 1)); done
}

tap_labelled() { # tap_labelled LABEL CMD...
  _label=$1; shift
  _out=$("$@")
  _st=$?
  case $_out in *"not ok"*) ;; *) [ $_st -eq 0 ] || _out="$_out
not ok 0 - $* exited with status $_st";; esac
  printf '%s\n' "$_out" | while IFS= read -r _line; do
    case $_line in
    "ok "*|"not ok "*) echo "$_line" | sed "s/^\(not \)\{0,1\}ok [0-9]* - /&[$_label] /" ;;
    1..*) ;;
    *) echo "$_line" ;;
    esac
  done
}

golden_onednn() { # golden_onednn LABEL VAR=VALUE...: tests/test_golden (tests/test_golden_t5 with
  # TEST=./tests/test_golden_t5) in that environment, every product of one row or more sent to
  # oneDNN (GOLDEN_MM_ROWS=1, BLIP2_MATMUL=onednn), its TAP lines labelled
  _glabel=$1; shift
  tap_labelled "$_glabel" env GOLDEN_MM_ROWS=1 BLIP2_MATMUL=onednn TEST=./tests/test_golden "$@" sh -c '"$TEST"'
}

tap_renumber() {
  awk '/^(not )?ok [0-9]+ - /{ n++; sub(/ok [0-9]+ - /, "ok " n " - ") } { print } END { print "1.." n }'
}
