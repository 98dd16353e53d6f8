/* Fused kernels for training on a CPU (codegemma.fused_ops), each one pass over memory where
 * PyTorch's eager ops take several:
 *
 *   geglu:    y = gelu_tanh(g) * u, with gelu_tanh(x) = 0.5 x (1 + tanh(k0 (x + k1 x^3)))
 *   rms_norm: y = x / sqrt(mean(x^2) + eps) * (1 + w), per row of d values
 *   residual_rms_norm: y = x + rms_norm(h), and optionally rms_norm(y) with a second weight
 *   rope:     rotate-half RoPE, from the projection's layout into attention's
 *   softmax_xent_columns: the LM head's softmax, NLL and gradient scale (codegemma.head_loss)
 *
 * 0.5 (1 + tanh(a)) is the logistic function of 2a, so the GELU is written x * sigmoid(2a): one
 * exp and one division, accurate where tanh(a) is near -1 (the difference 1 + tanh would cancel).
 * Float32 throughout; results differ from PyTorch's by float rounding only.
 *
 * Built with the other kernels by codegemma.kernels. Each kernel splits its rows or elements
 * into fixed blocks, so results do not depend on the number of threads. */
#pragma GCC optimize("no-trapping-math") /* lets the compiler vectorise the clamps below */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define K0 0.7978845608028654f /* sqrt(2 / pi) */
#define K1 0.044715f
#define BLOCK 4096             /* elements per parallel work item */
#define ROW_BLOCK 64           /* rows per partial sum of the RMSNorm weight gradient */

/* exp(x) in float32: x = n ln2 + r with |r| <= ln2 / 2, then 2^n times a degree-6 polynomial of r
 * (the coefficients of the Cephes library's expf); within 2 ulp, and written so that loops calling
 * it vectorise (no library call, no branch). */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;               /* ln2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static void geglu_forward_block(const float *restrict g, const float *restrict u, float *restrict y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        float sig = 1.0f / (1.0f + exp_f32(-2.0f * K0 * (x + K1 * x * x * x)));
        y[i] = x * sig * u[i];
    }
}

static void geglu_backward_block(const float *restrict g, const float *restrict u, const float *restrict dy,
                                 float *restrict dg, float *restrict du, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        float e = exp_f32(-2.0f * K0 * (x + K1 * x * x * x));
        float sig = 1.0f / (1.0f + e);
        /* d gelu / dx = sig + x * 2 sig (1 - sig) * k0 (1 + 3 k1 x^2), with 1 - sig = e * sig */
        float dgelu = sig + 2.0f * x * sig * (e * sig) * K0 * (1.0f + 3.0f * K1 * x * x);
        du[i] = dy[i] * x * sig;
        dg[i] = dy[i] * u[i] * dgelu;
    }
}

void geglu_forward(const float *g, const float *u, float *y, int64_t n, int threads) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t lo = b * BLOCK, len = n - lo < BLOCK ? n - lo : BLOCK;
        geglu_forward_block(g + lo, u + lo, y + lo, len);
    }
}

void geglu_backward(const float *g, const float *u, const float *dy, float *dg, float *du, int64_t n, int threads) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t lo = b * BLOCK, len = n - lo < BLOCK ? n - lo : BLOCK;
        geglu_backward_block(g + lo, u + lo, dy + lo, dg + lo, du + lo, len);
    }
}

static float sum_of_squares(const float *restrict x, int64_t d) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < d; j++) s += x[j] * x[j];
    return s;
}

/* y = x * rstd * (1 + w) per row; rstd[row] = 1 / sqrt(mean(x^2) + eps) is kept for backward. */
void rms_norm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t d, float eps,
                      int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict xr = x + r * d;
        float *restrict yr = y + r * d;
        float s = 1.0f / sqrtf(sum_of_squares(xr, d) / (float)d + eps);
        rstd[r] = s;
        for (int64_t j = 0; j < d; j++) yr[j] = xr[j] * s * (1.0f + w[j]);
    }
}

/* One row: out = add + s * (g * (1 + w) - x * c), c = s^2 * mean(g * (1 + w) * x), and acc += g * x * s.
 * `add` (another gradient of the norm's input, or NULL) is summed in the same pass. */
static inline void rms_norm_row_backward(const float *restrict x, const float *restrict w, float s,
                                         const float *restrict g, const float *restrict add, float *restrict out,
                                         float *restrict acc, int64_t d) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; j++) dot += g[j] * (1.0f + w[j]) * x[j];
    float c = dot * s * s / (float)d;
    for (int64_t j = 0; j < d; j++) {
        out[j] = (add ? add[j] : 0.0f) + s * (g[j] * (1.0f + w[j]) - x[j] * c);
        acc[j] += g[j] * x[j] * s;
    }
}

/* dw = the sum of the per-block partial sums [blocks, d], in block order. */
static void sum_partials(const float *partial, int64_t blocks, int64_t d, float *dw) {
    for (int64_t j = 0; j < d; j++) dw[j] = 0.0f;
    for (int64_t b = 0; b < blocks; b++)
        for (int64_t j = 0; j < d; j++) dw[j] += partial[b * d + j];
}

/* dx = rstd * (a - x * rstd^2 * mean(a * x)) with a = dy * (1 + w); dw = sum over rows of
 * dy * x * rstd, summed per block of ROW_BLOCK rows into `partial` [blocks, d] and then over the
 * blocks in order, so the sum is the same for any number of threads. */
void rms_norm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *dw,
                       float *partial, int64_t rows, int64_t d, int threads) {
    int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        float *restrict acc = partial + b * d;
        for (int64_t j = 0; j < d; j++) acc[j] = 0.0f;
        int64_t end = (b + 1) * ROW_BLOCK < rows ? (b + 1) * ROW_BLOCK : rows;
        for (int64_t r = b * ROW_BLOCK; r < end; r++)
            rms_norm_row_backward(x + r * d, w, rstd[r], dy + r * d, NULL, dx + r * d, acc, d);
    }
    sum_partials(partial, blocks, d, dw);
}

/* A residual add of a normed branch, and optionally the next norm of the sum (Gemma 2/3's post-norm
 * blocks): y = x + h * rstd1 * (1 + w1), n = y * rstd2 * (1 + w2) with w2 != NULL. One pass where
 * rms_norm_forward, an add and rms_norm_forward again take three. */
void residual_rms_norm_forward(const float *x, const float *h, const float *w1, const float *w2, float *y, float *n,
                               float *rstd1, float *rstd2, int64_t rows, int64_t d, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict xr = x + r * d, *restrict hr = h + r * d;
        float *restrict yr = y + r * d;
        float s1 = 1.0f / sqrtf(sum_of_squares(hr, d) / (float)d + eps);
        rstd1[r] = s1;
        for (int64_t j = 0; j < d; j++) yr[j] = xr[j] + hr[j] * s1 * (1.0f + w1[j]);
        if (!w2) continue;
        float *restrict nr = n + r * d;
        float s2 = 1.0f / sqrtf(sum_of_squares(yr, d) / (float)d + eps);
        rstd2[r] = s2;
        for (int64_t j = 0; j < d; j++) nr[j] = yr[j] * s2 * (1.0f + w2[j]);
    }
}

/* The gradient of residual_rms_norm_forward from dy (the sum's own gradient) and dn (the second
 * norm's; with w2): g = dy + rms_norm_backward(dn) is dx, and dh = rms_norm_backward(g) through the
 * first norm. The weight gradients are summed per ROW_BLOCK rows into partial1 / partial2 [blocks, d],
 * then over the blocks in order, as in rms_norm_backward. */
void residual_rms_norm_backward(const float *h, const float *w1, const float *rstd1, const float *y, const float *w2,
                                const float *rstd2, const float *dy, const float *dn, float *dx, float *dh,
                                float *partial1, float *partial2, float *dw1, float *dw2, int64_t rows, int64_t d,
                                int threads) {
    int64_t blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        float *restrict acc1 = partial1 + b * d, *restrict acc2 = w2 ? partial2 + b * d : NULL;
        for (int64_t j = 0; j < d; j++) acc1[j] = 0.0f;
        if (acc2)
            for (int64_t j = 0; j < d; j++) acc2[j] = 0.0f;
        int64_t end = (b + 1) * ROW_BLOCK < rows ? (b + 1) * ROW_BLOCK : rows;
        for (int64_t r = b * ROW_BLOCK; r < end; r++) {
            float *restrict g = dx + r * d;
            if (w2)
                rms_norm_row_backward(y + r * d, w2, rstd2[r], dn + r * d, dy + r * d, g, acc2, d);
            else
                memcpy(g, dy + r * d, d * sizeof(float));
            rms_norm_row_backward(h + r * d, w1, rstd1[r], g, NULL, dh + r * d, acc1, d);
        }
    }
    sum_partials(partial1, blocks, d, dw1);
    if (w2) sum_partials(partial2, blocks, d, dw2);
}

/* The cross-entropy part of the fused LM head (codegemma.head_loss) for float32 logits stored
 * transposed, zT [V, R] (column r holds the logits of row r, target t_r, weight w_r): the layout
 * the head's GEMM produces fastest on CPUs (W @ h^T, against h @ W^T for rows). In place, zT becomes exp(z - max) - sum * onehot
 * per column, sum = sum_v exp(z - max); nll[r] = logsumexp - z[t_r]; scale[r] = w[r] / sum. The
 * gradient w * (softmax - onehot) is then scale * zT, and the caller puts the scale on the small
 * operand of each product instead of another pass over zT. Each thread takes a range of columns
 * and walks all V rows, adding the exponentials of 64 rows at a time before adding them to `total`
 * [R] (float rounding grows with 64 + V / 64 terms, not V). `top` [R] is scratch. */
void softmax_xent_columns(float *zT, const int64_t *targets, const float *weights, float *nll, float *scale, float *top,
                          float *total, int64_t V, int64_t R, int threads) {
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t per = ((R + nt - 1) / nt + 7) & ~(int64_t)7;
        int64_t c0 = t * per < R ? t * per : R, c1 = c0 + per < R ? c0 + per : R, n = c1 - c0;
        float *restrict m = top + c0, *restrict sum = total + c0;
        for (int64_t c = 0; c < n; c++) {
            m[c] = zT[c0 + c];
            sum[c] = 0.0f;
            nll[c0 + c] = zT[targets[c0 + c] * R + c0 + c]; /* the target logit, before it is overwritten */
        }
        for (int64_t v = 1; v < V; v++) {
            const float *restrict row = zT + v * R + c0;
            for (int64_t c = 0; c < n; c++) m[c] = row[c] > m[c] ? row[c] : m[c];
        }
        float part[64];
        for (int64_t c0b = 0; c0b < n; c0b += 64) {
            int64_t w = n - c0b < 64 ? n - c0b : 64;
            for (int64_t v0 = 0; v0 < V; v0 += 64) {
                int64_t v1 = v0 + 64 < V ? v0 + 64 : V;
                for (int64_t c = 0; c < w; c++) part[c] = 0.0f;
                for (int64_t v = v0; v < v1; v++) {
                    float *restrict row = zT + v * R + c0 + c0b;
                    const float *restrict mc = m + c0b;
                    for (int64_t c = 0; c < w; c++) {
                        float e = exp_f32(row[c] - mc[c]);
                        row[c] = e;
                        part[c] += e;
                    }
                }
                for (int64_t c = 0; c < w; c++) sum[c0b + c] += part[c];
            }
        }
        for (int64_t c = 0; c < n; c++) {
            nll[c0 + c] = m[c] + logf(sum[c]) - nll[c0 + c];
            scale[c0 + c] = weights[c0 + c] / sum[c];
            zT[targets[c0 + c] * R + c0 + c] -= sum[c];
        }
    }
}

/* Rotate-half RoPE of x [B, T, H, D] (the projection's layout) into attention's layout
 * y [B, H / G, T, G, D]: the G query heads that share a key head sit next to each other at each
 * position (G = 1: [B, H, T, D]). y = x * cos + swap_halves(x) * sin_signed, with cos and
 * sin_signed [B, T, D] and sin_signed's first half negated (codegemma.model.signed_sin). The
 * transpose comes free with the pass. */
static inline int64_t grouped_row(int64_t b, int64_t t, int64_t h, int64_t T, int64_t H, int64_t G) {
    return ((b * (H / G) + h / G) * T + t) * G + h % G;
}

void rope_forward(const float *x, const float *cos_t, const float *sin_t, float *y, int64_t B, int64_t T, int64_t H,
                  int64_t D, int64_t G, int threads) {
    int64_t half = D / 2;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                const float *restrict xr = x + ((b * T + t) * H + h) * D;
                const float *restrict c = cos_t + (b * T + t) * D, *restrict s = sin_t + (b * T + t) * D;
                float *restrict yr = y + grouped_row(b, t, h, T, H, G) * D;
                const float *restrict x2 = xr + half, *restrict c2 = c + half, *restrict s2 = s + half;
                float *restrict y2 = yr + half;
                for (int64_t j = 0; j < half; j++) yr[j] = xr[j] * c[j] + x2[j] * s[j];
                for (int64_t j = 0; j < half; j++) y2[j] = x2[j] * c2[j] + xr[j] * s2[j];
            }
}

/* The gradient of rope_forward: dx [B, T, H, D] from dy [B, H / G, T, G, D]. Swapping halves is its own
 * transpose, so dx = dy * cos + swap_halves(dy * sin_signed). */
void rope_backward(const float *dy, const float *cos_t, const float *sin_t, float *dx, int64_t B, int64_t T, int64_t H,
                   int64_t D, int64_t G, int threads) {
    int64_t half = D / 2;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const float *restrict g = dy + grouped_row(b, t, h, T, H, G) * D;
                const float *restrict c = cos_t + (b * T + t) * D, *restrict s = sin_t + (b * T + t) * D;
                float *restrict out = dx + ((b * T + t) * H + h) * D;
                const float *restrict g2 = g + half, *restrict c2 = c + half, *restrict s2 = s + half;
                float *restrict out2 = out + half;
                for (int64_t j = 0; j < half; j++) out[j] = g[j] * c[j] + g2[j] * s2[j];
                for (int64_t j = 0; j < half; j++) out2[j] = g2[j] * c2[j] + g[j] * s[j];
            }
}

/* The softmax of causal attention for training (codegemma.fused_ops.causal_attention), on one
 * block of query rows. S [BH, R, W] holds the raw scores q . k of R query rows against the first
 * W keys, for BH = B * Hkv key heads; row r is the query at position t = t0 + r / G (the G query
 * heads of a key head sit next to each other, see rope_forward), and W > t for every row. In place,
 * S becomes softmax(scale * S) over the keys j <= t that `mask` allows (uint8 [B, T, T], nonzero =
 * may attend; NULL = plain causal), 0 elsewhere. A row with no key allowed becomes all 0. */
void attention_softmax_forward(float *S, const uint8_t *mask, int64_t BH, int64_t Hkv, int64_t R, int64_t W,
                               int64_t t0, int64_t G, int64_t T, float scale, int threads) {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t bh = 0; bh < BH; bh++)
        for (int64_t r = 0; r < R; r++) {
            float *restrict s = S + (bh * R + r) * W;
            int64_t t = t0 + r / G, n = t + 1;
            const uint8_t *restrict m = mask ? mask + ((bh / Hkv) * T + t) * T : NULL;
            float top = -INFINITY, sum = 0.0f;
            if (m) {
                for (int64_t j = 0; j < n; j++) top = m[j] && s[j] > top ? s[j] : top;
            } else {
                for (int64_t j = 0; j < n; j++) top = s[j] > top ? s[j] : top;
            }
            if (top == -INFINITY) n = 0; /* nothing to attend to */
            for (int64_t j = 0; j < n; j++) {
                float e = exp_f32(scale * (s[j] - top)); /* <= 1 where allowed; clamped, finite, elsewhere */
                e = m ? e * (float)(m[j] != 0) : e;
                s[j] = e;
                sum += e;
            }
            float inv = n ? 1.0f / sum : 0.0f;
            for (int64_t j = 0; j < n; j++) s[j] *= inv;
            for (int64_t j = n; j < W; j++) s[j] = 0.0f;
        }
}

/* The gradient through attention_softmax_forward: dP [BH, R, W] (dO . v for each key) becomes
 * dS = scale * P * (dP - delta) in place, delta = dO . O for the row (the softmax's Jacobian
 * applied to dP; P = 0 where a key was not attended). dO and O point at the block's first row;
 * their rows are D floats apart and `bh_stride` floats separate consecutive key heads. */
void attention_softmax_backward(float *dP, const float *P, const float *dO, const float *O, int64_t BH, int64_t R,
                                int64_t W, int64_t D, int64_t bh_stride, float scale, int threads) {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t bh = 0; bh < BH; bh++)
        for (int64_t r = 0; r < R; r++) {
            const float *restrict g = dO + bh * bh_stride + r * D, *restrict o = O + bh * bh_stride + r * D;
            const float *restrict p = P + (bh * R + r) * W;
            float *restrict d = dP + (bh * R + r) * W;
            float delta = 0.0f;
#pragma omp simd reduction(+ : delta)
            for (int64_t j = 0; j < D; j++) delta += g[j] * o[j];
            for (int64_t j = 0; j < W; j++) d[j] = scale * p[j] * (d[j] - delta);
        }
}
