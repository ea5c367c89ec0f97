/* The fast backend's CPU threshold and masking (gtp_ref/_native.py compiles and loads this file).
 *
 * kth_smallest_{f32,f64}: the exact k-th smallest value of every row of a matrix.  Per row, two
 * streaming passes and a selection among few values:
 *   1. a histogram of the top 11 bits of every value's order key (a float's bits, made to sort as
 *      unsigned integers: negatives flipped whole, non-negatives with the sign bit set; NaN last, as
 *      torch ranks it), and the bin that holds rank k;
 *   2. the keys of that bin copied out (branch-free);
 *   3. the same for the next 11 bits among those, in place;
 *   4. quickselect (three-way partition, so ties cost nothing) among the rest for the remaining rank.
 * The answer is one of the row's values, bit for bit (torch.kthvalue's up to -0.0 vs +0.0, which
 * compare equal).
 *
 * mask_heads_{f32,f64}: GTP's sparsified attention map and what the selection reads from it, per
 * head (an n x n map): the threshold tau = the k-th smallest of the head's n^2 entries as above,
 * then one more pass while the map is still in cache that writes the map with its entries below
 * tau set to 0 (NaN entries kept, as masked_fill(attn < tau, 0) keeps them) and accumulates its
 * column sums (row after row, in the map's dtype: a loop the compiler vectorises), its diagonal
 * and its first row; and tau itself (-inf for k = 0: no threshold).
 *
 * Rows / heads run in parallel (OpenMP).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BINS 2048

/* Order keys: unsigned integers that sort as the floats do, NaN last. */
static inline uint32_t key_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (f != f) return 0xFFFFFFFFu;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float value_f32(uint32_t key) {
    uint32_t u = (key == 0xFFFFFFFFu) ? 0x7FC00000u : (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint64_t key_f64(double f) {
    uint64_t u;
    memcpy(&u, &f, 8);
    if (f != f) return 0xFFFFFFFFFFFFFFFFull;
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

static inline double value_f64(uint64_t key) {
    uint64_t u = (key == 0xFFFFFFFFFFFFFFFFull) ? 0x7FF8000000000000ull
               : (key & 0x8000000000000000ull) ? (key & 0x7FFFFFFFFFFFFFFFull) : ~key;
    double f;
    memcpy(&f, &u, 8);
    return f;
}

/* Both dtypes from one definition: T the float, K its key type, SHIFT the bits below the top 11. */
#define SELECTION(NAME, T, K, SHIFT)                                                       \
static K select_##NAME(K *a, int64_t n, int64_t r) { /* the r-th smallest (0-based) */    \
    int64_t lo = 0, hi = n - 1;                                                            \
    while (lo < hi) {                                                                      \
        K p = a[lo + (hi - lo) / 2];                                                       \
        int64_t lt = lo, i = lo, gt = hi;                                                  \
        while (i <= gt) {                                                                  \
            if (a[i] < p) { K t = a[lt]; a[lt++] = a[i]; a[i++] = t; }                     \
            else if (a[i] > p) { K t = a[gt]; a[gt--] = a[i]; a[i] = t; }                  \
            else i++;                                                                      \
        }                                                                                  \
        if (r < lt) hi = lt - 1;                                                           \
        else if (r > gt) lo = gt + 1;                                                      \
        else return p;                                                                     \
    }                                                                                      \
    return a[lo];                                                                          \
}                                                                                          \
                                                                                           \
static T kth_##NAME(const T *row, int64_t len, int64_t k) { /* 1 <= k <= len */            \
    /* four interleaved histograms: runs of equal bins do not wait on one counter */      \
    uint32_t sub[4][BINS] = {{0}};                                                         \
    int64_t i = 0, hist[BINS];                                                             \
    for (; i + 4 <= len; i += 4)                                                           \
        for (int s = 0; s < 4; s++) sub[s][key_##NAME(row[i + s]) >> SHIFT]++;             \
    for (; i < len; i++) sub[0][key_##NAME(row[i]) >> SHIFT]++;                            \
    for (int b = 0; b < BINS; b++)                                                         \
        hist[b] = (int64_t)sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];                  \
    int64_t bin = 0, before = 0;                                                           \
    while (before + hist[bin] < k) before += hist[bin++];                                  \
    K *buf = malloc(sizeof(K) * (size_t)(hist[bin] + 1));                                  \
    int64_t m = 0;                                                                         \
    for (i = 0; i < len; i++) { /* branch-free: always write, advance if in the bin */     \
        K key = key_##NAME(row[i]);                                                        \
        buf[m] = key;                                                                      \
        m += (int64_t)(key >> SHIFT) == bin;                                               \
    }                                                                                      \
    /* the next 11 bits likewise, among the bin's values, in place */                      \
    int64_t hist2[BINS] = {0}, r = k - 1 - before, bin2 = 0;                               \
    for (i = 0; i < m; i++) hist2[(buf[i] >> (SHIFT - 11)) & (BINS - 1)]++;                \
    while (r >= hist2[bin2]) r -= hist2[bin2++];                                           \
    int64_t m2 = 0;                                                                        \
    for (i = 0; i < m; i++) {                                                              \
        K key = buf[i];                                                                    \
        buf[m2] = key;                                                                     \
        m2 += (int64_t)((key >> (SHIFT - 11)) & (BINS - 1)) == bin2;                       \
    }                                                                                      \
    K key = select_##NAME(buf, m2, r);                                                     \
    free(buf);                                                                             \
    return value_##NAME(key);                                                              \
}                                                                                          \
                                                                                           \
void kth_smallest_##NAME(const T *x, int64_t rows, int64_t len, int64_t k, T *out, int threads) { \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 1)")                  \
    for (int64_t r = 0; r < rows; r++) out[r] = kth_##NAME(x + r * len, len, k);           \
}                                                                                          \
                                                                                           \
static void mask_row_##NAME(const T *restrict row, T *restrict out, T *restrict sums, int64_t n, T tau) { \
    for (int64_t j = 0; j < n; j++) {                                                      \
        T v = row[j];                                                                      \
        T m = v < tau ? (T)0 : v;                                                          \
        out[j] = m;                                                                        \
        sums[j] += m;                                                                      \
    }                                                                                      \
}                                                                                          \
                                                                                           \
void mask_heads_##NAME(const T *attn, int64_t heads, int64_t n, int64_t k, T *masked,      \
                       T *col_sums, T *diag, T *first_row, T *taus, int threads) {         \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 1)")                  \
    for (int64_t h = 0; h < heads; h++) {                                                  \
        const T *map = attn + h * n * n;                                                   \
        T *out = masked + h * n * n;                                                       \
        T tau = k ? kth_##NAME(map, n * n, k) : 0;                                       \
        T *sums = calloc((size_t)n, sizeof(T));                                            \
        if (!k) tau = -(T)INFINITY;                                                        \
        taus[h] = tau;                                                                     \
        for (int64_t i = 0; i < n; i++)                                                    \
            mask_row_##NAME(map + i * n, out + i * n, sums, n, tau);                       \
        for (int64_t i = 0; i < n; i++) diag[h * n + i] = out[i * n + i];                  \
        for (int64_t j = 0; j < n; j++) {                                                  \
            col_sums[h * n + j] = (T)sums[j];                                              \
            first_row[h * n + j] = out[j];                                                 \
        }                                                                                  \
        free(sums);                                                                        \
    }                                                                                      \
}

SELECTION(f32, float, uint32_t, 21)
SELECTION(f64, double, uint64_t, 53)
