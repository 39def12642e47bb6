#!/bin/sh
# test_queue.sh - blip2d --queue workers (daemon/queue.c) and the queue
# commands of blip2ctl (queue/queue_main.c) against a real redis-server on
# a Unix socket in a temporary directory (AOF on, appendfsync always) and
# three blip2d workers on the tiny model:
#   - NJOBS jobs (6 golden images x NJOBS/6 prompts; 300 by default): every
#     job exactly one result, equal to the serial result of the same
#     request (blip2ctl caption -j 1 on a plain socket, before any queue
#     work);
#   - meanwhile a worker is killed with SIGKILL while it holds jobs and
#     Redis is killed and restarted: still one result per job, the dead
#     worker's jobs reclaimed (its pending count back to 0);
#   - enqueue again: a no-op; results -o again: nothing appended;
#   - poison jobs (a text file, an oversized request, a bad parameter
#     written with XADD, paths outside --queue-allow-paths, directly and
#     through a symbolic link): dead letters with their codes, error lines
#     in the results, the workers still alive and still working.
# BLIP2_TEST_QUEUE_JOBS=N changes the job count (a multiple of 6); the
# default keeps the test near a minute.  TAP output.
set -u
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "1..0 # SKIP redis-server/redis-cli not installed (scripts/install-deps.sh)"
  exit 0
fi
. "$(dirname "$0")/lib.sh"
case $CTL in /*) ;; *) CTL=$(pwd)/$CTL ;; esac
case $DAEMON in /*) ;; *) DAEMON=$(pwd)/$DAEMON ;; esac
tmpdir b2queue
NJOBS=${BLIP2_TEST_QUEUE_JOBS:-300}
NP=$((NJOBS / 6))
RS=$T/redis.sock
Q=unix:$RS/jobs
MAXTOK=6

start_redis() {
  rm -f "$RS"
  redis-server --port 0 --unixsocket "$RS" --dir "$T" --appendonly yes --appendfsync always \
    --save "" >"$T/redis.log" 2>&1 &
  RPID=$!
  PIDS="$PIDS $RPID"
  wait_socket "$RS" 200
  i=0  # until the AOF is loaded
  while ! redis-cli -s "$RS" ping 2>/dev/null | grep -q PONG && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
}
# worker N: blip2d on $T/wN.sock working the queue; pid in W_N
start_worker() {
  "$DAEMON" --model "$GOLDEN/opt-tiny" --socket "$T/w$1.sock" -t 1 -q --max-frame 1048576 \
    --queue "$Q" --queue-consumer "w$1" --queue-idle 2 --queue-window 2 --queue-max-tries 3 \
    --queue-allow-paths "$T/root" 2>>"$T/w$1.err" &
  eval "W_$1=$!"
  PIDS="$PIDS $!"
  wait_socket "$T/w$1.sock" 600
}
results_count() { redis-cli -s "$RS" XLEN jobs:results 2>/dev/null || echo 0; }
# wait_results N: until jobs:results has N entries (at most 180 s; nothing is timed)
wait_results() {
  i=0
  while [ "$(results_count)" -lt "$1" ] 2>/dev/null && [ $i -lt 3600 ]; do sleep 0.05; i=$((i + 1)); done
}
pending_of() { # pending_of CONSUMER
  redis-cli -s "$RS" XPENDING jobs blip2d - + 1000 "$1" 2>/dev/null | grep -c '^[0-9]*-[0-9]*$'
}

start_redis
mkdir -p "$T/root" "$T/outside"
start_worker 1

# the jobs: directory dK holds the 6 golden images, captioned with prompt K
# (K = 0: no prompt); the serial reference on worker 1's socket, one at a time
: >"$T/serial.jsonl"
k=0
while [ $k -lt $NP ]; do
  d=$T/root/d$k
  mkdir -p "$d"
  for f in astronaut.png rocket.jpg camera.png chelsea.png coffee.png coffee_rgba.png; do
    # symbolic links (never hard links: lib.sh's cleanup chmods what is in
    # T), copies where the jobs go by path (they must lie under the root)
    if [ $k -eq 1 ]; then cp "$GOLDEN/images/$f" "$d/$f"; else ln -s "$GOLDEN/images/$f" "$d/$f"; fi
  done
  if [ $k -eq 0 ]; then set -- ; else set -- --prompt "a picture of thing $k:"; fi
  "$CTL" --socket "$T/w1.sock" -j 1 --no-progress --max-new-tokens $MAXTOK "$@" caption -r "$d" \
    >>"$T/serial.jsonl" 2>>"$T/serial.err"
  k=$((k + 1))
done
[ "$(wc -l <"$T/serial.jsonl")" -eq "$NJOBS" ]
report $((1 - $?)) "serial reference: $NJOBS results" "$(head -c 300 "$T/serial.err")"

start_worker 2
start_worker 3
# enqueue in the background, prompt by prompt (an enqueue that meets Redis
# down is simply run again: it is resumable), while worker 2 is killed as
# soon as it holds jobs, and Redis with it
enqueue_all() {
  k=0
  while [ $k -lt $NP ]; do
    if [ $k -eq 0 ]; then set -- ; else set -- --prompt "a picture of thing $k:"; fi
    tries=0
    while :; do
      if [ $k -eq 1 ]; then  # one by path, one through --files-from
        "$CTL" enqueue --queue "$Q" --max-new-tokens $MAXTOK --by-path "$@" -r "$T/root/d$k" 2>>"$T/enqueue.err"
      elif [ $k -eq 2 ]; then
        ls "$T/root/d$k"/* | "$CTL" enqueue --queue "$Q" --max-new-tokens $MAXTOK "$@" --files-from - 2>>"$T/enqueue.err"
      else
        "$CTL" enqueue --queue "$Q" --max-new-tokens $MAXTOK "$@" -r "$T/root/d$k" 2>>"$T/enqueue.err"
      fi && break
      tries=$((tries + 1))
      [ $tries -lt 100 ] || { echo "enqueue $k: gave up" >>"$T/enqueue.err"; break; }
      sleep 0.1
    done
    k=$((k + 1))
  done
}
: >"$T/enqueue.err"
enqueue_all &
EPID=$!
i=0
while [ "$(pending_of w2)" -eq 0 ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i + 1)); done
HELD=$(pending_of w2)
kill -9 "$W_2"
kill -9 "$RPID"
wait "$RPID" 2>/dev/null
sleep 0.3
start_redis
wait "$EPID"
grep -q "gave up" "$T/enqueue.err"
report $? "enqueue: every file enqueued (a run that met Redis down run again)" "$(grep "gave up" "$T/enqueue.err" | head -3)"
wait_results "$NJOBS"
"$CTL" results --queue "$Q" -o "$T/results.jsonl" 2>"$T/results.err"; st=$?
$PY - "$T/serial.jsonl" "$T/results.jsonl" "$NJOBS" <<'EOF'
import json, sys
serial = {}
for l in open(sys.argv[1]):
    o = json.loads(l)
    serial[o["path"]] = o
res = [json.loads(l) for l in open(sys.argv[2])]
n = int(sys.argv[3])
jobs = [o["job"] for o in res]
assert len(res) == n, ("results", len(res), n)
assert len(set(jobs)) == n, "a job has two results"
paths = sorted(o["path"] for o in res)
assert paths == sorted(serial), "not the same files"
for o in res:
    s = serial[o["path"]]
    assert "error" not in o, o
    assert (o["text"], o["ids"], o["finish"]) == (s["text"], s["ids"], s["finish"]), (o, s)
EOF
report $(($? == 0 && st == 0)) "$NJOBS jobs, 3 workers, one killed mid-job and Redis restarted: exactly one result per job, equal to the serial result" \
  "status $st: $(head -c 300 "$T/results.err")"
[ "$(pending_of w2)" -eq 0 ] && [ "${HELD:-0}" -gt 0 ]
report $((1 - $?)) "the killed worker held ${HELD:-0} jobs; they were reclaimed (none left pending)" "pending $(pending_of w2)"

# resumable: enqueue again is a no-op, results -o appends nothing
"$CTL" enqueue --queue "$Q" --max-new-tokens $MAXTOK -r "$T/root/d0" 2>"$T/again.err"; st=$?
grep -q "0 enqueued, 6 already enqueued" "$T/again.err" && [ $st -eq 0 ]
report $((1 - $?)) "enqueue again: a no-op by content hash" "status $st: $(cat "$T/again.err")"
"$CTL" results --queue "$Q" -o "$T/results.jsonl" 2>"$T/results2.err"
[ "$(wc -l <"$T/results.jsonl")" -eq "$NJOBS" ]
report $((1 - $?)) "results -o again appends nothing" "$(wc -l <"$T/results.jsonl") lines"

# poison jobs
echo "not a picture" >"$T/root/notes.png"
head -c 1500000 /dev/urandom >"$T/root/huge.png"
cp "$GOLDEN/images/camera.png" "$T/outside/secret.png"
cp "$GOLDEN/images/chelsea.png" "$T/outside/other.png"
ln -s "$T/outside/other.png" "$T/root/escape.png"
"$CTL" enqueue --queue "$Q" "$T/root/notes.png" "$T/root/huge.png" 2>>"$T/poison.err"
"$CTL" enqueue --queue "$Q" --by-path "$T/outside/secret.png" "$T/root/escape.png" 2>>"$T/poison.err"
$PY -c 'import msgpack,sys; sys.stdout.buffer.write(msgpack.packb({"id":0,"op":"generate","image":open(sys.argv[1],"rb").read(),"num_beams":99}, use_bin_type=True))' \
  "$GOLDEN/images/camera.png" | redis-cli -s "$RS" -x XADD jobs '*' id beams99 src beams99 op caption req >/dev/null
"$CTL" enqueue --queue "$Q" --max-new-tokens 3 "$T/root/d0/camera.png" 2>>"$T/poison.err"
wait_results $((NJOBS + 6))
"$CTL" results --queue "$Q" -o "$T/results.jsonl" 2>>"$T/poison.err"
$PY - "$T/results.jsonl" "$NJOBS" <<'EOF'
import json, sys
res = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
codes = {o["path"].split("/")[-1]: o.get("error", {}).get("code") for o in res}
want = {"notes.png": "bad_image", "huge.png": "too_large", "secret.png": "permission_denied",
        "escape.png": "permission_denied", "beams99": "out_of_range", "camera.png": None}
assert codes == want, codes
EOF
report $((1 - $?)) "poison jobs: error lines with their codes; a job after them is done" "$(tail -c 600 "$T/results.jsonl")"
[ "$(redis-cli -s "$RS" XLEN jobs:dead)" -eq 5 ] && kill -0 "$W_1" && kill -0 "$W_3"
report $((1 - $?)) "poison jobs: 5 dead letters, the workers alive" "dead: $(redis-cli -s "$RS" XLEN jobs:dead)"
"$CTL" queue-status --queue "$Q" --json >"$T/status.json" 2>&1
$PY - "$T/status.json" "$NJOBS" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
assert s["done"] == n + 1 and s["dead_letters"] == 5 and s["waiting"] == 0 and s["in_flight"] == 0, s
assert s["enqueued"] == n + 5, s   # the XADD by hand was never "enqueued"
EOF
report $((1 - $?)) "queue-status: done, dead letters, nothing waiting or in flight" "$(cat "$T/status.json")"
for w in 1 3; do kill "$(eval echo \$W_$w)"; done
wait "$W_1" "$W_3" 2>/dev/null
echo "1..$n"
[ $failed -eq 0 ]
