#!/bin/sh
# startup.sh - blip2d start-up and memory at the real shapes (how to run:
# bench/README.md, "The daemon"; figures: bench/RESULTS.md, "GGUF at real
# shapes", 2026-11-27).  Not a test; run from the build tree:
#
#   sh bench/startup.sh MODEL.gguf [FOLDER] [IMAGE]
#
# 1. start to ready: the page cache is warmed (the file read once), then
#    blip2d is started REPEATS (5) times; "ready" is the first `blip2ctl
#    ping` that succeeds, polled as fast as blip2ctl runs.  Median and all
#    values, in ms.
# 2. two daemons on the same file: /proc/PID/smaps_rollup of both (Rss, Pss,
#    Shared_Clean, Private_Clean, Private_Dirty) once both are ready, and the
#    private memory outside the GGUF mapping (/proc/PID/smaps, every other
#    mapping's Private_Clean + Private_Dirty).
# 3. after one batch-1 caption (IMAGE, default tests/golden/images/chelsea.png)
#    on each daemon: the same figures again.  Pages of the file touched by
#    one process only count as its Private_Clean (page cache, shared as
#    soon as another process maps them); Anonymous is what a daemon really
#    adds.
# 4. with FOLDER (a Hugging Face folder): the first start through an empty
#    weights cache (conversion included) and a second, warm start, in ms.
#    The cache lives in a temporary directory next to the model file and is
#    deleted at the end (it is as large as the converted model).
# Environment: BLIP2D, BLIP2CTL (default daemon/blip2d, ctl/blip2ctl),
# REPEATS (5), THREADS (blip2d -t, default 2).
set -u
MODEL=${1:?usage: startup.sh MODEL.gguf [FOLDER] [IMAGE]}
FOLDER=${2:-}
IMAGE=${3:-tests/golden/images/chelsea.png}
BLIP2D=${BLIP2D:-daemon/blip2d}
BLIP2CTL=${BLIP2CTL:-ctl/blip2ctl}
# in a build tree ctl/blip2ctl is libtool's wrapper script, which costs
# ~0.4 s per run: call the binary behind it directly
if [ -x ctl/.libs/blip2ctl ] && [ "$BLIP2CTL" = ctl/blip2ctl ]; then
    BLIP2CTL=ctl/.libs/blip2ctl
    LD_LIBRARY_PATH=$(pwd)/client/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
fi
REPEATS=${REPEATS:-5}
THREADS=${THREADS:-2}
T=$(mktemp -d /tmp/b2startup.XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
    [ -n "${CACHE:-}" ] && rm -rf "$CACHE"
}
trap cleanup EXIT INT TERM

now_ms() { date +%s%3N; }

# start_daemon SOCK MODEL [args...]: sets DPID and READY_MS (start to the
# first successful ping)
start_daemon() {
    sock=$1; model=$2; shift 2
    rm -f "$sock"
    t0=$(now_ms)
    "$BLIP2D" --model "$model" --socket "$sock" -t "$THREADS" -q "$@" 2>>"$T/daemon.err" &
    DPID=$!
    PIDS="$PIDS $DPID"
    while ! "$BLIP2CTL" --socket "$sock" ping >/dev/null 2>&1; do
        if ! kill -0 "$DPID" 2>/dev/null; then echo "startup.sh: blip2d exited:" >&2; cat "$T/daemon.err" >&2; exit 1; fi
    done
    READY_MS=$(( $(now_ms) - t0 ))
}

stop_daemon() {
    kill "$1" 2>/dev/null; wait "$1" 2>/dev/null
    PIDS=$(echo "$PIDS" | tr ' ' '\n' | grep -vx "$1" | tr '\n' ' ')
}

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# mem PID LABEL: smaps_rollup figures (MiB) and the private memory outside the model file's mapping
mem() {
    awk -v l="$2" '/^(Rss|Pss|Shared_Clean|Shared_Dirty|Private_Clean|Private_Dirty|Anonymous):/ {v[$1] = $2}
        END {printf "  %-28s Rss %7.1f  Pss %7.1f  Shared_Clean %7.1f  Private_Clean %6.1f  Private_Dirty %6.1f  Anonymous %6.1f MiB\n",
             l, v["Rss:"]/1024, v["Pss:"]/1024, v["Shared_Clean:"]/1024, v["Private_Clean:"]/1024, v["Private_Dirty:"]/1024, v["Anonymous:"]/1024}' \
        "/proc/$1/smaps_rollup"
    awk -v f="$(readlink -f "$MODEL")" '
        /^[0-9a-f]+-[0-9a-f]+ / {inmap = ($6 == f)}
        /^Private_(Clean|Dirty):/ {if (inmap) pm += $2; else po += $2}
        /^Rss:/ {if (inmap) rm += $2}
        END {printf "  %-28s model mapping: Rss %7.1f, private %6.1f MiB; everything else: private %6.1f MiB\n", "", rm/1024, pm/1024, po/1024}' \
        "/proc/$1/smaps"
}

echo "model: $MODEL ($(du -m "$MODEL" | cut -f1) MiB), blip2d -t $THREADS, $(nproc) CPUs"
echo "load average before: $(cat /proc/loadavg)"

# 1. warm page cache, start to ready
cat "$MODEL" >/dev/null
times=""
for i in $(seq "$REPEATS"); do
    start_daemon "$T/a.sock" "$MODEL"
    times="$times $READY_MS"
    stop_daemon "$DPID"
done
echo "start to ready (warm page cache), ms: median $(echo $times | tr ' ' '\n' | median) of$times"
start_daemon "$T/a.sock" "$MODEL"
pt=""
for i in 1 2 3 4 5; do t0=$(now_ms); "$BLIP2CTL" --socket "$T/a.sock" ping >/dev/null 2>&1; pt="$pt $(( $(now_ms) - t0 ))"; done
echo "  (one blip2ctl ping against a ready daemon, process start included, ms:$pt: the resolution of the figure above)"
stop_daemon "$DPID"

# 2. two daemons on one file
start_daemon "$T/a.sock" "$MODEL"; A=$DPID
start_daemon "$T/b.sock" "$MODEL"; B=$DPID
echo "two daemons on the same file, both ready:"
mem "$A" "first daemon (pid $A)"
mem "$B" "second daemon (pid $B)"

# 3. one caption on each (the first one timed)
t0=$(now_ms)
cap=$("$BLIP2CTL" --socket "$T/a.sock" caption "$IMAGE" 2>&1)
echo "caption (batch 1, $IMAGE): $(( $(now_ms) - t0 )) ms: $cap"
cap2=$("$BLIP2CTL" --socket "$T/b.sock" caption "$IMAGE" 2>&1)
echo "after the caption (and the same caption on the second daemon, so both have touched the same pages):"
mem "$A" "first daemon (pid $A)"
mem "$B" "second daemon (pid $B)"
stop_daemon "$B"; stop_daemon "$A"

# 4. a folder through the weights cache
if [ -n "$FOLDER" ]; then
    CACHE=$(mktemp -d "$(dirname "$MODEL")/.b2cache.XXXXXX")
    start_daemon "$T/a.sock" "$FOLDER" --weights-cache "$CACHE"
    first=$READY_MS; stop_daemon "$DPID"
    start_daemon "$T/a.sock" "$FOLDER" --weights-cache "$CACHE"
    warm=$READY_MS; stop_daemon "$DPID"
    echo "folder $FOLDER through an empty weights cache: first start $first ms (conversion included), second start $warm ms"
    echo "  cache: $(ls -l "$CACHE" | tail -n +2 | awk '{printf "%s (%.0f MiB) ", $NF, $5/1048576}')"
fi
echo "load average after: $(cat /proc/loadavg)"
