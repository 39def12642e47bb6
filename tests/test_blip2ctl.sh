#!/bin/sh
# test_blip2ctl.sh - blip2ctl's exit statuses, messages and output, against
# the fake daemon of tests/fake_server.c (`test_client --serve SOCKET`).
# Usage errors and a missing daemon need no daemon at all.  TAP output.
set -u
CTL=${BLIP2CTL:-ctl/blip2ctl}
FAKE=${FAKE_BLIP2D:-tests/test_client}
T=$(mktemp -d /tmp/b2ctl.XXXXXX)
S=$T/blip2.sock
FAKE_PID=
cleanup() {
  [ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
n=0; failed=0
unset BLIP2_SOCKET
XDG_RUNTIME_DIR=$T/nowhere; export XDG_RUNTIME_DIR

report() {  # report OK NAME DETAIL
  n=$((n + 1))
  if [ "$1" -eq 1 ]; then echo "ok $n - $2"
  else echo "not ok $n - $2 ($3)"; failed=$((failed + 1)); fi
}

# expect STATUS STDERR-PATTERN NAME -- command...   (pattern '' = any)
expect() {
  want=$1; pat=$2; name=$3; shift 4
  "$@" >"$T/out" 2>"$T/err" </dev/null; got=$?
  good=0
  if [ "$got" -eq "$want" ] && { [ -z "$pat" ] || grep -q -- "$pat" "$T/err"; }; then good=1; fi
  report $good "$name" "status $got, want $want; stderr: $(head -c 400 "$T/err")"
}

# out_is EXPECTED NAME: stdout of the last expect
out_is() {
  printf '%s\n' "$1" >"$T/want"
  if cmp -s "$T/want" "$T/out"; then report 1 "$2" ""
  else report 0 "$2" "stdout: $(head -c 400 "$T/out")"; fi
}

img() { printf '%s\n' "$2" >"$T/$1"; }
img cat.png "cat"
img dog.png "dog"
img h1.png "hold one"
img h2.png "hold two"
img rel.png "release me"
img busy1.png "busy1"
img internal.png "internal"
img bad.png "badimage"
img die.png "die"
img seed.png "seed"

# ---- without a daemon ------------------------------------------------------
expect 0 '' "--help" -- "$CTL" --help
grep -q -- '--max-new-tokens' "$T/out" && grep -q 'Exit status' "$T/out"
report $((1 - $?)) "--help lists the flags and exit statuses" ""
expect 0 '' "--version" -- "$CTL" --version
grep -q '^blip2ctl [0-9]' "$T/out"; report $((1 - $?)) "--version prints the version" ""
expect 2 'missing command' "no command" -- "$CTL"
expect 2 "unknown command 'frobnicate'" "unknown command" -- "$CTL" frobnicate
expect 2 'unrecognized option' "unknown flag" -- "$CTL" --frob caption "$T/cat.png"
expect 2 'not a whole number' "--num-beams abc" -- "$CTL" --num-beams abc caption "$T/cat.png"
expect 2 'num_beams' "--num-beams 0 (checked before connecting)" -- "$CTL" --num-beams 0 caption "$T/cat.png"
expect 2 'top_p' "--top-p 1.5" -- "$CTL" --top-p 1.5 caption "$T/cat.png"
expect 2 'not a number' "--temperature x" -- "$CTL" --temperature x caption "$T/cat.png"
expect 2 'at most 8' "nine --stop" -- "$CTL" --stop a --stop b --stop c --stop d --stop e \
  --stop f --stop g --stop h --stop i caption "$T/cat.png"
expect 2 'at least one IMAGE' "caption without image" -- "$CTL" caption
expect 2 'give an IMAGE and a QUESTION' "ask without question" -- "$CTL" ask "$T/cat.png"
expect 2 'exactly one IMAGE' "chat with two images" -- "$CTL" chat "$T/cat.png" "$T/dog.png"
expect 2 'standard input' "chat -" -- "$CTL" chat -
expect 2 '--prompt is for caption' "--prompt with ask" -- "$CTL" --prompt x ask "$T/cat.png" q
expect 2 'takes no arguments' "status with an argument" -- "$CTL" status x
expect 2 'cannot open .*missing.png: No such file' "missing image file (before connecting)" -- \
  "$CTL" --socket "$S" caption "$T/cat.png" "$T/missing.png"
expect 2 'is empty' "empty stdin image" -- "$CTL" --socket "$S" caption -
expect 3 'blip2d --model' "no daemon: exit 3 with how to start it" -- "$CTL" --socket "$S" caption "$T/cat.png"
grep -q "$S" "$T/err"; report $((1 - $?)) "the message names the socket tried" ""
expect 3 '/run/blip2/blip2.sock' "default sockets: both candidates named" -- "$CTL" ping
grep -q "$XDG_RUNTIME_DIR/blip2.sock" "$T/err" && grep -q -- '--socket' "$T/err"
report $((1 - $?)) "... with \$XDG_RUNTIME_DIR's and a --socket hint" ""

# ---- with the fake daemon ---------------------------------------------------
"$FAKE" --serve "$S" &
FAKE_PID=$!
i=0
while [ ! -S "$S" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done

expect 0 '' "caption one image" -- "$CTL" --socket "$S" caption "$T/cat.png"
out_is "a picture of cat" "caption prints the caption (trimmed)"
expect 0 '' "caption several images" -- "$CTL" --socket "$S" caption "$T/h1.png" "$T/cat.png" "$T/h2.png" "$T/rel.png"
out_is "$T/h1.png: a picture of hold one
$T/cat.png: a picture of cat
$T/h2.png: a picture of hold two
$T/rel.png: a picture of release me" "several images: one line each, in input order despite out-of-order replies"
expect 0 '' "caption -j 1" -- "$CTL" --socket "$S" -j 1 caption "$T/cat.png" "$T/dog.png"
out_is "$T/cat.png: a picture of cat
$T/dog.png: a picture of dog" "--jobs 1"
BLIP2_SOCKET=$S; export BLIP2_SOCKET
expect 0 'connected to .*BLIP2_SOCKET' "-v says which socket (\$BLIP2_SOCKET)" -- "$CTL" -v ping
unset BLIP2_SOCKET
printf 'stdin image\n' >"$T/stdin.bin"
"$CTL" --socket "$S" caption - <"$T/stdin.bin" >"$T/out" 2>"$T/err"; st=$?
[ $st -eq 0 ] && grep -qx 'a picture of stdin image' "$T/out"
report $((1 - $?)) "caption - reads the image from stdin (inline)" "status $st: $(cat "$T/out" "$T/err")"
expect 0 '' "ask" -- "$CTL" --socket "$S" ask "$T/cat.png" what is this
out_is "answer 1 about cat" "ask: answer to \"Question: ... Answer:\""
expect 0 '' "--num-return-sequences 2 --num-beams 2" -- "$CTL" --socket "$S" --num-beams 2 --num-return-sequences 2 caption "$T/dog.png"
out_is "a picture of dog #0
a picture of dog #1" "one line per sequence"
expect 0 '' "busy once, retried" -- "$CTL" --socket "$S" caption "$T/busy1.png"
out_is "a picture of busy1" "a busy reply is retried"
expect 1 'fake internal failure' "server error: exit 1" -- "$CTL" --socket "$S" caption "$T/internal.png"
expect 2 'not an image' "bad_image: exit 2" -- "$CTL" --socket "$S" caption "$T/bad.png"
expect 1 'internal' "one failure among several: still exit 1, others printed" -- \
  "$CTL" --socket "$S" caption "$T/cat.png" "$T/internal.png" "$T/dog.png"
out_is "$T/cat.png: a picture of cat
$T/dog.png: a picture of dog" "... the other images' lines"
expect 1 'within the --timeout' "--timeout on a request that never ends: exit 1" -- "$CTL" --socket "$S" --timeout 0.2 caption "$T/h1.png"
expect 1 'no reply from blip2d within 200 ms' "--timeout with ask" -- "$CTL" --socket "$S" --timeout 0.2 ask "$T/h1.png" q
expect 4 'connection lost' "daemon dies: exit 4" -- "$CTL" --socket "$S" caption "$T/die.png"
expect 4 'connection lost' "daemon dies during several: exit 4" -- "$CTL" --socket "$S" caption "$T/cat.png" "$T/h1.png" "$T/die.png"

# JSON Lines
expect 0 '' "--json caption" -- "$CTL" --socket "$S" --json caption "$T/cat.png" "$T/seed.png"
python3 - "$T/out" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 2, lines
a, b = (json.loads(l) for l in lines)
assert a["text"] == "a picture of cat" and a["texts"] == ["a picture of cat"], a
assert a["ids"] == [[2, 100, 101, 102, 103, 2]] and a["finish"] == ["eos"], a
assert a["timings"]["total_ms"] == 12.5 and a["prompt_tokens"] == 7 and a["cached"] is False, a
assert "seed" not in a and b["seed"] == 18446744073709551615, b
EOF
report $((1 - $?)) "--json: one valid object per result (text, ids, finish, timings, exact seed)" "$(head -c 400 "$T/out")"
expect 1 '' "--json error object" -- "$CTL" --socket "$S" --json caption "$T/internal.png"
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["error"]["code"]=="internal", o' "$T/out"
report $((1 - $?)) "--json: errors as {\"error\": {\"code\", \"message\"}}" "$(head -c 300 "$T/out")"

# chat, piped
printf 'what is it?\n\nwhy?\n/reset\nand now?\n' | "$CTL" --socket "$S" chat "$T/cat.png" >"$T/out" 2>"$T/err"; st=$?
printf 'answer 1 about cat\nanswer 2 about cat\nanswer 1 about cat\n' >"$T/want"
cmp -s "$T/want" "$T/out"
report $((1 - $?)) "chat from a pipe: history grows per turn, /reset forgets it" "status $st: $(cat "$T/out" "$T/err")"
printf 'q?\n' | "$CTL" --socket "$S" --json chat "$T/cat.png" >"$T/out" 2>"$T/err"
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["question"]=="q?" and o["prompt"]=="Question: q? Answer:", o' "$T/out"
report $((1 - $?)) "chat --json: question and prompt" "$(head -c 300 "$T/out")"

expect 0 '' "status" -- "$CTL" --socket "$S" status
grep -q 'blip2-fake' "$T/out" && grep -q '5 hits' "$T/out"
report $((1 - $?)) "status prints model and cache" "$(head -c 300 "$T/out")"
grep -q '^math: *bf16 on oneDNN; decode kernels q8_0 avx2 (measured)$' "$T/out"
report $((1 - $?)) "status prints the math, backend and decode kernels" "$(head -c 600 "$T/out")"
grep -q '^mapping: *weights in 2 MiB pages: 100 % of the 0.1 GiB cached$' "$T/out"
report $((1 - $?)) "status prints how the weights are mapped" "$(head -c 700 "$T/out")"
expect 0 '' "status --json" -- "$CTL" --socket "$S" --json status
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); m=o["model"]; assert m["name"]=="blip2-fake" and o["cache"]["hits"]==5 and m["precision"]=="bf16" and m["backend"]=="oneDNN" and m["kernels"]=="q8_0 avx2 (measured)" and m["weights"].startswith("weights in 2 MiB pages"), o' "$T/out"
report $((1 - $?)) "status --json is valid JSON" "$(head -c 300 "$T/out")"
expect 0 '' "ping" -- "$CTL" --socket "$S" ping
grep -q '^pong from fake-blip2d 0' "$T/out"; report $((1 - $?)) "ping output" "$(cat "$T/out")"

# ---- issue 14: what a new user and a script author run into ----------------
# --json: an error object on stdout for bad input and for cannot-connect too
expect 2 'missing.png' "--json caption of a missing file: exit 2" -- "$CTL" --socket "$S" --json caption "$T/missing.png"
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["image"].endswith("missing.png") and o["error"]["code"]=="bad_input" and "missing.png" in o["error"]["message"], o' "$T/out"
report $((1 - $?)) "--json: a missing file gives an error object on stdout" "$(head -c 300 "$T/out")"
expect 3 'cannot connect' "--json with no daemon: exit 3" -- env BLIP2_SOCKET=$T/nope "$CTL" --json caption "$T/cat.png" "$T/dog.png"
python3 -c 'import json,sys; l=[json.loads(x) for x in open(sys.argv[1])]; assert len(l)==2 and all(o["error"]["code"]=="cannot_connect" for o in l) and l[1]["image"].endswith("dog.png"), l' "$T/out"
report $((1 - $?)) "--json: cannot-connect gives an error object per image on stdout" "$(head -c 300 "$T/out")"
expect 3 'cannot connect' "--json status with no daemon" -- env BLIP2_SOCKET=$T/nope "$CTL" --json status
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["error"]["code"]=="cannot_connect", o' "$T/out"
report $((1 - $?)) "--json status: cannot-connect as an error object" "$(head -c 300 "$T/out")"
expect 2 'empty' "--json caption - with empty stdin" -- "$CTL" --socket "$S" --json caption -
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["image"]=="-" and o["error"]["code"]=="bad_input", o' "$T/out"
report $((1 - $?)) "--json: an empty stdin image gives an error object" "$(head -c 300 "$T/out")"
# names that are not UTF-8: U+FFFD per bad byte, as the collections write them
LAT=$(printf "$T/lat\\351.png")
printf 'latin\n' >"$LAT"
expect 0 '' "--json caption of a file named in Latin-1" -- "$CTL" --socket "$S" --json caption "$LAT"
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["image"].endswith("lat\ufffd.png"), o' "$T/out"
report $((1 - $?)) "--json: a non-UTF-8 name is escaped with U+FFFD (not '?')" "$(head -c 300 "$T/out")"
# a question that is not UTF-8: the offset is the question's own
expect 2 'byte 2 of the question' "ask with a question that is not UTF-8" -- "$CTL" --socket "$S" ask "$T/cat.png" "$(printf 'a\377b')"
# --temperature 0 = greedy (llama.cpp, Ollama)
expect 0 '' "--temperature 0 is greedy, not an error" -- "$CTL" --socket "$S" --temperature 0 caption "$T/cat.png"
out_is "a picture of cat" "... and captions"
expect 0 '' "--do-sample --temperature 0 is greedy too" -- "$CTL" --socket "$S" --do-sample --temperature 0 --json caption "$T/cat.png"
python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert "seed" not in o, o' "$T/out"
report $((1 - $?)) "... (no sampling seed: greedy)" "$(head -c 300 "$T/out")"
# a directory without -r says how to caption what is in it
expect 2 'use -r' "caption DIR without -r: the hint" -- "$CTL" --socket "$S" caption "$T"
"$CTL" --help | grep -q "^ *blip2ctl convert SRC OUT.gguf"
report $((1 - $?)) "--help: the Usage lines name convert" ""
# a path that is not a socket, and a socket this user may not open
: >"$T/plain"
expect 3 'not a socket (a file)' "--socket to a regular file: 'is not a socket'" -- "$CTL" -s "$T/plain" ping
expect 3 'not a socket (a directory)' "--socket to a directory: 'is not a socket'" -- "$CTL" -s "$T" ping
grep -q 'stale socket' "$T/err"; report $? "... not called a stale socket" "$(head -c 300 "$T/err")"
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null && getent group users >/dev/null; then
  chmod 755 "$T"; chgrp users "$S"; chmod 660 "$S"
  expect 3 "usermod -aG users" "permission denied: join the socket's group" -- \
    setpriv --reuid=65534 --regid=65534 --clear-groups "$CTL" -s "$S" ping
  grep -q 'Is blip2d running' "$T/err"; report $? "... not 'Is blip2d running?'" "$(head -c 300 "$T/err")"
  chmod 777 "$S"; chmod 700 "$T"
else
  n=$((n + 1)); echo "ok $n - # SKIP permission test needs root, setpriv and the group users"
fi

# chat on a terminal (a pty): history with Up, /help, /image, Ctrl-D
TERM=xterm python3 - "$CTL" "$S" "$T" <<'EOF' >"$T/chat.log" 2>&1
import os, pty, select, sys, termios, time
ctl, sock, t = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.execv(ctl, [ctl, "--socket", sock, "chat", t + "/cat.png"])
buf = b""
def until(what, start=0, limit=30):
    global buf
    end = time.time() + limit
    while what not in buf[start:]:
        if time.time() > end:
            raise SystemExit("timed out waiting for %r; got %r" % (what, buf))
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return start + buf[start:].index(what) + len(what)
def editing(limit=30):
    # type only once the line editor has the terminal (ICANON off), as a
    # person would: keys typed earlier are echoed by the tty itself
    end = time.time() + limit
    while termios.tcgetattr(fd)[3] & termios.ICANON:
        if time.time() > end:
            raise SystemExit("the terminal never left canonical mode")
        time.sleep(0.01)
def step(line, answer):
    # send a line once the prompt is up, wait for the answer and the next prompt
    editing()
    os.write(fd, line)
    until(b"> ", until(answer, len(buf)))
until(b"> ")
step(b"what is it?\r", b"answer 1 about cat")
step(b"\x1b[A\r", b"answer 2 about cat")          # Up recalls the last question
step(b"/help\r", b"/image FILE")
step(b"/image " + t.encode() + b"/dog.png\r", b"now about")
step(b"and this?\r", b"answer 1 about dog")      # a new image starts over
step(b"/frob\r", b"no such command")
editing()
os.write(fd, b"\x04")                                   # Ctrl-D
_, st = os.waitpid(pid, 0)
try:
    while True:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r: break
        buf += os.read(fd, 4096)
except OSError:
    pass
assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, st
# the shell's prompt starts on a clean line: the "> " line erased (or a newline)
assert buf.endswith(b"\r\x1b[K") or buf.endswith(b"\n"), repr(buf[-200:])
assert b"^[[A" not in buf, "Up echoed as ^[[A: %r" % buf
print("ok")
EOF
grep -qx ok "$T/chat.log"
report $((1 - $?)) "chat on a terminal: Up recalls history, /help, /image, unknown /commands, Ctrl-D ends the line" "$(tail -c 600 "$T/chat.log")"

# the library exports only its prefix
LIB=$(dirname "$CTL")/.libs/libblip2client.so
if [ -f "$LIB" ] && command -v nm >/dev/null; then
  bad=$(nm -D --defined-only "$LIB" | awk '$2 ~ /^[TDBR]$/ && $3 !~ /^blip2c_/ {print $3}' | head -5)
  [ -z "$bad" ]; report $((1 - $?)) "libblip2client exports only blip2c_*" "also: $bad"
else
  n=$((n + 1)); echo "ok $n - # SKIP no shared library or nm"
fi

echo "1..$n"
[ $failed -eq 0 ]
