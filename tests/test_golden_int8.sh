#!/bin/sh
# test_golden_int8.sh - int8 math (--precision int8: the vision encoder's
# projection and MLP as u8 x s8 on oneDNN, model/compute/matmul_dnnl.c) on
# the golden OPT models (tests/test_golden) and the T5 one
# (tests/test_golden_t5), every product of one row or more sent to oneDNN
# (GOLDEN_MM_ROWS=1, BLIP2_MATMUL=onednn):
#   folders, int8 asked for    cosine to the reference >= 0.999 (vision,
#                              Q-Former, projection), >= 0.995 (logits);
#                              int8 where the CPU has VNNI (avx512_vnni or
#                              avx_vnni in /proc/cpuinfo), else the load
#                              must fall back to f32 (then exact)
#   OPT bf16 GGUF, int8        the same bounds, the rest in bf16 math
#   DNNL_MAX_CPU_ISA=AVX2      int8 asked for, oneDNN limited to AVX2
#                              without VNNI: the load falls back to f32 and
#                              every stage, logit and id is as in f32
#                              (the golden tolerances, ids exact)
#   bf16 files with the int8   (blip2ctl convert --int8-vision,
#   vision weights             GOLDEN_INT8_VISION=1), OPT and T5: int8 asked
#                              for, and auto, which picks int8 for them
#                              where the CPU has VNNI: the same bounds (the
#                              copies are the same bits as the load-time
#                              ones: tests/test_convert.sh); under
#                              DNNL_MAX_CPU_ISA=AVX2 auto falls back to f32
#                              math (no VNNI, no native bf16), checked
#                              with the bounds as well (bf16 weights)
# Output: TAP, one plan in all.
. "$(dirname "$0")/lib.sh"
native=f32
grep -qE '(avx512_vnni|avx_vnni)' /proc/cpuinfo 2>/dev/null && native=int8
{
    golden_onednn "opt int8 math, folder" GOLDEN_PRECISION=int8 GOLDEN_EXPECT_MATH=$native
    golden_onednn "opt int8 math, bf16 file" GOLDEN_GGUF_TYPE=bf16 GOLDEN_PRECISION=int8 GOLDEN_EXPECT_MATH=$native
    golden_onednn "opt int8 math, isa avx2" DNNL_MAX_CPU_ISA=AVX2 GOLDEN_PRECISION=int8 GOLDEN_EXPECT_MATH=f32
    golden_onednn "t5 int8 math, folder" TEST=./tests/test_golden_t5 GOLDEN_PRECISION=int8 GOLDEN_EXPECT_MATH=$native
    golden_onednn "t5 int8 math, isa avx2" TEST=./tests/test_golden_t5 DNNL_MAX_CPU_ISA=AVX2 GOLDEN_PRECISION=int8 GOLDEN_EXPECT_MATH=f32
    i8file="GOLDEN_GGUF_TYPE=bf16 GOLDEN_INT8_VISION=1"
    golden_onednn "opt int8 math, bf16 file with int8 weights" $i8file GOLDEN_PRECISION=int8 GOLDEN_EXPECT_MATH=$native
    golden_onednn "opt auto math, bf16 file with int8 weights" $i8file GOLDEN_PRECISION=auto GOLDEN_EXPECT_MATH=$native
    golden_onednn "opt auto math, file with int8 weights, isa avx2" $i8file DNNL_MAX_CPU_ISA=AVX2 GOLDEN_PRECISION=auto GOLDEN_EXPECT_MATH=f32
    golden_onednn "t5 auto math, bf16 file with int8 weights" TEST=./tests/test_golden_t5 $i8file GOLDEN_PRECISION=auto GOLDEN_EXPECT_MATH=$native
} | tap_renumber
