/* Fused int8 distance kernels for gaittrain.evaluation.certified (x86-64, AVX-512 VNNI).
 *
 * Built and loaded at run time by gaittrain/evaluation/native.py; certified.py holds the maths
 * (the bound, the re-check policy) and a PyTorch version of each, which the tests compare with
 * these.
 *
 * bounds: every probe x gallery pair's interval around its distance, from int8 products;
 * candidates: the pairs whose exact distance decides the answer; quantize: the int8 levels
 * and norms the bounds are made of.
 *
 * exact_f16 / exact_f32: float64 distances (Euclidean per part, averaged over parts) of the
 * pairs (i[t], j[t]) from the stored values, for the re-check.
 *
 * gait_native_interface, gait_native_row_tile, gait_native_col_tile: what native.py checks
 * before it calls anything else.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MR 8      /* probe rows per tile */
#define NR 3      /* 16-column gallery panels per tile */
#define PANEL 16  /* gallery columns per panel */

/* What native.py checks after loading, before any call: the version of these kernels'
 * arguments and layouts (raised with every change to them, together with native.INTERFACE),
 * and the tile it lays operands out for (native.ROW_TILE x native.COL_TILE). */
#define INTERFACE 1
int gait_native_interface(void) { return INTERFACE; }
int gait_native_row_tile(void) { return MR; }
int gait_native_col_tile(void) { return NR * PANEL; }

/* The int32 dot products of MR probe rows (int8, ``dim`` apart) with NR * 16 gallery columns
 * (NR panels, ``panel_bytes`` apart), accumulated in 24 named registers (an array of vectors
 * would be kept in memory by GCC; and not inlined, where GCC would do the same). */
#define ZERO3(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = c##r##0, c##r##2 = c##r##0;
#define STEP(r)                                                                                \
    {                                                                                          \
        const __m512i av = _mm512_set1_epi32(*(const int32_t *)(a + r * dim + 4 * s));         \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, av);                                        \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, av);                                        \
        c##r##2 = _mm512_dpbusd_epi32(c##r##2, b2, av);                                        \
    }
#define SAVE(r) acc[r][0] = c##r##0, acc[r][1] = c##r##1, acc[r][2] = c##r##2;

__attribute__((noinline)) static void dot_tile(const int8_t *a, int64_t dim, const uint8_t *b, int64_t panel_bytes,
                            int64_t steps, __m512i acc[MR][NR]) {
    ZERO3(0) ZERO3(1) ZERO3(2) ZERO3(3) ZERO3(4) ZERO3(5) ZERO3(6) ZERO3(7)
    for (int64_t s = 0; s < steps; s++) {
        const __m512i b0 = _mm512_loadu_si512((const void *)(b + s * 64));
        const __m512i b1 = _mm512_loadu_si512((const void *)(b + panel_bytes + s * 64));
        const __m512i b2 = _mm512_loadu_si512((const void *)(b + 2 * panel_bytes + s * 64));
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
    }
    SAVE(0) SAVE(1) SAVE(2) SAVE(3) SAVE(4) SAVE(5) SAVE(6) SAVE(7)
}

/* Adds (row factor x column factor) * (the tile's int32 products less the rows' shifts) to
 * ``dot``; ``colf`` holds the tile's NR * 16 column factors. */
static inline void add_products(__m512 dot[MR][NR], __m512i acc[MR][NR], const int32_t *shift,
                                const float *rowf, const float *colf) {
    __m512 cf[NR];
    for (int c = 0; c < NR; c++) cf[c] = _mm512_loadu_ps(colf + c * PANEL);
    for (int r = 0; r < MR; r++) {
        const __m512i sh = _mm512_set1_epi32(shift[r]);
        const __m512 rf = _mm512_set1_ps(rowf[r]);
        for (int c = 0; c < NR; c++)
            dot[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(rf, cf[c]),
                                        _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], sh)),
                                        dot[r][c]);
    }
}

/* What the bounds kernel reads (layouts made by certified.py), for terms = 1 (one level:
 * q_p . q_g) or 3 (two levels: also q_p . q2_g and q2_p . q_g, q2 the quantized residuals):
 *   pq, pq2        int8  [parts][rows][dim]               rows % MR == 0, dim % 4 == 0
 *   gq, gq2        uint8 [parts][cols/16][dim/4][16][4]   cols % (NR*16) == 0; q_g + 128
 *   shift, shift2  int32 [parts][rows]                    128 * sum_d q_p (resp. q2_p)
 *   rowf           float [terms][parts][rows]             -2 s_p, -2 s_p, -2 s2_p
 *   colf           float [terms][parts][cols]             s_g, s2_g, s_g
 *   psq, gsq       float [parts][rows], [parts][cols]     |p_k|^2, |g_k|^2
 *   rfeat, cfeat   float [3][parts][rows], [3][parts][cols]   the bound's features: Delta =
 *                  sum_k sum_f rfeat[f][k][i] cfeat[f][k][j] + rounding * sum_k (psq + gsq) */
typedef struct {
    const int8_t *pq, *pq2;
    const uint8_t *gq, *gq2;
    const int32_t *shift, *shift2;
    const float *rowf, *colf, *psq, *gsq, *rfeat, *cfeat;
    int64_t terms, parts, rows, cols, dim;
} Operands;

/* A tile's running sums over parts: of the roots r_k, their minimum, Delta's products and the
 * squared norms. */
typedef struct {
    __m512 roots[MR][NR], low[MR][NR], delta[MR][NR], norms[MR][NR];
} Tile;

/* Part k of the tile (rows r0.., columns c0..) folded into t. */
static inline void add_part(const Operands *o, int64_t k, int64_t r0, int64_t c0, Tile *t) {
    const int64_t steps = o->dim / 4, panel_bytes = o->dim * PANEL, panels = o->cols / PANEL;
    const int64_t rplane = o->parts * o->rows, cplane = o->parts * o->cols; /* term strides */
    const int64_t row = k * o->rows + r0, col = k * o->cols + c0;
    const int64_t panel = (k * panels + c0 / PANEL) * panel_bytes, dim = o->dim;
    __m512i acc[MR][NR];
    __m512 dot[MR][NR];
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) dot[r][c] = _mm512_setzero_ps();
    dot_tile(o->pq + row * dim, dim, o->gq + panel, panel_bytes, steps, acc);
    add_products(dot, acc, o->shift + row, o->rowf + row, o->colf + col);
    if (o->terms == 3) {
        dot_tile(o->pq + row * dim, dim, o->gq2 + panel, panel_bytes, steps, acc);
        add_products(dot, acc, o->shift + row, o->rowf + rplane + row, o->colf + cplane + col);
        dot_tile(o->pq2 + row * dim, dim, o->gq + panel, panel_bytes, steps, acc);
        add_products(dot, acc, o->shift2 + row, o->rowf + 2 * rplane + row,
                     o->colf + 2 * cplane + col);
    }
    __m512 g[NR], f[3][NR];
    for (int c = 0; c < NR; c++) {
        g[c] = _mm512_loadu_ps(o->gsq + col + c * PANEL);
        for (int e = 0; e < 3; e++) f[e][c] = _mm512_loadu_ps(o->cfeat + e * cplane + col + c * PANEL);
    }
    for (int r = 0; r < MR; r++) {
        const __m512 ps = _mm512_set1_ps(o->psq[row + r]);
        const __m512 f0 = _mm512_set1_ps(o->rfeat[row + r]);
        const __m512 f1 = _mm512_set1_ps(o->rfeat[rplane + row + r]);
        const __m512 f2 = _mm512_set1_ps(o->rfeat[2 * rplane + row + r]);
        for (int c = 0; c < NR; c++) {
            const __m512 norms = _mm512_add_ps(ps, g[c]);
            const __m512 sq = _mm512_add_ps(norms, dot[r][c]);
            const __m512 root = _mm512_sqrt_ps(_mm512_max_ps(sq, _mm512_setzero_ps()));
            t->roots[r][c] = _mm512_add_ps(t->roots[r][c], root);
            t->low[r][c] = _mm512_min_ps(t->low[r][c], root);
            t->norms[r][c] = _mm512_add_ps(t->norms[r][c], norms);
            __m512 d = _mm512_fmadd_ps(f0, f[0][c], t->delta[r][c]);
            d = _mm512_fmadd_ps(f1, f[1][c], d);
            t->delta[r][c] = _mm512_fmadd_ps(f2, f[2][c], d);
        }
    }
}

/* bounds: every pair's interval [lower, upper] (float32 [rows][cols]) around the distance, as
 * certified.py derives it: D = sum_k r_k / parts over the approximations r_k = sqrt(max(S_k, 0)),
 *     S_k = |p_k|^2 + |g_k|^2 - 2 s_p s_g (q_p . q_g)   (two levels: three products),
 * d = Delta (1 + margin), tau = min(d / (parts min_k r_k), sqrt(d / parts)) + D margin (where
 * d = 0 and so is a part's r_k, the square root), lower = D - tau, upper = D + tau. The int8
 * products are exact in int32 (vpdpbusd: unsigned gallery bytes q_g + 128 times signed probe
 * bytes, less 128 sum(q_p)), the rest float32 in a fixed order: the same result whatever the
 * threads. Products never leave the registers: a tile of MR probes x NR * 16 gallery columns
 * accumulates one part at a time. Columns [col_begin, col_end) (multiples of NR * 16) are
 * computed, so threads split them. */
void bounds(const int8_t *pq, const int8_t *pq2, const uint8_t *gq, const uint8_t *gq2,
            const int32_t *shift, const int32_t *shift2, const float *rowf, const float *colf,
            const float *psq, const float *gsq, const float *rfeat, const float *cfeat,
            int64_t terms, int64_t parts, int64_t rows, int64_t cols, int64_t dim,
            float rounding, float margin, int64_t col_begin, int64_t col_end, float *lower,
            float *upper) {
    const Operands o = {pq, pq2, gq, gq2, shift, shift2, rowf, colf, psq, gsq, rfeat, cfeat,
                        terms, parts, rows, cols, dim};
    const __m512 p = _mm512_set1_ps((float)parts), one = _mm512_set1_ps(1.0f + margin);
    const __m512 m = _mm512_set1_ps(margin), rnd = _mm512_set1_ps(rounding);
    for (int64_t c0 = col_begin; c0 < col_end; c0 += NR * PANEL)
        for (int64_t r0 = 0; r0 < rows; r0 += MR) {
            Tile t;
            for (int r = 0; r < MR; r++)
                for (int c = 0; c < NR; c++) {
                    t.roots[r][c] = t.delta[r][c] = t.norms[r][c] = _mm512_setzero_ps();
                    t.low[r][c] = _mm512_set1_ps(INFINITY);
                }
            for (int64_t k = 0; k < parts; k++) add_part(&o, k, r0, c0, &t);
            for (int r = 0; r < MR; r++)
                for (int c = 0; c < NR; c++) {
                    const __m512 dist = _mm512_div_ps(t.roots[r][c], p);
                    const __m512 d = _mm512_mul_ps(
                        _mm512_fmadd_ps(rnd, t.norms[r][c], t.delta[r][c]), one);
                    const __m512 ratio = _mm512_div_ps(d, _mm512_mul_ps(p, t.low[r][c]));
                    const __m512 root = _mm512_sqrt_ps(_mm512_div_ps(d, p));
                    /* minps gives its second operand where either is NaN (0 / 0) */
                    const __m512 tau = _mm512_fmadd_ps(dist, m, _mm512_min_ps(ratio, root));
                    const int64_t at = (r0 + r) * cols + c0 + c * PANEL;
                    _mm512_storeu_ps(lower + at, _mm512_sub_ps(dist, tau));
                    _mm512_storeu_ps(upper + at, _mm512_add_ps(dist, tau));
                }
        }
}

/* acc plus (p - g)^2 of 16 values in float64 (p and g already widened to float32 lanes; the
 * two halves summed first, so that acc's chain grows by one addition) */
static inline __m512d squares(__m512d acc, __m512 p, __m512 g) {
    __m512d lo = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(p)),
                               _mm512_cvtps_pd(_mm512_castps512_ps256(g)));
    __m512d hi = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1)),
                               _mm512_cvtps_pd(_mm512_extractf32x8_ps(g, 1)));
    return _mm512_add_pd(acc, _mm512_fmadd_pd(lo, lo, _mm512_mul_pd(hi, hi)));
}

/* Embeddings [n][parts][dim] of float16 (bits) or float32, dim % 16 == 0. Two accumulators
 * per half of a block of 16 (four chains), so that the sums are not held up by the latency
 * of one chain of multiply-adds. */
#define EXACT(NAME, T, LOAD)                                                                   \
    void NAME(const T *probe, const T *gallery, const int64_t *i, const int64_t *j,            \
              int64_t count, int64_t parts, int64_t dim, double *out) {                        \
        const int64_t width = parts * dim;                                                     \
        for (int64_t t = 0; t < count; t++) {                                                  \
            const T *p = probe + i[t] * width, *g = gallery + j[t] * width;                    \
            double sum = 0.0;                                                                  \
            for (int64_t k = 0; k < parts; k++) {                                              \
                __m512d acc[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};                   \
                int64_t d = k * dim, half = 0;                                                 \
                for (; d < (k + 1) * dim; d += 16, half ^= 1)                                  \
                    acc[half] = squares(acc[half], LOAD(p + d), LOAD(g + d));                  \
                sum += sqrt(_mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[1])));              \
            }                                                                                  \
            out[t] = sum / (double)parts;                                                      \
        }                                                                                      \
    }

#define LOAD_F16(x) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x)))
EXACT(exact_f16, uint16_t, LOAD_F16)
EXACT(exact_f32, float, _mm512_loadu_ps)

/* candidates: the pairs to compute exactly, from the intervals [lower, upper] ([rows][stride],
 * the first n columns read): those that may be the nearest (lower at most the row's smallest
 * upper end) and, for each of a row's m matches t (its distance between the float32 values
 * lo_t <= hi_t; NaN: padding), those whose interval holds it. mask[i][j] = 1 for them, count[i]
 * how many; surely[i][t] counts the pairs certainly nearer than match t (upper < lo_t). */
void candidates(const float *lower, const float *upper, int64_t stride, int64_t n,
                const float *dm_lo, const float *dm_hi, int64_t m, int64_t row_begin,
                int64_t row_end, uint8_t *mask, int64_t *surely, int64_t *count) {
    for (int64_t i = row_begin; i < row_end; i++) {
        const float *lo = lower + i * stride, *up = upper + i * stride;
        const float *a = dm_lo + i * m, *b = dm_hi + i * m;
        int64_t *nearer = surely + i * m, kept = 0;
        uint8_t *out = mask + i * n;
        float row_min = INFINITY;
        for (int64_t j = 0; j < n; j++) row_min = up[j] < row_min ? up[j] : row_min;
        for (int64_t t = 0; t < m; t++) nearer[t] = 0;
        for (int64_t j = 0; j < n; j++) {
            uint8_t keep = lo[j] <= row_min;
            for (int64_t t = 0; t < m; t++) {
                if (up[j] < a[t])
                    nearer[t]++;
                else if (lo[j] <= b[t])
                    keep = 1;
            }
            out[j] = keep;
            kept += keep;
        }
        count[i] = kept;
    }
}

/* Symmetric int8 levels of the 16 * ``blocks`` values v (scale s): q = clamp(round(v / s)),
 * v / s taken as v times 1 / s (any levels serve: the bound uses the residual they leave),
 * written to ``out``; v becomes the residual v - q s. Returns the sum of (q s)^2 and sets
 * ``sum`` to that of q. */
static inline float levels(__m512 *v, int64_t blocks, float s, int8_t *out, int32_t *sum) {
    const __m512 sv = _mm512_set1_ps(s), inv = _mm512_set1_ps(1.0f / s);
    const __m512 top = _mm512_set1_ps(127.0f), bottom = _mm512_set1_ps(-127.0f);
    __m512 hat2 = _mm512_setzero_ps(), total = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(v[b], inv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_max_ps(_mm512_min_ps(q, top), bottom);
        _mm_storeu_si128((__m128i *)(out + 16 * b), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q)));
        total = _mm512_add_ps(total, q); /* integers below 2^24: exact */
        const __m512 hat = _mm512_mul_ps(q, sv);
        hat2 = _mm512_fmadd_ps(hat, hat, hat2);
        v[b] = _mm512_sub_ps(v[b], hat);
    }
    *sum = (int32_t)_mm512_reduce_add_ps(total);
    return _mm512_reduce_add_ps(hat2);
}

static inline float abs_max(const __m512 *v, int64_t blocks) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) m = _mm512_max_ps(m, _mm512_abs_ps(v[b]));
    return _mm512_reduce_max_ps(m);
}

static inline float squares_of(const __m512 *v, int64_t blocks) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) acc = _mm512_fmadd_ps(v[b], v[b], acc);
    return _mm512_reduce_add_ps(acc);
}

/* Stores the ``dim`` levels of row i, part k in the kernels' layouts: probes (``panels`` 0)
 * int8 [parts][rows][dim]; a gallery uint8 + 128 [parts][panels][dim/4][16][4] (see above). */
static inline void store_levels(const int8_t *levels, int64_t i, int64_t k, int64_t rows,
                                int64_t dim, int64_t panels, int8_t *out) {
    if (panels == 0) {
        memcpy(out + (k * rows + i) * dim, levels, dim);
        return;
    }
    uint8_t *panel = (uint8_t *)out + (k * panels + i / PANEL) * dim * PANEL + (i % PANEL) * 4;
    for (int64_t s = 0; s < dim / 4; s++) {
        uint32_t word;
        memcpy(&word, levels + 4 * s, 4);
        word ^= 0x80808080u; /* + 128 in each byte */
        memcpy(panel + s * 64, &word, 4);
    }
}

/* quantize: certified.quantize's levels and norms of rows [begin, end) of x [n][parts][dim]
 * (dim % 16 == 0, at most 1024), one scale per (row, part): s = max|x| / 127 (1 where x = 0),
 * q = levels of x, e = x - q s; s2, q2 the same of e, f = e - q2 s2. Levels go to q, q2 in
 * the layout of store_levels (``rows``: the probe layout's rows; ``panels``: the gallery's);
 * float outputs are [parts][rows]: scale, scale2, sq |x|^2, hat |q s|, err |e|, rest |f| (the
 * last three rounded up: (1 + margin) and a slack); int32 sums, sums2 [parts][rows] of q, q2. */
#define QUANTIZE(NAME, T, LOAD)                                                                \
    void NAME(const T *x, int64_t n, int64_t parts, int64_t dim, int64_t rows, int64_t panels, \
              float margin, int64_t begin, int64_t end, int8_t *q, int8_t *q2, float *scale,   \
              float *scale2, float *sq, float *hat, float *err, float *rest, int32_t *sums,    \
              int32_t *sums2) {                                                                \
        const int64_t blocks = dim / 16;                                                       \
        __m512 v[64];                                                                          \
        int8_t level[1024];                                                                    \
        for (int64_t i = begin; i < end; i++)                                                  \
            for (int64_t k = 0; k < parts; k++) {                                              \
                const int64_t at = k * rows + i;                                               \
                for (int64_t b = 0; b < blocks; b++)                                           \
                    v[b] = LOAD(x + (i * parts + k) * dim + 16 * b);                           \
                sq[at] = squares_of(v, blocks);                                                \
                const float top = abs_max(v, blocks), s = top > 0 ? top / 127.0f : 1.0f;     \
                const float h = sqrtf(levels(v, blocks, s, level, sums + at));                 \
                const float slack = h * 0x1p-22f;                                              \
                store_levels(level, i, k, rows, dim, panels, q);                               \
                const float top2 = abs_max(v, blocks), s2 = top2 > 0 ? top2 / 127.0f : 1.0f; \
                err[at] = sqrtf(squares_of(v, blocks)) * (1 + margin) + slack;                 \
                levels(v, blocks, s2, level, sums2 + at);                                      \
                store_levels(level, i, k, rows, dim, panels, q2);                              \
                rest[at] = sqrtf(squares_of(v, blocks)) * (1 + margin) + slack;                \
                hat[at] = h * (1 + margin);                                                    \
                scale[at] = s;                                                                 \
                scale2[at] = s2;                                                               \
            }                                                                                  \
    }

QUANTIZE(quantize_f16, uint16_t, LOAD_F16)
QUANTIZE(quantize_f32, float, _mm512_loadu_ps)

/* pairs: the (i, j) of the ones of mask [rows][n] (bytes 0 or 1), rows [row_begin, row_end),
 * row i's first at offset[i] of out_i, out_j; eight bytes at a time (the ones are sparse). */
void pairs(const uint8_t *mask, int64_t n, const int64_t *offset, int64_t row_begin,
           int64_t row_end, int64_t *out_i, int64_t *out_j) {
    for (int64_t i = row_begin; i < row_end; i++) {
        const uint8_t *row = mask + i * n;
        int64_t at = offset[i], j = 0;
        for (; j + 8 <= n; j += 8) {
            uint64_t word;
            memcpy(&word, row + j, 8);
            if (word == 0) continue;
            for (int64_t e = j; e < j + 8; e++)
                if (row[e]) out_i[at] = i, out_j[at++] = e;
        }
        for (; j < n; j++)
            if (row[j]) out_i[at] = i, out_j[at++] = j;
    }
}
