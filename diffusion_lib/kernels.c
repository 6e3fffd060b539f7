/* Fused CPU kernels of diffusion_lib, built on first use by native.py (a C compiler with OpenMP).
 *
 * Each kernel computes, in one pass over memory, what the textbook code in fused.py computes with
 * several PyTorch ops; fused.py holds the formulas, the autograd wrappers and the fall-back to the
 * PyTorch ops, and tests/test_fused.py compares the two. All tensors are float32 and contiguous in
 * the layout each kernel's comment gives. Work is split over the samples of the batch, so every
 * result is written by one thread in a fixed order: the same bits whatever the thread count.
 *
 * Compiled with -ffast-math so that expf and erff vectorise (glibc's vector maths library): no
 * kernel relies on infinities or NaN (a softmax starts from its first score, not from -inf).
 */
#include <math.h>
#include <stdint.h>

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* ---------------------------------------------------------------------------------------------
 * Attention on short sequences: out = softmax(Q K^T * scale) V for every sample and head.
 * Q, K and V are read where the projections wrote them, the heads side by side in a row, so no
 * head is ever copied out: query i of sample b starts at q[(b N + i) q_stride], key j at
 * k[(b L + j) kv_stride] (and v likewise), or of row kv_index[b] when the samples share a few
 * rows (the distinct prompts of a batch); a packed projection [Q | K | V] passes pointers into
 * its rows and its row width as the stride. out (B, N, H*D) is dense; pt (B, H, L, N) receives
 * A^T, A = softmax(...), kept for the backward pass. Written for the U-Net's tiny maps
 * (N * L <= 4096, D = 16); the caller checks.
 *
 * Every loop runs along the N queries (16 of them fill one AVX-512 register) or along a head's D
 * channels, and never sums across a vector: the scores are computed as S^T = K Q^T, so that
 * the softmax over the keys is an element-wise max and sum of L vectors. Q^T (D x N) is copied
 * into a small local array first; it stays in the L1 cache.
 */
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int64_t n, l, d;      /* queries, keys, head width (the head functions take n and d again: constants
                             where BY_SIZE can make them so) */
    int64_t wq, wkv, wo;  /* row strides of q (and dq), of k and v (and dk, dv), of out (and dout) */
    float scale;
} Shape;

/* xt (D x N) = scale * x^T for N rows of D values, row stride w: a local copy to run along the rows */
INLINE void transpose_rows(const float *restrict x, const int64_t w, const float scale, float *restrict xt,
                           const int64_t n, const int64_t d)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < d; c++) xt[c * n + i] = x[i * w + c] * scale;
}

/* out (L x N) = y x^T, from L rows y_j (D values, row stride w) and xt = x^T (D x N):
 * out_ji = sum_c y_j[c] xt[c][i], each row a loop along the N columns */
INLINE void rows_times_transposed(const float *restrict y, const int64_t w, const float *restrict xt,
                                  float *restrict out, const int64_t n, const int64_t l, const int64_t d)
{
    for (int64_t j = 0; j < l; j++) {
        float *row = out + j * n;
        for (int64_t i = 0; i < n; i++) row[i] = 0.0f;
        for (int64_t c = 0; c < d; c++) {
            const float yc = y[j * w + c];
#pragma omp simd
            for (int64_t i = 0; i < n; i++) row[i] += yc * xt[c * n + i];
        }
    }
}

INLINE void attention_forward_head(const float *restrict q, const float *restrict k, const float *restrict v,
                                   float *restrict out, float *restrict pt, const int64_t n, const int64_t l,
                                   const int64_t d, const Shape z)
{
    float qt[d * n], top[n], total[n], o[n * d];
    /* S^T = K (Q scale)^T: s_ji = sum_c k_j[c] q_i[c] scale, a row per key j */
    transpose_rows(q, z.wq, z.scale, qt, n, d);
    rows_times_transposed(k, z.wkv, qt, pt, n, l, d);
    for (int64_t i = 0; i < n; i++) top[i] = pt[i];
    for (int64_t j = 1; j < l; j++)
        for (int64_t i = 0; i < n; i++) top[i] = pt[j * n + i] > top[i] ? pt[j * n + i] : top[i];
    /* a_ij = exp(s_ij - max_j s_ij) / sum_j exp(...) */
    for (int64_t i = 0; i < n; i++) total[i] = 0.0f;
    for (int64_t j = 0; j < l; j++) {
        float *s = pt + j * n;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            s[i] = expf(s[i] - top[i]);
            total[i] += s[i];
        }
    }
    for (int64_t i = 0; i < n; i++) total[i] = 1.0f / total[i];
    for (int64_t j = 0; j < l; j++)
        for (int64_t i = 0; i < n; i++) pt[j * n + i] *= total[i];
    /* o_i = sum_j a_ij v_j */
    for (int64_t i = 0; i < n * d; i++) o[i] = 0.0f;
    for (int64_t j = 0; j < l; j++)
        for (int64_t i = 0; i < n; i++) {
            const float a = pt[j * n + i];
            for (int64_t c = 0; c < d; c++) o[i * d + c] += a * v[j * z.wkv + c];
        }
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < d; c++) out[i * z.wo + c] = o[i * d + c];
}

/* The backward pass of one head, from A^T (pt) and dO:
 *   dV_j = sum_i a_ij dO_i                 dP_ij = dO_i . v_j
 *   dS_ij = a_ij (dP_ij - sum_j' a_ij' dP_ij')          (the softmax's Jacobian)
 *   dQ_i = scale sum_j dS_ij k_j           dK_j = scale sum_i dS_ij q_i
 * dP and dS are computed transposed too, a row per key, against a local copy of dO^T.
 */
INLINE void attention_backward_head(const float *restrict q, const float *restrict k, const float *restrict v,
                                    const float *restrict pt, const float *restrict dout, float *restrict dq,
                                    float *restrict dk, float *restrict dv, const int64_t n, const int64_t l,
                                    const int64_t d, const Shape z)
{
    float got[d * n], ds[l * n], along[n], dq_acc[n * d];
    /* dP^T = V dO^T: dp_ji = sum_c v_j[c] dO_i[c]; along_i = sum_j a_ij dP_ij */
    transpose_rows(dout, z.wo, 1.0f, got, n, d);
    rows_times_transposed(v, z.wkv, got, ds, n, l, d);
    for (int64_t i = 0; i < n; i++) along[i] = 0.0f;
    for (int64_t j = 0; j < l; j++)
        for (int64_t i = 0; i < n; i++) along[i] += pt[j * n + i] * ds[j * n + i];
    for (int64_t i = 0; i < n * d; i++) dq_acc[i] = 0.0f;
    for (int64_t j = 0; j < l; j++) {
        const float *a = pt + j * n;
        float *dsj = ds + j * n;
        for (int64_t i = 0; i < n; i++) dsj[i] = a[i] * (dsj[i] - along[i]) * z.scale; /* dS_ij * scale */
        float dk_j[d], dv_j[d];
        for (int64_t c = 0; c < d; c++) dk_j[c] = dv_j[c] = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            const float s = dsj[i], ai = a[i];
            for (int64_t c = 0; c < d; c++) {
                dq_acc[i * d + c] += s * k[j * z.wkv + c];
                dk_j[c] += s * q[i * z.wq + c];
                dv_j[c] += ai * dout[i * z.wo + c];
            }
        }
        for (int64_t c = 0; c < d; c++) {
            dk[j * z.wkv + c] = dk_j[c];
            dv[j * z.wkv + c] = dv_j[c];
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < d; c++) dq[i * z.wq + c] = dq_acc[i * d + c];
}

/* One head with the sizes the U-Net uses as compile-time constants (each loop becomes a few vector
 * instructions), any other size through the general loops. */
#define BY_SIZE(call, n, d)                         \
    do {                                            \
        if (d == 16 && n == 16) call(16, 16);       \
        else if (d == 16 && n == 4) call(4, 16);    \
        else call(n, d);                            \
    } while (0)

typedef struct {
    int64_t q, o, kv, own_kv, weights;
} Offsets;

/* Where head h of sample b starts: in q (and dq), out (and dout), the keys and values it reads (row
 * kv_index[b] when given), its own row b of dk and dv, and its weights A^T */
INLINE Offsets head_offsets(const Shape z, const int64_t *kv_index, const int64_t heads, const int64_t b,
                            const int64_t h)
{
    const int64_t kv_row = kv_index ? kv_index[b] : b;
    const Offsets at = {b * z.n * z.wq + h * z.d, b * z.n * z.wo + h * z.d, kv_row * z.l * z.wkv + h * z.d,
                        b * z.l * z.wkv + h * z.d, (b * heads + h) * z.n * z.l};
    return at;
}

void attention_forward(const float *q, const float *k, const float *v, const int64_t *kv_index, float *out,
                       float *pt, int64_t batch, int64_t n, int64_t l, int64_t heads, int64_t d, int64_t q_stride,
                       int64_t kv_stride, float scale, int threads)
{
    const Shape z = {n, l, d, q_stride, kv_stride, heads * d, scale};
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
    for (int64_t b = 0; b < batch; b++)
        for (int64_t h = 0; h < heads; h++) {
            const Offsets at = head_offsets(z, kv_index, heads, b, h);
#define FORWARD(N, D) \
    attention_forward_head(q + at.q, k + at.kv, v + at.kv, out + at.o, pt + at.weights, N, l, D, z)
            BY_SIZE(FORWARD, n, d);
#undef FORWARD
        }
}

/* With kv_index, sample b reads the keys and values of row kv_index[b] and writes their gradients to
 * its own row b of dk and dv (rows shared by several samples are summed by the caller). */
void attention_backward(const float *q, const float *k, const float *v, const int64_t *kv_index, const float *pt,
                        const float *dout, float *dq, float *dk, float *dv, int64_t batch, int64_t n, int64_t l,
                        int64_t heads, int64_t d, int64_t q_stride, int64_t kv_stride, float scale, int threads)
{
    const Shape z = {n, l, d, q_stride, kv_stride, heads * d, scale};
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
    for (int64_t b = 0; b < batch; b++)
        for (int64_t h = 0; h < heads; h++) {
            const Offsets at = head_offsets(z, kv_index, heads, b, h);
#define BACKWARD(N, D)                                                                                      \
    attention_backward_head(q + at.q, k + at.kv, v + at.kv, pt + at.weights, dout + at.o, dq + at.q,        \
                            dk + at.own_kv, dv + at.own_kv, N, l, D, z)
            BY_SIZE(BACKWARD, n, d);
#undef BACKWARD
        }
}

/* ---------------------------------------------------------------------------------------------
 * GroupNorm, optionally after adding a shift per sample and channel and before a SiLU, on
 * channels_last maps: x (B, P, C) with P = H*W pixels, shift (B, C) or NULL.
 *   u = x + shift_bc (the ResBlock's time embedding)
 *   mean_g, var_g over the P * C/G values of group g of u;   uhat = (u - mean_g) / sqrt(var_g + eps)
 *   z = gamma_c uhat + beta_c;                                y = z * sigmoid(z)   (or y = z)
 * mean and rstd (B, G) are kept for the backward pass. The variance is the two-pass one.
 */
void group_norm_forward(const float *restrict x, const float *restrict shift, const float *restrict gamma,
                        const float *restrict beta, float *restrict y, float *restrict mean, float *restrict rstd,
                        int64_t batch, int64_t pixels, int64_t channels, int64_t groups, float eps, int silu,
                        int threads)
{
    const int64_t per_group = channels / groups;
    const float count = (float)(pixels * per_group);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * pixels * channels;
        float *yb = y + b * pixels * channels;
        float sums[channels], add[channels], centre[channels], scale_c[channels], shift_c[channels];
        float m[groups], r[groups];
        for (int64_t c = 0; c < channels; c++) {
            sums[c] = 0.0f;
            add[c] = shift ? shift[b * channels + c] : 0.0f;
        }
        for (int64_t t = 0; t < pixels; t++)
            for (int64_t c = 0; c < channels; c++) sums[c] += xb[t * channels + c];
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) s += sums[c] + pixels * add[c];
            m[g] = s / count;
        }
        /* u - mean_g = x - (mean_g - shift_bc) */
        for (int64_t c = 0; c < channels; c++) {
            sums[c] = 0.0f;
            centre[c] = m[c / per_group] - add[c];
        }
        for (int64_t t = 0; t < pixels; t++)
            for (int64_t c = 0; c < channels; c++) {
                const float centred = xb[t * channels + c] - centre[c];
                sums[c] += centred * centred;
            }
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) s += sums[c];
            r[g] = 1.0f / sqrtf(s / count + eps);
            mean[b * groups + g] = m[g];
            rstd[b * groups + g] = r[g];
        }
        /* z = x * (gamma rstd) + (beta - (mean - shift) gamma rstd) */
        for (int64_t c = 0; c < channels; c++) {
            scale_c[c] = gamma[c] * r[c / per_group];
            shift_c[c] = beta[c] - centre[c] * scale_c[c];
        }
        for (int64_t t = 0; t < pixels; t++) {
            const float *xt = xb + t * channels;
            float *yt = yb + t * channels;
            if (silu)
                for (int64_t c = 0; c < channels; c++) {
                    const float z = xt[c] * scale_c[c] + shift_c[c];
                    yt[c] = z / (1.0f + expf(-z));
                }
            else
                for (int64_t c = 0; c < channels; c++) yt[c] = xt[c] * scale_c[c] + shift_c[c];
        }
    }
}

/* The backward pass, from x, shift, mean, rstd and dy:
 *   dz = dy * s (1 + z (1 - s)) with s = sigmoid(z)      (SiLU'; dz = dy without SiLU)
 *   dgamma_c = sum dz uhat,  dbeta_c = sum dz            (per sample here: dgamma, dbeta are (B, C))
 *   dx = du = rstd (gamma dz - mean_g(gamma dz) - uhat mean_g(gamma dz uhat))
 *   dshift_bc = sum over pixels of du                    (when dshift is not NULL)
 */
void group_norm_backward(const float *restrict x, const float *restrict shift, const float *restrict gamma,
                         const float *restrict beta, const float *restrict mean, const float *restrict rstd,
                         const float *restrict dy, float *restrict dx, float *restrict dshift,
                         float *restrict dgamma, float *restrict dbeta, int64_t batch, int64_t pixels,
                         int64_t channels, int64_t groups, int silu, int threads)
{
    const int64_t per_group = channels / groups;
    const float count = (float)(pixels * per_group);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * pixels * channels, *dyb = dy + b * pixels * channels;
        float *dxb = dx + b * pixels * channels, *dg = dgamma + b * channels, *db = dbeta + b * channels;
        float scale_c[channels], shift_c[channels], centre[channels], r_c[channels], k1[groups], k2[groups];
        float du_sum[channels];
        for (int64_t c = 0; c < channels; c++) {
            const int64_t g = c / per_group;
            centre[c] = mean[b * groups + g] - (shift ? shift[b * channels + c] : 0.0f);
            r_c[c] = rstd[b * groups + g];
            scale_c[c] = gamma[c] * r_c[c];
            shift_c[c] = beta[c] - centre[c] * scale_c[c];
            dg[c] = db[c] = du_sum[c] = 0.0f;
        }
        /* first pass: dz (kept in dx) and the sums over pixels */
        for (int64_t t = 0; t < pixels; t++) {
            const float *xt = xb + t * channels, *dyt = dyb + t * channels;
            float *dzt = dxb + t * channels;
            for (int64_t c = 0; c < channels; c++) {
                float dz = dyt[c];
                if (silu) {
                    const float z = xt[c] * scale_c[c] + shift_c[c];
                    const float s = 1.0f / (1.0f + expf(-z));
                    dz *= s * (1.0f + z * (1.0f - s));
                }
                dzt[c] = dz;
                dg[c] += dz * (xt[c] - centre[c]) * r_c[c];
                db[c] += dz;
            }
        }
        /* k1 = mean_g(gamma dz), k2 = mean_g(gamma dz uhat) */
        for (int64_t g = 0; g < groups; g++) {
            float s1 = 0.0f, s2 = 0.0f;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
                s1 += gamma[c] * db[c];
                s2 += gamma[c] * dg[c];
            }
            k1[g] = s1 / count;
            k2[g] = s2 / count;
        }
        for (int64_t c = 0; c < channels; c++) {
            shift_c[c] = k1[c / per_group];
            scale_c[c] = k2[c / per_group];
        }
        /* second pass: dx = rstd (gamma dz - k1 - uhat k2) */
        for (int64_t t = 0; t < pixels; t++) {
            const float *xt = xb + t * channels;
            float *dxt = dxb + t * channels;
            for (int64_t c = 0; c < channels; c++) {
                const float uhat = (xt[c] - centre[c]) * r_c[c];
                dxt[c] = r_c[c] * (gamma[c] * dxt[c] - shift_c[c] - uhat * scale_c[c]);
                du_sum[c] += dxt[c];
            }
        }
        if (dshift)
            for (int64_t c = 0; c < channels; c++) dshift[b * channels + c] = du_sum[c];
    }
}

/* ---------------------------------------------------------------------------------------------
 * GEGLU on rows: h (R, 2F) = [value | gate] -> out (R, F) = value * GELU(gate), GELU exact:
 *   GELU(g) = g Phi(g),  Phi(g) = (1 + erf(g / sqrt 2)) / 2,   GELU'(g) = Phi(g) + g phi(g)
 */
void geglu_forward(const float *restrict h, float *restrict out, int64_t rows, int64_t f, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *value = h + r * 2 * f, *gate = value + f;
        float *o = out + r * f;
        for (int64_t c = 0; c < f; c++) o[c] = value[c] * gate[c] * 0.5f * (1.0f + erff(gate[c] * SQRT1_2));
    }
}

/* dh = [dout GELU(gate) | dout value GELU'(gate)] */
void geglu_backward(const float *restrict h, const float *restrict dout, float *restrict dh, int64_t rows, int64_t f,
                    int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *value = h + r * 2 * f, *gate = value + f, *go = dout + r * f;
        float *dvalue = dh + r * 2 * f, *dgate = dvalue + f;
        for (int64_t c = 0; c < f; c++) {
            const float g = gate[c];
            const float phi_cdf = 0.5f * (1.0f + erff(g * SQRT1_2));
            const float phi_pdf = INV_SQRT_2PI * expf(-0.5f * g * g);
            dvalue[c] = go[c] * g * phi_cdf;
            dgate[c] = go[c] * value[c] * (phi_cdf + g * phi_pdf);
        }
    }
}
