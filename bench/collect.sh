#!/bin/sh
# collect.sh [MODEL] [N] [REPEATS] - images per second of `blip2ctl caption
# -r` over a folder of N (200) images, with 1, 2, 4 requests in flight and
# the default window (twice the daemon's max_batch), each REPEATS (3) times;
# prints the median.  The images are the golden PNGs with distinct bytes
# appended (decoders ignore bytes after the image's end), so every file is
# a miss of the daemon's feature cache; each run gets a fresh daemon.  A
# last run repeats the default window on a warm cache (every file a hit).
# Run from the build tree; not part of `make check`.
set -eu
MODEL=${1:-tests/golden/opt-tiny}
N=${2:-200}
REP=${3:-3}
T=$(mktemp -d /tmp/blip2-collect.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$T"' EXIT
mkdir "$T/p"
i=0
while [ $i -lt "$N" ]; do
  for f in astronaut camera chelsea coffee coffee_rgba; do
    [ $i -lt "$N" ] || break
    { cat "tests/golden/images/$f.png"; printf 'copy %d' $i; } >"$T/p/${f}_$i.png"
    i=$((i + 1))
  done
done
start() {
  rm -f "$T/s.sock"
  ./daemon/blip2d --model "$MODEL" --socket "$T/s.sock" -q 2>>"$T/daemon.err" &
  PID=$!
  while [ ! -S "$T/s.sock" ]; do kill -0 $PID || exit 1; sleep 0.1; done
}
stop() { kill $PID; wait $PID 2>/dev/null || true; PID=; }
now() { date +%s.%N; }
run() { # run JOBS-FLAGS: prints images/s of one run on a fresh daemon
  start
  t0=$(now)
  ./ctl/blip2ctl --socket "$T/s.sock" caption -r "$T/p" $1 >"$T/out.jsonl" 2>"$T/err" || {
    cat "$T/err" >&2; exit 1; }
  t1=$(now)
  [ "$(grep -c '"cached":false' "$T/out.jsonl")" -eq "$N" ] || echo "warning: cache hits" >&2
  [ "${2:-}" = warm ] && {
    t0=$(now)
    ./ctl/blip2ctl --socket "$T/s.sock" caption -r "$T/p" $1 >"$T/out.jsonl" 2>"$T/err"
    t1=$(now)
    [ "$(grep -c '"cached":true' "$T/out.jsonl")" -eq "$N" ] || echo "warning: cache misses" >&2
  }
  stop
  echo "$N $t0 $t1" | awk '{ printf "%.2f\n", $1 / ($3 - $2) }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "images: $N from the golden PNGs, model: $MODEL, $(nproc) cores"
for j in "-j 1" "-j 2" "-j 4" ""; do
  r=$(k=0; while [ $k -lt "$REP" ]; do run "$j"; k=$((k + 1)); done | median)
  echo "${j:-default window}: $r images/s (median of $REP)"
done
r=$(k=0; while [ $k -lt "$REP" ]; do run "" warm; k=$((k + 1)); done | median)
echo "default window, warm feature cache: $r images/s (median of $REP)"
