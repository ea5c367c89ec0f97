/* The fast backend's CPU kernels (gtp_ref/backends/fast/cpu_build.py compiles and loads this file).
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
 * select_tokens_{f32,f64}, propagate_{f32,f64}: GTP's selection and its propagation by the graph
 * for a batch (below).
 *
 * Rows / heads run in parallel (OpenMP).
 *
 * Arguments: gtp_ref/backends/fast/cpu.py checks every shape, dtype, stride and index before it
 * calls a function here, and each function checks again what it can see -- its sizes, ranks and
 * indices -- returning BAD_ARGUMENTS (or the code it names) before it writes anything.  Nothing
 * sized by the input lives on the C stack: buffers that grow with it come from the heap, and a
 * failed allocation is a return code, never a crash.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define BINS 2048
#define BAD_ARGUMENTS (-1)  /* what every entry point returns for arguments out of its range */

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
/* the k-th smallest of a rows x cols block (row stride: stride), 1 <= k <= rows * cols; *ok   \
 * set to 0 where its buffer could not be had (the value is then NaN) */                   \
static T kth_block_##NAME(const T *x, int64_t rows, int64_t cols, int64_t stride, int64_t k, int *ok) { \
    /* four interleaved histograms: runs of equal bins do not wait on one counter */      \
    uint32_t sub[4][BINS] = {{0}};                                                         \
    int64_t i = 0, hist[BINS];                                                             \
    for (int64_t r = 0; r < rows; r++) {                                                   \
        const T *row = x + r * stride;                                                     \
        for (i = 0; i + 4 <= cols; i += 4)                                                 \
            for (int s = 0; s < 4; s++) sub[s][key_##NAME(row[i + s]) >> SHIFT]++;         \
        for (; i < cols; i++) sub[0][key_##NAME(row[i]) >> SHIFT]++;                       \
    }                                                                                      \
    for (int b = 0; b < BINS; b++)                                                         \
        hist[b] = (int64_t)sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];                  \
    int64_t bin = 0, before = 0;                                                           \
    while (before + hist[bin] < k) before += hist[bin++];                                  \
    K *buf = malloc(sizeof(K) * (size_t)(hist[bin] + 1));                                  \
    if (!buf) { *ok = 0; return (T)NAN; }                                                   \
    int64_t m = 0;                                                                         \
    for (int64_t r = 0; r < rows; r++) {                                                   \
        const T *row = x + r * stride;                                                     \
        for (i = 0; i < cols; i++) { /* branch-free: always write, advance if in the bin */ \
            K key = key_##NAME(row[i]);                                                    \
            buf[m] = key;                                                                  \
            m += (int64_t)(key >> SHIFT) == bin;                                           \
        }                                                                                  \
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
static T kth_##NAME(const T *row, int64_t len, int64_t k, int *ok) { /* 1 <= k <= len */   \
    return kth_block_##NAME(row, 1, len, len, k, ok);                                      \
}                                                                                          \
                                                                                           \
/* The r-th smallest (0-based) of src[0..n), src left as it is: quickselect whose three-way \
 * partitions (partition_NAME) write the smaller keys to the front of another buffer and the  \
 * larger from its position n + 16 on (b1, b2: room for 2 n + 32 keys each). */              \
static K select_copy_##NAME(const K *src, int64_t n, int64_t r, K *b1, K *b2) {            \
    const K *a = src;                                                                      \
    K *out = b1;                                                                           \
    while (n > 16) {                                                                       \
        K x0 = a[0], x1 = a[n / 2], x2 = a[n - 1];  /* the median of three as pivot */     \
        K p = x0 < x1 ? (x1 < x2 ? x1 : (x0 < x2 ? x2 : x0)) : (x0 < x2 ? x0 : (x1 < x2 ? x2 : x1)); \
        int64_t lt = 0, gt = 0;                                                            \
        partition_##NAME(a, n, p, out, &lt, out + n + 16, &gt);                            \
        if (r < lt) n = lt, a = out;                                                       \
        else if (r < n - gt) return p;                                                     \
        else r -= n - gt, a = out + n + 16, n = gt;                                        \
        out = out == b1 ? b2 : b1;                                                         \
    }                                                                                      \
    K small[16];                                                                           \
    memcpy(small, a, (size_t)n * sizeof(K));                                               \
    for (int64_t i = 1; i < n; i++)  /* insertion sort */                                  \
        for (int64_t j = i; j > 0 && small[j - 1] > small[j]; j--) {                       \
            K t = small[j]; small[j] = small[j - 1]; small[j - 1] = t;                     \
        }                                                                                  \
    return small[r];                                                                       \
}                                                                                          \
                                                                                           \
/* Returns 0; BAD_ARGUMENTS unless rows >= 0 and 1 <= k <= len (nothing written); else the    \
 * number of rows whose buffer could not be had (their value NaN). */                     \
int64_t kth_smallest_##NAME(const T *x, int64_t rows, int64_t len, int64_t k, T *out, int threads) { \
    if (rows < 0 || len < 1 || k < 1 || k > len) return BAD_ARGUMENTS;                     \
    int64_t failed = 0;                                                                    \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+:failed)") \
    for (int64_t r = 0; r < rows; r++) {                                                   \
        int ok = 1;                                                                        \
        out[r] = kth_##NAME(x + r * len, len, k, &ok);                                     \
        failed += !ok;                                                                     \
    }                                                                                      \
    return failed;                                                                         \
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
/* Returns 0; BAD_ARGUMENTS unless heads >= 0, n >= 1 and 0 <= k <= n^2 (nothing written);  \
 * else the number of heads whose buffers could not be had (their outputs NaN). */         \
int64_t mask_heads_##NAME(const T *attn, int64_t heads, int64_t n, int64_t k, T *masked,   \
                          T *col_sums, T *diag, T *first_row, T *taus, int threads) {      \
    if (heads < 0 || n < 1 || k < 0 || k > n * n) return BAD_ARGUMENTS;                    \
    int64_t failed = 0;                                                                    \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(+:failed)") \
    for (int64_t h = 0; h < heads; h++) {                                                  \
        const T *map = attn + h * n * n;                                                   \
        T *out = masked + h * n * n;                                                       \
        int ok = 1;                                                                        \
        T tau = k ? kth_##NAME(map, n * n, k, &ok) : -(T)INFINITY;                         \
        T *sums = calloc((size_t)n, sizeof(T));                                            \
        if (!ok || !sums) {                                                                \
            free(sums);                                                                    \
            failed++;                                                                      \
            taus[h] = (T)NAN;                                                              \
            for (int64_t i = 0; i < n * n; i++) out[i] = (T)NAN;                           \
            for (int64_t i = 0; i < n; i++) col_sums[h * n + i] = diag[h * n + i] = first_row[h * n + i] = (T)NAN; \
            continue;                                                                      \
        }                                                                                  \
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
    return failed;                                                                         \
}

/* ---- The fused attention ----
 *
 * attention_{f32,f64,bf16,f16}: a GTP block's attention for B images x H heads, one (image, head) at
 * a time per thread, its N x N map never leaving the thread's cache:
 *   1. z = (scale q) k^T (+ a relative-position bias b[i, j]) (+ log s per key): RB rows x VW keys
 *      per step, k transposed first so that the keys run along the vector lanes;
 *   2. the row softmax: its max and its sum of exp(z - max) in LANES partial sums added in a fixed
 *      order (equal rows give equal maps, bit for bit), then exp(z - max) / sum;
 *   3. tau = the kth smallest of the head's N^2 entries (kth_block above; kth = 0: none);
 *   4. the map with its entries below tau set to 0 (NaN kept), its column sums (row after row),
 *      diagonal and first row;
 *   5. Att v: RB rows x the head dimension per step.
 * bf16 / f16: q, k, v and Att v in bfloat16 / float16 (uint16_t bits), everything else in float32,
 * as the reference computes a reduced-precision model's map (docs/spec.md): q k^T in float32 from
 * the exact inputs, rounded to the inputs' dtype (as a bf16 / f16 matrix product rounds its
 * result), then + b + log s, the softmax, the threshold, the masking, the column sums, diagonal
 * and first row in float32; the masked map rounded to the inputs' dtype for Att v, accumulated in
 * float32 and rounded once.  The conversions are exact bit operations (round to nearest even).
 * Work buffers are per thread and kept between calls up to WORK_KEEP (32 MiB: a map of N = 1024
 * float32 or N = 800 float64 tokens), released at the end of a call beyond.  exp is computed here (exp_NAME, below), as
 * a function of its argument alone, to within an ulp or two of the C library's.
 */
#define RB 6       /* rows per step of the products */
#define LANES 16   /* partial sums of the softmax */
#define SAMPLE 1024  /* about this many entries of a head's map bracket its threshold ... */
#define SPREAD 3.5   /* ... this many standard errors of the sample's quantile either side */
#define WORK_KEEP ((size_t)32 << 20)  /* the bytes of work buffer a thread keeps between calls */

/* room for the keys of the bracket's selection: the sample, or the entries a bracket holds */
static inline int64_t kth_room(int64_t n) { return n * n / 4 + SAMPLE + n; }

/* The entries of row[0..n) in [lo, hi] copied to out (room for n + 16); how many.  The entries
 * below lo are counted into *below.  (AVX-512: sixteen / eight entries per step.) */
static inline int64_t collect_f32(const float *restrict row, int64_t n, float lo, float hi, float *restrict out,
                                  int64_t *below) {
    int64_t c = 0, j = 0, b = 0;
#ifdef __AVX512F__
    __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    for (; j < n; j += 16) {  /* the last step masked to the row's end */
        __mmask16 valid = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(valid, row + j);
        __mmask16 ge = _mm512_mask_cmp_ps_mask(valid, x, vlo, _CMP_GE_OQ), in = _mm512_mask_cmp_ps_mask(ge, x, vhi, _CMP_LE_OQ);
        _mm512_storeu_ps(out + c, _mm512_maskz_compress_ps(in, x));
        c += __builtin_popcount(in);
        b += __builtin_popcount(_mm512_mask_cmp_ps_mask(valid, x, vlo, _CMP_LT_OQ));
    }
#endif
    for (; j < n; j++) {  /* branch-free: always write, advance if inside */
        out[c] = row[j];
        c += (row[j] >= lo) & (row[j] <= hi);
        b += row[j] < lo;
    }
    *below += b;
    return c;
}

static inline int64_t collect_f64(const double *restrict row, int64_t n, double lo, double hi, double *restrict out,
                                  int64_t *below) {
    int64_t c = 0, j = 0, b = 0;
#ifdef __AVX512F__
    __m512d vlo = _mm512_set1_pd(lo), vhi = _mm512_set1_pd(hi);
    for (; j < n; j += 8) {
        __mmask8 valid = n - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - j)) - 1);
        __m512d x = _mm512_maskz_loadu_pd(valid, row + j);
        __mmask8 ge = _mm512_mask_cmp_pd_mask(valid, x, vlo, _CMP_GE_OQ), in = _mm512_mask_cmp_pd_mask(ge, x, vhi, _CMP_LE_OQ);
        _mm512_storeu_pd(out + c, _mm512_maskz_compress_pd(in, x));
        c += __builtin_popcount(in);
        b += __builtin_popcount(_mm512_mask_cmp_pd_mask(valid, x, vlo, _CMP_LT_OQ));
    }
#endif
    for (; j < n; j++) {
        out[c] = row[j];
        c += (row[j] >= lo) & (row[j] <= hi);
        b += row[j] < lo;
    }
    *below += b;
    return c;
}

/* The keys of a[0..n) below p to lo (from the front, 16 keys of room to spare) and those above
 * it to hi, counted into *nlo / *nhi: 512 / W keys per step with AVX-512's compress (W the key's
 * bits), else one at a time without a branch.  Both key widths from one definition. */
#ifdef __AVX512F__
#define PARTITION_VECTOR(W, MASK)                                                               \
    __m512i vp = _mm512_set1_epi##W(p);                                                        \
    for (; i + 512 / W <= n; i += 512 / W) {                                                   \
        __m512i x = _mm512_loadu_si512(a + i);                                                 \
        MASK below = _mm512_cmplt_epu##W##_mask(x, vp), above = _mm512_cmpgt_epu##W##_mask(x, vp); \
        _mm512_storeu_si512(lo + l, _mm512_maskz_compress_epi##W(below, x));                   \
        _mm512_storeu_si512(hi + g, _mm512_maskz_compress_epi##W(above, x));                   \
        l += __builtin_popcount(below), g += __builtin_popcount(above);                        \
    }
#else
#define PARTITION_VECTOR(W, MASK)
#endif
#define PARTITION(NAME, K, W, MASK)                                                            \
static inline void partition_##NAME(const K *restrict a, int64_t n, K p, K *restrict lo, int64_t *nlo, \
                                    K *restrict hi, int64_t *nhi) {                            \
    int64_t i = 0, l = 0, g = 0;                                                               \
    PARTITION_VECTOR(W, MASK)                                                                  \
    for (; i < n; i++) {                                                                       \
        K x = a[i];                                                                            \
        lo[l] = x, hi[g] = x;                                                                  \
        l += x < p, g += x > p;                                                                \
    }                                                                                          \
    *nlo = l, *nhi = g;                                                                        \
}
PARTITION(f32, uint32_t, 32, __mmask16)
PARTITION(f64, uint64_t, 64, __mmask8)

static inline float exp_f32(float x) {   /* x <= 0 or NaN: exp(x), subnormals included */
    x = x < -104.0f ? -104.0f : x;
    float t = x * 1.44269504088896341f + 12582912.0f;   /* 1.5 * 2^23: t's low bits hold n = round(x / ln 2) */
    float n = t - 12582912.0f;
    int32_t bits;
    memcpy(&bits, &t, 4);
    int32_t e = bits - 0x4B400000, e1 = e >> 1, e2 = e - e1;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;                 /* |r| <= ln(2) / 2 */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667163e-1f + r * (4.1666667908e-2f + r * (8.3333337680e-3f
              + r * (1.3888889225e-3f + r * 1.9841270114e-4f))))));
    uint32_t b1 = (uint32_t)(e1 + 127) << 23, b2 = (uint32_t)(e2 + 127) << 23;  /* unsigned: NaN gives any e */
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

static inline double exp_f64(double x) {
    x = x < -746.0 ? -746.0 : x;
    double t = x * 1.4426950408889634074 + 6755399441055744.0;   /* 1.5 * 2^52 */
    double n = t - 6755399441055744.0;
    int64_t bits;
    memcpy(&bits, &t, 8);
    int64_t e = bits - 0x4338000000000000ll, e1 = e >> 1, e2 = e - e1;
    double r = x - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;                      /* Taylor to r^13: |r| <= ln(2) / 2 */
    p = 1.0 / 479001600.0 + r * p;
    p = 1.0 / 39916800.0 + r * p;
    p = 1.0 / 3628800.0 + r * p;
    p = 1.0 / 362880.0 + r * p;
    p = 1.0 / 40320.0 + r * p;
    p = 1.0 / 5040.0 + r * p;
    p = 1.0 / 720.0 + r * p;
    p = 1.0 / 120.0 + r * p;
    p = 1.0 / 24.0 + r * p;
    p = 1.0 / 6.0 + r * p;
    p = 0.5 + r * p;
    p = 1.0 + r * p;
    p = 1.0 + r * p;
    uint64_t b1 = (uint64_t)(e1 + 1023) << 52, b2 = (uint64_t)(e2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, 8);
    memcpy(&s2, &b2, 8);
    return p * s1 * s2;
}

/* bfloat16 and float16 bits <-> float, round to nearest even (NaN stays NaN, quiet). */
static inline float load_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t store_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);  /* NaN: quiet */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float load_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu, u;
    if (e == 0x1F) u = sign | 0x7F800000u | (m << 13);            /* inf, NaN */
    else if (e) u = sign | ((e + 112) << 23) | (m << 13);          /* normal */
    else {                                                          /* zero, subnormal: m 2^-24 */
        float f = (float)m * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t store_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    u &= 0x7FFFFFFFu;
    if (u > 0x7F800000u) return sign | 0x7E00u | (uint16_t)((u >> 13) & 0x3FFu);  /* NaN: quiet */
    if (u >= 0x477FF000u) return sign | 0x7C00u;          /* >= 65520 (or inf): inf */
    if (u < 0x38800000u) {                                /* below 2^-14: a subnormal or zero */
        float a;
        memcpy(&a, &u, 4);
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);  /* in units of 2^-24, to even */
    }
    u += 0xC8000FFFu + ((u >> 13) & 1u);                  /* exponent rebiased, rounded to even */
    return sign | (uint16_t)(u >> 13);
}

static inline float round_bf16(float f) { return load_bf16(store_bf16(f)); }
static inline float round_f16(float f) { return load_f16(store_f16(f)); }

/* n values converted both ways (for the tests and the self-test: the kernels' own conversions) */
void convert_bf16(const float *in, int64_t n, uint16_t *bits, float *back) {
    for (int64_t i = 0; i < n; i++) bits[i] = store_bf16(in[i]), back[i] = load_bf16(bits[i]);
}
void convert_f16(const float *in, int64_t n, uint16_t *bits, float *back) {
    for (int64_t i = 0; i < n; i++) bits[i] = store_f16(in[i]), back[i] = load_f16(bits[i]);
}

#ifdef __AVX512F__
/* exp_f32 on sixteen lanes: the same steps (NaN stays NaN, below -104 clamped), in vector form. */
static inline __m512 exp16_f32(__m512 x) {
    x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_LT_OQ), x, _mm512_set1_ps(-104.0f));
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(12582912.0f));
    __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(12582912.0f));
    __m512i e = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000));
    __m512i e1 = _mm512_srai_epi32(e, 1), e2 = _mm512_sub_epi32(e, e1);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.9841270114e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3888889225e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3333337680e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1666667908e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666667163e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(e1, _mm512_set1_epi32(127)), 23));
    __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(e2, _mm512_set1_epi32(127)), 23));
    return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
}

/* The row softmax of z[0..n) in place, sixteen lanes per step (the last step masked): the max,
 * the sum of exp(z - max) in sixteen lane sums added in a fixed order, then exp(z - max) / sum. */
static inline void softmax_row_avx512_f32(float *z, int64_t n) {
    __m512 m = _mm512_set1_ps(-INFINITY), acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        m = _mm512_mask_max_ps(m, valid, m, _mm512_maskz_loadu_ps(valid, z + j));
    }
    __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 e = exp16_f32(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, z + j), max));
        _mm512_mask_storeu_ps(z + j, valid, e);
        acc = _mm512_mask_add_ps(acc, valid, acc, e);
    }
    float lanes[16], sum = 0;
    _mm512_storeu_ps(lanes, acc);
    for (int l = 0; l < 16; l++) sum += lanes[l];
    __m512 inv = _mm512_set1_ps(1 / sum);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 valid = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        _mm512_mask_storeu_ps(z + j, valid, _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, z + j), inv));
    }
}
#define SOFTMAX_ROW_f32 softmax_row_avx512_f32
#else
#define SOFTMAX_ROW_f32 softmax_row_scalar_f32
#endif
#define SOFTMAX_ROW_f64 softmax_row_scalar_f64

/* The fused attention's parts for one compute dtype T (float / double; K its key type): VW keys
 * per step of q k^T (two vector registers' worth). */
#define ATTENTION_PARTS(NAME, T, K, VW)                                                        \
static inline void softmax_row_scalar_##NAME(T *z, int64_t n) {                                 \
    T m[LANES], acc[LANES];                                                                    \
    int64_t j = 0;                                                                             \
    for (int l = 0; l < LANES; l++) m[l] = -(T)INFINITY;                                       \
    for (; j + LANES <= n; j += LANES)                                                         \
        for (int l = 0; l < LANES; l++) m[l] = z[j + l] > m[l] ? z[j + l] : m[l];              \
    T max = -(T)INFINITY;                                                                      \
    for (; j < n; j++) max = z[j] > max ? z[j] : max;                                          \
    for (int l = 0; l < LANES; l++) max = m[l] > max ? m[l] : max;                             \
    for (int l = 0; l < LANES; l++) acc[l] = 0;                                                \
    for (j = 0; j + LANES <= n; j += LANES)                                                    \
        for (int l = 0; l < LANES; l++) {                                                      \
            T e = exp_##NAME(z[j + l] - max);                                                  \
            z[j + l] = e;                                                                      \
            acc[l] += e;                                                                       \
        }                                                                                      \
    T sum = 0;                                                                                 \
    for (; j < n; j++) {                                                                       \
        z[j] = exp_##NAME(z[j] - max);                                                         \
        sum += z[j];                                                                           \
    }                                                                                          \
    for (int l = 0; l < LANES; l++) sum += acc[l];                                             \
    T inv = 1 / sum;                                                                           \
    for (j = 0; j < n; j++) z[j] = z[j] * inv;                                                 \
}                                                                                              \
                                                                                               \
/* The kth smallest of the n x n map (row stride ld), from a bracket: two order statistics of a \
 * sample of about SAMPLE entries, SPREAD standard errors either side of the quantile k / n^2,  \
 * bound the kth value; one pass counts the entries below the bracket and collects those in it; \
 * the kth is then the right one of those -- exactly.  Where it is not in the bracket (an      \
 * unlucky sample, ties, NaN) or the bracket holds more than a quarter of the map, kth_block    \
 * finds it.  keys: room for kth_room(n) keys, b1, b2: twice that and 32; found: n * n + 16. */   \
static T kth_map_##NAME(const T *map, int64_t n, int64_t ld, int64_t k, K *keys, K *b1, K *b2, \
                        T *found, int *ok) {                                                   \
    int64_t stride = n * n / SAMPLE + 1, m = 0;                                               \
    if (n * n < 4 * SAMPLE) return kth_block_##NAME(map, n, n, ld, k, ok);                     \
    for (int64_t i = 0; i < n; i++)  /* the entries with (i + j) % stride == 0 */              \
        for (int64_t j = (stride - i % stride) % stride; j < n; j += stride)                  \
            keys[m++] = key_##NAME(map[i * ld + j]);                                           \
    double q = (double)k / ((double)n * n), half = SPREAD * sqrt(q * (1 - q) * m) + 1;         \
    int64_t lo_rank = (int64_t)(q * m - half), hi_rank = (int64_t)(q * m + half);              \
    T lo = lo_rank < 0 ? -(T)INFINITY : value_##NAME(select_copy_##NAME(keys, m, lo_rank, b1, b2)); \
    T hi = hi_rank >= m ? (T)INFINITY : value_##NAME(select_copy_##NAME(keys, m, hi_rank, b1, b2)); \
    int64_t below = 0, inside = 0;                                                             \
    for (int64_t i = 0; i < n; i++)                                                            \
        inside += collect_##NAME(map + i * ld, n, lo, hi, found + inside, &below);             \
    if (!(below < k && k <= below + inside) || inside > kth_room(n))                           \
        return kth_block_##NAME(map, n, n, ld, k, ok);                                         \
    for (int64_t i = 0; i < inside; i++) keys[i] = key_##NAME(found[i]);                       \
    return value_##NAME(select_copy_##NAME(keys, inside, k - below - 1, b1, b2));              \
}                                                                                              \
                                                                                               \
/* z[i, j] = q_i . k_j for RB rows (Q: [RB][d]) and the keys j0 .. j0 + VW (kT: [d][ldk]) */    \
static inline void logits_step_##NAME(const T *restrict Q, const T *restrict kT, int64_t d,   \
                                      int64_t ldk, int64_t j0, T acc[RB][VW]) {               \
    for (int r = 0; r < RB; r++)                                                               \
        for (int j = 0; j < VW; j++) acc[r][j] = 0;                                            \
    for (int64_t t = 0; t < d; t++) {                                                          \
        const T *restrict kt = kT + t * ldk + j0;                                              \
        for (int r = 0; r < RB; r++) {                                                         \
            T a = Q[r * d + t];                                                                \
            for (int j = 0; j < VW; j++) acc[r][j] += a * kt[j];                               \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* out_i = sum_j A[i, j] v_j for RB rows of A (row stride lda) and the dp columns of V (rows   \
 * at stride ldv, dp a multiple of VW) */                                                      \
static inline void mix_step_##NAME(const T *restrict A, int64_t lda, const T *restrict V,      \
                                   int64_t ldv, int64_t n, int64_t dp, T *restrict out) {      \
    for (int64_t c0 = 0; c0 < dp; c0 += VW) {                                                  \
        T acc[RB][VW];                                                                         \
        for (int r = 0; r < RB; r++)                                                           \
            for (int c = 0; c < VW; c++) acc[r][c] = 0;                                        \
        for (int64_t j = 0; j < n; j++) {                                                      \
            const T *restrict vj = V + j * ldv + c0;                                           \
            for (int r = 0; r < RB; r++) {                                                     \
                T a = A[r * lda + j];                                                          \
                for (int c = 0; c < VW; c++) acc[r][c] += a * vj[c];                           \
            }                                                                                  \
        }                                                                                      \
        for (int r = 0; r < RB; r++)                                                           \
            for (int c = 0; c < VW; c++) out[r * dp + c0 + c] = acc[r][c];                     \
    }                                                                                          \
}                                                                                              \
                                                                                               \
typedef struct { T *buf; size_t size; } work_##NAME;                                          \
static __thread work_##NAME tls_##NAME;                                                       \
                                                                                               \
static T *work_buffer_##NAME(size_t size) { /* this thread's buffer of at least size entries */ \
    work_##NAME *w = &tls_##NAME;                                                              \
    if (w->size < size) {                                                                      \
        free(w->buf);                                                                          \
        w->buf = aligned_alloc(64, ((size * sizeof(T) + 63) / 64) * 64);                       \
        w->size = w->buf ? size : 0;                                                           \
    }                                                                                          \
    return w->buf;                                                                             \
}                                                                                              \
                                                                                               \
static void work_release_##NAME(void) { /* this thread's buffer, where it is over WORK_KEEP */ \
    work_##NAME *w = &tls_##NAME;                                                              \
    if (w->size * sizeof(T) > WORK_KEEP) {                                                     \
        free(w->buf);                                                                          \
        w->buf = NULL;                                                                         \
        w->size = 0;                                                                           \
    }                                                                                          \
}                                                                                              \
                                                                                               \
int64_t work_kept_##NAME(void) { /* the bytes of work buffer the calling thread keeps */       \
    return (int64_t)(tls_##NAME.size * sizeof(T));                                             \
}

#define BAD_LOG_SIZE (-2)  /* attention: a log token size that is not finite */

/* The fused attention for inputs stored as S (SNAME), computed in T (NAME's parts): LOAD / STORE
 * convert an input / an output, ROUND rounds a T to S's precision (the identity where S is T). */
#define ATTENTION(SNAME, NAME, S, T, K, VW, LOAD, STORE, ROUND)                                \
/* One (image, head): q, k rows of d, v rows of dv, at strides ld* (unit stride along the head \
 * dimension), log_s [N] or NULL, bias rows at stride ldb or NULL.  Returns 0, or -1 where no  \
 * work buffer could be had. */                                                                \
static int attention_head_##SNAME(const S *q, int64_t ldq, const S *k, int64_t ldk, const S *v, \
                                  int64_t ldv, const T *log_s, const T *bias, int64_t ldb, int64_t N, \
                                  int64_t d, int64_t dv, int64_t kth, T scale, S *out, int64_t ldo, T *col_sums, \
                                  T *diag, T *first_row, T *tau_out) {                          \
    int64_t Np = (N + VW - 1) / VW * VW, Nr = (N + RB - 1) / RB * RB;                          \
    /* v is read in place where dv fits the vectors and S is T */                              \
    int64_t dp = (dv + VW - 1) / VW * VW, copy_v = dp != dv || sizeof(S) != sizeof(T);        \
    size_t keys = (size_t)(kth_room(N) * sizeof(K) + sizeof(T) - 1) / sizeof(T);                 \
    T *map = work_buffer_##NAME((size_t)(Nr * Np + d * Np + RB * d + RB * dp) + copy_v * N * dp \
                                + 5 * keys + 64 + (size_t)(N * N) + 16);  /* found: 16 to spare */ \
    if (!map) return -1;                                                                       \
    T *kT = map + Nr * Np, *Q = kT + d * Np, *O = Q + RB * d, *V = O + RB * dp;                \
    T *key_space = V + copy_v * N * dp, *found = key_space + 5 * keys + 64;                    \
    K *key_buf = (K *)key_space, *b1 = (K *)(key_space + keys), *b2 = (K *)(key_space + 3 * keys + 32); \
    for (int64_t j = 0; j < Np; j++)  /* k transposed: the keys along the vector lanes */       \
        for (int64_t t = 0; t < d; t++) kT[t * Np + j] = j < N ? LOAD(k[j * ldk + t]) : 0;     \
    if (copy_v)                                                                                \
        for (int64_t j = 0; j < N; j++)                                                        \
            for (int64_t c = 0; c < dp; c++) V[j * dp + c] = c < dv ? LOAD(v[j * ldv + c]) : 0; \
    for (int64_t i0 = 0; i0 < N; i0 += RB) {  /* 1. the logits, 2. the softmax */              \
        for (int r = 0; r < RB; r++)                                                           \
            for (int64_t t = 0; t < d; t++)  /* q scaled as torch scales it: in T, rounded to S */ \
                Q[r * d + t] = i0 + r < N ? ROUND(LOAD(q[(i0 + r) * ldq + t]) * scale) : 0;   \
        for (int64_t j0 = 0; j0 < Np; j0 += VW) {                                              \
            T acc[RB][VW];                                                                     \
            logits_step_##NAME(Q, kT, d, Np, j0, acc);                                         \
            for (int r = 0; r < RB; r++) {                                                     \
                T *z = map + (i0 + r) * Np + j0;                                               \
                for (int j = 0; j < VW; j++) z[j] = ROUND(acc[r][j]);                          \
                if (bias && i0 + r < N)  /* + b[i, j] */                                       \
                    for (int j = 0; j < VW && j0 + j < N; j++) z[j] += bias[(i0 + r) * ldb + j0 + j]; \
                if (log_s)  /* + log s[j] */                                                   \
                    for (int j = 0; j < VW && j0 + j < N; j++) z[j] += log_s[j0 + j];          \
            }                                                                                  \
        }                                                                                      \
        for (int r = 0; r < RB && i0 + r < N; r++) SOFTMAX_ROW_##NAME(map + (i0 + r) * Np, N); \
    }                                                                                          \
    int ok = 1;                                                                                \
    T tau = kth ? kth_map_##NAME(map, N, Np, kth, key_buf, b1, b2, found, &ok) : -(T)INFINITY;  /* 3. */ \
    if (!ok) return -1;                                                                        \
    *tau_out = tau;                                                                            \
    for (int64_t j = 0; j < N; j++) {  /* 4. the masking and what the selection reads */       \
        col_sums[j] = 0;                                                                       \
        first_row[j] = map[j] < tau ? (T)0 : map[j];  /* before row 0 is rounded below */     \
    }                                                                                          \
    for (int64_t i = 0; i < N; i++) {                                                          \
        T *row = map + i * Np;                                                                 \
        diag[i] = row[i] < tau ? (T)0 : row[i];                                                \
        for (int64_t j = 0; j < N; j++) {                                                      \
            T m = row[j] < tau ? (T)0 : row[j];                                                \
            row[j] = ROUND(m);  /* Att v reads the map in S's precision */                     \
            col_sums[j] += m;                                                                  \
        }                                                                                      \
    }                                                                                          \
    for (int64_t i = N * Np; i < Nr * Np; i++) map[i] = 0;  /* rows beyond N: 0 */             \
    const T *vv = copy_v ? V : (const T *)v;  /* S is T where v is read in place */            \
    int64_t ld_vv = copy_v ? dp : ldv;                                                         \
    for (int64_t i0 = 0; i0 < N; i0 += RB) {  /* 5. Att v */                                   \
        mix_step_##NAME(map + i0 * Np, Np, vv, ld_vv, N, dp, O);                               \
        for (int r = 0; r < RB && i0 + r < N; r++)                                             \
            for (int64_t c = 0; c < dv; c++) out[(i0 + r) * ldo + c] = STORE(O[r * dp + c]);  \
    }                                                                                          \
    return 0;                                                                                  \
}                                                                                              \
/* q, k: [B, H, N, d], v: [B, H, N, dv] at strides s[0..2] (q), s[3..5] (k), s[6..8] (v) for b, h, \
 * n; unit along the last dimension.  log_s [B, N] contiguous or NULL; bias [B or 1, H, N, N] at \
 * strides s[9..11] for b, h, row (s[9] = 0: one for every image; unit along the row) or NULL;   \
 * out [B, N, H, dv] contiguous; col_sums, diag, first_row [B, H, N]; taus [B, H] (-inf for     \
 * kth = 0).  Returns BAD_ARGUMENTS for sizes out of range, BAD_LOG_SIZE for a log s that is not \
 * finite (a token size not finite and > 0; nothing written), else the number of heads that     \
 * could not be computed (no memory).  A thread's work buffer is kept for the next   \
 * call up to WORK_KEEP bytes, released beyond. */                                             \
int64_t attention_##SNAME(const S *q, const S *k, const S *v, const T *log_s, const T *bias,     \
                          const int64_t *s, int64_t B, int64_t H, int64_t N, int64_t d, int64_t dv, \
                          int64_t kth, T scale, S *out, T *col_sums, T *diag, T *first_row, T *taus,   \
                          int threads) {                                                       \
    if (B < 0 || H < 0 || N < 0 || d < 0 || dv < 0 || kth < 0 || kth > N * N) return BAD_ARGUMENTS; \
    for (int64_t i = 0; log_s && i < B * N; i++)  /* a token size not finite and > 0 */         \
        if (!(log_s[i] - log_s[i] == 0)) return BAD_LOG_SIZE;                                  \
    int64_t failed = 0;                                                                        \
    _Pragma("omp parallel num_threads(threads) reduction(+:failed)")                           \
    {                                                                                          \
        _Pragma("omp for schedule(dynamic, 1)")                                                \
        for (int64_t bh = 0; bh < B * H; bh++) {                                               \
            int64_t b = bh / H, h = bh % H;                                                    \
            failed += attention_head_##SNAME(q + b * s[0] + h * s[1], s[2], k + b * s[3] + h * s[4], s[5], \
                                             v + b * s[6] + h * s[7], s[8], log_s ? log_s + b * N : NULL, \
                                             bias ? bias + b * s[9] + h * s[10] : NULL, s[11],  \
                                             N, d, dv, kth, scale, out + (b * N * H + h) * dv, H * dv, \
                                             col_sums + bh * N, diag + bh * N, first_row + bh * N, \
                                             taus + bh) != 0;                                  \
        }                                                                                      \
        work_release_##NAME();                                                                 \
    }                                                                                          \
    return failed;                                                                             \
}

#define SAME(x) (x)

/* GTP's propagation by the graph, per image b (the fast backend's LazyGraph: Â[b, i, j] =
 * A0[b, rows[b, i], rows[b, j]]):
 *   x_out[b, :c] = x[b, :c];  x_out[b, c + i] = x[b, c + K_i] + alpha sum_p Â[b, K_i, P_p] x[b, c + P_p]
 * for the kept tokens K (nk of them) and the propagated P (np); the token sizes likewise where
 * sizes is not NULL; rows_out[b, i] = rows[b, K_i].  x [B, N, C], A0 [B, a, a], rows [B, n], kept
 * [B, nk], prop [B, np], all contiguous; n = N - c = nk + np.  The graph's zero weights are
 * skipped, but for a propagated token with a NaN or infinite feature (0 x NaN is NaN, as in the
 * reference's matrix product: skipping such a product would keep the NaN local).  Before anything is
 * written: BAD_ARGUMENTS where the sizes do not fit (n != nk + np, a < 1, ...), PARTITION where
 * kept and prop do not hold each of 0 .. n-1 exactly once in every row, GRAPH_ROW where a row is
 * outside 0 .. a-1, BAD_SIZE where a token size is not finite and > 0, NO_MEMORY; else 0. */
#define PARTITION_ERROR 1
#define NO_MEMORY 2
#define GRAPH_ROW 3
#define BAD_SIZE 4
#define PROPAGATE(NAME, T)                                                                     \
int64_t propagate_##NAME(const T *x, const T *sizes, const T *A0, const int64_t *rows,           \
                         const int64_t *kept, const int64_t *prop, int64_t B, int64_t N, int64_t C, \
                         int64_t c, int64_t a, int64_t nk, int64_t np, T alpha, T *x_out,        \
                         T *sizes_out, int64_t *rows_out, int threads) {                         \
    if (B < 0 || C < 0 || c < 0 || nk < 0 || np < 0 || a < 1 || N != c + nk + np)             \
        return BAD_ARGUMENTS;                                                                  \
    int64_t n = nk + np, No = c + nk;                                                          \
    unsigned char *seen = calloc((size_t)(n ? n : 1), 1);                                      \
    if (!seen) return NO_MEMORY;                                                               \
    for (int64_t b = 0; b < B; b++) {  /* per image: a partition of 0 .. n-1, rows of A0, sizes */ \
        int64_t status = 0;                                                                    \
        for (int64_t i = 0; i < n && !status; i++) {                                           \
            int64_t j = i < nk ? kept[b * nk + i] : prop[b * np + i - nk];                     \
            if (j < 0 || j >= n || seen[j]) status = PARTITION_ERROR;                          \
            else seen[j] = 1;                                                                  \
            if (rows[b * n + i] < 0 || rows[b * n + i] >= a) status = status ? status : GRAPH_ROW; \
        }                                                                                      \
        for (int64_t i = 0; sizes && i < N && !status; i++)                                    \
            if (!(sizes[b * N + i] > 0 && sizes[b * N + i] < (T)INFINITY)) status = BAD_SIZE;  /* NaN too */ \
        if (status) { free(seen); return status; }                                             \
        memset(seen, 0, (size_t)n);                                                            \
    }                                                                                          \
    free(seen);                                                                                \
    unsigned char *finite = malloc((size_t)(B * np > 0 ? B * np : 1));  /* per propagated token */ \
    if (!finite) return NO_MEMORY;                                                             \
    for (int64_t r = 0; r < B * np; r++) {                                                     \
        const T *xp = x + ((r / np) * N + c + prop[r]) * C;                                    \
        int bad = 0;                                                                           \
        for (int64_t t = 0; t < C; t++) bad |= !(xp[t] - xp[t] == 0);  /* NaN or inf */        \
        finite[r] = !bad;                                                                      \
    }                                                                                          \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(B * No * C > 262144)")  \
    for (int64_t r = 0; r < B * No; r++) {                                                     \
        int64_t b = r / No, i = r % No;                                                        \
        const T *xb = x + b * N * C;                                                           \
        T *out = x_out + r * C;                                                                \
        if (i < c) {                                                                           \
            memcpy(out, xb + i * C, (size_t)C * sizeof(T));                                    \
            if (sizes) sizes_out[r] = sizes[b * N + i];                                        \
            continue;                                                                          \
        }                                                                                      \
        int64_t K = kept[b * nk + i - c];                                                      \
        const int64_t *idb = rows + b * n, *pb = prop + b * np;                                 \
        const T *arow = A0 + (b * a + idb[K]) * a;  /* Â[b, K, :] through rows */               \
        rows_out[b * nk + i - c] = idb[K];                                                      \
        for (int64_t t = 0; t < C; t++) out[t] = 0;                                            \
        T s = 0;                                                                               \
        for (int64_t p = 0; p < np; p++) {  /* sum_p Â[K, P_p] x_P */                          \
            T w = arow[idb[pb[p]]];                                                            \
            if (w == 0 && finite[b * np + p]) continue;  /* adds +-0: nothing */               \
            const T *xp = xb + (c + pb[p]) * C;                                                \
            for (int64_t t = 0; t < C; t++) out[t] += w * xp[t];                               \
            if (sizes) s += w * sizes[b * N + c + pb[p]];                                      \
        }                                                                                      \
        const T *xk = xb + (c + K) * C;                                                        \
        for (int64_t t = 0; t < C; t++) out[t] = xk[t] + alpha * out[t];                       \
        if (sizes) sizes_out[r] = sizes[b * N + c + K] + alpha * s;                            \
    }                                                                                          \
    free(finite);                                                                              \
    return 0;                                                                                  \
}

/* GTP's selection, per image b: prop[b] = the np lowest of scores[b, 0 .. n-1] ranked by (score
 * ascending, index descending), NaN above everything and -0 equal to +0 (the order of a stable
 * sort of the reversed scores, gtp_ref.select.select_tokens); kept[b] = the others, ascending.
 * Insertion into the np best so far: O(n np) at worst, for the small np of GTP's schedules.
 * Returns BAD_ARGUMENTS unless B >= 0 and 1 <= np <= min(n, SELECT_MAX) (nothing written),
 * NO_MEMORY, else 0. */
#define SELECT_MAX 64
#define SELECT_TOKENS(NAME, T, K)                                                              \
int64_t select_tokens_##NAME(const T *scores, int64_t B, int64_t n, int64_t np, int64_t *kept, \
                             int64_t *prop, int threads) {                                     \
    if (B < 0 || np < 1 || np > n || np > SELECT_MAX) return BAD_ARGUMENTS;                    \
    int64_t failed = 0;                                                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if(B * n * np > 65536) reduction(+:failed)") \
    for (int64_t b = 0; b < B; b++) {                                                          \
        const T *s = scores + b * n;                                                           \
        int64_t *pb = prop + b * np, *kb = kept + b * (n - np), m = 0;                         \
        K best[SELECT_MAX];                                                                    \
        unsigned char *chosen = calloc((size_t)n, 1);                                          \
        if (!chosen) { failed++; continue; }                                                   \
        for (int64_t i = n - 1; i >= 0; i--) {  /* a later one of equal key ranks after */    \
            K key = key_##NAME(s[i] == 0 ? (T)0 : s[i]);                                       \
            if (m == np && !(key < best[np - 1])) continue;                                    \
            int64_t j = m < np ? m++ : np - 1;                                                 \
            for (; j > 0 && best[j - 1] > key; j--) best[j] = best[j - 1], pb[j] = pb[j - 1];  \
            best[j] = key, pb[j] = i;                                                          \
        }                                                                                      \
        for (int64_t j = 0; j < np; j++) chosen[pb[j]] = 1;                                    \
        for (int64_t i = 0, c = 0; i < n; i++)                                                 \
            if (!chosen[i]) kb[c++] = i;                                                       \
        free(chosen);                                                                          \
    }                                                                                          \
    return failed ? NO_MEMORY : 0;                                                             \
}

int64_t select_max(void) { return SELECT_MAX; }  /* the largest np select_tokens takes */

SELECTION(f32, float, uint32_t, 21)
SELECTION(f64, double, uint64_t, 53)
ATTENTION_PARTS(f32, float, uint32_t, 32)
ATTENTION_PARTS(f64, double, uint64_t, 16)
ATTENTION(f32, f32, float, float, uint32_t, 32, SAME, SAME, SAME)
ATTENTION(f64, f64, double, double, uint64_t, 16, SAME, SAME, SAME)
ATTENTION(bf16, f32, uint16_t, float, uint32_t, 32, load_bf16, store_bf16, round_bf16)
ATTENTION(f16, f32, uint16_t, float, uint32_t, 32, load_f16, store_f16, round_f16)
PROPAGATE(f32, float)
PROPAGATE(f64, double)
SELECT_TOKENS(f32, float, uint32_t)
SELECT_TOKENS(f64, double, uint64_t)
