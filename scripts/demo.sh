#!/bin/sh
# Builds blip2d and captions a bundled photo with the bundled tiny model.
set -eu
cd "$(dirname "$0")/.."
sh scripts/build.sh >/dev/null
img=tests/golden/images/chelsea.png
echo "Captioning $img with the bundled tiny model (tests/golden/opt-tiny):"
./model/blip2-infer --model tests/golden/opt-tiny --image "$img"
cat <<'MSG'

Note: tests/golden/opt-tiny is a tiny model with random weights, made for
tests, so the caption above is nonsense by design. For real captions, point
--model at a released checkpoint folder such as Salesforce/blip2-opt-2.7b
(config.json, *.safetensors, tokenizer and preprocessor files), e.g.:
  ./model/blip2-infer --model /path/to/blip2-opt-2.7b --image photo.jpg
  ./model/blip2-infer --model /path/to/blip2-opt-2.7b --image photo.jpg \
      --prompt "Question: how many cats are there? Answer:"
MSG
