/* cbn_model.c: load a cbn model file (format 2) and run inference. C99 + libm; see cbn_model.h.
 *
 * Layout of this file:
 *   1. the model in memory and the inference kernel (shared with cbn's Python inference,
 *      which compiles this file into its extension module cbn._inference)
 *   2. SHA-256
 *   3. the loader: a strict parser for the safetensors header and the checks of format 2
 *   4. the public API
 *
 * Inference arithmetic (the same bits whatever batch a row comes in, and in every build):
 * per layer z[i][j] = sum over k of x[i][k] * W[j][k], summed in the order k = 0, 1, ...,
 * n_in - 1 for every element; vector lanes run across rows i (5 rows and more) or across
 * units j (1-4 rows), never across k, so neither the vector width nor the batch size can
 * change a sum. Then a = g(z * scale[j] + shift[j]) (batch norm folded
 * into scale and shift once, in double, rounded to the dtype) or a = g(z + b[j]); the output
 * layer adds its bias and applies softmax (in double, fixed order per row), sigmoid or nothing.
 * Each product of a sum is added by an explicit fused multiply-add (vector FMA instructions
 * or C99 fma(), exactly rounded: the same bits either way); nothing else may be contracted
 * into one: hence the pragma below and -std=c99 / -ffp-contract=off in the compile line.
 */
#include "cbn_model.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ====================================================================== 1. model and kernel */

enum { CBN_ACT_LINEAR = 0, CBN_ACT_RELU = 1, CBN_ACT_LEAKY_RELU = 2, CBN_ACT_TANH = 3,
       CBN_ACT_SIGMOID = 4 };   /* the codes of cbn._kernels.ACTIVATIONS */
enum { CBN_OUT_SOFTMAX = 0, CBN_OUT_SIGMOID = 1, CBN_OUT_LINEAR = 2 };

/* Vector lanes run across rows: a row group is two vectors of CBN_VECTOR_BYTES (32: 8 floats
   or 4 doubles, in every build; an instruction set with 16-byte registers runs a vector as
   two halves), and CBN_BLOCK_GROUPS groups go through all layers at a time, their
   activations stored transposed (unit-major, a row block apart). The microkernel computes
   up to CBN_UNITS units of one group: 12 accumulators in registers. The vector width only
   decides how many rows run side by side, never the arithmetic of an element. */
#define CBN_VECTOR_BYTES 32
#define CBN_BLOCK_GROUPS 4
#define CBN_UNITS 6
#define CBN_LANES_F32 (CBN_VECTOR_BYTES / 4)
#define CBN_LANES_F64 (CBN_VECTOR_BYTES / 8)
#define CBN_ROW_BLOCK_F32 (CBN_BLOCK_GROUPS * 2 * CBN_LANES_F32)
#define CBN_ROW_BLOCK_F64 (CBN_BLOCK_GROUPS * 2 * CBN_LANES_F64)
#define CBN_PANEL_BYTES 64
#define CBN_PANEL_UNITS(item) (CBN_PANEL_BYTES / (item))   /* units per panel of cbn_layer.Wp */

typedef struct cbn_layer {
    size_t n_in, n_out;
    const void *W;          /* n_out x n_in, row-major */
    const void *Wp;         /* NULL, or W's first n_out / PANEL * PANEL units packed in
                               panels of PANEL units (one 64-byte line per k: 16 float32, 8
                               float64), k-major: Wp[(p * n_in + k) * PANEL + u] =
                               W[p * PANEL + u][k] (models from the loader, for few rows) */
    const void *scale;      /* per unit; NULL for a layer without batch norm */
    const void *shift;      /* per unit: the batch-norm shift, or the bias */
} cbn_layer;

struct cbn_model {
    int dtype;              /* CBN_FLOAT32 or CBN_FLOAT64 */
    int activation;         /* CBN_ACT_* of the hidden layers */
    int output;             /* CBN_OUT_* */
    double slope;           /* leaky_relu's negative slope */
    size_t n_layers;
    const cbn_layer *layers;
    size_t max_width;       /* the widest layer, inputs included */
    void *storage;          /* what cbn_model_free releases (models from the loader) */
};

static double cbn__sigmoid(double z) {
    double e;
    if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
    e = exp(z);
    return e / (1.0 + e);
}

/* Bytes of workspace a forward call over n_rows rows needs (at most a row block's worth). */
static size_t cbn__workspace_bytes(const cbn_model *m, size_t n_rows) {
    size_t block = m->dtype == CBN_FLOAT32 ? CBN_ROW_BLOCK_F32 : CBN_ROW_BLOCK_F64;
    size_t group = block / CBN_BLOCK_GROUPS, item = m->dtype == CBN_FLOAT32 ? 4 : 8;
    size_t ld = n_rows < block ? (n_rows + group - 1) / group * group : block;
    return 2 * (ld ? ld : group) * m->max_width * item;
}

#if (defined(__GNUC__) || defined(__clang__)) && !defined(CBN_NO_VECTORS)
#define CBN_VECTORS 1
typedef float cbn__vf __attribute__((vector_size(CBN_VECTOR_BYTES)));
typedef double cbn__vd __attribute__((vector_size(CBN_VECTOR_BYTES)));
#endif

/* Every product is added by a fused multiply-add, acc = fma(x, w, acc): exactly rounded,
   so the same bits whether it runs as a vector FMA instruction or as C99's fma(). The
   gemm below is compiled once as the baseline build allows (FMA instructions if the compiler
   targets them, e.g. -mfma, -march=native or aarch64, else fma() lane by lane: on x86-64
   without FMA a libm call per product, right but slow) and, on x86-64 with GCC or clang,
   once more for AVX2 + FMA, taken at run time when the CPU has both (CBN_DISPATCH), and once
   more for AVX-512 (CBN_DISPATCH_AVX512, below). Nothing else may be contracted: -std=c99 or
   -ffp-contract=off. */
#if defined(CBN_VECTORS) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__clang__) || __GNUC__ >= 5)
#define CBN_X86 1
#include <immintrin.h>
#define CBN_FMA_X86_f32(acc, v, s) \
    ((acc) = (cbn__vf)_mm256_fmadd_ps((__m256)(v), _mm256_set1_ps(s), (__m256)(acc)))
#define CBN_FMA_X86_f64(acc, v, s) \
    ((acc) = (cbn__vd)_mm256_fmadd_pd((__m256d)(v), _mm256_set1_pd(s), (__m256d)(acc)))
/* AVX-512: the row kernels hold a whole row group in one 64-byte register (CBN_ZMM_ROWS),
   compiled in where the compiler targets AVX-512F (then the baseline build is the one that
   runs), else built once more and taken at run time when the CPU has it
   (CBN_DISPATCH_AVX512). -DCBN_NO_AVX512 leaves both out. */
#if !defined(CBN_NO_AVX512)
#if defined(__AVX512F__)
#define CBN_AVX512_NATIVE 1
#elif !defined(CBN_NO_DISPATCH)
#define CBN_DISPATCH_AVX512 1
#endif
#endif
#if !(defined(__AVX2__) && defined(__FMA__)) && !defined(CBN_NO_DISPATCH) && \
    !defined(CBN_AVX512_NATIVE)
#define CBN_DISPATCH 1
#endif
#endif
#define CBN_FMA1_f32 fmaf
#define CBN_FMA1_f64 fma
#define CBN_FMA_LANES(acc, v, s, LANES, FMA) \
    do { int l_; for (l_ = 0; l_ < (LANES); l_++) (acc)[l_] = FMA((v)[l_], (s), (acc)[l_]); } \
    while (0)
#if defined(CBN_X86) && defined(__AVX2__) && defined(__FMA__)
#define CBN_FMA_f32 CBN_FMA_X86_f32
#define CBN_FMA_f64 CBN_FMA_X86_f64
#else
#define CBN_FMA_f32(acc, v, s) CBN_FMA_LANES(acc, v, s, CBN_LANES_F32, fmaf)
#define CBN_FMA_f64(acc, v, s) CBN_FMA_LANES(acc, v, s, CBN_LANES_F64, fma)
#endif

/* Helpers of the microkernel, for unit u of U and H row vectors (1 or 2); they use the
   kernel's local names cbn__V (vector) and cbn__L (lanes). */
#define CBN_ACC(u) cbn__V a##u##0 = zero, a##u##1 = zero;
#define CBN_WPTR(u, U) const cbn__T *w##u = (U) > (u) ? W + (u) * K : W;
#define CBN_MAC(u, U, H, FMA) \
    if ((U) > (u)) { cbn__T s = w##u[k]; FMA(a##u##0, x0, s); if ((H) > 1) FMA(a##u##1, x1, s); }
#define CBN_STORE(u, U, H) \
    if ((U) > (u)) { \
        memcpy(zT + (u) * ld, &a##u##0, sizeof(cbn__V)); \
        if ((H) > 1) memcpy(zT + (u) * ld + cbn__L, &a##u##1, sizeof(cbn__V)); \
    }

/* A build of the gemm: N names it (cbn__gemm_f32##N), TARGET is its function attribute,
   FMA32/FMA64 its fused multiply-adds (vector accumulator, vector, scalar). */
#ifdef CBN_VECTORS
/* zT[u*ld + r] = sum_k xT[k*ld + r] * W[u*K + k] for units u < U and rows r < H*LANES of
   one group; every element adds its products in the order k = 0, 1, ..., K-1. */
#define CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, U, H) \
static TARGET void cbn__k##U##_##H##_##S##N(const T *xT, size_t ld, const T *W, size_t K, \
                                            T *zT) { \
    typedef T cbn__T; \
    typedef V cbn__V; \
    enum { cbn__L = LANES }; \
    const V zero = {0}; \
    size_t k; \
    CBN_WPTR(0, U) CBN_WPTR(1, U) CBN_WPTR(2, U) CBN_WPTR(3, U) CBN_WPTR(4, U) CBN_WPTR(5, U) \
    CBN_ACC(0) CBN_ACC(1) CBN_ACC(2) CBN_ACC(3) CBN_ACC(4) CBN_ACC(5) \
    /* unrolled twice: less loop overhead per 12 FMAs (about 5% at 256 rows) */ \
    _Pragma("GCC unroll 2") for (k = 0; k < K; k++) { \
        V x0, x1 = zero; \
        memcpy(&x0, xT + k * ld, sizeof(V)); \
        if ((H) > 1) memcpy(&x1, xT + k * ld + LANES, sizeof(V)); \
        CBN_MAC(0, U, H, FMA) CBN_MAC(1, U, H, FMA) CBN_MAC(2, U, H, FMA) \
        CBN_MAC(3, U, H, FMA) CBN_MAC(4, U, H, FMA) CBN_MAC(5, U, H, FMA) \
    } \
    CBN_STORE(0, U, H) CBN_STORE(1, U, H) CBN_STORE(2, U, H) CBN_STORE(3, U, H) \
    CBN_STORE(4, U, H) CBN_STORE(5, U, H) \
    (void)w1; (void)w2; (void)w3; (void)w4; (void)w5; \
}
#else
/* Without vector extensions: the same sums, element by element. */
#define CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, U, H) \
static void cbn__k##U##_##H##_##S##N(const T *xT, size_t ld, const T *W, size_t K, T *zT) { \
    size_t u, r, k; \
    for (u = 0; u < (U); u++) \
        for (r = 0; r < (H) * (LANES); r++) { \
            T acc = 0; \
            for (k = 0; k < K; k++) acc = CBN_FMA1_##S(xT[k * ld + r], W[u * K + k], acc); \
            zT[u * ld + r] = acc; \
        } \
}
#endif

#define CBN_KERNELS(S, N, TARGET, FMA, T, V, LANES, H) \
    CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, 1, H) \
    CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, 2, H) \
    CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, 3, H) \
    CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, 4, H) \
    CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, 5, H) \
    CBN_KERNEL(S, N, TARGET, FMA, T, V, LANES, 6, H)

#define CBN_CALL(S, N, U, H) cbn__k##U##_##H##_##S##N(xg, ld, Wj, K, zg)

#ifdef CBN_VECTORS
/* Few rows (at most CBN_FEW_ROWS, one group): lanes run across units instead, so no lane
   is wasted on missing rows. Tiles of LANES units x LANES k of W are transposed in registers
   (t[kk] holds W[u][k + kk] in lane u), and each lane still adds its products in the order
   k = 0, 1, ..., K-1: the same sequence per element as the row kernels, the same bits. */
#define CBN_FEW_ROWS 4
#ifdef __clang__
#define CBN_SHUFFLE(a, b, M, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define CBN_SHUFFLE(a, b, M, ...) __builtin_shuffle(a, b, (M){__VA_ARGS__})
#endif
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define CBN_HAS_SHUFFLEVECTOR 1
#endif
#endif
/* a 32-byte vector from two 16-byte loads (AVX: one vinsertf128) */
#ifdef CBN_HAS_SHUFFLEVECTOR
#define CBN_PAIR(out, V16, lo, hi) do { \
        V16 l_, h_; \
        memcpy(&l_, lo, 16); \
        memcpy(&h_, hi, 16); \
        out = __builtin_shufflevector(l_, h_, 0, 1, 2, 3, 4, 5, 6, 7); \
    } while (0)
#define CBN_PAIR_D(out, V16, lo, hi) do { \
        V16 l_, h_; \
        memcpy(&l_, lo, 16); \
        memcpy(&h_, hi, 16); \
        out = __builtin_shufflevector(l_, h_, 0, 1, 2, 3); \
    } while (0)
#else
#define CBN_PAIR(out, V16, lo, hi) do { \
        memcpy(&out, lo, 16); \
        memcpy((char *)&out + 16, hi, 16); \
    } while (0)
#define CBN_PAIR_D CBN_PAIR
#endif
typedef int32_t cbn__mf __attribute__((vector_size(CBN_VECTOR_BYTES)));
typedef int64_t cbn__md __attribute__((vector_size(CBN_VECTOR_BYTES)));
typedef float cbn__v4f __attribute__((vector_size(16)));
typedef double cbn__v2d __attribute__((vector_size(16)));

/* t[kk] lane u = W[u*K + k + kk]: an 8 x 8 (float) or 4 x 4 (double) tile of W transposed.
   a[u] = W[u][k+4h..] | W[u+4][k+4h..] (two 16-byte loads), then transposes within each
   128-bit half: no lane-crossing shuffle. */
#define CBN_TILES(N, TARGET) \
static inline TARGET void cbn__tile_f32##N(const float *W, size_t K, size_t k, cbn__vf *t) { \
    cbn__vf a[8], b[8]; \
    int u, h; \
    for (h = 0; h < 2; h++) \
        for (u = 0; u < 4; u++) \
            CBN_PAIR(a[4 * h + u], cbn__v4f, W + u * K + k + 4 * h, W + (u + 4) * K + k + 4 * h); \
    for (u = 0; u < 8; u += 2) { \
        b[u] = CBN_SHUFFLE(a[u], a[u + 1], cbn__mf, 0, 8, 1, 9, 4, 12, 5, 13); \
        b[u + 1] = CBN_SHUFFLE(a[u], a[u + 1], cbn__mf, 2, 10, 3, 11, 6, 14, 7, 15); \
    } \
    for (u = 0; u < 8; u += 4) { \
        t[u] = CBN_SHUFFLE(b[u], b[u + 2], cbn__mf, 0, 1, 8, 9, 4, 5, 12, 13); \
        t[u + 1] = CBN_SHUFFLE(b[u], b[u + 2], cbn__mf, 2, 3, 10, 11, 6, 7, 14, 15); \
        t[u + 2] = CBN_SHUFFLE(b[u + 1], b[u + 3], cbn__mf, 0, 1, 8, 9, 4, 5, 12, 13); \
        t[u + 3] = CBN_SHUFFLE(b[u + 1], b[u + 3], cbn__mf, 2, 3, 10, 11, 6, 7, 14, 15); \
    } \
} \
static inline TARGET void cbn__tile_f64##N(const double *W, size_t K, size_t k, cbn__vd *t) { \
    cbn__vd a[4]; \
    int c, u; \
    for (c = 0; c < 2; c++) \
        for (u = 0; u < 2; u++) \
            CBN_PAIR_D(a[2 * c + u], cbn__v2d, W + u * K + k + 2 * c, \
                       W + (u + 2) * K + k + 2 * c); \
    for (c = 0; c < 2; c++) { \
        t[2 * c] = CBN_SHUFFLE(a[2 * c], a[2 * c + 1], cbn__md, 0, 4, 2, 6); \
        t[2 * c + 1] = CBN_SHUFFLE(a[2 * c], a[2 * c + 1], cbn__md, 1, 5, 3, 7); \
    } \
}

/* zT[u*G + r] = sum_k xT[k*G + r] * W[u*K + k] for rows r < R and units u < P*LANES
   (P panels of LANES units side by side hide the adds' latency). */
#define CBN_UNROLL _Pragma("GCC unroll 16")
#define CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, R, P) \
static TARGET void cbn__few##R##_##P##_##S##N(const T *xT, size_t G, const T *W, size_t K, \
                                              T *zT) { \
    V acc[R][P], t[P][LANES]; \
    const V zero = {0}; \
    size_t k; \
    int r, p, u; \
    CBN_UNROLL for (r = 0; r < (R); r++) CBN_UNROLL for (p = 0; p < (P); p++) acc[r][p] = zero; \
    for (k = 0; k + (LANES) <= K; k += (LANES)) { \
        CBN_UNROLL for (p = 0; p < (P); p++) \
            cbn__tile_##S##N(W + (size_t)p * (LANES) * K, K, k, t[p]); \
        CBN_UNROLL for (u = 0; u < (LANES); u++) \
            CBN_UNROLL for (r = 0; r < (R); r++) { \
                const T x = xT[(k + u) * G + r]; \
                CBN_UNROLL for (p = 0; p < (P); p++) FMA(acc[r][p], t[p][u], x); \
            } \
    } \
    for (; k < K; k++) \
        CBN_UNROLL for (p = 0; p < (P); p++) { \
            T w[LANES]; \
            CBN_UNROLL for (u = 0; u < (LANES); u++) \
                w[u] = W[((size_t)(p * (LANES) + u)) * K + k]; \
            memcpy(&t[p][0], w, sizeof(V)); \
            CBN_UNROLL for (r = 0; r < (R); r++) FMA(acc[r][p], t[p][0], xT[k * G + r]); \
        } \
    for (r = 0; r < (R); r++) \
        for (p = 0; p < (P); p++) { \
            T z[LANES]; \
            memcpy(z, &acc[r][p], sizeof(V)); \
            for (u = 0; u < (LANES); u++) zT[(size_t)(p * (LANES) + u) * G + r] = z[u]; \
        } \
}
#define CBN_FEW_KERNELS(S, N, TARGET, FMA, T, V, LANES) \
    CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, 1, 1) \
    CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, 2, 1) \
    CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, 3, 1) \
    CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, 4, 1) \
    CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, 1, 2) \
    CBN_FEW_KERNEL(S, N, TARGET, FMA, T, V, LANES, 2, 2)
/* The same sums from W packed in panels (cbn_layer.Wp): one contiguous vector of LANES
   units per k, no transposes. The block's units start at j0 (a multiple of LANES); vector p
   is part of panel (j0 + p * LANES) / PANEL. */
#define CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, R, P) \
static TARGET void cbn__packed##R##_##P##_##S##N(const T *xT, size_t G, const T *Wp, \
                                                 size_t j0, size_t K, T *zT) { \
    const size_t panel = CBN_PANEL_UNITS(sizeof(T)); \
    V acc[R][P], w[P]; \
    const T *wp[P]; \
    const V zero = {0}; \
    size_t k; \
    int r, p, u; \
    CBN_UNROLL for (p = 0; p < (P); p++) { \
        const size_t unit = j0 + (size_t)p * (LANES); \
        wp[p] = Wp + unit / panel * panel * K + unit % panel; \
    } \
    CBN_UNROLL for (r = 0; r < (R); r++) CBN_UNROLL for (p = 0; p < (P); p++) acc[r][p] = zero; \
    for (k = 0; k < K; k++) { \
        CBN_UNROLL for (p = 0; p < (P); p++) memcpy(&w[p], wp[p] + k * panel, sizeof(V)); \
        CBN_UNROLL for (r = 0; r < (R); r++) { \
            const T x = xT[k * G + r]; \
            CBN_UNROLL for (p = 0; p < (P); p++) FMA(acc[r][p], w[p], x); \
        } \
    } \
    for (r = 0; r < (R); r++) \
        for (p = 0; p < (P); p++) { \
            T z[LANES]; \
            memcpy(z, &acc[r][p], sizeof(V)); \
            for (u = 0; u < (LANES); u++) zT[(size_t)(p * (LANES) + u) * G + r] = z[u]; \
        } \
}
#define CBN_PACKED_KERNELS(S, N, TARGET, FMA, T, V, LANES) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 1, 1) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 2, 1) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 3, 1) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 4, 1) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 1, 4) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 2, 4) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 3, 2) \
    CBN_PACKED_KERNEL(S, N, TARGET, FMA, T, V, LANES, 4, 2)
#define CBN_FEW_CALL(S, N, R, P) \
    cbn__few##R##_##P##_##S##N(xT, ld, W + j0 * K, K, zT + j0 * ld)
#define CBN_PACKED_CALL(S, N, R, P) \
    cbn__packed##R##_##P##_##S##N(xT, ld, Wp, j0, K, zT + j0 * ld)
/* Units j0.. of zT for the `rows` rows through the few-rows kernels: the packed units of Wp, then
   tiles of W; returns the first unit left (fewer than LANES units remain for the row
   kernels). PACKED: a statement that may take the packed units first (AVX-512 builds). */
#define CBN_FEW_GEMM(S, N, TARGET, T, LANES, PACKED) \
static TARGET size_t cbn__few_gemm_##S##N(const T *xT, size_t rows, const T *W, const T *Wp, \
                                          size_t K, size_t n_out, T *zT) { \
    const size_t ld = 2 * (LANES); \
    size_t j0 = 0; \
    if (Wp) { \
        const size_t packed = n_out / CBN_PANEL_UNITS(sizeof(T)) * CBN_PANEL_UNITS(sizeof(T)); \
        /* (AVX-512: PACKED, 4 panels side by side.) Else 4 vectors side by side (1-2 rows) \
           or 2 (3-4 rows) hide the adds' latency. */ \
        const size_t P = rows <= 2 ? 4 : 2; \
        PACKED(S, N) \
        for (; j0 + P * (LANES) <= packed; j0 += P * (LANES)) \
            switch (rows) { \
            case 1: CBN_PACKED_CALL(S, N, 1, 4); break; case 2: CBN_PACKED_CALL(S, N, 2, 4); break; \
            case 3: CBN_PACKED_CALL(S, N, 3, 2); break; default: CBN_PACKED_CALL(S, N, 4, 2); break; \
            } \
        for (; j0 + (LANES) <= packed; j0 += (LANES)) \
            switch (rows) { \
            case 1: CBN_PACKED_CALL(S, N, 1, 1); break; case 2: CBN_PACKED_CALL(S, N, 2, 1); break; \
            case 3: CBN_PACKED_CALL(S, N, 3, 1); break; default: CBN_PACKED_CALL(S, N, 4, 1); break; \
            } \
    } \
    /* two panels side by side hide the adds' latency; from 3 rows on, one (registers) */ \
    for (; rows <= 2 && j0 + 2 * (LANES) <= n_out; j0 += 2 * (LANES)) { \
        if (rows == 1) CBN_FEW_CALL(S, N, 1, 2); else CBN_FEW_CALL(S, N, 2, 2); \
    } \
    for (; j0 + (LANES) <= n_out; j0 += (LANES)) \
        switch (rows) { \
        case 1: CBN_FEW_CALL(S, N, 1, 1); break; case 2: CBN_FEW_CALL(S, N, 2, 1); break; \
        case 3: CBN_FEW_CALL(S, N, 3, 1); break; default: CBN_FEW_CALL(S, N, 4, 1); break; \
        } \
    return j0; \
}
#else
#define CBN_FEW_ROWS 0
#define CBN_TILES(N, TARGET)
#define CBN_FEW_KERNELS(S, N, TARGET, FMA, T, V, LANES)
#define CBN_PACKED_KERNELS(S, N, TARGET, FMA, T, V, LANES)
#define CBN_FEW_GEMM(S, N, TARGET, T, LANES, PACKED) \
static size_t cbn__few_gemm_##S##N(const T *xT, size_t rows, const T *W, const T *Wp, \
                                   size_t K, size_t n_out, T *zT) { \
    (void)xT; (void)rows; (void)W; (void)Wp; (void)K; (void)n_out; (void)zT; \
    return 0; \
}
#endif

#if defined(CBN_AVX512_NATIVE) || defined(CBN_DISPATCH_AVX512)
/* The row kernels for AVX-512: one 64-byte vector is a whole row group (2 * LANES rows), so
   a unit's broadcast weight feeds CBN_ZMM_GROUPS groups and CBN_ZMM_UNITS units share each
   load of x (16 accumulators). Each element still adds its products in the order k = 0, 1,
   ..., K-1 by one exactly rounded FMA each: the bits of every other build. Full groups only:
   rows past the end are zero in the input and stay finite in every layer. */
#define CBN_ZMM_UNITS 8
#define CBN_ZMM_GROUPS 2
typedef float cbn__zf __attribute__((vector_size(64)));
typedef double cbn__zd __attribute__((vector_size(64)));
#define CBN_ZFMA_f32(acc, v, s) \
    ((acc) = (cbn__zf)_mm512_fmadd_ps((__m512)(v), _mm512_set1_ps(s), (__m512)(acc)))
#define CBN_ZFMA_f64(acc, v, s) \
    ((acc) = (cbn__zd)_mm512_fmadd_pd((__m512d)(v), _mm512_set1_pd(s), (__m512d)(acc)))
/* zT[h*zs + u*ld + r] = sum_k xT[h*xs + k*ld + r] * W[u*K + k] for units u < U, groups
   h < NG and the ld rows of a group. */
#define CBN_ZMM_KERNELS(S, N, TARGET, T, Z) \
static inline __attribute__((always_inline)) TARGET void cbn__z_##S##N( \
        const T *xT, size_t ld, const T *W, size_t K, T *zT, size_t xs, size_t zs, \
        const int U, const int NG) { \
    Z acc[CBN_ZMM_GROUPS][CBN_ZMM_UNITS], x[CBN_ZMM_GROUPS]; \
    const Z zero = {0}; \
    size_t k; \
    int u, h; \
    CBN_UNROLL for (h = 0; h < CBN_ZMM_GROUPS; h++) \
        CBN_UNROLL for (u = 0; u < CBN_ZMM_UNITS; u++) acc[h][u] = zero; \
    for (k = 0; k < K; k++) { \
        CBN_UNROLL for (h = 0; h < NG; h++) memcpy(&x[h], xT + h * xs + k * ld, sizeof(Z)); \
        CBN_UNROLL for (u = 0; u < U; u++) { \
            const T w = W[u * K + k]; \
            CBN_UNROLL for (h = 0; h < NG; h++) CBN_ZFMA_##S(acc[h][u], x[h], w); \
        } \
    } \
    CBN_UNROLL for (h = 0; h < NG; h++) \
        CBN_UNROLL for (u = 0; u < U; u++) memcpy(zT + h * zs + u * ld, &acc[h][u], sizeof(Z)); \
} \
static TARGET void cbn__z_full_##S##N(const T *xT, size_t ld, const T *W, size_t K, T *zT, \
                                      size_t xs, size_t zs) { \
    cbn__z_##S##N(xT, ld, W, K, zT, xs, zs, CBN_ZMM_UNITS, CBN_ZMM_GROUPS); \
} \
static TARGET void cbn__z_group_##S##N(const T *xT, size_t ld, const T *W, size_t K, T *zT) { \
    cbn__z_##S##N(xT, ld, W, K, zT, 0, 0, CBN_ZMM_UNITS, 1); \
} \
static TARGET void cbn__z_unit_##S##N(const T *xT, size_t ld, const T *W, size_t K, T *zT) { \
    cbn__z_##S##N(xT, ld, W, K, zT, 0, 0, 1, 1); \
} \
CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 1, 4) CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 1, 1) \
CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 2, 4) CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 2, 1) \
CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 3, 4) CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 3, 1) \
CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 4, 4) CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, 4, 1)
/* Few rows from Wp (cbn_layer.Wp): one panel is one 64-byte vector per k, and P panels side by
   side (P = 4: 4 x R accumulators) hide the adds' latency. zT[(p*PANEL + u)*G + r] = sum_k
   xT[k*G + r] * Wp[(p*K + k)*PANEL + u] for rows r < R, in the order k = 0, 1, ... */
#define CBN_ZMM_PACKED_KERNEL(S, N, TARGET, T, Z, R, P) \
static TARGET void cbn__zpacked##R##_##P##_##S##N(const T *xT, size_t G, const T *Wp, size_t K, \
                                                  T *zT) { \
    const size_t panel = CBN_PANEL_UNITS(sizeof(T)); \
    Z acc[R][P], w[P]; \
    const Z zero = {0}; \
    size_t k, u; \
    int r, p; \
    CBN_UNROLL for (r = 0; r < (R); r++) CBN_UNROLL for (p = 0; p < (P); p++) acc[r][p] = zero; \
    for (k = 0; k < K; k++) { \
        CBN_UNROLL for (p = 0; p < (P); p++) \
            memcpy(&w[p], Wp + ((size_t)p * K + k) * panel, sizeof(Z)); \
        CBN_UNROLL for (r = 0; r < (R); r++) { \
            const T x = xT[k * G + r]; \
            CBN_UNROLL for (p = 0; p < (P); p++) CBN_ZFMA_##S(acc[r][p], w[p], x); \
        } \
    } \
    for (r = 0; r < (R); r++) \
        for (p = 0; p < (P); p++) { \
            T z[CBN_PANEL_UNITS(sizeof(T))]; \
            memcpy(z, &acc[r][p], sizeof(Z)); \
            for (u = 0; u < panel; u++) zT[(p * panel + u) * G + r] = z[u]; \
        } \
}
#define CBN_ZPACKED_CALL(S, N, R, P) \
    cbn__zpacked##R##_##P##_##S##N(xT, ld, Wp + j0 * K, K, zT + j0 * ld)
/* The packed units of few_gemm (its names): blocks of 4 panels, then single panels. */
#define CBN_ZMM_PACKED(S, N) \
    { \
        const size_t panel = CBN_PANEL_UNITS(sizeof(*Wp)); \
        for (; j0 + 4 * panel <= packed; j0 += 4 * panel) \
            switch (rows) { \
            case 1: CBN_ZPACKED_CALL(S, N, 1, 4); break; case 2: CBN_ZPACKED_CALL(S, N, 2, 4); break; \
            case 3: CBN_ZPACKED_CALL(S, N, 3, 4); break; default: CBN_ZPACKED_CALL(S, N, 4, 4); break; \
            } \
        for (; j0 + panel <= packed; j0 += panel) \
            switch (rows) { \
            case 1: CBN_ZPACKED_CALL(S, N, 1, 1); break; case 2: CBN_ZPACKED_CALL(S, N, 2, 1); break; \
            case 3: CBN_ZPACKED_CALL(S, N, 3, 1); break; default: CBN_ZPACKED_CALL(S, N, 4, 1); break; \
            } \
    }
/* All units of gemm's row path (5 rows and more), in blocks of CBN_ZMM_UNITS; a statement
   inside cbn__gemm (its names). */
#define CBN_ZMM_ROWS(S, N) \
    if (rows > CBN_FEW_ROWS) { \
        size_t u; \
        for (; j0 + CBN_ZMM_UNITS <= n_out; j0 += CBN_ZMM_UNITS) { \
            for (g = 0; g + CBN_ZMM_GROUPS <= groups; g += CBN_ZMM_GROUPS) \
                cbn__z_full_##S##N(xT + g * K * ld, ld, W + j0 * K, K, \
                                   zT + (g * n_out + j0) * ld, K * ld, n_out * ld); \
            for (; g < groups; g++) \
                cbn__z_group_##S##N(xT + g * K * ld, ld, W + j0 * K, K, zT + (g * n_out + j0) * ld); \
        } \
        for (u = j0; u < n_out; u++) \
            for (g = 0; g < groups; g++) \
                cbn__z_unit_##S##N(xT + g * K * ld, ld, W + u * K, K, zT + (g * n_out + u) * ld); \
        j0 = n_out; \
    }
#endif
#define CBN_NO_ZMM_KERNELS(S, N, TARGET, T, Z)
#define CBN_NO_ZMM_ROWS(S, N)
#define CBN_NO_ZMM_PACKED(S, N)

/* zT = W (n_out x K) times xT over the row groups of `rows` rows; the last group has one
   vector of rows when half_last is set. Activations are stored group by group: element
   (k, r) of a layer n wide at ((r / G) * n + k) * G + r % G, G = 2 * LANES rows, so the
   microkernel reads and writes contiguous vectors. */
#define CBN_GEMM(S, N, TARGET, FMA, T, V, LANES, ROWS, PACKED) \
CBN_KERNELS(S, N, TARGET, FMA, T, V, LANES, 1) CBN_KERNELS(S, N, TARGET, FMA, T, V, LANES, 2) \
CBN_FEW_KERNELS(S, N, TARGET, FMA, T, V, LANES) CBN_PACKED_KERNELS(S, N, TARGET, FMA, T, V, LANES) \
CBN_FEW_GEMM(S, N, TARGET, T, LANES, PACKED) \
static TARGET void cbn__gemm_##S##N(const T *xT, size_t rows, const T *W, const T *Wp, \
                                    size_t K, size_t n_out, T *zT) { \
    const size_t ld = 2 * LANES, groups = (rows + ld - 1) / ld; \
    const int half_last = rows - (groups - 1) * ld <= LANES; \
    size_t j0 = rows <= CBN_FEW_ROWS ? cbn__few_gemm_##S##N(xT, rows, W, Wp, K, n_out, zT) \
                                          : 0, g; \
    ROWS(S, N) \
    for (; j0 < n_out; j0 += CBN_UNITS) { \
        size_t units = n_out - j0 < CBN_UNITS ? n_out - j0 : CBN_UNITS; \
        const T *Wj = W + j0 * K; \
        for (g = 0; g < groups; g++) { \
            const T *xg = xT + g * K * ld; \
            T *zg = zT + (g * n_out + j0) * ld; \
            if (half_last && g + 1 == groups) { \
                switch (units) { \
                case 1: CBN_CALL(S, N, 1, 1); break; case 2: CBN_CALL(S, N, 2, 1); break; \
                case 3: CBN_CALL(S, N, 3, 1); break; case 4: CBN_CALL(S, N, 4, 1); break; \
                case 5: CBN_CALL(S, N, 5, 1); break; default: CBN_CALL(S, N, 6, 1); break; \
                } \
            } else { \
                switch (units) { \
                case 1: CBN_CALL(S, N, 1, 2); break; case 2: CBN_CALL(S, N, 2, 2); break; \
                case 3: CBN_CALL(S, N, 3, 2); break; case 4: CBN_CALL(S, N, 4, 2); break; \
                case 5: CBN_CALL(S, N, 5, 2); break; default: CBN_CALL(S, N, 6, 2); break; \
                } \
            } \
        } \
    } \
}


/* The rest of a build of the forward pass, for element type T (N and TARGET as for the
   gemm). */
#define CBN_DEFINE(S, N, TARGET, T, LANES, T_MAX, ROW_BLOCK) \
/* Hidden layer, in place over the rows r < rows of zT (layout of gemm): g(z * scale + shift), \
   or g(z + shift) without batch norm. */ \
static TARGET void cbn__activate_##S##N(T *zT, size_t rows, size_t n, const T *scale, \
                                         const T *shift, \
                              int activation, double slope) { \
    const size_t G = 2 * LANES; \
    size_t g, j, r; \
    for (g = 0; g * G < rows; g++) { \
        size_t count = rows - g * G < G ? rows - g * G : G; \
        for (j = 0; j < n; j++) { \
            T *z = zT + (g * n + j) * G, sh = shift[j]; \
            if (scale) { \
                T sc = scale[j]; \
                for (r = 0; r < count; r++) z[r] = CBN_FMA1_##S(z[r], sc, sh); \
            } \
            else for (r = 0; r < count; r++) z[r] = z[r] + sh; \
            switch (activation) { \
            case CBN_ACT_RELU: for (r = 0; r < count; r++) z[r] = z[r] > 0 ? z[r] : 0; break; \
            case CBN_ACT_LEAKY_RELU: \
                for (r = 0; r < count; r++) z[r] = z[r] > 0 ? z[r] : (T)(slope * z[r]); \
                break; \
            case CBN_ACT_TANH: for (r = 0; r < count; r++) z[r] = (T)tanh((double)z[r]); break; \
            case CBN_ACT_SIGMOID: \
                for (r = 0; r < count; r++) z[r] = (T)cbn__sigmoid((double)z[r]); \
                break; \
            default: break; \
            } \
        } \
    } \
} \
\
/* Output layer: out rows from zT, + b and the output function (raw: W.a only). \
   Returns 1 if a value before the output function is not finite. */ \
static TARGET int cbn__output_##S##N(const T *zT, size_t rows, size_t n, T *out, \
                                      const T *bias, \
                           int output, int raw) { \
    const size_t G = 2 * LANES; \
    size_t i, j; \
    int bad = 0; \
    for (i = 0; i < rows; i++) { \
        T *o = out + i * n; \
        double top, sum; \
        const T *zi = zT + (i / G) * n * G + i % G; \
        for (j = 0; j < n; j++) o[j] = raw ? zi[j * G] : zi[j * G] + bias[j]; \
        for (j = 0; j < n; j++) bad |= !(o[j] >= -T_MAX && o[j] <= T_MAX); \
        if (raw) continue; \
        switch (output) { \
        case CBN_OUT_SOFTMAX: \
            top = o[0]; \
            for (j = 1; j < n; j++) top = o[j] > top ? o[j] : top; \
            sum = 0.0; \
            for (j = 0; j < n; j++) sum += exp((double)o[j] - top); \
            for (j = 0; j < n; j++) o[j] = (T)(exp((double)o[j] - top) / sum); \
            break; \
        case CBN_OUT_SIGMOID: for (j = 0; j < n; j++) o[j] = (T)cbn__sigmoid((double)o[j]); break; \
        default: break; \
        } \
    } \
    return bad; \
} \
\
/* The network on X[n_rows][n_in] into out[n_rows][n_out]; raw = 1 stops before the \
   output layer's bias (logits W.a, for the loss). ws: cbn__workspace_bytes(m, n_rows) bytes. \
   Returns CBN_OK or CBN_ERR_OVERFLOW. */ \
static TARGET int cbn__forward_##S##N(const cbn_model *m, const T *X, size_t n_rows, T *out, \
                                      int raw, void *ws) { \
    const size_t L = m->n_layers, n_in = m->layers[0].n_in, n_out = m->layers[L - 1].n_out; \
    /* room for ld rows per unit: a row block, or fewer for small batches */ \
    const size_t group = 2 * LANES; \
    const size_t ld = n_rows < ROW_BLOCK ? (n_rows + group - 1) / group * group : ROW_BLOCK; \
    T *buf0 = (T *)ws, *buf1 = buf0 + ld * m->max_width; \
    size_t r0, l, r, k, g; \
    int bad = 0; \
    for (r0 = 0; r0 < n_rows; r0 += ROW_BLOCK) { \
        size_t rows = n_rows - r0 < ROW_BLOCK ? n_rows - r0 : ROW_BLOCK; \
        size_t groups = (rows + group - 1) / group; \
        const T *a = buf0; \
        /* X's rows into the group layout, a cache line of each group at a time; rows past \
           the end are zero (the row kernels compute them; nothing reads their results) */ \
        for (g = 0; g < groups; g++) { \
            T *dst = buf0 + g * n_in * group; \
            const T *x = X + (r0 + g * group) * n_in; \
            size_t count = rows - g * group < group ? rows - g * group : group; \
            for (k = 0; k < n_in; k++, dst += group) { \
                for (r = 0; r < count; r++) dst[r] = x[r * n_in + k]; \
                for (; r < group; r++) dst[r] = 0; \
            } \
        } \
        for (l = 0; l < L; l++) { \
            const cbn_layer *ly = &m->layers[l]; \
            T *z = a == buf0 ? buf1 : buf0; \
            cbn__gemm_##S##N(a, rows, (const T *)ly->W, (const T *)ly->Wp, ly->n_in, \
                             ly->n_out, z); \
            if (l < L - 1) \
                cbn__activate_##S##N(z, rows, ly->n_out, (const T *)ly->scale, \
                                  (const T *)ly->shift, m->activation, m->slope); \
            else \
                bad |= cbn__output_##S##N(z, rows, n_out, out + r0 * n_out, \
                                       (const T *)ly->shift, m->output, raw); \
            a = z; \
        } \
    } \
    return bad ? CBN_ERR_OVERFLOW : CBN_OK; \
}

#define CBN_BUILD(N, TARGET, FMA32, FMA64, ZMM) \
    CBN_TILES(N, TARGET) \
    ZMM##_KERNELS(f32, N, TARGET, float, cbn__zf) \
    ZMM##_KERNELS(f64, N, TARGET, double, cbn__zd) \
    CBN_GEMM(f32, N, TARGET, FMA32, float, cbn__vf, CBN_LANES_F32, ZMM##_ROWS, ZMM##_PACKED) \
    CBN_GEMM(f64, N, TARGET, FMA64, double, cbn__vd, CBN_LANES_F64, ZMM##_ROWS, ZMM##_PACKED) \
    CBN_DEFINE(f32, N, TARGET, float, CBN_LANES_F32, FLT_MAX, CBN_ROW_BLOCK_F32) \
    CBN_DEFINE(f64, N, TARGET, double, CBN_LANES_F64, DBL_MAX, CBN_ROW_BLOCK_F64)

#define CBN_NO_TARGET
#ifdef CBN_AVX512_NATIVE
CBN_BUILD(_base, CBN_NO_TARGET, CBN_FMA_f32, CBN_FMA_f64, CBN_ZMM)
#else
CBN_BUILD(_base, CBN_NO_TARGET, CBN_FMA_f32, CBN_FMA_f64, CBN_NO_ZMM)
#endif
#ifdef CBN_DISPATCH
CBN_BUILD(_fma, __attribute__((target("avx2,fma"))), CBN_FMA_X86_f32, CBN_FMA_X86_f64,
          CBN_NO_ZMM)
#endif
#ifdef CBN_DISPATCH_AVX512
CBN_BUILD(_avx512, __attribute__((target("avx512f,avx2,fma"))), CBN_FMA_X86_f32,
          CBN_FMA_X86_f64, CBN_ZMM)
#endif

#ifdef CBN_DISPATCH
#define CBN_FORWARD_FMA(S, ...) cbn__forward_##S##_fma(__VA_ARGS__)
#else
#define CBN_FORWARD_FMA(S, ...) CBN_OK   /* never taken */
#endif

#if defined(CBN_DISPATCH) || defined(CBN_DISPATCH_AVX512)
/* The best build taken at run time: 2 AVX-512, 1 AVX2 + FMA, 0 neither. cbn._inference
   lowers it for CBN_NO_AVX512=1 (1) and CBN_NO_AVX2=1 (0); C programs leave it. */
static int cbn__isa_limit = 2;
#endif

/* 1 where forward takes the build for AVX2 + FMA (CBN_DISPATCH: the CPU has both). */
static int cbn__use_fma_build(void) {
#ifdef CBN_DISPATCH
    __builtin_cpu_init();
    return cbn__isa_limit >= 1 && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* 1 where forward takes the build for AVX-512 (CBN_DISPATCH_AVX512: the CPU and the OS have
   it; GCC's check includes the OS's support for the 64-byte registers). */
static int cbn__use_avx512_build(void) {
#ifdef CBN_DISPATCH_AVX512
    __builtin_cpu_init();
    return cbn__isa_limit >= 2 && __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

#ifdef CBN_DISPATCH_AVX512
#define CBN_FORWARD_AVX512(S, ...) cbn__forward_##S##_avx512(__VA_ARGS__)
#else
#define CBN_FORWARD_AVX512(S, ...) CBN_OK   /* never taken */
#endif

/* The instruction set of the row kernels forward runs: 2 AVX-512, 1 AVX2 + FMA, 0 neither
   (the baseline build, which may still be compiled for either). */
static int cbn__forward_isa(void) {
#if defined(CBN_AVX512_NATIVE)
    return 2;
#else
    if (cbn__use_avx512_build()) return 2;
#if defined(CBN_X86) && defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return cbn__use_fma_build();
#endif
#endif
}

/* The network on X[n_rows][n_in] into out[n_rows][n_out]; raw = 1 stops before the
   output layer's bias (logits W.a, for the loss). ws: cbn__workspace_bytes(m, n_rows) bytes.
   Returns CBN_OK or CBN_ERR_OVERFLOW. */
static int cbn__forward_f32(const cbn_model *m, const float *X, size_t n_rows, float *out,
                            int raw, void *ws) {
    if (cbn__use_avx512_build()) return CBN_FORWARD_AVX512(f32, m, X, n_rows, out, raw, ws);
    return cbn__use_fma_build() ? CBN_FORWARD_FMA(f32, m, X, n_rows, out, raw, ws)
                                : cbn__forward_f32_base(m, X, n_rows, out, raw, ws);
}

static int cbn__forward_f64(const cbn_model *m, const double *X, size_t n_rows, double *out,
                            int raw, void *ws) {
    if (cbn__use_avx512_build()) return CBN_FORWARD_AVX512(f64, m, X, n_rows, out, raw, ws);
    return cbn__use_fma_build() ? CBN_FORWARD_FMA(f64, m, X, n_rows, out, raw, ws)
                                : cbn__forward_f64_base(m, X, n_rows, out, raw, ws);
}

/* Batch norm folded once, in double: scale = gamma / sqrt(var + eps),
   shift = beta - mean * scale, each rounded to the dtype. */
static void cbn__fold_f32(const float *gamma, const float *beta, const float *mean,
                          const float *var, size_t n, double eps, float *scale, float *shift) {
    size_t j;
    for (j = 0; j < n; j++) {
        double s = (double)gamma[j] / sqrt((double)var[j] + eps);
        scale[j] = (float)s;
        shift[j] = (float)((double)beta[j] - (double)mean[j] * s);
    }
}

static void cbn__fold_f64(const double *gamma, const double *beta, const double *mean,
                          const double *var, size_t n, double eps, double *scale, double *shift) {
    size_t j;
    for (j = 0; j < n; j++) {
        double s = gamma[j] / sqrt(var[j] + eps);
        scale[j] = s;
        shift[j] = beta[j] - mean[j] * s;
    }
}

/* ====================================================================== 2. SHA-256 */

typedef struct {
    uint32_t h[8];
    uint64_t length;        /* bytes hashed so far */
    unsigned char block[64];
    size_t used;            /* bytes waiting in block */
} cbn__sha256;

static const uint32_t cbn__sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define CBN_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void cbn__sha256_compress(uint32_t h[8], const unsigned char *b) {
    uint32_t w[64], s[8], t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 |
               (uint32_t)b[4 * i + 2] << 8 | (uint32_t)b[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = CBN_ROR(w[i - 15], 7) ^ CBN_ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = CBN_ROR(w[i - 2], 17) ^ CBN_ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    for (i = 0; i < 8; i++) s[i] = h[i];
    for (i = 0; i < 64; i++) {
        t1 = s[7] + (CBN_ROR(s[4], 6) ^ CBN_ROR(s[4], 11) ^ CBN_ROR(s[4], 25)) +
             ((s[4] & s[5]) ^ (~s[4] & s[6])) + cbn__sha256_k[i] + w[i];
        t2 = (CBN_ROR(s[0], 2) ^ CBN_ROR(s[0], 13) ^ CBN_ROR(s[0], 22)) +
             ((s[0] & s[1]) ^ (s[0] & s[2]) ^ (s[1] & s[2]));
        s[7] = s[6]; s[6] = s[5]; s[5] = s[4]; s[4] = s[3] + t1;
        s[3] = s[2]; s[2] = s[1]; s[1] = s[0]; s[0] = t1 + t2;
    }
    for (i = 0; i < 8; i++) h[i] += s[i];
}

static void cbn__sha256_init(cbn__sha256 *c) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->length = 0;
    c->used = 0;
}

static void cbn__sha256_update(cbn__sha256 *c, const unsigned char *data, size_t n) {
    c->length += n;
    if (c->used) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, data, take);
        c->used += take; data += take; n -= take;
        if (c->used < 64) return;
        cbn__sha256_compress(c->h, c->block);
        c->used = 0;
    }
    for (; n >= 64; data += 64, n -= 64) cbn__sha256_compress(c->h, data);
    memcpy(c->block, data, n);
    c->used = n;
}

static void cbn__sha256_final(cbn__sha256 *c, unsigned char digest[32]) {
    uint64_t bits = c->length * 8;
    unsigned char pad[72] = {0x80};
    size_t npad = (c->used < 56 ? 56 : 120) - c->used;
    int i;
    for (i = 0; i < 8; i++) pad[npad + i] = (unsigned char)(bits >> (56 - 8 * i));
    cbn__sha256_update(c, pad, npad + 8);
    for (i = 0; i < 32; i++) digest[i] = (unsigned char)(c->h[i / 4] >> (24 - 8 * (i % 4)));
}

/* For tests (cbn's test suite compares it with hashlib). */
void cbn__sha256_digest(const void *data, size_t n, unsigned char digest[32]) {
    cbn__sha256 c;
    cbn__sha256_init(&c);
    cbn__sha256_update(&c, (const unsigned char *)data, n);
    cbn__sha256_final(&c, digest);
}

/* ====================================================================== 3. loader */

#define CBN_MAX_HEADER (100u * 1000u * 1000u)   /* safetensors' limit */
#define CBN_MAX_SHAPE 4                          /* dims we accept (cbn uses 1 and 2) */

typedef struct {            /* a string of the header: its raw bytes between the quotes */
    const char *raw;
    size_t len;             /* raw length */
    int escaped;            /* contains a backslash */
} cbn__str;

typedef struct {
    cbn__str name;
    cbn__str dtype;
    size_t ndim;
    uint64_t shape[CBN_MAX_SHAPE];
    uint64_t begin, end;
    int have_dtype, have_shape, have_offsets;
} cbn__entry;

typedef struct {
    const char *s;          /* header */
    size_t n, i;            /* length, position */
    cbn__entry *entries;
    size_t n_entries, cap;
    cbn__str meta_key[16], meta_value[16];   /* the metadata keys we use (others skipped) */
    int have_meta;
    size_t checksum_at;     /* header offset of the checksum's 64 digits; 0 if none */
} cbn__parser;

static const char *const cbn__meta_names[] = {
    "format", "format_version", "dtype", "layer_sizes", "activation", "output", "batchnorm",
    "bn_eps", "negative_slope", "checksum", "config"};
enum { CBN_META_FORMAT, CBN_META_VERSION, CBN_META_DTYPE, CBN_META_SIZES, CBN_META_ACTIVATION,
       CBN_META_OUTPUT, CBN_META_BATCHNORM, CBN_META_EPS, CBN_META_SLOPE, CBN_META_CHECKSUM,
       CBN_META_CONFIG, CBN_META_COUNT };

static void cbn__ws(cbn__parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static int cbn__expect(cbn__parser *p, char c) {
    cbn__ws(p);
    if (p->i >= p->n || p->s[p->i] != c) return 0;
    p->i++;
    return 1;
}

static int cbn__hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A JSON string: checks escapes (\uXXXX with valid surrogate pairs), control characters and
   UTF-8; records the raw bytes. */
static int cbn__string(cbn__parser *p, cbn__str *out) {
    size_t start;
    out->escaped = 0;
    if (!cbn__expect(p, '"')) return 0;
    start = p->i;
    while (p->i < p->n) {
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') {
            out->raw = p->s + start;
            out->len = p->i - start;
            p->i++;
            return 1;
        }
        if (c < 0x20) return 0;
        if (c == '\\') {
            out->escaped = 1;
            if (++p->i >= p->n) return 0;
            c = (unsigned char)p->s[p->i];
            if (c == 'u') {
                unsigned v = 0;
                int d;
                if (p->n - p->i < 5) return 0;
                for (d = 1; d <= 4; d++) {
                    int h = cbn__hex(p->s[p->i + d]);
                    if (h < 0) return 0;
                    v = v * 16 + (unsigned)h;
                }
                p->i += 5;
                if (v >= 0xDC00 && v <= 0xDFFF) return 0;      /* lone low surrogate */
                if (v >= 0xD800 && v <= 0xDBFF) {               /* needs a low surrogate */
                    unsigned lo = 0;
                    if (p->n - p->i < 6 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') return 0;
                    for (d = 2; d <= 5; d++) {
                        int h = cbn__hex(p->s[p->i + d]);
                        if (h < 0) return 0;
                        lo = lo * 16 + (unsigned)h;
                    }
                    if (lo < 0xDC00 || lo > 0xDFFF) return 0;
                    p->i += 6;
                }
                continue;
            }
            if (!strchr("\"\\/bfnrt", c) || c == 0) return 0;
            p->i++;
            continue;
        }
        if (c < 0x80) { p->i++; continue; }
        {   /* UTF-8: shortest form, no surrogates, at most U+10FFFF */
            size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0, b;
            unsigned long v;
            if (len == 0 || c >= 0xF5 || c == 0xC0 || c == 0xC1 || p->n - p->i < len) return 0;
            v = c & (0x7F >> len);
            for (b = 1; b < len; b++) {
                unsigned char cc = (unsigned char)p->s[p->i + b];
                if ((cc & 0xC0) != 0x80) return 0;
                v = v << 6 | (cc & 0x3F);
            }
            if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)) ||
                (v >= 0xD800 && v <= 0xDFFF))
                return 0;
            p->i += len;
        }
    }
    return 0;
}

/* A raw string equal to text (strings with escapes never match: cbn writes none there). */
static int cbn__is(const cbn__str *s, const char *text) {
    size_t n = strlen(text);
    return !s->escaped && s->len == n && memcmp(s->raw, text, n) == 0;
}

static int cbn__same(const cbn__str *a, const cbn__str *b) {
    /* Duplicate keys: compare raw bytes; escaped keys are refused where cbn expects names. */
    return a->len == b->len && memcmp(a->raw, b->raw, a->len) == 0;
}

/* A non-negative JSON integer that fits in 53 bits (no sign, fraction, exponent, leading 0). */
static int cbn__uint(cbn__parser *p, uint64_t *out) {
    uint64_t v = 0;
    size_t start;
    cbn__ws(p);
    start = p->i;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        v = v * 10 + (uint64_t)(p->s[p->i] - '0');
        if (v > ((uint64_t)1 << 53)) return 0;
        p->i++;
    }
    if (p->i == start || (p->s[start] == '0' && p->i - start > 1)) return 0;
    if (p->i < p->n && (p->s[p->i] == '.' || p->s[p->i] == 'e' || p->s[p->i] == 'E')) return 0;
    *out = v;
    return 1;
}

/* [u, u, ...] with at most max items. */
static int cbn__uint_array(cbn__parser *p, uint64_t *items, size_t max, size_t *count) {
    *count = 0;
    if (!cbn__expect(p, '[')) return 0;
    cbn__ws(p);
    if (p->i < p->n && p->s[p->i] == ']') { p->i++; return 1; }
    for (;;) {
        if (*count == max || !cbn__uint(p, &items[*count])) return 0;
        (*count)++;
        if (cbn__expect(p, ']')) return 1;
        if (!cbn__expect(p, ',')) return 0;
    }
}

static int cbn__metadata(cbn__parser *p, const char *header_start) {
    size_t count = 0;
    if (p->have_meta || !cbn__expect(p, '{')) return 0;
    p->have_meta = 1;
    if (cbn__expect(p, '}')) return 1;
    for (;;) {
        cbn__str key, value;
        size_t k;
        int known = -1;
        if (!cbn__string(p, &key) || !cbn__expect(p, ':')) return 0;
        if (!cbn__string(p, &value)) return 0;
        for (k = 0; k < count; k++)
            if (cbn__same(&p->meta_key[k], &key)) return 0;              /* duplicate key */
        for (k = 0; k < CBN_META_COUNT; k++)
            if (cbn__is(&key, cbn__meta_names[k])) known = (int)k;
        /* other keys are allowed (and kept, to refuse duplicates), up to 16 in all */
        if (count == 16) return 0;
        p->meta_key[count] = key;
        p->meta_value[count] = value;
        count++;
        if (known == CBN_META_CHECKSUM) p->checksum_at = (size_t)(value.raw - header_start);
        if (cbn__expect(p, '}')) return 1;
        if (!cbn__expect(p, ',')) return 0;
    }
}

static int cbn__tensor(cbn__parser *p, cbn__entry *e) {
    if (!cbn__expect(p, '{')) return 0;
    for (;;) {
        cbn__str key;
        uint64_t offsets[2];
        size_t n;
        if (!cbn__string(p, &key) || !cbn__expect(p, ':')) return 0;
        if (cbn__is(&key, "dtype")) {
            if (e->have_dtype || !cbn__string(p, &e->dtype)) return 0;
            e->have_dtype = 1;
        } else if (cbn__is(&key, "shape")) {
            if (e->have_shape || !cbn__uint_array(p, e->shape, CBN_MAX_SHAPE, &e->ndim)) return 0;
            e->have_shape = 1;
        } else if (cbn__is(&key, "data_offsets")) {
            if (e->have_offsets || !cbn__uint_array(p, offsets, 2, &n) || n != 2) return 0;
            e->begin = offsets[0];
            e->end = offsets[1];
            e->have_offsets = 1;
        } else {
            return 0;
        }
        if (cbn__expect(p, '}')) break;
        if (!cbn__expect(p, ',')) return 0;
    }
    return e->have_dtype && e->have_shape && e->have_offsets;
}

/* The whole header: one object of "__metadata__" and tensor entries; only spaces after it. */
static int cbn__parse_header(cbn__parser *p) {
    if (p->n == 0 || p->s[0] != '{') return 0;
    p->i = 1;
    if (!cbn__expect(p, '}')) {
        for (;;) {
            cbn__str key;
            if (!cbn__string(p, &key) || !cbn__expect(p, ':')) return 0;
            if (cbn__is(&key, "__metadata__")) {
                if (!cbn__metadata(p, p->s)) return 0;
            } else {
                cbn__entry *e;
                size_t k;
                if (key.escaped) return 0;
                for (k = 0; k < p->n_entries; k++)
                    if (cbn__same(&p->entries[k].name, &key)) return 0;  /* duplicate */
                if (p->n_entries == p->cap) {
                    size_t cap = p->cap ? 2 * p->cap : 32;
                    cbn__entry *grown = (cbn__entry *)realloc(p->entries, cap * sizeof *grown);
                    if (!grown) return CBN_ERR_NOMEM;
                    p->entries = grown;
                    p->cap = cap;
                }
                e = &p->entries[p->n_entries++];
                memset(e, 0, sizeof *e);
                e->name = key;
                if (!cbn__tensor(p, e)) return 0;
            }
            if (cbn__expect(p, '}')) break;
            if (!cbn__expect(p, ',')) return 0;
        }
    }
    while (p->i < p->n && p->s[p->i] == ' ') p->i++;
    return p->i == p->n;
}

static const cbn__str *cbn__meta(const cbn__parser *p, int which) {
    size_t k;
    for (k = 0; k < 16 && p->meta_key[k].raw; k++)
        if (cbn__is(&p->meta_key[k], cbn__meta_names[which])) return &p->meta_value[k];
    return NULL;
}

/* Python's float.hex() of a finite double, e.g. "-0x1.4f8b588e368f1p-17", parsed exactly. */
static int cbn__parse_hex_double(const cbn__str *s, double *out) {
    const char *c, *end;
    uint64_t mant = 0;
    int frac_digits = 0, negative = 0, exp_negative = 0, lead;
    long e = 0;
    if (!s || s->escaped) return 0;
    c = s->raw;
    end = s->raw + s->len;
    if (c < end && *c == '-') { negative = 1; c++; }
    if (end - c < 5 || c[0] != '0' || c[1] != 'x') return 0;
    c += 2;
    lead = cbn__hex(*c);
    if (lead != 0 && lead != 1) return 0;
    mant = (uint64_t)lead;
    c++;
    if (c < end && *c == '.') {
        c++;
        while (c < end && cbn__hex(*c) >= 0) {
            if (++frac_digits > 13) return 0;
            mant = mant * 16 + (uint64_t)cbn__hex(*c);
            c++;
        }
        if (frac_digits == 0) return 0;
    }
    if (c >= end || *c != 'p') return 0;
    c++;
    if (c < end && (*c == '+' || *c == '-')) { exp_negative = *c == '-'; c++; }
    if (c >= end) return 0;
    while (c < end && *c >= '0' && *c <= '9') {
        e = e * 10 + (*c - '0');
        if (e > 2000) return 0;
        c++;
    }
    if (c != end) return 0;
    if (exp_negative) e = -e;
    *out = ldexp((double)mant, (int)(e - 4 * frac_digits));   /* exact: mant has <= 53 bits */
    if (negative) *out = -*out;
    return isfinite(*out);
}

/* "784,512,10": decimal integers >= 1, no signs or leading zeros. */
static int cbn__parse_sizes(const cbn__str *s, size_t *sizes, size_t max, size_t *count) {
    size_t i = 0;
    *count = 0;
    if (!s || s->escaped || s->len == 0) return 0;
    while (i < s->len) {
        uint64_t v = 0;
        size_t start = i;
        while (i < s->len && s->raw[i] >= '0' && s->raw[i] <= '9') {
            v = v * 10 + (uint64_t)(s->raw[i] - '0');
            if (v > ((uint64_t)1 << 31)) return 0;
            i++;
        }
        if (i == start || v == 0 || (s->raw[start] == '0') || *count == max) return 0;
        sizes[(*count)++] = (size_t)v;
        if (i < s->len && (s->raw[i] != ',' || ++i == s->len)) return 0;
    }
    return *count >= 2;
}

static int cbn__name_is(const cbn__str *s, size_t layer, const char *what) {
    char name[64];
    int n = snprintf(name, sizeof name, "%lu.%s", (unsigned long)layer, what);
    return n > 0 && (size_t)n < sizeof name && cbn__is(s, name);
}

static uint32_t cbn__le32(const unsigned char *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t cbn__le64(const unsigned char *b) {
    return (uint64_t)cbn__le32(b) | (uint64_t)cbn__le32(b + 4) << 32;
}

/* Little-endian tensor bytes into native values; 0 if one is not finite (or < 0 when
   nonnegative is set). */
static int cbn__read_values(const unsigned char *b, size_t n, int dtype, void *out,
                            int nonnegative) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (dtype == CBN_FLOAT32) {
            uint32_t u = cbn__le32(b + 4 * i);
            float v;
            memcpy(&v, &u, 4);
            if ((u & 0x7F800000u) == 0x7F800000u || (nonnegative && v < 0)) return 0;
            ((float *)out)[i] = v;
        } else {
            uint64_t u = cbn__le64(b + 8 * i);
            double v;
            memcpy(&v, &u, 8);
            if ((u & 0x7FF0000000000000ull) == 0x7FF0000000000000ull || (nonnegative && v < 0))
                return 0;
            ((double *)out)[i] = v;
        }
    }
    return 1;
}

#define CBN_MAX_LAYERS 4096

/* Round n up to a multiple of 64 (alignment of the pieces of the model's storage). */
static size_t cbn__round64(size_t n) { return (n + 63) / 64 * 64; }

/* Units of a layer n_out wide that the loader keeps packed for the few-rows kernels
   (cbn_layer.Wp): whole panels of 64 bytes' worth of units (the rest take tiles of W). */
static size_t cbn__packed_units(size_t n_out, size_t item) {
    size_t panel = CBN_PANEL_UNITS(item);
    return CBN_FEW_ROWS ? n_out / panel * panel : 0;
}

static void cbn__pack(const unsigned char *W, size_t n_in, size_t units, size_t item,
                      unsigned char *Wp) {
    size_t panel = CBN_PANEL_UNITS(item), j, k;
    for (j = 0; j < units; j++)
        for (k = 0; k < n_in; k++)
            memcpy(Wp + (((j / panel) * n_in + k) * panel + j % panel) * item,
                   W + (j * n_in + k) * item, item);
}

static int cbn__load(const unsigned char *data, size_t size, cbn_model **model) {
    cbn__parser p;
    uint64_t header_len;
    const unsigned char *tensors;
    size_t data_size, sizes[CBN_MAX_LAYERS + 1], n_sizes = 0, n_layers, l, k, item, e_i;
    size_t n_params;
    int dtype, activation, output, batchnorm, parsed, status = CBN_ERR_FORMAT;
    double eps, slope;
    const cbn__str *v;
    size_t *index = NULL;   /* per layer: entry index of W, (gamma, beta | b), mean, var */
    memset(&p, 0, sizeof p);
    *model = NULL;
    if (size < 8) return CBN_ERR_FORMAT;
    header_len = cbn__le64(data);
    if (header_len < 2 || header_len > CBN_MAX_HEADER || header_len > size - 8)
        return CBN_ERR_FORMAT;
    p.s = (const char *)data + 8;
    p.n = (size_t)header_len;
    tensors = data + 8 + header_len;
    data_size = size - 8 - (size_t)header_len;

    parsed = cbn__parse_header(&p);
    if (parsed != 1) {
        status = parsed == CBN_ERR_NOMEM ? CBN_ERR_NOMEM : CBN_ERR_FORMAT;
        goto done;
    }
    if (!p.have_meta) goto done;
    v = cbn__meta(&p, CBN_META_FORMAT);
    if (!v || !cbn__is(v, "cbn.Network")) goto done;
    v = cbn__meta(&p, CBN_META_VERSION);
    if (!v) goto done;
    if (!cbn__is(v, "2")) { status = CBN_ERR_VERSION; goto done; }

    /* The checksum first: nothing else is trusted before it matches. */
    v = cbn__meta(&p, CBN_META_CHECKSUM);
    if (!v || v->len != 64 || v->escaped) goto done;
    for (k = 0; k < 64; k++)
        if (!((v->raw[k] >= '0' && v->raw[k] <= '9') || (v->raw[k] >= 'a' && v->raw[k] <= 'f')))
            goto done;
    {
        static const char zeros[64] = "0000000000000000000000000000000000000000000000000000000"
                                      "000000000";
        unsigned char digest[32];
        size_t at = 8 + p.checksum_at;
        cbn__sha256 c;
        cbn__sha256_init(&c);
        cbn__sha256_update(&c, data, at);
        cbn__sha256_update(&c, (const unsigned char *)zeros, 64);
        cbn__sha256_update(&c, data + at + 64, size - at - 64);
        cbn__sha256_final(&c, digest);
        for (k = 0; k < 32; k++)
            if (cbn__hex(v->raw[2 * k]) * 16 + cbn__hex(v->raw[2 * k + 1]) != digest[k]) {
                status = CBN_ERR_CHECKSUM;
                goto done;
            }
    }

    v = cbn__meta(&p, CBN_META_DTYPE);
    if (v && cbn__is(v, "float32")) dtype = CBN_FLOAT32;
    else if (v && cbn__is(v, "float64")) dtype = CBN_FLOAT64;
    else goto done;
    item = dtype == CBN_FLOAT32 ? 4 : 8;
    if (!cbn__parse_sizes(cbn__meta(&p, CBN_META_SIZES), sizes, CBN_MAX_LAYERS + 1, &n_sizes))
        goto done;
    n_layers = n_sizes - 1;
    v = cbn__meta(&p, CBN_META_ACTIVATION);
    if (!v) goto done;
    if (cbn__is(v, "relu")) activation = CBN_ACT_RELU;
    else if (cbn__is(v, "leaky_relu")) activation = CBN_ACT_LEAKY_RELU;
    else if (cbn__is(v, "tanh")) activation = CBN_ACT_TANH;
    else if (cbn__is(v, "sigmoid")) activation = CBN_ACT_SIGMOID;
    else if (cbn__is(v, "linear")) activation = CBN_ACT_LINEAR;
    else goto done;
    v = cbn__meta(&p, CBN_META_OUTPUT);
    if (!v) goto done;
    if (cbn__is(v, "softmax")) output = CBN_OUT_SOFTMAX;
    else if (cbn__is(v, "sigmoid")) output = CBN_OUT_SIGMOID;
    else if (cbn__is(v, "linear")) output = CBN_OUT_LINEAR;
    else goto done;
    v = cbn__meta(&p, CBN_META_BATCHNORM);
    if (v && cbn__is(v, "true")) batchnorm = 1;
    else if (v && cbn__is(v, "false")) batchnorm = 0;
    else goto done;
    if (!cbn__parse_hex_double(cbn__meta(&p, CBN_META_EPS), &eps) || !(eps > 0)) goto done;
    if (!cbn__parse_hex_double(cbn__meta(&p, CBN_META_SLOPE), &slope)) goto done;
    if (!cbn__meta(&p, CBN_META_CONFIG)) goto done;

    /* Every entry: our dtype, shape consistent with its offsets, contiguous from 0 to the
       end of the data; the names and shapes that layer_sizes implies, in order. */
    {
        uint64_t at = 0;
        for (e_i = 0; e_i < p.n_entries; e_i++) {
            cbn__entry *e = &p.entries[e_i];
            uint64_t count = 1;
            if (!cbn__is(&e->dtype, dtype == CBN_FLOAT32 ? "F32" : "F64")) goto done;
            for (k = 0; k < e->ndim; k++) {
                if (e->shape[k] != 0 && count > ((uint64_t)1 << 53) / e->shape[k]) goto done;
                count *= e->shape[k];
            }
            if (count > ((uint64_t)1 << 53) / item) goto done;
            if (e->begin != at || e->end < e->begin || e->end - e->begin != count * item) goto done;
            at = e->end;
        }
        if (at != data_size) goto done;
    }
    index = (size_t *)calloc(n_layers * 6, sizeof *index);
    if (!index) { status = CBN_ERR_NOMEM; goto done; }
    e_i = 0;
#define CBN_TAKE(layer, what, nd, d0, d1, slot) \
    do { \
        cbn__entry *e = e_i < p.n_entries ? &p.entries[e_i] : NULL; \
        if (!e || !cbn__name_is(&e->name, (layer), (what)) || e->ndim != (nd) || \
            e->shape[0] != (d0) || ((nd) == 2 && e->shape[1] != (d1))) \
            goto done; \
        index[(layer) * 6 + (slot)] = e_i++; \
    } while (0)
    for (l = 0; l < n_layers; l++) {
        int bn = batchnorm && l + 1 < n_layers;
        CBN_TAKE(l, "W", 2, sizes[l + 1], sizes[l], 0);
        if (bn) { CBN_TAKE(l, "gamma", 1, sizes[l + 1], 0, 1); CBN_TAKE(l, "beta", 1, sizes[l + 1], 0, 2); }
        else CBN_TAKE(l, "b", 1, sizes[l + 1], 0, 2);
    }
    if (batchnorm)
        for (l = 0; l + 1 < n_layers; l++) {
            CBN_TAKE(l, "running_mean", 1, sizes[l + 1], 0, 3);
            CBN_TAKE(l, "running_var", 1, sizes[l + 1], 0, 4);
        }
#undef CBN_TAKE
    /* The rest: optimizer state "optimizer.<state>.<parameter>", shaped like the parameter
       (the parameters are the entries before the running statistics). */
    n_params = 0;
    for (l = 0; l < n_layers; l++) n_params += batchnorm && l + 1 < n_layers ? 3 : 2;
    for (; e_i < p.n_entries; e_i++) {
        const cbn__entry *e = &p.entries[e_i];
        const char *dot;
        cbn__str tail;
        size_t j;
        int found = 0;
        if (e->name.len < 11 || memcmp(e->name.raw, "optimizer.", 10) != 0) goto done;
        dot = (const char *)memchr(e->name.raw + 10, '.', e->name.len - 10);
        if (!dot || dot == e->name.raw + 10) goto done;
        tail.raw = dot + 1;
        tail.len = (size_t)(e->name.raw + e->name.len - tail.raw);
        tail.escaped = 0;
        for (j = 0; j < n_params && !found; j++) {
            const cbn__entry *param = &p.entries[j];
            found = cbn__same(&tail, &param->name) && param->ndim == e->ndim &&
                    memcmp(param->shape, e->shape, e->ndim * sizeof e->shape[0]) == 0;
        }
        if (!found) goto done;
    }

    /* Build the model: one allocation for the struct, the layers, W, scale, shift, 2 scratch
       vectors and the packed W per layer (sizes[l] * sizes[l+1] * item <= the file's size,
       checked above, so each piece fits; their sum is checked, for 32-bit targets). */
    {
        size_t total = cbn__round64(sizeof(struct cbn_model)) +
                       cbn__round64(n_layers * sizeof(cbn_layer)) + 64, off, max_width = 0;
        unsigned char *mem, *base;
        struct cbn_model *m;
        cbn_layer *layers;
        for (l = 0; l < n_layers; l++) {
            size_t w = cbn__round64(sizes[l] * sizes[l + 1] * item),
                   vectors = 4 * cbn__round64(sizes[l + 1] * item),  /* scale, shift, 2 scratch */
                   wp = cbn__round64(cbn__packed_units(sizes[l + 1], item) * sizes[l] * item);
            if (w > SIZE_MAX - total || vectors > SIZE_MAX - total - w ||
                wp > SIZE_MAX - total - w - vectors) {
                status = CBN_ERR_NOMEM;
                goto done;
            }
            total += w + vectors + wp;
            if (sizes[l] > max_width) max_width = sizes[l];
            if (sizes[l + 1] > max_width) max_width = sizes[l + 1];
        }
        mem = (unsigned char *)malloc(total);
        if (!mem) { status = CBN_ERR_NOMEM; goto done; }
        base = mem + (64 - (size_t)((uintptr_t)mem % 64)) % 64;
        m = (struct cbn_model *)base;
        off = cbn__round64(sizeof(struct cbn_model));
        layers = (cbn_layer *)(base + off);
        off += cbn__round64(n_layers * sizeof(cbn_layer));
        m->dtype = dtype;
        m->activation = activation;
        m->output = output;
        m->slope = slope;
        m->n_layers = n_layers;
        m->layers = layers;
        m->max_width = max_width;
        m->storage = mem;
        status = CBN_OK;
        for (l = 0; l < n_layers; l++) {
            size_t n_in = sizes[l], n_out = sizes[l + 1], vb = cbn__round64(n_out * item);
            int bn = batchnorm && l + 1 < n_layers;
            unsigned char *W = base + off, *scale = W + cbn__round64(n_in * n_out * item);
            unsigned char *shift = scale + vb, *mean = shift + vb, *var = mean + vb;
            unsigned char *Wp = var + vb;
            size_t packed = cbn__packed_units(n_out, item);
            off += cbn__round64(n_in * n_out * item) + 4 * vb +
                   cbn__round64(packed * n_in * item);
            layers[l].n_in = n_in;
            layers[l].n_out = n_out;
            layers[l].W = W;
            layers[l].Wp = packed ? Wp : NULL;
            layers[l].scale = bn ? scale : NULL;
            layers[l].shift = shift;
            if (!cbn__read_values(tensors + p.entries[index[l * 6]].begin, n_in * n_out, dtype,
                                  W, 0) ||
                !cbn__read_values(tensors + p.entries[index[l * 6 + 2]].begin, n_out, dtype,
                                  shift, 0)) {
                status = CBN_ERR_VALUE;
                break;
            }
            cbn__pack(W, n_in, packed, item, Wp);
            if (!bn) continue;
            /* gamma into scale's place, beta is in shift's; then fold in place */
            if (!cbn__read_values(tensors + p.entries[index[l * 6 + 1]].begin, n_out, dtype, scale, 0) ||
                !cbn__read_values(tensors + p.entries[index[l * 6 + 3]].begin, n_out, dtype, mean, 0) ||
                !cbn__read_values(tensors + p.entries[index[l * 6 + 4]].begin, n_out, dtype, var, 1)) {
                status = CBN_ERR_VALUE;
                break;
            }
            if (dtype == CBN_FLOAT32)
                cbn__fold_f32((float *)scale, (float *)shift, (float *)mean, (float *)var, n_out,
                              eps, (float *)scale, (float *)shift);
            else
                cbn__fold_f64((double *)scale, (double *)shift, (double *)mean, (double *)var,
                              n_out, eps, (double *)scale, (double *)shift);
        }
        if (status != CBN_OK) { free(mem); goto done; }
        *model = m;
    }
done:
    free(index);
    free(p.entries);
    return status;
}

/* ====================================================================== 4. public API */

int cbn_model_load_memory(const void *data, size_t size, cbn_model **model) {
    if (!model) return CBN_ERR_ARGUMENT;
    *model = NULL;
    if (!data) return CBN_ERR_ARGUMENT;
    return cbn__load((const unsigned char *)data, size, model);
}

int cbn_model_load(const char *path, cbn_model **model) {
    FILE *f;
    unsigned char *buf = NULL;
    size_t size = 0, cap = 0;
    int status;
    if (!model) return CBN_ERR_ARGUMENT;
    *model = NULL;
    if (!path) return CBN_ERR_ARGUMENT;
    f = fopen(path, "rb");
    if (!f) return CBN_ERR_IO;
    for (;;) {   /* read to the end without trusting a size reported beforehand */
        size_t got;
        if (size == cap) {
            size_t grown = cap ? 2 * cap : 1 << 16;
            unsigned char *b;
            if (grown < cap || grown > (size_t)1 << 40) { free(buf); fclose(f); return CBN_ERR_NOMEM; }
            b = (unsigned char *)realloc(buf, grown);
            if (!b) { free(buf); fclose(f); return CBN_ERR_NOMEM; }
            buf = b;
            cap = grown;
        }
        got = fread(buf + size, 1, cap - size, f);
        size += got;
        if (got == 0) break;
    }
    status = ferror(f) ? CBN_ERR_IO : CBN_OK;
    fclose(f);
    if (status == CBN_OK) status = cbn__load(buf, size, model);
    free(buf);
    return status;
}

void cbn_model_free(cbn_model *model) {
    if (model) free(model->storage);
}

size_t cbn_model_n_inputs(const cbn_model *model) {
    return model ? model->layers[0].n_in : 0;
}

size_t cbn_model_n_outputs(const cbn_model *model) {
    return model ? model->layers[model->n_layers - 1].n_out : 0;
}

int cbn_model_dtype(const cbn_model *model) { return model ? model->dtype : 0; }

size_t cbn_model_workspace_size(const cbn_model *model) {
    return model ? cbn__workspace_bytes(model, (size_t)-1) : 0;
}

static int cbn__check_call(const cbn_model *model, const void *X, size_t n_rows, void *out,
                           int dtype, void *workspace, int need_workspace) {
    size_t n_in, n_out;
    if (!model) return CBN_ERR_ARGUMENT;
    if (model->dtype != dtype) return CBN_ERR_DTYPE;
    if (n_rows == 0) return CBN_OK;
    n_in = cbn_model_n_inputs(model);
    n_out = cbn_model_n_outputs(model);
    if (!X || !out || (need_workspace && !workspace)) return CBN_ERR_ARGUMENT;
    if (n_rows > SIZE_MAX / 8 / (n_in > n_out ? n_in : n_out)) return CBN_ERR_ARGUMENT;
    return 1;
}

int cbn_model_forward_f32_ws(const cbn_model *model, const float *X, size_t n_rows, float *out,
                             void *workspace) {
    int s = cbn__check_call(model, X, n_rows, out, CBN_FLOAT32, workspace, 1);
    return s != 1 ? s : cbn__forward_f32(model, X, n_rows, out, 0, workspace);
}

int cbn_model_forward_f64_ws(const cbn_model *model, const double *X, size_t n_rows,
                             double *out, void *workspace) {
    int s = cbn__check_call(model, X, n_rows, out, CBN_FLOAT64, workspace, 1);
    return s != 1 ? s : cbn__forward_f64(model, X, n_rows, out, 0, workspace);
}

int cbn_model_forward_f32(const cbn_model *model, const float *X, size_t n_rows, float *out) {
    int s = cbn__check_call(model, X, n_rows, out, CBN_FLOAT32, NULL, 0);
    void *ws;
    if (s != 1) return s;
    ws = malloc(cbn__workspace_bytes(model, n_rows));
    if (!ws) return CBN_ERR_NOMEM;
    s = cbn__forward_f32(model, X, n_rows, out, 0, ws);
    free(ws);
    return s;
}

int cbn_model_forward_f64(const cbn_model *model, const double *X, size_t n_rows, double *out) {
    int s = cbn__check_call(model, X, n_rows, out, CBN_FLOAT64, NULL, 0);
    void *ws;
    if (s != 1) return s;
    ws = malloc(cbn__workspace_bytes(model, n_rows));
    if (!ws) return CBN_ERR_NOMEM;
    s = cbn__forward_f64(model, X, n_rows, out, 0, ws);
    free(ws);
    return s;
}

const char *cbn_model_instruction_set(void) {
    static const char *const names[] = {"baseline", "avx2", "avx512"};
    return names[cbn__forward_isa()];
}

const char *cbn_model_strerror(int status) {
    switch (status) {
    case CBN_OK: return "success";
    case CBN_ERR_IO: return "the model file cannot be opened or read";
    case CBN_ERR_NOMEM: return "out of memory";
    case CBN_ERR_FORMAT: return "not a well-formed cbn model file (format 2)";
    case CBN_ERR_VERSION: return "a cbn model file of an unsupported format version";
    case CBN_ERR_CHECKSUM: return "the model file's checksum does not match (damaged or edited)";
    case CBN_ERR_VALUE: return "the model file holds a non-finite parameter or a negative variance";
    case CBN_ERR_DTYPE: return "the model's dtype differs from the forward function's";
    case CBN_ERR_ARGUMENT: return "invalid argument (NULL pointer or a size that overflows)";
    case CBN_ERR_OVERFLOW: return "the network's outputs overflowed to infinity or NaN";
    default: return "unknown status code";
    }
}
