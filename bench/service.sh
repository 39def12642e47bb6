#!/bin/sh
# service.sh MODEL [IMAGE] - starts blip2d on MODEL and measures aggregate
# decode throughput and latency for 1, 2, 4 and 8 concurrent clients
# (bench_service), then stops it.  Run from the build tree after `make bench`.
set -eu
MODEL=${1:?usage: bench/service.sh MODEL [IMAGE] [MAX_NEW_TOKENS] [REQUESTS]}
IMAGE=${2:-tests/golden/images/chelsea.png}
NEW=${3:-20}
REQ=${4:-4}
SOCK=$(mktemp -u /tmp/blip2-bench.XXXXXX.sock)
./daemon/blip2d --model "$MODEL" --socket "$SOCK" --max-batch 8 -q &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$SOCK"' EXIT
while [ ! -S "$SOCK" ]; do kill -0 $PID || exit 1; sleep 0.2; done
for n in 1 2 4 8; do
  ./bench/bench_service --socket "$SOCK" --image "$IMAGE" --clients $n --requests "$REQ" --max-new-tokens "$NEW"
done
