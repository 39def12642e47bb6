#!/bin/sh
# test_golden_gguf.sh - the golden tests (OPT: tests/test_golden, Flan-T5:
# tests/test_golden_t5) on GGUF files packed from each golden model
# (GGUF_TYPES, default f32 f16 bf16 q8_0 q4_0): f32 (and f16 from the f16
# checkpoint) must reproduce every stage and generation; rounded types must
# keep the logits' cosine above 0.99 and report where their generations
# diverge.  Output: TAP, one plan in all.
types=${GGUF_TYPES:-f32 f16 bf16 q8_0 q4_0}
for t in $types; do
  for prog in test_golden test_golden_t5; do
    out=$(GOLDEN_GGUF_TYPE=$t ./tests/$prog)
    st=$?
    case $out in *"not ok"*) ;; *) [ $st -eq 0 ] || out="$out
not ok 0 - $prog exited with status $st";; esac
    # renumber into one plan
    printf '%s\n' "$out" | while IFS= read -r line; do
        case $line in
        "ok "*|"not ok "*) echo "$line" | sed "s/^\(not \)\{0,1\}ok [0-9]* - /&[$t $prog] /" ;;
        1..*) ;;
        *) echo "$line" ;;
        esac
    done
  done
done | awk '/^(not )?ok [0-9]+ - /{ n++; sub(/ok [0-9]+ - /, "ok " n " - ") } { print } END { print "1.." n }'
