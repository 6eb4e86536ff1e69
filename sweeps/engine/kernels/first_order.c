/* first_order.c: train a batch of 1-H-1 networks y = w2 . act(w1 x + b1) + b2 with a
 * first-order optimizer (sgd, momentum 0.9, adam, rmsprop: torch.optim's rules and defaults), to
 * the end, in one call. Built and loaded by sweeps/engine/native.py; driven by
 * sweeps/engine/first_order_native.py (the torch loop of sweeps/engine/first_order.py is the reference).
 *
 * Layout. Models are trained in *packs* of LANES models that share an activation: lane l of every
 * vector is one model (a 64-byte vector: 16 floats or 8 doubles), so each arithmetic operation is
 * one SIMD instruction over the pack and no operation ever mixes two models. A model's numbers
 * therefore do not depend on its lane or its pack-mates, bit for bit. A pack's hidden size is that
 * of its widest model; a narrower model's extra units have w1 = b1 = w2 = 0 and a zero gradient
 * mask, so they add exact zeros (y + 0 * a == y) and do not change its numbers either. The caller
 * (first_order_native.py) orders models and cuts packs; the kernel checks what it relies on.
 *
 * A step. One pass over the training points computes the forward pass, the residuals and the
 * closed-form gradient, in blocks of NB points: per unit, NB independent activations (their long
 * exp/divide chains overlap), the outputs y of the block kept in registers; then the block's
 * residuals; then per unit the block's gradient sums, in registers. Nothing of size H x N is
 * stored: a block's activations (and derivatives) are [H][NB] vectors, in L1. The data are padded
 * to whole blocks with copies of the last point whose residual is multiplied by 0 (real points by
 * 1: exact), so padding adds exact zeros to every sum.
 *
 * Divergence: after each forward pass, a model whose training MSE is non-finite or above 1e6
 * stops (diverged_at = that step). A model that stops for any reason has its final numbers saved
 * and its lane zeroed, so it computes on zeros from then on (no NaN/inf into the vector maths); a
 * pack whose models have all stopped ends.
 *
 * Floating point: no -ffast-math (non-finite values must stay detectable; results must not change
 * beyond rounding). exp is our own (range reduction + polynomial, about 1 ulp, no slow path for
 * large arguments; tanh and sigmoid are built on it); erf, log1p, sin and cos are glibc's libmvec
 * vector functions on x86-64 with AVX2/AVX-512 (the same code `#pragma omp simd` would call), else
 * scalar libm per lane.
 *
 * The file is its own template: the first pass defines what is shared, then includes itself twice,
 * once with REAL = float and once with REAL = double.
 */

#ifndef REAL /* ------------------------------------------------------------ shared part ---- */

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35)) && \
    !defined(NO_LIBMVEC) && (defined(__AVX512F__) || defined(__AVX2__))
#define FO_LIBMVEC 1
#else
#define FO_LIBMVEC 0
#endif

/* This file's own name, for including itself (relative to its own directory, however it was
 * named on the command line). */
#ifdef __FILE_NAME__
#define SELF __FILE_NAME__
#else
#define SELF __FILE__
#endif

#define FO_ABI 3
#define INLINE static inline __attribute__((always_inline))
#ifndef NB
#define NB 10 /* training points per block: 50 and 1000 are whole blocks */
#endif

enum { RELU, TANH, SIGMOID, GELU, SOFTPLUS, SIN, N_ACTIVATIONS };
enum { SGD, MOMENTUM, ADAM, RMSPROP, N_OPTIMIZERS };

/* torch.optim's defaults. */
#define MOMENTUM_BETA 0.9
#define ADAM_BETA1 0.9
#define ADAM_BETA2 0.999
#define RMSPROP_ALPHA 0.99
#define EPS 1e-8
#define DIVERGENCE_MSE 1e6
#define SOFTPLUS_THRESHOLD 20.0 /* torch's default: softplus(z) = z above it */

/* Everything a call needs. Per-model arrays are indexed by model k (0..n_models-1); a pack p is
 * the models order[pack_start[p] .. pack_start[p+1]-1], at most LANES of them, one activation. */
typedef struct {
    int32_t n_models, n_points, n_test, n_checkpoints, n_packs, threads;
    const int32_t *pack_start; /* [n_packs + 1] */
    const int32_t *order;      /* [n_models] */
    const int32_t *hidden, *activation, *optimizer, *steps; /* [n_models] each */
    const uint8_t *hidden_bias, *output_bias;               /* 1: the model has b1 / b2 */
    const double *lr, *lr_bias; /* learning rate of weights, of biases (lr * bias_copies) */
    const double *grad_scale;   /* dLoss/dy = grad_scale * residual: 2 (sum) or 2/N (mean) */
    const int64_t *offset;      /* [n_models]: where model k's 3H+1 parameters start in params */
    void *params;               /* REAL: initial parameters in, final (or frozen) ones out */
    const void *x, *t;          /* REAL [n_points]: (scaled) training inputs and targets */
    const void *x_test, *t_test; /* REAL [n_test]: the test grid */
    const int32_t *checkpoints; /* [n_checkpoints], strictly ascending: steps to record MSEs at */
    int32_t *diverged_at;       /* out [n_models]: -1, or the step the model diverged at */
    double *train_mse, *test_mse;     /* out [n_models]: after the model's last step */
    double *curve_train, *curve_test; /* out [n_models][n_checkpoints]; NaN where not recorded */
    double *pack_seconds;             /* out [n_packs]: wall time of each pack */
    const volatile int32_t *cancel;   /* nonzero: stop now (polled every CANCEL_EVERY steps); may be NULL */
} fo_batch;

enum { FO_OK = 0, FO_EBADARG = -1, FO_ENOMEM = -2, FO_ECANCELLED = -3 };

/* Steps between two looks at the cancel flag: a step of a pack costs microseconds, so a cancel
 * acts within milliseconds; the results of a cancelled call are not to be used. */
#define CANCEL_EVERY 64
static int fo_cancelled(const fo_batch *b) { return b->cancel && *b->cancel; }

static double fo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int fo_abi(void) { return FO_ABI; }
int fo_libmvec(void) { return FO_LIBMVEC; }
int fo_block(void) { return NB; }
int fo_openmp_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

/* ---- the two precisions ---- */
#define REAL float
#define IS_F32 1
#define SFX(name) name##_f32
#define LANES 16
#define ERF erff
#define LOG1P log1pf
#define SIN_ sinf
#define COS_ cosf
#define SQRT __builtin_sqrtf
#define MVEC_E(fn) _ZGVeN16v_##fn##f
#define MVEC_D(fn) _ZGVdN8v_##fn##f
#include SELF
#undef REAL
#undef IS_F32
#undef SFX
#undef LANES
#undef ERF
#undef LOG1P
#undef SIN_
#undef COS_
#undef SQRT
#undef MVEC_E
#undef MVEC_D

#define REAL double
#define IS_F32 0
#define SFX(name) name##_f64
#define LANES 8
#define ERF erf
#define LOG1P log1p
#define SIN_ sin
#define COS_ cos
#define SQRT __builtin_sqrt
#define MVEC_E(fn) _ZGVeN8v_##fn
#define MVEC_D(fn) _ZGVdN4v_##fn
#include SELF

int fo_lanes(int dtype_bytes) { return dtype_bytes == 4 ? 16 : dtype_bytes == 8 ? 8 : 0; }

#else /* ------------------------------------------------------- one precision: REAL ---- */

/* One pack's worth of a quantity: lane l is model l. */
#if IS_F32
typedef float SFX(V) __attribute__((vector_size(64), aligned(64)));
typedef int32_t SFX(VI) __attribute__((vector_size(64), aligned(64)));
typedef float SFX(Vh) __attribute__((vector_size(32))); /* half a vector, for AVX2's libmvec */
typedef double SFX(VD) __attribute__((vector_size(128))); /* the lanes in double */
typedef int64_t SFX(VDI) __attribute__((vector_size(128)));
#else
typedef double SFX(V) __attribute__((vector_size(64), aligned(64)));
typedef int64_t SFX(VI) __attribute__((vector_size(64), aligned(64)));
typedef double SFX(Vh) __attribute__((vector_size(32)));
typedef double SFX(VD) __attribute__((vector_size(64)));
typedef int64_t SFX(VDI) __attribute__((vector_size(64)));
#endif
#define V SFX(V)
#define VI SFX(VI)
#define Vh SFX(Vh)
#define VD SFX(VD)
#define VDI SFX(VDI)
#define SPLAT(c) ((V){} + (REAL)(c))

/* m ? a : b, lane by lane (m from a comparison: all ones or all zeros). */
INLINE V SFX(sel)(VI m, V a, V b) { return (V)(((VI)a & m) | ((VI)b & ~m)); }
#define SEL SFX(sel)

/* exp(x), about 1 ulp: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2), a polynomial
 * for exp(r), and 2^n put into the exponent bits. Overflows to +inf above HI and returns 0 below
 * LO (slightly inside the exact limits, so that 2^n stays a normal number; lanes outside compute
 * garbage that is then replaced): the only large exponentials used feed 1/(1+e), where the
 * difference is below 1e-38 (float) / 1e-307 (double). NaN propagates (NaN * anything is NaN and
 * comparisons with NaN are false). */
INLINE V SFX(vexp)(V x) {
#if IS_F32
    const float HI = 88.0f, LO = -87.0f;
    /* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (|x log2 e| < 2^22). */
    const float ROUND = 12582912.0f;
    V n = (x * 1.44269504088896341f + ROUND) - ROUND;
    V r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    /* Cephes expf's polynomial: exp(r) = 1 + r + r^2 p(r). */
    V p = SPLAT(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
#else
    const double HI = 709.0, LO = -708.0;
    const double ROUND = 6755399441055744.0; /* 1.5 * 2^52 */
    V n = (x * 1.4426950408889634074 + ROUND) - ROUND;
    V r = x - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    /* Taylor series to r^13: the remainder is below 5e-18 for |r| <= ln2/2. */
    V p = SPLAT(1.0 / 6227020800.0);
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * (r * r) + r + 1.0;
    VI bits = (__builtin_convertvector(n, VI) + 1023) << 52;
#endif
    V e = p * (V)bits;
    e = SEL(x > HI, SPLAT(INFINITY), e);
    e = SEL(x < LO, SPLAT(0), e);
    return e;
}

/* A libm function on every lane: libmvec's vector variant where there is one, else lane by lane. */
#if FO_LIBMVEC && defined(__AVX512F__)
V MVEC_E(erf)(V);
V MVEC_E(log1p)(V);
V MVEC_E(sin)(V);
V MVEC_E(cos)(V);
#define VMATH(f, F) INLINE V SFX(v##f)(V x) { return MVEC_E(f)(x); }
#elif FO_LIBMVEC
Vh MVEC_D(erf)(Vh);
Vh MVEC_D(log1p)(Vh);
Vh MVEC_D(sin)(Vh);
Vh MVEC_D(cos)(Vh);
#define VMATH(f, F)                                                           \
    INLINE V SFX(v##f)(V x) {                                                 \
        Vh lo, hi;                                                            \
        memcpy(&lo, &x, sizeof lo);                                           \
        memcpy(&hi, (char *)&x + sizeof lo, sizeof hi);                       \
        lo = MVEC_D(f)(lo), hi = MVEC_D(f)(hi);                               \
        memcpy(&x, &lo, sizeof lo);                                           \
        memcpy((char *)&x + sizeof lo, &hi, sizeof hi);                       \
        return x;                                                             \
    }
#else
#define VMATH(f, F)                                                           \
    INLINE V SFX(v##f)(V x) {                                                 \
        for (int l = 0; l < LANES; l++) x[l] = F(x[l]);                       \
        return x;                                                             \
    }
#endif
VMATH(erf, ERF)
VMATH(log1p, LOG1P)
VMATH(sin, SIN_)
VMATH(cos, COS_)
#undef VMATH

INLINE V SFX(vsqrt)(V x) {
    for (int l = 0; l < LANES; l++) x[l] = SQRT(x[l]); /* one vector sqrt (-fno-math-errno) */
    return x;
}

#if IS_F32
/* log1p(e) for finite e >= 0 given d = e / (1 + e), for softplus (float32: libmvec's log1pf costs
 * more than the rest of the activation): log(w) for w = 1 + e, from w = 2^k m with m in
 * [sqrt(1/2), sqrt(2)) and Cephes logf's polynomial in f = m - 1 (about 1 ulp), plus what rounding
 * 1 + e lost, (e - (w - 1)) / w = (e - (w - 1)) (1 - d). */
INLINE V vlog1p_softplus(V e, V d) {
    const V w = 1 + e;
    VI ix = (VI)w + (0x3f800000 - 0x3f3504f3);
    const V k = __builtin_convertvector((ix >> 23) - 0x7f, V);
    ix = (ix & 0x007fffff) + 0x3f3504f3;
    const V f = (V)ix - 1, z = f * f;
    V y = 7.0376836292e-2f * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z + k * -2.12194440e-4f - 0.5f * z;
    return (f + y + k * 0.693359375f) + (e - (w - 1)) * (1 - d);
}
#endif

/* Activations whose derivative follows from a = f(z) alone: the forward pass stores only a. */
#define D_FROM_A(act) ((act) == RELU || (act) == TANH || (act) == SIGMOID)

/* a = f(z) and, unless D_FROM_A, d = f'(z), as the torch reference computes them
 * (sweeps/engine/model.py). `act` is a compile-time constant wherever this is inlined. */
INLINE V SFX(activate)(const int act, V z, V *d) {
    switch (act) {
    case RELU:
        return SEL(z < 0, SPLAT(0), z); /* NaN stays NaN, like torch.relu */
    case TANH:
        /* tanh(z) = 2 sigmoid(2z) - 1: the absolute error is ~3 ulp of 1, like y's own rounding
         * (relative error grows near z = 0 but never reaches the outputs; see first_order_native.py). libmvec's
         * tanhf measured no faster inside the kernel (within 10%), and this is portable. */
        return 2 / (1 + SFX(vexp)(-2 * z)) - 1;
    case SIGMOID:
        return 1 / (1 + SFX(vexp)(-z));
    case GELU: {
        V c = (REAL)0.5 * (1 + SFX(verf)(z * (REAL)0.70710678118654752440));
        *d = c + z * SFX(vexp)((REAL)-0.5 * z * z) * (REAL)0.39894228040143267794;
        return z * c;
    }
    case SOFTPLUS: {
        /* torch's: z above the threshold, else log1p(exp(z)); derivative e / (e + 1). The log1p
         * argument stays finite on the branch not taken. */
        VI lin = z > (REAL)SOFTPLUS_THRESHOLD;
        V e = SFX(vexp)(SEL(lin, SPLAT(0), z));
        V de = e / (e + 1);
        *d = SEL(lin, SPLAT(1), de);
#if IS_F32
        return SEL(lin, z, vlog1p_softplus(e, de));
#else
        return SEL(lin, z, SFX(vlog1p)(e));
#endif
    }
    default: /* SIN */
        *d = SFX(vcos)(z);
        return SFX(vsin)(z);
    }
}

/* The derivative from a = f(z), for D_FROM_A activations (sweeps/engine/model.py's formulas). */
INLINE V SFX(derivative)(const int act, V a) {
    switch (act) {
    case RELU:
        return SEL(a > 0, SPLAT(1), SPLAT(0));
    case TANH:
        return 1 - a * a;
    default: /* SIGMOID */
        return a * (1 - a);
    }
}

/* The training and test points padded to whole blocks, shared by every pack. */
typedef struct {
    int n, blocks;           /* real points; blocks of NB */
    REAL *x, *t, *w;         /* [blocks * NB]; w = 1 for a real point, 0 for padding */
} SFX(points);

static int SFX(points_make)(SFX(points) *p, const REAL *x, const REAL *t, int n) {
    p->n = n;
    p->blocks = (n + NB - 1) / NB;
    size_t m = (size_t)p->blocks * NB;
    p->x = malloc(sizeof(REAL) * 3 * m);
    if (!p->x) return FO_ENOMEM;
    p->t = p->x + m;
    p->w = p->t + m;
    for (size_t i = 0; i < m; i++) {
        size_t src = i < (size_t)n ? i : (size_t)n - 1;
        p->x[i] = x[src];
        p->t[i] = t[src];
        p->w[i] = i < (size_t)n ? 1 : 0;
    }
    return FO_OK;
}

/* Per-pack state, vectors of LANES models. Rows in the model layout [w1 (H) | b1 (H) | w2 (H) | b2]. */
typedef struct {
    int hidden, rows;
    V *P, *G, *M, *Q; /* parameters, gradient, first and second moments: [rows] */
    V *mask;          /* 1 where (row, lane) is a trainable parameter, else 0 */
    V *A, *D;         /* [H][NB]: the block's activations and derivatives */
} SFX(pack_mem);

static void SFX(mem_layout)(SFX(pack_mem) *m, V *block, int hidden) {
    m->hidden = hidden;
    m->rows = 3 * hidden + 1;
    m->P = block;
    m->G = m->P + m->rows;
    m->M = m->G + m->rows;
    m->Q = m->M + m->rows;
    m->mask = m->Q + m->rows;
    m->A = m->mask + m->rows;
    m->D = m->A + (size_t)hidden * NB;
}

static size_t SFX(mem_vectors)(int hidden) { return (size_t)5 * (3 * hidden + 1) + (size_t)2 * NB * hidden; }

/* The SSE per lane (double) of the forward pass over `pts`, and if `grad` the masked gradient G. */
INLINE void SFX(pass)(const int act, const int grad, const SFX(pack_mem) *m, const SFX(points) *pts, V scale,
                      VD *sse_out) {
    const int H = m->hidden, R = m->rows;
    const V *restrict P = m->P;
    V *restrict G = m->G, *restrict A = m->A, *restrict D = m->D;
    VD sse = (VD){};
    V gb2 = SPLAT(0);
    if (grad)
        for (int r = 0; r < R; r++) G[r] = SPLAT(0);
    for (int blk = 0; blk < pts->blocks; blk++) {
        const REAL *restrict xb = pts->x + blk * NB, *restrict tb = pts->t + blk * NB, *restrict wb = pts->w + blk * NB;
        V y[NB];
#pragma GCC unroll 16
        for (int i = 0; i < NB; i++) y[i] = P[3 * H];
        for (int j = 0; j < H; j++) {
            const V w1 = P[j], b1 = P[H + j], w2 = P[2 * H + j];
#pragma GCC unroll 16
            for (int i = 0; i < NB; i++) {
                V d;
                V a = SFX(activate)(act, w1 * xb[i] + b1, &d);
                if (grad) {
                    A[j * NB + i] = a;
                    if (!D_FROM_A(act)) D[j * NB + i] = d;
                }
                y[i] += w2 * a;
            }
        }
        V s = SPLAT(0);
#pragma GCC unroll 16
        for (int i = 0; i < NB; i++) {
            V r = (y[i] - tb[i]) * wb[i]; /* padding: exactly 0 */
            s += r * r;
            y[i] = scale * r; /* from here on y holds dLoss/dy */
            gb2 += y[i];
        }
        sse += __builtin_convertvector(s, VD);
        if (!grad) continue;
        for (int j = 0; j < H; j++) {
            V s1 = SPLAT(0), s2 = SPLAT(0), s3 = SPLAT(0);
#pragma GCC unroll 16
            for (int i = 0; i < NB; i++) {
                const V a = A[j * NB + i];
                const V e = (D_FROM_A(act) ? SFX(derivative)(act, a) : D[j * NB + i]) * y[i]; /* dLoss/dz / w2 */
                s1 += e * xb[i];
                s2 += e;
                s3 += a * y[i];
            }
            G[j] += s1;
            G[H + j] += s2;
            G[2 * H + j] += s3;
        }
    }
    *sse_out = sse;
    if (!grad) return;
    G[3 * H] = gb2;
    for (int j = 0; j < H; j++) { /* w2 multiplied in once per unit, not once per point */
        G[j] *= P[2 * H + j];
        G[H + j] *= P[2 * H + j];
    }
    /* A select, not a product: a masked entry's gradient is exactly 0 even if it is not finite. */
    for (int r = 0; r < R; r++) G[r] = SEL(m->mask[r] != 0, G[r], SPLAT(0));
}

/* The per-lane optimizer constants of a pack. */
typedef struct {
    VI lerp, use_m, use_v; /* adam's m update (else momentum's), update uses m, divides by sqrt(v) */
    V beta, alpha, one_m_alpha;
    double lr[LANES], lr_bias[LANES];
    uint8_t adam[LANES];
} SFX(opt_consts);

/* One optimizer step on rows [r0, r1), step sizes st (lr, or lr / Adam's bias correction), for the
 * live lanes. One formula for all four optimizers, so a lane's arithmetic never depends on its
 * pack-mates' optimizers; each reduces exactly to torch.optim's rule (x * 1 and x / 1 are exact):
 *   m = adam ? m + (1 - beta1)(g - m) : 0.9 m + g      (adam: exp_avg.lerp_; momentum: buf)
 *   v = alpha v + (1 - alpha) g^2                     (adam 0.999, rmsprop 0.99; else 0)
 *   p -= st * (uses m ? m : g) / (divides ? sqrt(v) / bc2 + eps : 1) */
INLINE void SFX(update)(SFX(pack_mem) *m, const SFX(opt_consts) *oc, int r0, int r1, V st, V bc2, VI live) {
    for (int r = r0; r < r1; r++) {
        const V g = m->G[r], mo = m->M[r];
        V mn = SEL(oc->lerp, mo + (REAL)(1.0 - ADAM_BETA1) * (g - mo), oc->beta * mo + g);
        mn = SEL(oc->use_m, mn, SPLAT(0));
        const V qn = oc->alpha * m->Q[r] + oc->one_m_alpha * g * g;
        const V num = SEL(oc->use_m, mn, g);
        const V den = SEL(oc->use_v, SFX(vsqrt)(qn) / bc2 + (REAL)EPS, SPLAT(1));
        m->P[r] = SEL(live, m->P[r] - st * (num / den), m->P[r]);
        m->M[r] = mn;
        m->Q[r] = qn;
    }
}

/* Copy lane l's own-layout parameters (hidden size h) between the pack and `flat`. */
static void SFX(lane_io)(SFX(pack_mem) *m, int l, int h, REAL *flat, int store) {
    const int H = m->hidden;
    for (int part = 0; part < 3; part++)
        for (int j = 0; j < h; j++) {
            if (store) flat[part * h + j] = m->P[part * H + j][l];
            else m->P[part * H + j][l] = flat[part * h + j];
        }
    if (store) flat[3 * h] = m->P[3 * H][l];
    else m->P[3 * H][l] = flat[3 * h];
}

static void SFX(lane_zero)(SFX(pack_mem) *m, int l) {
    for (int r = 0; r < m->rows; r++) m->P[r][l] = m->M[r][l] = m->Q[r][l] = m->mask[r][l] = 0;
}

/* Specialise `pass` per activation (act becomes a constant inside). */
static void SFX(pass_any)(int act, int grad, const SFX(pack_mem) *m, const SFX(points) *pts, V scale, VD *sse) {
#define CASE(A) case A: if (grad) SFX(pass)(A, 1, m, pts, scale, sse); else SFX(pass)(A, 0, m, pts, scale, sse); break;
    switch (act) {
    CASE(RELU) CASE(TANH) CASE(SIGMOID) CASE(GELU) CASE(SOFTPLUS) default: CASE(SIN)
    }
#undef CASE
}

static void SFX(train_pack)(const fo_batch *b, int p, SFX(pack_mem) *m, const SFX(points) *train,
                            const SFX(points) *test, const double *bc1, const double *bc2, int n_bc) {
    const int32_t *slot = b->order + b->pack_start[p];
    const int lanes = b->pack_start[p + 1] - b->pack_start[p];
    const int H = m->hidden, R = m->rows, C = b->n_checkpoints;
    const int act = b->activation[slot[0]];
    REAL *params = (REAL *)b->params;
    SFX(opt_consts) oc;
    V scale = SPLAT(0);
    VI live = (VI){};
    int steps[LANES], last = 0, running = 0, next_finish = 0;

    for (int r = 0; r < R; r++) m->P[r] = m->M[r] = m->Q[r] = m->mask[r] = SPLAT(0);
    memset(&oc, 0, sizeof oc);
    for (int l = 0; l < LANES; l++) steps[l] = -1;
    for (int l = 0; l < lanes; l++) {
        const int k = slot[l], h = b->hidden[k], o = b->optimizer[k];
        SFX(lane_io)(m, l, h, params + b->offset[k], 0);
        for (int j = 0; j < h; j++) {
            m->mask[j][l] = m->mask[2 * H + j][l] = 1;
            m->mask[H + j][l] = b->hidden_bias[k] ? 1 : 0;
        }
        m->mask[3 * H][l] = b->output_bias[k] ? 1 : 0;
        scale[l] = (REAL)b->grad_scale[k];
        steps[l] = b->steps[k];
        live[l] = -1;
        running++;
        if (steps[l] > last) last = steps[l];
        oc.lr[l] = b->lr[k];
        oc.lr_bias[l] = b->lr_bias[k];
        oc.adam[l] = o == ADAM;
        oc.lerp[l] = o == ADAM ? -1 : 0;
        oc.use_m[l] = (o == MOMENTUM || o == ADAM) ? -1 : 0;
        oc.use_v[l] = (o == ADAM || o == RMSPROP) ? -1 : 0;
        oc.beta[l] = (REAL)MOMENTUM_BETA;
        oc.alpha[l] = o == ADAM ? (REAL)ADAM_BETA2 : o == RMSPROP ? (REAL)RMSPROP_ALPHA : 0;
        oc.one_m_alpha[l] = o == ADAM ? (REAL)(1.0 - ADAM_BETA2) : o == RMSPROP ? (REAL)(1.0 - RMSPROP_ALPHA) : 0;
        b->diverged_at[k] = -1;
        b->train_mse[k] = b->test_mse[k] = NAN;
        for (int c = 0; c < C; c++) b->curve_train[(size_t)k * C + c] = b->curve_test[(size_t)k * C + c] = NAN;
    }
    /* lr and lr_bias per lane in double, and which lanes use Adam's bias corrections. */
    VD lrw = (VD){}, lrb = (VD){};
    VDI adam_d = (VDI){};
    VI adam = (VI){};
    for (int l = 0; l < lanes; l++) {
        lrw[l] = oc.lr[l], lrb[l] = oc.lr_bias[l];
        adam_d[l] = adam[l] = oc.adam[l] ? -1 : 0;
    }
    /* A model diverges when its MSE is non-finite or > 1e6, i.e. unless sse < 1e6 N (NaN compares
     * false). Stopped lanes are zeroed, so their SSE (sum of t^2 <= N) never trips this. */
    const double sse_limit = DIVERGENCE_MSE * (double)train->n;
    int c = 0;
    VD sse, test_sse = (VD){};
    for (int s = 0; running > 0; s++) {
        if (s % CANCEL_EVERY == 0 && fo_cancelled(b)) return;
        SFX(pass_any)(act, s < last, m, train, scale, &sse);
        VDI ok = sse < sse_limit;
        int64_t all_ok = -1;
        for (int l = 0; l < LANES; l++) all_ok &= ok[l];
        if (!all_ok) {
            for (int l = 0; l < lanes; l++) {
                if (!live[l] || ok[l]) continue;
                const int k = slot[l];
                b->diverged_at[k] = s;
                SFX(lane_io)(m, l, b->hidden[k], params + b->offset[k], 1); /* frozen where it stood */
                SFX(lane_zero)(m, l);
                live[l] = 0;
                running--;
            }
        }
        /* Checkpoints and models finishing: rare, handled lane by lane. */
        const int at_checkpoint = c < C && b->checkpoints[c] == s;
        int finishing = 0;
        if (s == next_finish || at_checkpoint) {
            next_finish = INT32_MAX;
            for (int l = 0; l < lanes; l++) {
                if (!live[l]) continue;
                finishing |= steps[l] == s;
                if (steps[l] > s && steps[l] < next_finish) next_finish = steps[l];
            }
        }
        if ((at_checkpoint || finishing) && running > 0) {
            SFX(pass_any)(act, 0, m, test, scale, &test_sse);
            for (int l = 0; l < lanes; l++) {
                if (!live[l]) continue;
                const int k = slot[l];
                if (at_checkpoint) {
                    b->curve_train[(size_t)k * C + c] = sse[l] / (double)train->n;
                    b->curve_test[(size_t)k * C + c] = test_sse[l] / (double)test->n;
                }
                if (steps[l] == s) { /* done: the MSEs after its last update */
                    b->train_mse[k] = sse[l] / (double)train->n;
                    b->test_mse[k] = test_sse[l] / (double)test->n;
                    SFX(lane_io)(m, l, b->hidden[k], params + b->offset[k], 1);
                    SFX(lane_zero)(m, l);
                    live[l] = 0;
                    running--;
                }
            }
        }
        if (at_checkpoint) c++;
        if (running == 0) break;
        /* Optimizer step t = s + 1 (torch.optim counts from 1). Adam's step size lr / (1 - beta1^t)
         * is computed in double, as torch.optim does, then rounded once. */
        const VD c1 = (VD){} + (s < n_bc ? bc1[s] : 1.0);
        const VD one = (VD){} + 1.0;
        const VD c1_lanes = (VD)(((VDI)c1 & adam_d) | ((VDI)one & ~adam_d));
        const V stw = __builtin_convertvector(lrw / c1_lanes, V);
        const V stb = __builtin_convertvector(lrb / c1_lanes, V);
        const V den2 = SEL(adam, SPLAT((REAL)(s < n_bc ? bc2[s] : 1.0)), SPLAT(1));
        SFX(update)(m, &oc, 0, H, stw, den2, live);
        SFX(update)(m, &oc, H, 2 * H, stb, den2, live);
        SFX(update)(m, &oc, 2 * H, 3 * H, stw, den2, live);
        SFX(update)(m, &oc, 3 * H, R, stb, den2, live);
    }
}

/* Train every pack of the batch; returns FO_OK or a negative error code. */
int SFX(fo_train)(const fo_batch *b) {
    if (!b || b->n_models < 0 || b->n_packs < 0 || b->n_points < 1 || b->n_test < 1 || b->n_checkpoints < 0)
        return FO_EBADARG;
    int widest = 1, last = 0;
    for (int c = 1; c < b->n_checkpoints; c++)
        if (b->checkpoints[c] <= b->checkpoints[c - 1]) return FO_EBADARG;
    if (b->n_packs > 0 && (b->pack_start[0] != 0 || b->pack_start[b->n_packs] != b->n_models)) return FO_EBADARG;
    for (int p = 0; p < b->n_packs; p++) {
        const int lanes = b->pack_start[p + 1] - b->pack_start[p];
        if (lanes < 1 || lanes > LANES) return FO_EBADARG;
        for (int i = b->pack_start[p]; i < b->pack_start[p + 1]; i++) {
            const int k = b->order[i];
            if (k < 0 || k >= b->n_models || b->hidden[k] < 1 || b->steps[k] < 0 ||
                b->activation[k] != b->activation[b->order[b->pack_start[p]]] || b->activation[k] < 0 ||
                b->activation[k] >= N_ACTIVATIONS || b->optimizer[k] < 0 || b->optimizer[k] >= N_OPTIMIZERS)
                return FO_EBADARG;
            if (b->hidden[k] > widest) widest = b->hidden[k];
            if (b->steps[k] > last) last = b->steps[k];
        }
    }
    SFX(points) train, test;
    if (SFX(points_make)(&train, (const REAL *)b->x, (const REAL *)b->t, b->n_points) != FO_OK) return FO_ENOMEM;
    if (SFX(points_make)(&test, (const REAL *)b->x_test, (const REAL *)b->t_test, b->n_test) != FO_OK) {
        free(train.x);
        return FO_ENOMEM;
    }
    /* Adam's bias corrections 1 - beta1^t and sqrt(1 - beta2^t), t = s + 1, in double (as torch),
     * up to the step from which both are exactly 1.0 (about 37000 steps): beyond, 1.0. */
    int n_bc = 0;
    while (n_bc <= last && !(1.0 - pow(ADAM_BETA1, n_bc + 1.0) == 1.0 && 1.0 - pow(ADAM_BETA2, n_bc + 1.0) == 1.0))
        n_bc++;
    double *bc = malloc(sizeof(double) * 2 * ((size_t)n_bc + 1));
    if (!bc) {
        free(train.x), free(test.x);
        return FO_ENOMEM;
    }
    for (int s = 0; s < n_bc; s++) {
        bc[s] = 1.0 - pow(ADAM_BETA1, (double)(s + 1));
        bc[n_bc + s] = sqrt(1.0 - pow(ADAM_BETA2, (double)(s + 1)));
    }
    int status = FO_OK;
#ifdef _OPENMP
    const int threads = b->threads > 0 ? b->threads : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
#endif
    {
        V *block = aligned_alloc(64, sizeof(V) * SFX(mem_vectors)(widest));
        if (!block) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = FO_ENOMEM;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int p = 0; p < b->n_packs; p++) {
            if (!block || fo_cancelled(b)) continue;
            int h = 1;
            for (int i = b->pack_start[p]; i < b->pack_start[p + 1]; i++)
                if (b->hidden[b->order[i]] > h) h = b->hidden[b->order[i]];
            SFX(pack_mem) m;
            SFX(mem_layout)(&m, block, h); /* laid out for the pack's widest model */
            const double t0 = fo_now();
            SFX(train_pack)(b, p, &m, &train, &test, bc, bc + n_bc, n_bc);
            b->pack_seconds[p] = fo_now() - t0;
        }
        free(block);
    }
    free(bc);
    free(train.x);
    free(test.x);
    if (status == FO_OK && fo_cancelled(b)) status = FO_ECANCELLED;
    return status;
}

/* a = f(z) and d = f'(z) for n inputs, exactly as the kernel computes them (for tests). */
int SFX(fo_activations)(int act, int n, const REAL *z, REAL *a, REAL *d) {
    if (act < 0 || act >= N_ACTIVATIONS || n < 0) return FO_EBADARG;
    for (int i0 = 0; i0 < n; i0 += LANES) {
        V zv = SPLAT(0), dv = SPLAT(0), av;
        const int m = n - i0 < LANES ? n - i0 : LANES;
        for (int l = 0; l < m; l++) zv[l] = z[i0 + l];
        switch (act) {
#define ACT_CASE(A) case A: av = SFX(activate)(A, zv, &dv); if (D_FROM_A(A)) dv = SFX(derivative)(A, av); break;
        ACT_CASE(RELU) ACT_CASE(TANH) ACT_CASE(SIGMOID) ACT_CASE(GELU) ACT_CASE(SOFTPLUS) default: ACT_CASE(SIN)
#undef ACT_CASE
        }
        for (int l = 0; l < m; l++) a[i0 + l] = av[l], d[i0 + l] = dv[l];
    }
    return FO_OK;
}

/* The machine's limit for the work (sweeps/tools/bench_engine.py): the per-(unit, point) arithmetic of a
 * step with activation `act` on `threads` threads, over NB in-cache points at a time, for `count`
 * (unit, point) vectors, with no model structure around it (no optimizer, no divergence checks,
 * no padding, no loop over units). kind 0: the whole step's elementwise work (forward FMA,
 * activation and derivative, output FMA, the four multiply-adds back); 1: the activation and its
 * derivative only; 2: the multiply-adds only. Returns wall seconds (and, in *cpu_seconds, the
 * largest thread's CPU time: robust on a shared machine); elements = count * LANES * threads. */
double SFX(fo_limit)(int kind, int act, long count, int threads, double *cpu_seconds) {
    const double t0 = fo_now();
    double cpu = 0.0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads()) reduction(max : cpu)
#endif
    {
        struct timespec c0, c1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        REAL x[NB], g0[NB];
        for (int i = 0; i < NB; i++) x[i] = (REAL)(0.5 + i), g0[i] = (REAL)(0.01 * (i % 3) - 0.01);
        V w1 = SPLAT(0.3), b1 = SPLAT(-1.5), w2 = SPLAT(0.5), g[NB], y[NB], acc = SPLAT(0);
        for (int l = 0; l < LANES; l++) w1[l] += (REAL)(0.01 * l);
        for (int i = 0; i < NB; i++) g[i] = SPLAT(g0[i]), y[i] = SPLAT(0);
        for (long it = 0; it < count / NB; it++) {
            V s1 = SPLAT(0), s2 = SPLAT(0), s3 = SPLAT(0);
#define LIMIT_LOOP(ACT)                                                                      \
    _Pragma("GCC unroll 16") for (int i = 0; i < NB; i++) {                                  \
        V d, z = w1 * x[i] + b1, a;                                                          \
        if (kind == 2) a = z, d = z;                                                         \
        else {                                                                               \
            a = SFX(activate)(ACT, z, &d);                                                   \
            if (D_FROM_A(ACT)) d = SFX(derivative)(ACT, a);                                  \
        }                                                                                    \
        if (kind == 1) { s1 += a; s2 += d; continue; }                                       \
        y[i] += w2 * a;                                                                      \
        const V e = d * g[i];                                                                \
        s1 += e * x[i];                                                                      \
        s2 += e;                                                                             \
        s3 += a * g[i];                                                                      \
    }
            switch (kind == 2 ? RELU : act) {
            case RELU: LIMIT_LOOP(RELU) break;
            case TANH: LIMIT_LOOP(TANH) break;
            case SIGMOID: LIMIT_LOOP(SIGMOID) break;
            case GELU: LIMIT_LOOP(GELU) break;
            case SOFTPLUS: LIMIT_LOOP(SOFTPLUS) break;
            default: LIMIT_LOOP(SIN) break;
            }
#undef LIMIT_LOOP
            acc += s1 + s2 + s3;
            b1 += (REAL)1e-6; /* each round is a new computation */
        }
        for (int i = 0; i < NB; i++) acc += y[i];
        /* Keep the result observable so the work is not optimised away. */
        volatile REAL sink = acc[0];
        (void)sink;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        cpu = (double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec);
    }
    if (cpu_seconds) *cpu_seconds = cpu;
    return fo_now() - t0;
}

#undef V
#undef VI
#undef Vh
#undef VD
#undef VDI
#undef SPLAT
#undef SEL
#endif
