#!/bin/sh
# test_golden_bf16.sh - the math backend (model/compute/matmul_dnnl.c) on
# the golden OPT models (tests/test_golden) and the T5 one
# (tests/test_golden_t5), every product of one row or more sent to oneDNN
# (GOLDEN_MM_ROWS=1, BLIP2_MATMUL=onednn):
#   f32 GGUF, f32 math         every stage within the golden tolerances
#   bf16 / f16 GGUF, bf16 math cosine to the reference >= 0.999 (vision,
#                              Q-Former, projection), >= 0.995 (logits);
#                              bf16 where the CPU has native bf16
#                              (avx512_bf16 or amx_bf16 in /proc/cpuinfo),
#                              else the load must fall back to f32
#   DNNL_MAX_CPU_ISA=AVX2      bf16 asked for, oneDNN limited to AVX2 (what
#                              an AVX2-only CPU gets): the load falls back
#                              to f32 and the cosines still hold
#   T5: bf16 GGUF, bf16 math, and the same with DNNL_MAX_CPU_ISA=AVX2
# Output: TAP, one plan in all.
. "$(dirname "$0")/lib.sh"
native=f32
grep -qE '(avx512_bf16|amx_bf16)' /proc/cpuinfo 2>/dev/null && native=bf16
{
    golden_onednn "f32 onednn" GOLDEN_GGUF_TYPE=f32 GOLDEN_PRECISION=f32 GOLDEN_EXPECT_MATH=f32
    golden_onednn "bf16 math, bf16 file" GOLDEN_GGUF_TYPE=bf16 GOLDEN_PRECISION=bf16 GOLDEN_EXPECT_MATH=$native
    golden_onednn "bf16 math, f16 file" GOLDEN_GGUF_TYPE=f16 GOLDEN_PRECISION=bf16 GOLDEN_EXPECT_MATH=$native
    golden_onednn "bf16 math, isa avx2" DNNL_MAX_CPU_ISA=AVX2 GOLDEN_GGUF_TYPE=bf16 GOLDEN_PRECISION=bf16 GOLDEN_EXPECT_MATH=f32
    golden_onednn "t5 bf16 math, bf16 file" TEST=./tests/test_golden_t5 GOLDEN_GGUF_TYPE=bf16 GOLDEN_PRECISION=bf16 GOLDEN_EXPECT_MATH=$native
    golden_onednn "t5 bf16 math, isa avx2" TEST=./tests/test_golden_t5 DNNL_MAX_CPU_ISA=AVX2 GOLDEN_GGUF_TYPE=bf16 GOLDEN_PRECISION=bf16 GOLDEN_EXPECT_MATH=f32
} | tap_renumber
