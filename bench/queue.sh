#!/bin/sh
# bench/queue.sh - throughput of blip2d queue workers (blip2d --queue, a
# redis-server of its own on a Unix socket, AOF with appendfsync always)
# against `blip2ctl caption -r` on the same images, in the same run.
#
#   sh bench/queue.sh [MODEL] [JOBS] [ROUNDS]
#
# MODEL: a model folder or GGUF file (default tests/golden/opt-tiny: there
# the model's time is small and the numbers show the queue's own cost per
# job); JOBS: a multiple of 6 (6 golden images x JOBS/6 prompts, default
# 120); ROUNDS: repetitions (default 3; medians are printed).
# Every round measures, with the machine's 2 cores:
#   direct  one blip2d -t 2, `blip2ctl caption -r` over each prompt's folder
#   K=1     one worker  (-t 2)
#   K=2     two workers (-t 1 each)
# Workers take --queue-window 16, the requests `caption -r` keeps in flight
# (twice --max-batch), so both feed the batch alike; WINDOW=N changes it
# (the daemon's default, half of --max-batch, leaves room for local users).
# queue times run from the first `blip2ctl enqueue` to the last result in
# Redis (enqueueing included, it overlaps the work).  Overhead per job =
# (K=1 time - direct time) / JOBS.
set -u
cd "$(dirname "$0")/.."
MODEL=${1:-tests/golden/opt-tiny}
JOBS=${2:-120}
ROUNDS=${3:-3}
NP=$((JOBS / 6))
DAEMON=${BLIP2D:-daemon/blip2d}
CTL=${BLIP2CTL:-ctl/blip2ctl}
export BLIP2_QUEUE_TOOL=${BLIP2_QUEUE_TOOL:-$(pwd)/queue/blip2-queue}
T=$(mktemp -d "${TMPDIR:-/tmp}/b2qbench.XXXXXX") || exit 1
PIDS=
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
now() { date +%s.%N; }
wait_sock() { i=0; while [ ! -S "$1" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done; }

RS=$T/redis.sock
redis-server --port 0 --unixsocket "$RS" --dir "$T" --appendonly yes --appendfsync always --save "" \
  >"$T/redis.log" 2>&1 &
PIDS="$PIDS $!"
wait_sock "$RS"
k=0
while [ $k -lt $NP ]; do
  mkdir -p "$T/img/d$k"
  for f in astronaut.png rocket.jpg camera.png chelsea.png coffee.png coffee_rgba.png; do
    cp tests/golden/images/$f "$T/img/d$k/"
  done
  k=$((k + 1))
done
# with_prompt K CMD...: CMD, with prompt K appended (K = 0: a plain caption)
with_prompt() { k_=$1; shift; if [ "$k_" -eq 0 ]; then "$@"; else "$@" --prompt "a picture of thing $k_:"; fi; }

direct() { # one daemon, blip2ctl caption -r per folder
  "$DAEMON" --model "$MODEL" --socket "$T/d.sock" -t 2 -q 2>>"$T/d.err" &
  p=$!
  wait_sock "$T/d.sock"
  t0=$(now)
  k=0
  while [ $k -lt $NP ]; do
    with_prompt $k "$CTL" --socket "$T/d.sock" --no-progress caption -r "$T/img/d$k" >/dev/null 2>>"$T/d.err"
    k=$((k + 1))
  done
  t1=$(now)
  kill $p; wait $p 2>/dev/null
  echo "$t1 - $t0" | bc -l
}

queue() { # queue K ROUND: K workers; seconds from the first enqueue to the last result
  K=$1; stream=r$2k$1
  th=$((2 / K))
  w=1; wp=
  while [ $w -le "$K" ]; do
    "$DAEMON" --model "$MODEL" --socket "$T/w$w.sock" -t $th -q --queue "unix:$RS/$stream" \
      --queue-idle 30 --queue-window "${WINDOW:-16}" 2>>"$T/w.err" &
    wp="$wp $!"
    wait_sock "$T/w$w.sock"
    w=$((w + 1))
  done
  t0=$(now)
  k=0
  while [ $k -lt $NP ]; do
    with_prompt $k "$CTL" enqueue --queue "unix:$RS/$stream" --no-progress -r "$T/img/d$k" 2>>"$T/e.err"
    k=$((k + 1))
  done
  while [ "$(redis-cli -s "$RS" XLEN "$stream:results")" -lt "$JOBS" ]; do sleep 0.01; done
  t1=$(now)
  kill $wp; wait $wp 2>/dev/null
  echo "$t1 - $t0" | bc -l
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
: >"$T/direct"; : >"$T/k1"; : >"$T/k2"
r=1
while [ $r -le "$ROUNDS" ]; do
  direct >>"$T/direct"
  queue 1 $r >>"$T/k1"
  queue 2 $r >>"$T/k2"
  r=$((r + 1))
done
D=$(median <"$T/direct"); K1=$(median <"$T/k1"); K2=$(median <"$T/k2")
echo "model $MODEL, $JOBS jobs, $ROUNDS rounds (medians), $(nproc) cores, --queue-window ${WINDOW:-16}, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf 'direct (blip2ctl caption -r):  %6.2f s  %7.2f jobs/s\n' "$D" "$(echo "$JOBS / $D" | bc -l)"
printf 'queue, K=1 worker:             %6.2f s  %7.2f jobs/s\n' "$K1" "$(echo "$JOBS / $K1" | bc -l)"
printf 'queue, K=2 workers:            %6.2f s  %7.2f jobs/s\n' "$K2" "$(echo "$JOBS / $K2" | bc -l)"
printf 'overhead per job (K=1 - direct): %.1f ms\n' "$(echo "($K1 - $D) * 1000 / $JOBS" | bc -l)"
echo "all rounds: direct $(tr '\n' ' ' <"$T/direct")| K=1 $(tr '\n' ' ' <"$T/k1")| K=2 $(tr '\n' ' ' <"$T/k2")"
