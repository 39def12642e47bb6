#!/bin/sh
# test_golden_gguf.sh - the golden tests (OPT: tests/test_golden, Flan-T5:
# tests/test_golden_t5) on GGUF files packed from each golden model
# (GGUF_TYPES, default f32 f16 bf16 q8_0 q4_0): f32 (and f16 from the f16
# checkpoint) must reproduce every stage and generation; rounded types must
# keep the logits' cosine above 0.99 and report where their generations
# diverge.  Output: TAP, one plan in all.
. "$(dirname "$0")/lib.sh"
types=${GGUF_TYPES:-f32 f16 bf16 q8_0 q4_0}
for t in $types; do
  for prog in test_golden test_golden_t5; do
    tap_labelled "$t $prog" env GOLDEN_GGUF_TYPE=$t ./tests/$prog
  done
done | tap_renumber
