#!/bin/sh
# test_golden_portable.sh - the golden test again with the portable C
# kernels forced (BLIP2_KERNELS=portable), so the path that CPUs without
# AVX2 take reproduces the reference too.
BLIP2_KERNELS=portable exec ./tests/test_golden
