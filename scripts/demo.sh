#!/bin/sh
# Builds blip2d and captions a bundled photo with the bundled tiny model:
# once through the daemon (blip2d + blip2ctl), once with the offline tool.
set -eu
cd "$(dirname "$0")/.."
sh scripts/build.sh >/dev/null
img=tests/golden/images/chelsea.png
model=tests/golden/opt-tiny
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
./daemon/blip2d --model "$model" --socket "$dir/blip2.sock" -q &
pid=$!
i=0
while [ ! -S "$dir/blip2.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "blip2ctl caption $img   (daemon: blip2d --model $model)"
./ctl/blip2ctl --socket "$dir/blip2.sock" caption "$img"
echo "blip2ctl ask $img 'how many cats are there?'"
./ctl/blip2ctl --socket "$dir/blip2.sock" ask "$img" "how many cats are there?"
kill "$pid"
wait "$pid" || true
echo "blip2-infer --model $model --image $img   (offline, no daemon)"
./model/blip2-infer --model "$model" --image "$img"
cat <<'MSG'

Note: tests/golden/opt-tiny is a tiny model with random weights, made for
tests, so the captions above are nonsense by design. For real captions, point
--model at a released checkpoint folder such as Salesforce/blip2-opt-2.7b
(config.json, *.safetensors, tokenizer and preprocessor files), e.g.:
  ./daemon/blip2d --model /path/to/blip2-opt-2.7b &
  ./ctl/blip2ctl caption photo.jpg
  ./ctl/blip2ctl ask photo.jpg "how many cats are there?"
  ./model/blip2-infer --model /path/to/blip2-opt-2.7b --image photo.jpg
MSG
