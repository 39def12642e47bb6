/*
 * wtype.c - the weight storage types of wkernels.h: names, row sizes and
 * validity.  Apart from the products so that the file readers (gguf.c,
 * weights.c) and their fuzz targets need nothing else.
 */
#include "wkernels.h"

int b2__wt_ok(b2_wtype t, int k)
{
    if (k <= 0) return 0;
    switch (t) {
    case B2_WT_F32: case B2_WT_F16: case B2_WT_BF16: return 1;
    case B2_WT_Q8_0: return k % B2_Q8_0_BLOCK == 0;
    }
    return 0;
}

size_t b2__wt_row_bytes(b2_wtype t, int k)
{
    switch (t) {
    case B2_WT_F32: return (size_t)k * 4;
    case B2_WT_F16: case B2_WT_BF16: return (size_t)k * 2;
    case B2_WT_Q8_0: return (size_t)(k / B2_Q8_0_BLOCK) * B2_Q8_0_BYTES;
    }
    return 0;
}

const char *b2__wt_name(b2_wtype t)
{
    switch (t) {
    case B2_WT_F32: return "f32";
    case B2_WT_F16: return "f16";
    case B2_WT_BF16: return "bf16";
    case B2_WT_Q8_0: return "q8_0";
    }
    return NULL;
}
