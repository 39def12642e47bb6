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
 * changes sums of more than one term) */
static inline simde__m256 emu_mm256_fmadd_ps(simde__m256 a, simde__m256 b, simde__m256 c)
{
    float x[8], y[8], z[8];
    simde_mm256_storeu_ps(x, a);
    simde_mm256_storeu_ps(y, b);
    simde_mm256_storeu_ps(z, c);
    for (int i = 0; i < 8; i++) z[i] = fmaf(x[i], y[i], z[i]);
    return simde_mm256_loadu_ps(z);
}

static inline simde__m512 emu_mm512_fmadd_ps(simde__m512 a, simde__m512 b, simde__m512 c)
{
    float x[16], y[16], z[16];
    simde_mm512_storeu_ps(x, a);
    simde_mm512_storeu_ps(y, b);
    simde_mm512_storeu_ps(z, c);
    for (int i = 0; i < 16; i++) z[i] = fmaf(x[i], y[i], z[i]);
    return simde_mm512_loadu_ps(z);
}

/* 16 int32 -> 16 floats, rounded to nearest even as the instruction */
static inline simde__m512 emu_mm512_cvtepi32_ps(simde__m512i a)
{
    int32_t i[16];
    float f[16];
    simde_mm512_storeu_si512(i, a);
    for (int j = 0; j < 16; j++) f[j] = (float)i[j];
    return simde_mm512_loadu_ps(f);
}

#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps emu_mm512_cvtepi32_ps
#undef _mm256_fmadd_ps
#define _mm256_fmadd_ps emu_mm256_fmadd_ps
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps emu_mm512_fmadd_ps
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
