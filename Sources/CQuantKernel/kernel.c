#include "CQuantKernel.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

// The largest magnitude of a block as float32 bits (masked patterns order as the magnitudes
// do; anything from 0x7F800000 up is infinity or NaN).
AVX512 static inline uint32_t widest_bf16(const uint16_t *x, size_t n) {
    const __m512i mask = _mm512_set1_epi16(0x7FFF);
    __m512i widest = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 32)
        widest = _mm512_max_epu16(widest, _mm512_and_si512(_mm512_loadu_si512(x + i), mask));
    __m256i half = _mm256_max_epu16(_mm512_castsi512_si256(widest), _mm512_extracti64x4_epi64(widest, 1));
    __m128i quarter = _mm_max_epu16(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
    // The largest of eight 16-bit lanes is 0xFFFF minus the smallest of their complements.
    __m128i smallest = _mm_minpos_epu16(_mm_xor_si128(quarter, _mm_set1_epi16(-1)));
    return (uint32_t)(0xFFFF - (_mm_cvtsi128_si32(smallest) & 0xFFFF)) << 16;
}

AVX512 static inline uint32_t widest_f32(const float *x, size_t n) {
    const __m512i mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i widest = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 16)
        widest = _mm512_max_epu32(widest, _mm512_and_si512(_mm512_loadu_si512(x + i), mask));
    return _mm512_reduce_max_epu32(widest);
}

struct tables512 {
    __m512i below_low, below_high, order;
    __m512 mid_low, mid_high;
    int reorder;
};

// Sixteen scaled values to codes, packed into eight bytes.
AVX512 static inline void encode16(__m512 v, const struct tables512 *t, uint8_t *out) {
    const __m512 sixteen = _mm512_set1_ps(16.0f);
    __m512i cell = _mm512_cvttps_epi32(_mm512_fmadd_ps(v, sixteen, sixteen));
    cell = _mm512_min_epi32(_mm512_max_epi32(cell, _mm512_setzero_si512()), _mm512_set1_epi32(31));
    __m512i below = _mm512_permutex2var_epi32(t->below_low, cell, t->below_high);
    __m512 midpoint = _mm512_permutex2var_ps(t->mid_low, cell, t->mid_high);
    __mmask16 above = _mm512_cmp_ps_mask(midpoint, v, _CMP_LT_OQ);
    __m512i code = _mm512_mask_add_epi32(below, above, below, _mm512_set1_epi32(1));
    if (t->reorder) code = _mm512_permutexvar_epi32(code, t->order);
    // Each 64-bit lane holds an (even, odd) pair of codes: even << 4 | odd in its low byte.
    __m512i pairs = _mm512_or_si512(_mm512_slli_epi64(code, 4), _mm512_srli_epi64(code, 32));
    _mm_storel_epi64((__m128i *)out, _mm512_cvtepi64_epi8(pairs));
}

size_t AVX512 qtool_q4_quantize_avx512(const void *source, int bf16, size_t blocks, size_t blocksize,
                                       const struct qtool_q4_tables *tables, uint8_t *codes, float *scales) {
    struct tables512 t = {
        .below_low = _mm512_loadu_si512(tables->below),
        .below_high = _mm512_loadu_si512(tables->below + 16),
        .order = _mm512_loadu_si512(tables->order),
        .mid_low = _mm512_loadu_ps(tables->midpoint),
        .mid_high = _mm512_loadu_ps(tables->midpoint + 16),
        .reorder = tables->reorder,
    };
    size_t bad = 0;
    for (size_t block = 0; block < blocks; block++) {
        size_t start = block * blocksize;
        uint8_t *out = codes + start / 2;
        uint32_t bits = bf16 ? widest_bf16((const uint16_t *)source + start, blocksize)
                             : widest_f32((const float *)source + start, blocksize);
        if (bits >= 0x7F800000u) {
            scales[block] = NAN;
            bad++;
            continue;
        }
        float absmax;
        memcpy(&absmax, &bits, 4);
        scales[block] = absmax;
        __m512 factor = _mm512_set1_ps(1.0f / fmaxf(absmax, 1e-38f));
        if (bf16) {
            const uint16_t *x = (const uint16_t *)source + start;
            for (size_t i = 0; i < blocksize; i += 16) {
                __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i)));
                __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)), factor);
                encode16(v, &t, out + i / 2);
            }
        } else {
            const float *x = (const float *)source + start;
            for (size_t i = 0; i < blocksize; i += 16) encode16(_mm512_mul_ps(_mm512_loadu_ps(x + i), factor), &t, out + i / 2);
        }
    }
    return bad;
}
