/*
 * wtype.c - the weight storage types of wkernels.h: names, row sizes,
 * validity, and the scalar f16/bf16 -> f32 conversions.  Apart from the
 * products so that the file readers (gguf.c, safetensors.c, weights.c) and
 * their fuzz targets need nothing else.
 */
#include "wkernels.h"

#include <string.h>

/* The prefetch distance of the typed tiles (wkernels_impl.h; set by
 * b2__wkernels_set_prefetch in wkernels.c, read by the kernel files). */
int b2__wprefetch = 8192;

int b2__wt_ok(b2_wtype t, int k)
{
    if (k <= 0) return 0;
    switch (t) {
    case B2_WT_F32: case B2_WT_F16: case B2_WT_BF16: return 1;
    case B2_WT_Q8_0: return k % B2_Q8_0_BLOCK == 0;
    case B2_WT_Q4_0: return k % B2_Q4_0_BLOCK == 0;
    }
    return 0;
}

size_t b2__wt_row_bytes(b2_wtype t, int k)
{
    switch (t) {
    case B2_WT_F32: return (size_t)k * 4;
    case B2_WT_F16: case B2_WT_BF16: return (size_t)k * 2;
    case B2_WT_Q8_0: return (size_t)(k / B2_Q8_0_BLOCK) * B2_Q8_0_BYTES;
    case B2_WT_Q4_0: return (size_t)(k / B2_Q4_0_BLOCK) * B2_Q4_0_BYTES;
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
    case B2_WT_Q4_0: return "q4_0";
    }
    return NULL;
}

/* IEEE half -> f32, exact (subnormals normalised, inf/NaN kept). */
float b2__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

float b2__bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}
