/* One decoder layer for one new token per row, in float32, reading the layer's block weights
 * (block_gemv.c). The same arithmetic as codegemma.model.Block for a decode step with a KV cache,
 * without the ~60 PyTorch calls a layer costs there (half of a decode step's time on two cores).
 * Covers the three Gemma families: optional QK-norm, optional pre+post norms, optional attention
 * soft-capping, sliding-window or global attention, GQA/MQA/MHA. */
#include <math.h>
#include <stdint.h>
#include <string.h>

void block_gemv(const float *x, const float *xsum, int M, int K, const int8_t *codes, const float *scale,
                const float *offset, int N, int G, float *y, int threads);

typedef struct {
    const int8_t *codes;
    const float *scale, *offset; /* offset may be NULL */
    int n, k, group;
} Blocks;

typedef struct {
    int d_model, n_heads, n_kv_heads, head_dim, d_ff, qk_norm, post_norms, window; /* window 0: global */
    float eps, query_scale, softcap;                                              /* softcap 0: none */
    /* zero-centred RMSNorm weights (the scale is 1 + w); post_attn and post_ff only with post_norms,
     * and then pre_ff is the norm before the MLP; without post_norms, pre_ff is Gemma 1's
     * post_attention_layernorm */
    const float *input_norm, *post_attn_norm, *pre_ff_norm, *post_ff_norm, *q_norm, *k_norm;
    Blocks qkv, o, gate_up, down; /* q|k|v and gate|up concatenated by output rows */
} Layer;

static void rms_norm(const float *x, const float *w, int n, float eps, float *out) {
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * r * (1.f + w[i]);
}

/* y [M, n] = x [M, k] @ W.T; xsum: room for M * k / group floats */
static void matmul(const Blocks *b, const float *x, int M, float *y, float *xsum, int threads) {
    if (b->offset) {
        const int groups = b->k / b->group;
        for (int m = 0; m < M; m++)
            for (int g = 0; g < groups; g++) {
                float s = 0.f;
                for (int i = 0; i < b->group; i++) s += x[(int64_t)m * b->k + g * b->group + i];
                xsum[m * groups + g] = s;
            }
    }
    block_gemv(x, xsum, M, b->k, b->codes, b->scale, b->offset, b->n, b->group, y, threads);
}

static void rope(float *x, const float *cos, const float *sin, int d) {
    const int half = d / 2;
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* x += post_norm(h), or x += h without a post-norm (Gemma 1) */
static void add_residual(float *x, const float *h, const float *post_norm, int n, float eps, float *tmp) {
    if (post_norm) {
        rms_norm(h, post_norm, n, eps, tmp);
        h = tmp;
    }
    for (int i = 0; i < n; i++) x[i] += h[i];
}

static float gelu_tanh(float x) {
    return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

/* One new token in each of B rows. x [B, d_model]: the residual stream, updated in place. cos, sin
 * [B, head_dim]: each row's rotary tables. k_cache, v_cache: this layer's buffers,
 * [B, n_kv_heads, cols, head_dim]; each row's new key and value go to column `slot`, and row b
 * attends over columns [0, used) whose positions (key_pos [B, cols], -1 for empty or padding) are
 * valid for its query position q_pos[b]. scratch: at least B ((n_heads + 2 n_kv_heads) head_dim
 * + n_heads head_dim + 2 d_ff + 2 d_model + n_heads used + max(d_ff, d_model, n_heads head_dim) / 16)
 * floats. */
void decode_layer(const Layer *L, int B, float *x, const float *cos, const float *sin, float *k_cache, float *v_cache,
                  int cols, int slot, int used, const int64_t *key_pos, const int64_t *q_pos, float *scratch,
                  int threads) {
    const int D = L->d_model, H = L->n_heads, KV = L->n_kv_heads, hd = L->head_dim, F = L->d_ff;
    const int W = (H + 2 * KV) * hd; /* width of one row of q|k|v */
    float *qkv = scratch, *attn = qkv + (int64_t)B * W, *h = attn + (int64_t)B * H * hd, *mlp = h + (int64_t)B * D;
    float *tmp = mlp + (int64_t)B * 2 * F, *scores_all = tmp + (int64_t)B * D;
    float *xsum = scores_all + (int64_t)B * H * used;

    for (int b = 0; b < B; b++) rms_norm(x + (int64_t)b * D, L->input_norm, D, L->eps, h + (int64_t)b * D);
    matmul(&L->qkv, h, B, qkv, xsum, threads);
    for (int b = 0; b < B; b++) {
        float *row = qkv + (int64_t)b * W;
        for (int i = 0; i < H + KV; i++) { /* q and k heads: QK-norm, then rotary embedding */
            float *head = row + i * hd;
            if (L->qk_norm) rms_norm(head, i < H ? L->q_norm : L->k_norm, hd, L->eps, head);
            rope(head, cos + (int64_t)b * hd, sin + (int64_t)b * hd, hd);
        }
        for (int j = 0; j < KV; j++) {
            const int64_t at = (((int64_t)b * KV + j) * cols + slot) * hd;
            memcpy(k_cache + at, row + (H + j) * hd, hd * sizeof(float));
            memcpy(v_cache + at, row + (H + KV + j) * hd, hd * sizeof(float));
        }
    }
    const int group = H / KV;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int bi = 0; bi < B * H; bi++) {
        const int b = bi / H, i = bi % H;
        float *scores = scores_all + (int64_t)bi * used;
        const float *qi = qkv + (int64_t)b * W + i * hd;
        const int64_t base = ((int64_t)b * KV + i / group) * cols * hd, qp = q_pos[b];
        const float *keys = k_cache + base, *values = v_cache + base;
        const int64_t *kp = key_pos + (int64_t)b * cols;
        float best = -INFINITY;
        for (int c = 0; c < used; c++) {
            const int64_t p = kp[c];
            if (p < 0 || p > qp || (L->window && qp - p >= L->window)) {
                scores[c] = -INFINITY;
                continue;
            }
            float s = 0.f;
            const float *kc = keys + (int64_t)c * hd;
#pragma omp simd reduction(+ : s)
            for (int d = 0; d < hd; d++) s += qi[d] * kc[d];
            s *= L->query_scale;
            if (L->softcap > 0.f) s = tanhf(s / L->softcap) * L->softcap;
            scores[c] = s;
            if (s > best) best = s;
        }
        float total = 0.f;
        for (int c = 0; c < used; c++) {
            scores[c] = scores[c] == -INFINITY ? 0.f : expf(scores[c] - best);
            total += scores[c];
        }
        float *out = attn + ((int64_t)b * H + i) * hd;
        memset(out, 0, hd * sizeof(float));
        for (int c = 0; c < used; c++) {
            if (scores[c] == 0.f) continue;
            const float p = scores[c] / total, *vc = values + (int64_t)c * hd;
            for (int d = 0; d < hd; d++) out[d] += p * vc[d];
        }
    }
    matmul(&L->o, attn, B, h, xsum, threads);
    for (int b = 0; b < B; b++)
        add_residual(x + (int64_t)b * D, h + (int64_t)b * D, L->post_norms ? L->post_attn_norm : 0, D, L->eps,
                     tmp + (int64_t)b * D);
    for (int b = 0; b < B; b++) rms_norm(x + (int64_t)b * D, L->pre_ff_norm, D, L->eps, h + (int64_t)b * D);
    matmul(&L->gate_up, h, B, mlp, xsum, threads);
    for (int b = 0; b < B; b++) {
        float *row = mlp + (int64_t)b * 2 * F;
        for (int i = 0; i < F; i++) row[i] = gelu_tanh(row[i]) * row[F + i];
    }
    /* the down projection reads rows of width F out of rows of width 2F: compact them first */
    for (int b = 1; b < B; b++) memmove(mlp + (int64_t)b * F, mlp + (int64_t)b * 2 * F, F * sizeof(float));
    matmul(&L->down, mlp, B, h, xsum, threads);
    for (int b = 0; b < B; b++)
        add_residual(x + (int64_t)b * D, h + (int64_t)b * D, L->post_norms ? L->post_ff_norm : 0, D, L->eps,
                     tmp + (int64_t)b * D);
}
