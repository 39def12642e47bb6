/*
 * wkernels_emu.h - lets tests/test_wkernels_avx512emu compile
 * model/compute/wkernels_avx512.c (with B2_WK_EMULATE) on a CPU without AVX-512:
 * the intrinsics come from SIMDe (libsimde-dev), which implements them in
 * portable C, plus the few SIMDe 0.7 lacks and the FMAs (fused, one
 * rounding, as the hardware), written here element by element from their
 * definitions in Intel's intrinsics guide.  Only for
 * that test: the production library never includes it.
 */
#ifndef BLIP2_WKERNELS_EMU_H
#define BLIP2_WKERNELS_EMU_H

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef simde__mmask16 __mmask16;
typedef simde__mmask64 __mmask64;

/* 16 int32 -> 16 floats, round to nearest as the instruction */
static inline simde__m512 emu_mm512_cvtepi32_ps(simde__m512i a)
{
    int32_t v[16];
    float f[16];
    simde_mm512_storeu_si512(v, a);
    for (int i = 0; i < 16; i++) f[i] = (float)v[i];
    return simde_mm512_loadu_ps(f);
}

/* 16 halves -> 16 floats (two of SIMDe's 8-lane conversions) */
static inline simde__m512 emu_mm512_cvtph_ps(simde__m256i h)
{
    float f[16];
    simde_mm256_storeu_ps(f, simde_mm256_cvtph_ps(simde_mm256_castsi256_si128(h)));
    simde_mm256_storeu_ps(f + 8, simde_mm256_cvtph_ps(simde_mm256_extracti128_si256(h, 1)));
    return simde_mm512_loadu_ps(f);
}

/* 16 unsigned 16-bit values, zero-extended to 32 bits */
static inline simde__m512i emu_mm512_cvtepu16_epi32(simde__m256i h)
{
    uint16_t a[16];
    uint32_t b[16];
    simde_mm256_storeu_si256(a, h);
    for (int i = 0; i < 16; i++) b[i] = a[i];
    return simde_mm512_loadu_si512(b);
}

/* element i from p if bit i of m is set, else 0; unselected elements are
 * not read */
static inline simde__m256i emu_mm256_maskz_loadu_epi16(simde__mmask16 m, const void *p)
{
    uint16_t a[16] = {0};
    for (int i = 0; i < 16; i++)
        if (m >> i & 1) memcpy(&a[i], (const char *)p + 2 * i, 2);
    return simde_mm256_loadu_si256(a);
}

static inline simde__m512 emu_mm512_maskz_loadu_ps(simde__mmask16 m, const void *p)
{
    float a[16] = {0};
    for (int i = 0; i < 16; i++)
        if (m >> i & 1) memcpy(&a[i], (const char *)p + 4 * i, 4);
    return simde_mm512_loadu_ps(a);
}

static inline float emu_cvtsh_ss(unsigned short h)
{
    float f[4];
    simde_mm_storeu_ps(f, simde_mm_cvtph_ps(simde_mm_set1_epi16((short)h)));
    return f[0];
}

/* a * b + c rounded once, as the FMA instructions do (SIMDe's fallback
 * without FMA in the compiler's target rounds the product first, which
 * changes sums of more than one term): emu_mm256_fmadd_ps (8 lanes) and
 * emu_mm512_fmadd_ps (16) */
#define EMU_FMADD_PS(BITS, LANES)                                                                       \
    static inline simde__m##BITS emu_mm##BITS##_fmadd_ps(simde__m##BITS a, simde__m##BITS b,          \
                                                         simde__m##BITS c)                             \
    {                                                                                                   \
        float x[LANES], y[LANES], z[LANES];                                                             \
        simde_mm##BITS##_storeu_ps(x, a);                                                               \
        simde_mm##BITS##_storeu_ps(y, b);                                                               \
        simde_mm##BITS##_storeu_ps(z, c);                                                               \
        for (int i = 0; i < LANES; i++) z[i] = fmaf(x[i], y[i], z[i]);                                 \
        return simde_mm##BITS##_loadu_ps(z);                                                            \
    }
EMU_FMADD_PS(256, 8)
EMU_FMADD_PS(512, 16)
#undef EMU_FMADD_PS

#undef _mm256_fmadd_ps
#define _mm256_fmadd_ps emu_mm256_fmadd_ps
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps emu_mm512_fmadd_ps
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps emu_mm512_cvtepi32_ps
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps emu_mm512_cvtph_ps
#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32 emu_mm512_cvtepu16_epi32
#undef _mm256_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16 emu_mm256_maskz_loadu_epi16
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps emu_mm512_maskz_loadu_ps
#undef _cvtsh_ss
#define _cvtsh_ss emu_cvtsh_ss

#endif
