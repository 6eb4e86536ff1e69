/* Second-order training of batches of 1-H-1 networks y = w2 . act(w1 x + b1) + b2, in float64.
 *
 * Two methods, each training one model per OpenMP task to its own stopping point:
 *   so_bfgs: R's vmmin (src/appl/optim.c) as nnet calls it: its constants, counters, line
 *            search, restarts and stopping rules, its edge cases included (after a step that
 *            fails the tolerances it restarts from the new point with the old gradient; a search
 *            that changes no parameter leaves the last trial). One saving: vmmin evaluates the
 *            loss at a trial and, once it is accepted, the gradient at the same point; here the
 *            gradient reuses the activations of that trial's forward pass.
 *   so_lm:   Levenberg-Marquardt with Nielsen's damping, the algorithm of sweeps/engine/second_order.py
 *            `lm`: same constants and rules, with J'J and J'r formed only at accepted points.
 * Sums over points run 8 lanes wide (and B's products too), so results differ from R's and from
 * the torch port by rounding only. sweeps/engine/second_order.py is the reference and the fallback;
 * sweeps/engine/second_order_native.py drives this file (sweeps/engine/native.py builds it). A model's parameters are in its own
 * layout [w1 (H) | b1 (H) | w2 (H) | b2], with its own H (no padding); entries whose mask is 0 are
 * never written. Every model runs the same code on the same (copied, aligned) points, so its
 * numbers never depend on its batch-mates or on the thread that runs it.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef NO_LIBMVEC
/* glibc declares its vector math library (libmvec) only under -ffast-math, which must not be used
 * here (non-finite losses are tested). These declarations let `omp simd` loops call the vector
 * variants (accurate to a few ulp, as glibc documents them). */
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double tanh(double);
#pragma omp declare simd notinbranch
extern double erf(double);
#pragma omp declare simd notinbranch
extern double log1p(double);
#pragma omp declare simd notinbranch
extern double sin(double);
#pragma omp declare simd notinbranch
extern double cos(double);
#endif

#define SO_ABI 2

enum { ACT_RELU = 0, ACT_TANH = 1, ACT_SIGMOID = 2, ACT_GELU = 3, ACT_SOFTPLUS = 4, ACT_SIN = 5 };
enum { STATUS_CONVERGED = 0, STATUS_MAXIT = 1, STATUS_NOT_STARTED = 2, STATUS_NO_MEMORY = 3, STATUS_CANCELLED = 4 };

/* vmmin's constants. */
#define STEPREDN 0.2
#define ACCTOL 1e-4
#define RELTEST 10.0
/* Levenberg-Marquardt's (sweeps/engine/second_order.py). */
#define LM_TAU 1e-3
#define LM_MU_MAX 1e16
#define LM_FLOOR 1e-12

#define BLK 128 /* LM: points per block of J' (n rows of BLK stay in L1) */
#define ALIGN 64
#define LANES 8  /* arrays of points are padded to a multiple of this: no scalar tail of vector calls */

/* One call's shared inputs and per-model outputs; mirrored by a ctypes.Structure. */
typedef struct {
    int K;                    /* models */
    int act;                  /* ACT_* */
    int N, Ntest;             /* training and test points */
    int maxit;
    int ncheck;               /* checkpoints (ascending iterations) */
    int threads;
    int damping;              /* LM: 0 identity, 1 marquardt */
    const double *x, *t;      /* [N] scaled inputs, targets */
    const double *xt, *tt;    /* [Ntest] */
    const int *H;             /* [K] */
    const long *off;          /* [K] start of each model in P and mask */
    double *P;                /* in: start; out: final parameters */
    const double *mask;       /* 1: trained, 0: fixed (never written) */
    const double *loss_scale; /* [K] loss per unit of SSE: 1 (sum) or 1/N (mean) */
    const double *abstol, *reltol; /* [K] */
    const int *check;         /* [ncheck] */
    double div_mse;           /* a start whose training MSE is not below this is not trained */
    double *curve;            /* [K, ncheck, 2]: (train MSE, test MSE), NaN where not reached */
    double *loss;             /* [K] final loss as the optimizer holds it */
    double *train_mse, *test_mse, *seconds; /* [K] recomputed at the final parameters */
    int *iters, *fevals, *gevals, *status;  /* [K] */
    const volatile int *cancel;             /* nonzero: stop now (polled every iteration); may be NULL */
} Batch;

/* An iteration costs one to a few passes over the points (microseconds to a millisecond), so a
 * cancel acts within milliseconds; the results of a cancelled call are not to be used. */
static int cancelled(const Batch *bt) { return bt->cancel && *bt->cancel; }

/* A training or test set for one model: N points (x, t) padded with zeros to Npad. */
typedef struct {
    int H, act, N, Npad;
    const double *x, *t;
} Problem;

/* The last forward pass (activations A, residuals r) and scratch space, per model. */
typedef struct {
    int stride;            /* >= every Npad used, a multiple of LANES */
    double *A, *D, *y, *r; /* [H*stride] activations, [H*stride] derivatives, [stride], [stride] */
    double *J;             /* LM: [(3H+1)*BLK] rows of J' over one block */
} Work;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void *alloc(size_t n) { /* aligned, n rounded up to whole lines */
    return aligned_alloc(ALIGN, ((n * sizeof(double) + ALIGN - 1) / ALIGN) * ALIGN);
}

static int padded(int n) { return (n + LANES - 1) / LANES * LANES; }

static const double IS2 = 0.70710678118654752440, IS2PI = 0.39894228040143267794;

/* a = act(w x + b) over n points (n a multiple of LANES), and y += v a. */
static void activate(int act, double w, double b, double v, const double *restrict x, int n, double *restrict a,
                     double *restrict y) {
    if (n % LANES) __builtin_unreachable();
    switch (act) {
    case ACT_SIGMOID:
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double s = 1.0 / (1.0 + exp(-(w * x[p] + b)));
            a[p] = s;
            y[p] += v * s;
        }
        return;
    case ACT_TANH:
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double s = tanh(w * x[p] + b);
            a[p] = s;
            y[p] += v * s;
        }
        return;
    case ACT_RELU:
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double z = w * x[p] + b;
            a[p] = z > 0.0 ? z : 0.0;
        }
        break;
    case ACT_GELU:
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double z = w * x[p] + b, s = 0.5 * z * (1.0 + erf(z * IS2));
            a[p] = s;
            y[p] += v * s;
        }
        return;
    case ACT_SOFTPLUS: /* torch's: linear above 20. gcc 12 vectorises no select on a vector
                        * call's result, so the threshold gets a loop of its own. */
#pragma omp simd
        for (int p = 0; p < n; p++) a[p] = log1p(exp(w * x[p] + b));
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double z = w * x[p] + b;
            a[p] = z > 20.0 ? z : a[p];
        }
        break;
    default: /* ACT_SIN */
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double s = sin(w * x[p] + b);
            a[p] = s;
            y[p] += v * s;
        }
        return;
    }
#pragma omp simd
    for (int p = 0; p < n; p++) y[p] += v * a[p]; /* relu, softplus */
}

/* d = act'(w x + b) over n points, given a = act(w x + b). */
static void derive(int act, double w, double b, const double *restrict x, const double *restrict a, int n,
                   double *restrict d) {
    if (n % LANES) __builtin_unreachable();
    switch (act) {
    case ACT_SIGMOID:
#pragma omp simd
        for (int p = 0; p < n; p++) d[p] = a[p] * (1.0 - a[p]);
        break;
    case ACT_TANH:
#pragma omp simd
        for (int p = 0; p < n; p++) d[p] = 1.0 - a[p] * a[p];
        break;
    case ACT_RELU:
#pragma omp simd
        for (int p = 0; p < n; p++) d[p] = a[p] > 0.0 ? 1.0 : 0.0;
        break;
    case ACT_GELU:
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double z = w * x[p] + b;
            d[p] = 0.5 * (1.0 + erf(z * IS2)) + z * exp(-0.5 * z * z) * IS2PI;
        }
        break;
    case ACT_SOFTPLUS: /* torch's e / (e + 1), 1 above 20 */
#pragma omp simd
        for (int p = 0; p < n; p++) {
            double e = exp(w * x[p] + b);
            d[p] = e / (e + 1.0);
        }
#pragma omp simd
        for (int p = 0; p < n; p++) d[p] = w * x[p] + b > 20.0 ? 1.0 : d[p];
        break;
    default: /* ACT_SIN */
#pragma omp simd
        for (int p = 0; p < n; p++) d[p] = cos(w * x[p] + b);
    }
}

/* The sum of squared errors at P; leaves the activations in w->A and the residuals in w->r. */
static double forward(const Problem *pb, const double *P, Work *w) {
    const int H = pb->H, n = pb->Npad;
    double *restrict y = w->y, *restrict r = w->r;
    const double *restrict t = pb->t;
    if (n % LANES) __builtin_unreachable();
    for (int p = 0; p < n; p++) y[p] = P[3 * H];
    for (int h = 0; h < H; h++)
        activate(pb->act, P[h], P[H + h], P[2 * H + h], pb->x, n, w->A + (size_t)h * w->stride, y);
    double sse = 0.0;
#pragma omp simd reduction(+ : sse)
    for (int p = 0; p < pb->N; p++) { /* the padding points are left out here */
        r[p] = y[p] - t[p];
        sse += r[p] * r[p];
    }
    return sse;
}

/* The gradient of scale * SSE at P (all 3H+1 entries), from the forward pass just made at P. */
static void gradient(const Problem *pb, const double *P, double scale, Work *w, double *g) {
    const int H = pb->H, N = pb->N;
    const double *restrict x = pb->x, *restrict r = w->r;
    const double two = 2.0 * scale;
    double gb2 = 0.0;
#pragma omp simd reduction(+ : gb2)
    for (int p = 0; p < N; p++) gb2 += r[p];
    g[3 * H] = two * gb2;
    for (int h = 0; h < H; h++) {
        const double *restrict a = w->A + (size_t)h * w->stride;
        double *restrict d = w->D + (size_t)h * w->stride;
        double gw1 = 0.0, gb1 = 0.0, gw2 = 0.0;
        if (pb->act == ACT_SIGMOID) { /* the common case, without a pass through d */
#pragma omp simd reduction(+ : gw1, gb1, gw2)
            for (int p = 0; p < N; p++) {
                double dz = r[p] * (a[p] * (1.0 - a[p]));
                gw1 += dz * x[p];
                gb1 += dz;
                gw2 += a[p] * r[p];
            }
        } else {
            derive(pb->act, P[h], P[H + h], x, a, pb->Npad, d);
#pragma omp simd reduction(+ : gw1, gb1, gw2)
            for (int p = 0; p < N; p++) {
                double dz = r[p] * d[p];
                gw1 += dz * x[p];
                gb1 += dz;
                gw2 += a[p] * r[p];
            }
        }
        double v = two * P[2 * H + h];
        g[h] = v * gw1;
        g[H + h] = v * gb1;
        g[2 * H + h] = two * gw2;
    }
}

/* J'J (n x n, lower triangle, row-major) and J'r (n) over the free parameters l[0..n), from the
 * forward pass just made at P. */
static void gauss_newton(const Problem *pb, const double *P, const int *l, int n, double *JJ, double *Jr, Work *w) {
    const int H = pb->H;
    memset(JJ, 0, (size_t)n * n * sizeof(double));
    memset(Jr, 0, n * sizeof(double));
    for (int h = 0; h < H; h++)
        derive(pb->act, P[h], P[H + h], pb->x, w->A + (size_t)h * w->stride, pb->Npad, w->D + (size_t)h * w->stride);
    for (int p0 = 0; p0 < pb->N; p0 += BLK) {
        int m = pb->N - p0 < BLK ? pb->N - p0 : BLK;
        const double *restrict x = pb->x + p0, *restrict r = w->r + p0;
        for (int i = 0; i < n; i++) { /* row i of J' over this block */
            int q = l[i];
            double *restrict Ji = w->J + (size_t)i * BLK;
            if (q < H) {
                const double *restrict d = w->D + (size_t)q * w->stride + p0;
                double v = P[2 * H + q];
#pragma omp simd
                for (int p = 0; p < m; p++) Ji[p] = v * d[p] * x[p];
            } else if (q < 2 * H) {
                const double *restrict d = w->D + (size_t)(q - H) * w->stride + p0;
                double v = P[2 * H + q - H];
#pragma omp simd
                for (int p = 0; p < m; p++) Ji[p] = v * d[p];
            } else if (q < 3 * H) {
                memcpy(Ji, w->A + (size_t)(q - 2 * H) * w->stride + p0, m * sizeof(double));
            } else {
                for (int p = 0; p < m; p++) Ji[p] = 1.0;
            }
        }
        for (int i = 0; i < n; i++) {
            const double *restrict Ji = w->J + (size_t)i * BLK;
            double u = 0.0;
#pragma omp simd reduction(+ : u)
            for (int p = 0; p < m; p++) u += Ji[p] * r[p];
            Jr[i] += u;
            for (int j = 0; j <= i; j++) {
                const double *restrict Jj = w->J + (size_t)j * BLK;
                double v = 0.0;
#pragma omp simd reduction(+ : v)
                for (int p = 0; p < m; p++) v += Ji[p] * Jj[p];
                JJ[(size_t)i * n + j] += v;
            }
        }
    }
}

static int work_init(Work *w, int H, int stride, int jacobian) {
    w->stride = stride;
    w->A = alloc((size_t)H * stride);
    w->D = alloc((size_t)H * stride);
    w->y = alloc(stride);
    w->r = alloc(stride);
    w->J = jacobian ? alloc((size_t)(3 * H + 1) * BLK) : NULL;
    return w->A && w->D && w->y && w->r && (w->J || !jacobian);
}

static void work_free(Work *w) { free(w->A), free(w->D), free(w->y), free(w->r), free(w->J); }

typedef struct {
    const Batch *bt;
    int k, next;   /* model, next checkpoint slot */
    Problem test;
    Work *w;
    double to_mse; /* training MSE per unit of loss */
} Curve;

/* Record every checkpoint up to iteration `iter` not recorded yet, at parameters P with loss f.
 * (Overwrites the work's forward pass.) */
static void record(Curve *c, int iter, const double *P, double f) {
    const Batch *bt = c->bt;
    double test = NAN;
    while (c->next < bt->ncheck && bt->check[c->next] <= iter) {
        double *row = bt->curve + ((size_t)c->k * bt->ncheck + c->next) * 2;
        if (isnan(test)) test = forward(&c->test, P, c->w) / c->test.N;
        row[0] = f * c->to_mse;
        row[1] = test;
        c->next++;
    }
}

/* Free parameters: l[0..n) = the indices whose mask is not 0. */
static int free_params(const double *mask, int D, int *l) {
    int n = 0;
    for (int i = 0; i < D; i++)
        if (mask[i] != 0.0) l[n++] = i;
    return n;
}

/* ---------------------------------------------------------------- BFGS (vmmin) */

/* y = B v for the symmetric B (n x n, row stride ns, zero padding up to ns), as a sum of B's
 * rows weighted by v, LANES entries of y at a time in registers (no horizontal sums). */
static void symv(const double *restrict B, int n, int ns, const double *restrict v, double *restrict y) {
    if (ns % LANES) __builtin_unreachable();
    for (int i0 = 0; i0 < ns; i0 += LANES) {
        double acc[LANES] = {0.0};
        for (int j = 0; j < n; j++) {
            const double *restrict row = B + (size_t)j * ns + i0;
            double vj = v[j];
#pragma omp simd
            for (int q = 0; q < LANES; q++) acc[q] += vj * row[q];
        }
        for (int q = 0; q < LANES; q++) y[i0 + q] = acc[q];
    }
}

static int bfgs_one(const Batch *bt, int k, const Problem *pb, const Problem *test, Work *w) {
    const int H = bt->H[k], D = 3 * H + 1;
    double *b = bt->P + bt->off[k];
    const double ls = bt->loss_scale[k], abstol = bt->abstol[k], reltol = bt->reltol[k];
    const int maxit = bt->maxit;
    int *l = malloc(D * sizeof(int));
    int n = l ? free_params(bt->mask + bt->off[k], D, l) : 0, ns = padded(n > 0 ? n : 1);
    /* vmmin's vectors over the free parameters (g: the gradient there), B full and symmetric. */
    double *gfull = alloc(D), *g = alloc(ns), *t = alloc(ns), *X = alloc(ns), *c = alloc(ns),
           *B = alloc((size_t)ns * ns);
    int status = STATUS_NO_MEMORY;
    if (!l || !gfull || !g || !t || !X || !c || !B) goto out;
    memset(B, 0, (size_t)ns * ns * sizeof(double));
    memset(g, 0, ns * sizeof(double)), memset(t, 0, ns * sizeof(double)), memset(c, 0, ns * sizeof(double));
    Curve cv = {bt, k, 0, *test, w, 1.0 / (ls * pb->N)};

    double f = ls * forward(pb, b, w);
    int funcount = 1, gradcount = 1, iter = 1, ilast = 1, count = 0;
    if (!(isfinite(f) && f * cv.to_mse < bt->div_mse)) {
        status = STATUS_NOT_STARTED;
        iter = funcount = gradcount = 0;
        goto done;
    }
    gradient(pb, b, ls, w, gfull);
    for (int i = 0; i < n; i++) g[i] = gfull[l[i]];
    double Fmin = f;
    record(&cv, iter, b, Fmin); /* checkpoints 0 and 1: vmmin counts the first gradient as iteration 1 */
    if (maxit <= 0) goto finish;
    do {
        if (cancelled(bt)) break;
        if (ilast == gradcount) {
            memset(B, 0, (size_t)ns * n * sizeof(double));
            for (int i = 0; i < n; i++) B[(size_t)i * ns + i] = 1.0;
        }
        for (int i = 0; i < n; i++) {
            X[i] = b[l[i]];
            c[i] = g[i];
        }
        symv(B, n, ns, g, t);
        double gradproj = 0.0;
        for (int i = 0; i < n; i++) {
            t[i] = -t[i];
            gradproj += t[i] * g[i];
        }
        if (gradproj < 0.0) { /* search direction is downhill */
            double steplength = 1.0;
            int accpoint = 0;
            do {
                count = 0;
                for (int i = 0; i < n; i++) {
                    b[l[i]] = X[i] + steplength * t[i];
                    if (RELTEST + X[i] == RELTEST + b[l[i]]) count++; /* no change */
                }
                if (count < n) {
                    f = ls * forward(pb, b, w);
                    funcount++;
                    accpoint = isfinite(f) && (f <= Fmin + gradproj * steplength * ACCTOL);
                    if (!accpoint) steplength *= STEPREDN;
                }
            } while (!(count == n || accpoint));
            int enough = (f > abstol) && fabs(f - Fmin) > reltol * (fabs(Fmin) + reltol);
            if (!enough) { /* stop if value is small or if relative change is low */
                count = n;
                Fmin = f;
            }
            if (count < n) { /* making progress */
                Fmin = f;
                gradient(pb, b, ls, w, gfull); /* the forward pass at b was the last one made */
                gradcount++;
                iter++;
                double D1 = 0.0;
                for (int i = 0; i < n; i++) {
                    g[i] = gfull[l[i]];
                    t[i] = steplength * t[i];
                    c[i] = g[i] - c[i];
                    D1 += t[i] * c[i];
                }
                if (D1 > 0) {
                    symv(B, n, ns, c, X);
                    double D2 = 0.0;
                    for (int i = 0; i < n; i++) D2 += X[i] * c[i];
                    D2 = 1.0 + D2 / D1;
                    /* vmmin's update of the lower triangle (its expression, its division: measured,
                     * multiplying by 1/D1 instead flips more borderline line-search tests against
                     * R's), then mirrored: B stays exactly symmetric */
                    for (int i = 0; i < n; i++) {
                        double *restrict row = B + (size_t)i * ns, ti = t[i], Xi = X[i];
#pragma omp simd
                        for (int j = 0; j <= i; j++) row[j] += (D2 * ti * t[j] - Xi * t[j] - ti * X[j]) / D1;
                    }
                    for (int i = 0; i < n; i++)
                        for (int j = 0; j < i; j++) B[(size_t)j * ns + i] = B[(size_t)i * ns + j];
                } else { /* D1 < 0 */
                    ilast = gradcount;
                }
            } else { /* no progress */
                if (ilast < gradcount) {
                    count = 0;
                    ilast = gradcount;
                }
            }
        } else { /* uphill search: resets unless it has just been reset */
            count = 0;
            if (ilast == gradcount) count = n;
            else ilast = gradcount;
        }
        record(&cv, iter, b, Fmin);
        if (iter >= maxit) break;
        if (gradcount - ilast > 2 * n) ilast = gradcount; /* periodic restart */
    } while (count != n || ilast != gradcount);
finish:
    status = iter < maxit ? STATUS_CONVERGED : STATUS_MAXIT;
    bt->loss[k] = Fmin;
    bt->train_mse[k] = forward(pb, b, w) / pb->N;
    bt->test_mse[k] = forward(test, b, w) / test->N;
done:
    bt->iters[k] = iter;
    bt->fevals[k] = funcount;
    bt->gevals[k] = gradcount;
out:
    free(l), free(gfull), free(g), free(t), free(X), free(c), free(B);
    return status;
}

/* ---------------------------------------------------------------- Levenberg-Marquardt */

/* In-place Cholesky of the n x n lower triangle of M; 0 if M is not numerically positive definite. */
static int cholesky(double *M, int n) {
    for (int j = 0; j < n; j++) {
        double s = M[j * n + j];
        for (int q = 0; q < j; q++) s -= M[j * n + q] * M[j * n + q];
        if (!(s > 0.0)) return 0;
        double d = sqrt(s);
        M[j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double u = M[i * n + j];
            for (int q = 0; q < j; q++) u -= M[i * n + q] * M[j * n + q];
            M[i * n + j] = u / d;
        }
    }
    return 1;
}

/* Solve L L' h = v in place (L from `cholesky`). */
static void cholesky_solve(const double *L, int n, double *h) {
    for (int i = 0; i < n; i++) {
        double s = h[i];
        for (int q = 0; q < i; q++) s -= L[i * n + q] * h[q];
        h[i] = s / L[i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = h[i];
        for (int q = i + 1; q < n; q++) s -= L[q * n + i] * h[q];
        h[i] = s / L[i * n + i];
    }
}

static int lm_one(const Batch *bt, int k, const Problem *pb, const Problem *test, Work *w) {
    const int H = bt->H[k], D = 3 * H + 1;
    double *P = bt->P + bt->off[k];
    const double ls = bt->loss_scale[k], abstol = bt->abstol[k], reltol = bt->reltol[k];
    const int maxit = bt->maxit, marquardt = bt->damping == 1;
    int *l = malloc(D * sizeof(int));
    int n = l ? free_params(bt->mask + bt->off[k], D, l) : 0;
    size_t nn = (size_t)(n + 1) * (n + 1);
    double *JJ = alloc(nn), *M = alloc(nn), *Jr = alloc(n + 1), *h = alloc(n + 1), *S = alloc(n + 1),
           *Pn = alloc(D);
    int status = STATUS_NO_MEMORY;
    if (!l || !JJ || !M || !Jr || !h || !S || !Pn) goto out;
    Curve cv = {bt, k, 0, *test, w, 1.0 / pb->N}; /* LM holds the SSE itself */

    double F = forward(pb, P, w);
    int iters = 0, jevals = 1, fevals = 1;
    if (!(isfinite(F) && F / pb->N < bt->div_mse)) {
        status = STATUS_NOT_STARTED;
        jevals = fevals = 0;
        goto done;
    }
    status = STATUS_MAXIT;
    gauss_newton(pb, P, l, n, JJ, Jr, w);
    double top0 = 0.0;
    for (int i = 0; i < n; i++) top0 = fmax(top0, JJ[i * n + i]);
    double mu = marquardt ? LM_TAU : LM_TAU * fmax(top0, DBL_MIN), nu = 2.0;
    record(&cv, 0, P, F);
    memcpy(Pn, P, D * sizeof(double));
    int stop = maxit <= 0;
    while (!stop && !cancelled(bt)) {
        double top = 0.0;
        for (int i = 0; i < n; i++) top = fmax(top, JJ[i * n + i]);
        for (int i = 0; i < n; i++) S[i] = marquardt ? fmax(JJ[i * n + i], LM_FLOOR * top) : 1.0;
        top = marquardt ? 1.0 : fmax(top, DBL_MIN);
        for (int i = 0; i < n; i++) {
            for (int j = 0; j <= i; j++) M[i * n + j] = JJ[i * n + j];
            M[i * n + i] += mu * S[i];
            h[i] = -Jr[i];
        }
        int solved = cholesky(M, n);
        if (solved) {
            cholesky_solve(M, n, h);
            for (int i = 0; i < n; i++) solved &= isfinite(h[i]) != 0;
        }
        if (!solved) memset(h, 0, n * sizeof(double)); /* a failed step: more damping */
        int unchanged = 1;
        for (int i = 0; i < n; i++) {
            Pn[l[i]] = P[l[i]] + h[i];
            unchanged &= RELTEST + P[l[i]] == RELTEST + Pn[l[i]];
        }
        double Fn = forward(pb, Pn, w);
        if (isnan(Fn)) Fn = INFINITY;
        fevals++;
        double predicted = 0.0; /* the SSE reduction the linear model expects */
        for (int i = 0; i < n; i++) predicted += h[i] * (mu * S[i] * h[i] - Jr[i]);
        double gain = F - Fn;
        int moved = solved && gain > 0.0 && predicted > 0.0;
        double rho = gain / (moved ? predicted : 1.0);
        iters++;
        double mu_next; /* Nielsen's rule */
        if (moved) {
            double u = 2.0 * rho - 1.0;
            mu_next = mu * fmax(1.0 - u * u * u, 1.0 / 3.0);
        } else {
            mu_next = mu * nu;
        }
        mu_next = fmax(mu_next, DBL_EPSILON * top); /* keeps the system numerically definite */
        nu = moved ? 2.0 : 2.0 * nu;
        int small = moved && gain <= reltol * F && predicted <= reltol * F;
        double Fnow = moved ? Fn : F;
        int low = Fnow * ls <= abstol;
        int stuck = mu_next > LM_MU_MAX * top || (solved && !moved && unchanged);
        if (moved) {
            memcpy(P, Pn, D * sizeof(double));
            F = Fn;
            gauss_newton(pb, P, l, n, JJ, Jr, w); /* from the forward pass just made at Pn */
            jevals++;
        } else {
            memcpy(Pn, P, D * sizeof(double));
        }
        mu = mu_next;
        record(&cv, iters, P, F);
        if (small || low || stuck) {
            status = STATUS_CONVERGED;
            stop = 1;
        } else if (iters >= maxit) {
            stop = 1;
        }
    }
    bt->loss[k] = F * ls;
    bt->train_mse[k] = forward(pb, P, w) / pb->N;
    bt->test_mse[k] = forward(test, P, w) / test->N;
done:
    bt->iters[k] = iters;
    bt->fevals[k] = fevals;
    bt->gevals[k] = jevals;
out:
    free(l), free(JJ), free(M), free(Jr), free(h), free(S), free(Pn);
    return status;
}

/* ---------------------------------------------------------------- entry points */

/* A zero-padded, aligned copy of v[0..n) of length padded(n). */
static double *padded_copy(const double *v, int n) {
    int m = padded(n > 0 ? n : 1);
    double *out = alloc(m);
    if (out) {
        memset(out, 0, m * sizeof(double));
        if (n > 0) memcpy(out, v, n * sizeof(double));
    }
    return out;
}

typedef int (*one_fn)(const Batch *, int, const Problem *, const Problem *, Work *);

static int run(const Batch *bt, one_fn one, int jacobian) {
    /* Private aligned copies, padded with zeros to whole vectors: vectorised loops then split the
     * points the same way on every call, so a model's rounding never depends on where its
     * caller's arrays lie. */
    double *x = padded_copy(bt->x, bt->N), *t = padded_copy(bt->t, bt->N);
    double *xt = padded_copy(bt->xt, bt->Ntest), *tt = padded_copy(bt->tt, bt->Ntest);
    int failed = !x || !t || !xt || !tt || bt->N < 1 || bt->Ntest < 1;
    if (!failed) {
        const int stride = padded(bt->N > bt->Ntest ? bt->N : bt->Ntest);
#pragma omp parallel for schedule(dynamic, 1) num_threads(bt->threads > 0 ? bt->threads : 1) if (bt->threads > 1)
        for (int k = 0; k < bt->K; k++) {
            const int H = bt->H[k];
            Problem pb = {H, bt->act, bt->N, padded(bt->N), x, t};
            Problem test = {H, bt->act, bt->Ntest, padded(bt->Ntest), xt, tt};
            double *row = bt->curve + (size_t)k * bt->ncheck * 2;
            for (int c = 0; c < 2 * bt->ncheck; c++) row[c] = NAN;
            bt->loss[k] = bt->train_mse[k] = bt->test_mse[k] = INFINITY;
            bt->iters[k] = bt->fevals[k] = bt->gevals[k] = 0;
            double t0 = now();
            Work w;
            if (cancelled(bt)) {
                bt->status[k] = STATUS_CANCELLED;
                bt->seconds[k] = 0.0;
                continue;
            }
            if (work_init(&w, H, stride, jacobian)) {
                bt->status[k] = one(bt, k, &pb, &test, &w);
            } else {
                bt->status[k] = STATUS_NO_MEMORY;
            }
            work_free(&w);
            bt->seconds[k] = now() - t0;
        }
    }
    free(x), free(t), free(xt), free(tt);
    return failed ? -1 : cancelled(bt) ? -2 : 0;
}

int so_abi(void) { return SO_ABI; }
int so_bfgs(const Batch *bt) { return run(bt, bfgs_one, 0); }
int so_lm(const Batch *bt) { return run(bt, lm_one, 1); }
