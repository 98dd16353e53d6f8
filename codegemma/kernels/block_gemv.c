/* y = x @ W.T for a float32 weight W that is stored exactly as integer codes and one scale (and
 * optionally one offset) per group of G columns: W[n, k] = scale[n, g] * codes[n, k] - offset[n, g]
 * with g = k / G. This is how the blocks of a GGUF file (Q8_0, Q5_0, Q4_K, Q6_K, ...) define their
 * float values, so the product is the float32 product with the very same weights, only summed in
 * another order:
 *     y[m, n] = sum_g scale[n, g] * (sum_{k in g} x[m, k] codes[n, k]) - offset[n, g] * xsum[m, g]
 * where xsum[m, g] is the sum of x[m, k] over group g. Reading one byte per weight instead of four
 * is what makes decoding (a few rows of x) fast: it is bound by memory bandwidth.
 *
 * Built on first use by codegemma.kernels with the machine's C compiler (-O3 -march=native). */
#include <stdint.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

/* One vector of float lanes: 16 with AVX-512, 8 with AVX2 (most laptop and desktop CPUs: AMD
 * before Zen 4, Intel client cores), where the portable loop below ran at a fifth of the speed. */
#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
#define vzero _mm512_setzero_ps
#define vload _mm512_loadu_ps
#define vset1 _mm512_set1_ps
#define vfma _mm512_fmadd_ps
#define vcodes(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define vsum _mm512_reduce_add_ps
#else
#define LANES 8
typedef __m256 vec;
#define vzero _mm256_setzero_ps
#define vload _mm256_loadu_ps
#define vset1 _mm256_set1_ps
#define vfma _mm256_fmadd_ps
#define vcodes(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
static inline float vsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

/* R rows of x (R <= 4) against one row of codes; each code is converted once for all R rows, and
 * the R accumulators stay in registers. */
static inline void row_dot(const float *x, int K, const int8_t *c, const float *a, int G, int R, float *out) {
    vec t0 = vzero(), t1 = t0, t2 = t0, t3 = t0;
    for (int g = 0; g < K / G; g++) {
        vec g0 = vzero(), g1 = g0, g2 = g0, g3 = g0;
        for (int k = g * G; k < (g + 1) * G; k += LANES) {
            vec w = vcodes(c + k);
            g0 = vfma(vload(x + k), w, g0);
            if (R > 1) g1 = vfma(vload(x + K + k), w, g1);
            if (R > 2) g2 = vfma(vload(x + 2 * K + k), w, g2);
            if (R > 3) g3 = vfma(vload(x + 3 * K + k), w, g3);
        }
        vec s = vset1(a[g]);
        t0 = vfma(s, g0, t0);
        if (R > 1) t1 = vfma(s, g1, t1);
        if (R > 2) t2 = vfma(s, g2, t2);
        if (R > 3) t3 = vfma(s, g3, t3);
    }
    out[0] = vsum(t0);
    if (R > 1) out[1] = vsum(t1);
    if (R > 2) out[2] = vsum(t2);
    if (R > 3) out[3] = vsum(t3);
}
#else
/* Portable version: the compiler vectorises what the target allows. */
static inline void row_dot(const float *x, int K, const int8_t *c, const float *a, int G, int R, float *out) {
    for (int r = 0; r < R; r++) {
        const float *xr = x + (int64_t)r * K;
        float total = 0.f;
        for (int g = 0; g < K / G; g++) {
            float acc = 0.f;
#pragma omp simd reduction(+ : acc)
            for (int k = g * G; k < (g + 1) * G; k++) acc += xr[k] * (float)c[k];
            total += a[g] * acc;
        }
        out[r] = total;
    }
}
#endif

/* x [M, K], xsum [M, K/G] (only read with an offset), codes [N, K], scale and offset [N, K/G],
 * y [M, N]; all contiguous. K is a multiple of G and G of 16. */
void block_gemv(const float *x, const float *xsum, int M, int K, const int8_t *codes, const float *scale,
                const float *offset, int N, int G, float *y, int threads) {
    const int groups = K / G;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const int8_t *c = codes + (int64_t)n * K;
        const float *a = scale + (int64_t)n * groups;
        for (int m0 = 0; m0 < M; m0 += 4) {
            const int R = M - m0 < 4 ? M - m0 : 4;
            const float *xm = x + (int64_t)m0 * K;
            float out[4];
            switch (R) {  /* constant R: the unused accumulators vanish */
                case 1: row_dot(xm, K, c, a, G, 1, out); break;
                case 2: row_dot(xm, K, c, a, G, 2, out); break;
                case 3: row_dot(xm, K, c, a, G, 3, out); break;
                default: row_dot(xm, K, c, a, G, 4, out); break;
            }
            for (int r = 0; r < R; r++) {
                float s = out[r];
                if (offset) {
                    const float *b = offset + (int64_t)n * groups, *xs = xsum + (int64_t)(m0 + r) * groups;
                    for (int g = 0; g < groups; g++) s -= b[g] * xs[g];
                }
                y[(int64_t)(m0 + r) * N + n] = s;
            }
        }
    }
}
