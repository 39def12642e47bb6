#!/bin/sh
# run.sh - builds the libFuzzer targets with clang and runs each for
# FUZZ_SECONDS (default 60) from its seed corpus; see README.md.
#
#   sh tests/fuzz/run.sh [target ...]      (targets: ipc safetensors config
#                                           tokenizer image gguf server;
#                                           default all)
# Environment: FUZZ_SECONDS, FUZZ_BUILD (build dir, default
# tests/fuzz/build), FUZZ_JOBS (targets run at once, default 1), CC (clang),
# FUZZ_BUILD_ONLY=1.  Output is TAP, one test per target; a crash fails its
# test and leaves the input in $FUZZ_BUILD/crashes/.  Without clang or
# libFuzzer the run is skipped (1..0 # SKIP) and exits 0.  The server target
# links the gcc-built model library of a configured build (FUZZ_MODEL_LIB,
# default model/.libs/libblip2model.a: run make first).
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
secs=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD:-$here/build}
jobs=${FUZZ_JOBS:-1}
cc=${CC_FUZZ:-clang}
targets=${*:-ipc safetensors config tokenizer image gguf server}
model_lib=${FUZZ_MODEL_LIB:-$top/model/.libs/libblip2model.a}

mkdir -p "$build/crashes" "$build/corpus" "$build/log" || exit 1
build=$(cd "$build" && pwd)

flags="-std=gnu11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
 -fno-sanitize-recover=undefined -I$top/model -I$top/model/base -I$top/model/compute -I$top/model/formats -I$top/model/text -I$top/model/image -I$top/model/nn -I$top/libipc"

# libFuzzer present?  (Debian: clang, libclang-rt-14-dev)
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' > "$build/probe.c"
if ! command -v "$cc" >/dev/null 2>&1 ||
   ! $cc $flags -o "$build/probe" "$build/probe.c" >"$build/log/probe" 2>&1; then
    echo "1..0 # SKIP clang with libFuzzer not available (install clang libclang-rt-14-dev)"
    exit 0
fi

sources() {
    case $1 in
    ipc) echo "libipc/ipc.c libipc/frame.c libipc/scan.c libipc/schema.c libipc/decode.c libipc/encode.c libipc/validate.c" ;;
    safetensors) echo "model/formats/safetensors.c model/compute/wtype.c model/base/error.c" ;;
    config) echo "model/formats/config.c model/weights.c model/formats/gguf.c model/compute/wtype.c model/formats/safetensors.c model/base/error.c" ;;
    tokenizer) echo "model/text/tokenizer.c model/base/utf8.c model/base/cleanup.c model/base/error.c" ;;
    image) echo "model/image/image.c model/base/error.c" ;;
    gguf) echo "model/formats/gguf.c model/compute/wtype.c model/formats/safetensors.c model/base/error.c" ;;
    # every daemon source but main.c, libipc, and the model as the gcc build made it
    server) (cd "$top" && ls daemon/*.c queue/queue.c | grep -v '^daemon/main.c$' | grep -v '^daemon/http' | tr '\n' ' ')
        echo "libipc/ipc.c libipc/frame.c libipc/scan.c libipc/schema.c libipc/decode.c libipc/encode.c libipc/validate.c $model_lib" ;;
    esac
}
packages() {
    case $1 in
    ipc) if pkg-config --exists msgpack-c; then echo msgpack-c; else echo msgpack; fi ;;
    safetensors|config) echo jansson ;;
    tokenizer) echo "jansson libpcre2-8" ;;
    image) echo "vips libtiff-4 jansson" ;;
    gguf) echo jansson ;;
    server) if pkg-config --exists msgpack-c; then echo msgpack-c hiredis; else echo msgpack hiredis; fi
        echo "libuv glib-2.0 libsystemd vips libtiff-4 jansson libpcre2-8 sentencepiece openblas" ;;
    esac
}

# The instrumented resize runs ~20x slower: a lower work cap keeps every
# accepted image under the 10 s timeout (model/image/image.c B2_RESIZE_WORK_MAX).
defines() {
    case $1 in
    tokenizer) echo "-DB2_FUZZ_TOKENIZER_DIR=\"$top/tests/golden/opt-tiny\"" ;;
    image) echo "-DB2_RESIZE_WORK_MAX=5e7" ;;
    server) echo "-D_GNU_SOURCE -DPACKAGE_VERSION=\"fuzz\" -I$top/daemon -I$top/queue -DB2_FUZZ_MODEL_DIR=\"$top/tests/golden/opt-tiny\" -DB2_FUZZ_IMAGE=\"$top/tests/golden/images-extra/tiny_indexed.png\"" ;;
    esac
}

extra_libs() {
    case $1 in
    server) echo "-ldnnl -lgomp -lstdc++ -lpthread" ;;
    esac
}

n=0
for t in $targets; do n=$((n + 1)); done
echo "1..$n"

# Build every target first (a failed build fails its test).
for t in $targets; do
    src=$(sources "$t")
    if [ -z "$src" ]; then echo "unknown target $t" >&2; exit 2; fi
    pk=$(packages "$t")
    (cd "$top" && $cc $flags $(defines "$t") \
        $(pkg-config --cflags $pk) -o "$build/fuzz_$t" "tests/fuzz/fuzz_$t.c" $src \
        $(pkg-config --libs $pk) -lm $(extra_libs "$t")) >"$build/log/build_$t" 2>&1 ||
        echo "build failed" >>"$build/log/build_$t"
done

run_one() {
    t=$1
    log=$build/log/fuzz_$t.log
    if grep -q '^build failed' "$build/log/build_$t"; then
        echo "build failed: see $build/log/build_$t" >"$log"
        return 1
    fi
    mkdir -p "$build/corpus/$t"
    # New inputs go to the first (scratch) corpus; the seeds are read only.
    (cd "$build" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$build/fuzz_$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$build/crashes/$t-" \
        "$build/corpus/$t" "$here/corpus/$t") >"$log" 2>&1
}

[ -n "${FUZZ_BUILD_ONLY:-}" ] && exit 0
rc=0 i=0

report() {
    t=$1 st=$2 i=$3
    log=$build/log/fuzz_$t.log
    fin=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(echo "$fin" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$fin" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    if [ "$st" -eq 0 ]; then
        echo "ok $i - fuzz_$t ${secs}s: ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}"
    else
        echo "not ok $i - fuzz_$t ${secs}s: exit $st, crash inputs: $(ls "$build/crashes" | grep "^$t-" | tr '\n' ' ')"
        grep -E 'ERROR|SUMMARY|runtime error|build failed' "$log" | head -5 | sed 's/^/# /'
        echo "# log: $log"
    fi
}

set -- $targets
while [ $# -gt 0 ]; do
    batch="" k=0
    while [ $# -gt 0 ] && [ $k -lt "$jobs" ]; do
        (run_one "$1"; echo $? >"$build/log/rc_$1") &
        batch="$batch $1"; shift; k=$((k + 1))
    done
    wait
    for t in $batch; do
        i=$((i + 1))
        st=$(cat "$build/log/rc_$t" 2>/dev/null || echo 1)
        [ "$st" -eq 0 ] || rc=1
        report "$t" "$st" "$i"
    done
done
exit $rc
