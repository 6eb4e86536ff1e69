"""Batched second-order optimizers for the 1-H-1 network: `bfgs` (nnet's method) and `lm`.

Both train K models at once on P [K, D] (the layout of `sweeps.model`), full batch, each model
with its own state, tolerances and stopping point; a model that stops is frozen while the rest go
on. Masked entries (excluded biases, padded hidden units) never move: the BFGS inverse Hessian is
kept zero in their rows and columns, and the LM system gets a unit diagonal and a zero right-hand
side there, so their update is exactly 0 and they are not counted as parameters.

- `bfgs` is R's `optim` variable-metric method `vmmin`, as `nnet` calls it: inverse-Hessian BFGS
  updates, a backtracking line search from step 1 (factor 0.2, Armijo constant 1e-4), resets to
  steepest descent when the curvature condition fails, the direction is uphill or every 2n
  gradients, and nnet's stopping rules (`maxit`, `abstol` on the loss, `reltol` on its relative
  change). The line search tries several step lengths of a model in one batched evaluation and
  takes the first acceptable one: exactly the step a sequential backtracking takes.
- `lm` is Levenberg–Marquardt on the residuals with closed-form per-model Jacobians [K, N, D],
  one batched Cholesky per iteration (a model whose system is not positive definite just counts a
  failed step), and Nielsen's damping rule: `mu *= max(1/3, 1 - (2 rho - 1)^3)`, `nu = 2` after a
  step that lowers the loss, `mu *= nu, nu *= 2` after one that does not. The loss therefore
  decreases monotonically. It stops on `abstol`, on MINPACK's relative-reduction test with
  `reltol`, or when no step can make progress any more.

Both always compute in float64 (`precision` applies to first-order optimizers only): nnet's
tolerances (reltol 1e-8) and LM's normal equations are below float32's resolution.
`fit_batch` is the engine entry point, with the contract of `sweeps.engine.fit.fit_batch`. This
torch port is the reference of the C kernel (`sweeps.engine.second_order_native`, the CPU
default) and the path on CUDA. Both count alike: `evals` the gradients vmmin evaluates (its
grcount) or the Jacobians LM uses (the start and each accepted step), `fevals` vmmin's loss
evaluations (fncount) or LM's residual evaluations, whatever this port computes on the side
(it evaluates every trial step's gradient, and the Jacobian at rejected LM points). Both stop
at the next iteration once `native.cancel()` is called, raising `native.Cancelled`.

Over 300 lines: the two methods share their batch bookkeeping (`_Finals`, `_compact`, `_Curve`)
and the line search belongs with BFGS; split, each half would import the other's internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import batch as batches
from . import data as datasets
from . import native
from .jobs import DIVERGENCE_MSE, Job, Result, checkpoints
from .model import ACTIVATIONS, BatchModel, Layout, forward

# vmmin's constants (R's src/appl/optim.c).
STEPREDN = 0.2  # line-search step reduction
ACCTOL = 1e-4  # Armijo constant
RELTEST = 10.0  # "no change": reltest + p == reltest + p_new for every parameter
MAX_TRIALS = 480  # line-search trials before a search counts as "no change" (0.2^480 underflows)
CHUNK = 6  # step lengths tried per batched evaluation once step 1 has failed

# Levenberg–Marquardt.
LM_TAU = 1e-3  # initial damping, relative to the largest diagonal entry of J^T J
LM_MU_MAX = 1e16  # damping (relative to that entry) past which no step can make progress
LM_FLOOR = 1e-12  # Marquardt scaling: floor of diag(J^T J), relative to its largest entry
DAMPINGS = ("identity", "marquardt")
DEFAULT_DAMPING = "identity"

DTYPE = torch.float64


@dataclass(frozen=True)
class Step:
    """What one iteration did to each running model ([M] tensors); given to an `on_step` callback.

    `moved` marks models whose parameters changed. BFGS: `slope` is the directional derivative g·d
    of the search direction d and `steplength` the multiple of d taken, so a moved model satisfies
    `loss <= loss_before + ACCTOL * steplength * slope`. LM: `slope` is minus the predicted
    reduction of the SSE and `steplength` the damping mu used.
    """

    index: torch.Tensor  # which models of the batch these rows are (the running ones)
    iteration: torch.Tensor  # iterations used so far (what Result.steps reports)
    loss_before: torch.Tensor
    loss: torch.Tensor
    moved: torch.Tensor
    slope: torch.Tensor
    steplength: torch.Tensor
    P: torch.Tensor  # the running models' parameters after the step [M, D]


@dataclass(frozen=True)
class Outcome:
    """Where a batch of models stopped ([K] tensors but P)."""

    P: torch.Tensor  # [K, D] final parameters
    loss: torch.Tensor  # final training loss (sum or mean of squared errors, as the model's)
    iterations: torch.Tensor  # iterations used
    converged: torch.Tensor  # stopped by a tolerance (False: maxit reached, or never started)
    evals: torch.Tensor  # gradient evaluations (bfgs: vmmin's grcount) or Jacobian evaluations (lm)
    fevals: torch.Tensor  # loss evaluations (bfgs: vmmin's fncount) or residual evaluations (lm)


OnStep = Callable[[Step], None]


class Net:
    """The training problem a batch shares: K stacked networks of one activation on (x, t).

    Losses, gradients and predictions come from `BatchModel`; the Jacobian is computed here.
    `loss_scale` is the loss per unit of SSE: 1 for `sum`, 1/N for `mean`.
    """

    def __init__(self, hidden: int, activation: str, x: torch.Tensor, t: torch.Tensor, reduction: str) -> None:
        self.layout = Layout(hidden)
        self.act, self.dact = ACTIVATIONS[activation]
        self.x, self.t = x, t
        self.model = BatchModel(hidden, activation, x, t, reduction)
        self.loss_scale = float(self.model.per_n)

    def loss(self, P: torch.Tensor) -> torch.Tensor:
        """Training loss per model [K]; NaN becomes +inf."""
        return _finite(self.model.sse(P) * self.loss_scale)

    def loss_and_grad(self, P: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss [K] (NaN becomes +inf) and its masked gradient [K, D]."""
        sse, grad = self.model.sse_and_grad(P, mask)
        return _finite(sse * self.loss_scale), grad

    def _jacobian_rows(self, P: torch.Tensor, mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """[K, W, N]: the Jacobian dr/dP transposed (masked rows zero), the residuals r, then zero
        rows up to `width` (default D + 1)."""
        L, x = self.layout, self.x
        z, a, y = forward(P, x, self.act)  # [K, H, N], [K, H, N], [K, N]
        r = (y - self.t)[:, None, :]  # [K, 1, N]
        dz = P[:, L.w2, None] * self.dact(z, a)
        # dy/dw1_h = w2_h act'(z_h) x,  dy/db1_h = w2_h act'(z_h),  dy/dw2_h = act(z_h),  dy/db2 = 1.
        parts = [dz * x * mask[:, L.w1, None], dz * mask[:, L.b1, None], a * mask[:, L.w2, None],
                 mask[:, L.b2, None].expand_as(r), r]
        extra = (width or 0) - P.shape[1] - 1
        if extra > 0:
            parts.append(r.new_zeros(P.shape[0], extra, x.numel()))
        return torch.cat(parts, dim=1)

    def residuals_and_jacobian(self, P: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals r = y - t [K, N] and their Jacobian dr/dP [K, N, D]; masked columns are zero."""
        rows = self._jacobian_rows(P, mask)
        return rows[:, -1], rows[:, :-1].transpose(1, 2)

    def gauss_newton(self, P: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SSE [K] (NaN becomes +inf), JᵀJ [K, W, W] and Jᵀr [K, W] from one batched product.

        W is D rounded up to a multiple of 4; entries past D are zero. The padding keeps every
        model's block 32-byte aligned: BLAS and LAPACK take alignment-dependent paths that round
        differently, and a model's numbers must not depend on its place in the batch.
        """
        D = P.shape[1]
        W = system_width(D)
        rows = self._jacobian_rows(P, mask, system_width(D + 1))  # J (D rows), r, zero rows
        G = _batched(lambda t: torch.bmm(t, t.transpose(1, 2)), rows)  # [[JᵀJ, Jᵀr], [rᵀJ, rᵀr]]
        A = G[:, :W, :W].clone()
        A[:, D:, :] = 0.0  # the residual's row and column, and padding
        A[:, :, D:] = 0.0
        return _finite(G[:, D, D]), A, G[:, :W, D] * (torch.arange(W, device=P.device) < D)


def system_width(D: int) -> int:
    """The width of LM's linear systems for D parameters: D rounded up to a multiple of 4."""
    return -(-D // 4) * 4


def _batched(op: Callable[..., Any], *args: torch.Tensor) -> Any:
    """`op` over the batch dimension, a lone matrix duplicated first.

    torch hands a batch of one to a different BLAS/LAPACK routine than a batch of several, and
    the two round differently; LM amplifies such differences. Batches of two or more agree bit
    for bit whatever their size, so this keeps a model's numbers independent of its batch-mates.
    """
    if args[0].shape[0] != 1:
        return op(*args)
    out = op(*(torch.cat([a, a]) for a in args))
    return type(out)(o[:1] for o in out) if isinstance(out, tuple) else out[:1]


def _finite(f: torch.Tensor) -> torch.Tensor:
    """NaN losses become +inf, so every comparison treats them as 'worse than anything'."""
    return torch.where(torch.isnan(f), math.inf, f)


def _steplengths(count: int, device: torch.device) -> torch.Tensor:
    """1, 0.2, 0.04, … by repeated multiplication, as vmmin computes them (same rounding)."""
    out, s = [], 1.0
    for _ in range(count):
        out.append(s)
        s *= STEPREDN
    return torch.tensor(out, dtype=DTYPE, device=device)


def _unchanged(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """vmmin's 'no change' test over the last dimension."""
    return ((RELTEST + X) == (RELTEST + Y)).all(-1)


def line_search(net: Net, mask: torch.Tensor, X: torch.Tensor, d: torch.Tensor, f0: torch.Tensor,
                slope: torch.Tensor, steps: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """vmmin's backtracking search for rows X [M, D] along d (loss f0, slope g·d < 0).

    Trial steps are 1, 0.2, 0.04, …; a row takes the first that satisfies Armijo's condition
    `f <= f0 + ACCTOL * s * slope`, and gives up at the first that no longer changes any parameter.
    Step 1 is evaluated with its gradient (it is usually taken); later trials are evaluated
    CHUNK at a time. Returns (accepted [M], steplength [M], P [M, D], loss [M], gradient [M, D],
    evaluations [M]); a row not accepted keeps X, f0 and a zero step (its gradient entry is then
    not X's). `evaluations` counts the losses a sequential search evaluates (vmmin's fncount: a
    trial that changes no parameter is not evaluated). `steps` caches `_steplengths(MAX_TRIALS)`.
    """
    if steps is None:
        steps = _steplengths(MAX_TRIALS, X.device)
    P_new = X + d
    f_new, g_new = net.loss_and_grad(P_new, mask)
    nochange = _unchanged(X, P_new)
    accepted = ~nochange & (f_new <= f0 + ACCTOL * slope)
    resolved = accepted | nochange
    s = accepted.to(DTYPE)
    evals = (~nochange).long()
    if bool(resolved.all()):  # the usual case: every row took step 1 or cannot move
        return accepted, s, torch.where(accepted[:, None], P_new, X), torch.where(accepted, f_new, f0), g_new, evals
    start = 1
    while start < MAX_TRIALS:
        todo = (~resolved).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        sj = steps[start:start + CHUNK]  # [C]
        Xt = X[todo]
        cands = Xt[:, None, :] + sj[None, :, None] * d[todo, None, :]  # [T, C, D]
        T, C, D = cands.shape
        fc = net.loss(cands.reshape(T * C, D)).reshape(T, C)
        nc = _unchanged(Xt[:, None, :], cands)
        ok = ~nc & (fc <= f0[todo, None] + ACCTOL * sj[None, :] * slope[todo, None])
        stop = ok | nc
        hit = stop.any(1)
        first = stop.to(torch.int8).argmax(1)  # the first trial that ends the search
        took = hit & ok.gather(1, first[:, None]).squeeze(1)
        evals[todo] += torch.where(hit, first + took.long(), C)  # the trials up to the one that ends it
        rows, j = todo[took], first[took]
        P_new[rows] = cands[took, j]
        f_new[rows] = fc[took, j]
        s[rows] = sj[j]
        accepted[rows] = True
        resolved[todo[hit]] = True
        start += CHUNK
    back = (accepted & (s < 1.0)).nonzero().squeeze(1)
    if back.numel():  # rows that backtracked need the gradient at the point they took
        g_new[back] = net.loss_and_grad(P_new[back], mask[back])[1]
    P_new = torch.where(accepted[:, None], P_new, X)
    f_new = torch.where(accepted, f_new, f0)
    return accepted, s, P_new, f_new, g_new, evals


State = dict[str, torch.Tensor]


def _compact(state: State, keep: torch.Tensor) -> State:
    """The rows of every state tensor whose model is still running."""
    return {k: v[keep] for k, v in state.items()}


class _Finals:
    """Final parameters, loss, iterations and convergence of every model, filled as they stop."""

    def __init__(self, P: torch.Tensor, loss: torch.Tensor) -> None:
        self.P, self.loss = P.clone(), loss.clone()
        self.iterations = torch.zeros(P.shape[0], dtype=torch.long, device=P.device)
        self.converged = torch.zeros(P.shape[0], dtype=torch.bool, device=P.device)
        self.evals = torch.zeros(P.shape[0], dtype=torch.long, device=P.device)
        self.fevals = torch.zeros_like(self.evals)

    def store(self, idx: torch.Tensor, P: torch.Tensor, loss: torch.Tensor, iterations: torch.Tensor,
              converged: torch.Tensor, evals: torch.Tensor, fevals: torch.Tensor) -> None:
        self.P[idx], self.loss[idx], self.iterations[idx], self.converged[idx] = P, loss, iterations, converged
        self.evals[idx], self.fevals[idx] = evals, fevals

    def outcome(self) -> Outcome:
        return Outcome(self.P, self.loss, self.iterations, self.converged, self.evals, self.fevals)


def _start(loss: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    live = torch.isfinite(loss) if start is None else start & torch.isfinite(loss)
    return live.nonzero().squeeze(1)


def bfgs(net: Net, P: torch.Tensor, mask: torch.Tensor, *, maxit: int, abstol: torch.Tensor,
         reltol: torch.Tensor, start: torch.Tensor | None = None, on_step: OnStep | None = None) -> Outcome:
    """Minimise each model's loss with vmmin's BFGS, from P [K, D] (not modified).

    `abstol`, `reltol` are per model [K]; `start` marks the models to train (the others are
    returned as they are, with 0 iterations). A model stops as vmmin does: when a step taken right
    after a steepest-descent restart makes no progress (no acceptable step, or a loss change under
    the tolerances), or after `maxit` iterations (gradient evaluations, vmmin's `iter`). Only the
    running models are computed: the batch shrinks as models stop.

    As vmmin, a step that fails the tolerances is kept and the search restarts from it with the
    old point's gradient (the new one is not evaluated). One departure, at vmmin's edge: a search
    that finds no acceptable step keeps the start point and loss exactly (vmmin keeps its last
    trial, equal to the start within its "no change" test, and, if that trial's loss is within
    the tolerances of the start's, that loss).
    """
    f0, g0 = net.loss_and_grad(P, mask)
    finals = _Finals(P, f0)
    idx = _start(f0, start)
    m = mask[idx]
    one = torch.ones(idx.numel(), dtype=torch.long, device=P.device)
    st: State = {"idx": idx, "P": P[idx], "f": f0[idx], "g": g0[idx], "mask": m, "B": torch.diag_embed(m),
                 "abstol": abstol[idx], "reltol": reltol[idx], "n": m.sum(1).long(),
                 "iters": one, "gradcount": one.clone(), "ilast": one.clone(), "funcount": one.clone()}  # vmmin's
    finals.iterations[idx] = 1  # vmmin counts the first gradient as iteration 1
    steps = _steplengths(MAX_TRIALS, P.device)
    while st["idx"].numel():  # like vmmin's do-while: at least one iteration
        if native.cancelled():
            raise native.Cancelled("training cancelled")
        Pm, f, g, B, m = st["P"], st["f"], st["g"], st["B"], st["mask"]
        fresh = st["ilast"] == st["gradcount"]  # B was just reset to the identity
        B = torch.where(fresh[:, None, None], torch.diag_embed(m), B)
        d = -torch.bmm(B, g[:, :, None]).squeeze(2)
        slope = (d * g).sum(1)
        down = slope < 0.0
        if bool(down.all()):  # the usual case: no gathering
            moved, steplength, P_new, f_new, g_new, tried = line_search(net, m, Pm, d, f, slope, steps)
        else:
            moved = torch.zeros_like(down)
            steplength = torch.zeros_like(f)
            tried = torch.zeros_like(st["funcount"])
            P_new, f_new, g_new = Pm.clone(), f.clone(), g.clone()
            rows = down.nonzero().squeeze(1)
            if rows.numel():
                acc, s, Pr, fr, gr, ev = line_search(net, m[rows], Pm[rows], d[rows], f[rows], slope[rows], steps)
                moved[rows], steplength[rows], tried[rows] = acc, s, ev
                P_new[rows], f_new[rows], g_new[rows] = Pr, fr, gr
        reltol = st["reltol"]
        enough = (f_new > st["abstol"]) & ((f_new - f).abs() > reltol * (f.abs() + reltol))
        progress = moved & enough

        # BFGS update of the inverse Hessian where the curvature condition s·y > 0 holds:
        # B += (D2 s sᵀ - By sᵀ - s Byᵀ) / D1, D1 = s·y, D2 = 1 + yᵀBy / D1, as one rank-2 product.
        step = steplength[:, None] * d
        y = g_new - g
        D1 = (step * y).sum(1)
        upd = progress & (D1 > 0.0)
        inv = torch.where(upd, 1.0 / D1, 0.0)  # 0: B stays as it is
        By = torch.bmm(B, y[:, :, None]).squeeze(2)
        D2 = 1.0 + (By * y).sum(1) * inv
        U = torch.stack([step, By], 2) * inv[:, None, None]  # [M, D, 2]
        V = torch.stack([D2[:, None] * step - By, -step], 1)  # [M, 2, D]
        B = torch.baddbmm(B, U, V)

        counted = progress.long()
        gradcount = st["gradcount"] + counted
        iters = st["iters"] + counted
        # No acceptable step, a change under the tolerances, or an uphill direction: restart from
        # steepest descent, or stop if that is what was just tried.
        stalled = ~progress
        done = stalled & fresh
        ilast = torch.where((progress & ~upd) | (stalled & ~fresh), gradcount, st["ilast"])
        ilast = torch.where(gradcount - ilast > 2 * st["n"], gradcount, ilast)  # periodic restart
        if on_step is not None:
            on_step(Step(st["idx"], iters, f, f_new, moved, slope, steplength, P_new))
        funcount = st["funcount"] + tried
        # vmmin evaluates the gradient only where it makes progress: elsewhere it restarts with
        # the gradient it had (at the old point, for a step kept that failed the tolerances).
        g_next = torch.where(progress[:, None], g_new, g)
        st.update(P=P_new, f=f_new, g=g_next, B=B, iters=iters, gradcount=gradcount, ilast=ilast, funcount=funcount)
        stop = done | (iters >= maxit)
        if bool(stop.any()):
            finals.store(st["idx"][stop], P_new[stop], f_new[stop], iters[stop], done[stop], gradcount[stop],
                         funcount[stop])
            st = _compact(st, ~stop)
    return finals.outcome()


def lm(net: Net, P: torch.Tensor, mask: torch.Tensor, *, maxit: int, abstol: torch.Tensor,
       reltol: torch.Tensor, start: torch.Tensor | None = None, damping: str = DEFAULT_DAMPING,
       on_step: OnStep | None = None) -> Outcome:
    """Minimise each model's sum of squared residuals with Levenberg–Marquardt, from P [K, D].

    `damping` is `identity` (solve (JᵀJ + mu I) h = -Jᵀr) or `marquardt` (mu diag(JᵀJ), each
    entry floored at LM_FLOOR times the largest). An iteration is one solve and one evaluation;
    `maxit` caps them. A model stops when its loss is at most `abstol`, when an accepted step's
    actual and predicted relative reductions of the SSE are both at most `reltol` (MINPACK's
    ftol test), when its damping passes LM_MU_MAX times the scale of JᵀJ, or when its step no
    longer changes any parameter. Only the running models are computed.
    """
    if damping not in DAMPINGS:
        raise ValueError(f"unknown damping {damping!r}: use one of {', '.join(DAMPINGS)}")
    scale = net.loss_scale
    tiny, eps = torch.finfo(DTYPE).tiny, torch.finfo(DTYPE).eps

    D = P.shape[1]
    F0, A0, g0 = net.gauss_newton(P, mask)  # SSE, JᵀJ, Jᵀr, padded to width W
    # Padding entries of the system behave as masked parameters: unit diagonal, zero step.
    wide = torch.cat([mask, mask.new_zeros(mask.shape[0], A0.shape[1] - D)], dim=1)
    finals = _Finals(P, F0 * scale)
    idx = _start(F0, start)
    top0 = torch.diagonal(A0, dim1=1, dim2=2).amax(1).clamp_min(tiny)
    mu0 = LM_TAU * top0 if damping == "identity" else torch.full_like(top0, LM_TAU)
    st: State = {"idx": idx, "P": P[idx], "F": F0[idx], "A": A0[idx], "g": g0[idx], "mask": mask[idx],
                 "wide": wide[idx], "abstol": abstol[idx], "reltol": reltol[idx], "mu": mu0[idx],
                 "nu": torch.full_like(mu0[idx], 2.0), "iters": torch.zeros_like(idx),
                 "jevals": torch.ones_like(idx)}
    while st["idx"].numel():
        if native.cancelled():
            raise native.Cancelled("training cancelled")
        Pm, F, A, g, m, mu = st["P"], st["F"], st["A"], st["g"], st["wide"], st["mu"]
        diag = torch.diagonal(A, dim1=1, dim2=2)
        if damping == "identity":
            scaling, top = m, diag.amax(1).clamp_min(tiny)
        else:  # mu is relative to diag(JᵀJ) already
            scaling, top = torch.maximum(diag, LM_FLOOR * diag.amax(1, keepdim=True)) * m, torch.ones_like(mu)
        # Masked rows get a unit diagonal and a zero right-hand side: their step is exactly 0.
        Lc, info = _batched(torch.linalg.cholesky_ex, A + torch.diag_embed(mu[:, None] * scaling + (1.0 - m)))
        h = _batched(torch.cholesky_solve, -g[:, :, None], Lc).squeeze(2)
        solved = (info == 0) & torch.isfinite(h).all(1)  # else: a failed step, more damping
        h = torch.where(solved[:, None], h, 0.0)
        P_new = Pm + h[:, :D]
        F_new, A_new, g_new = net.gauss_newton(P_new, st["mask"])
        predicted = (h * (mu[:, None] * scaling * h - g)).sum(1)  # the SSE reduction LM expects
        gain = F - F_new
        moved = solved & (gain > 0.0) & (predicted > 0.0)  # rho > 0
        rho = gain / torch.where(moved, predicted, 1.0)
        iters = st["iters"] + 1
        # Nielsen's rule.
        mu_next = torch.where(moved, mu * torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0), mu * st["nu"])
        mu_next = torch.maximum(mu_next, eps * top)  # keeps the system numerically definite
        nu = torch.where(moved, 2.0, st["nu"] * 2.0)

        reltol = st["reltol"]
        small = moved & (gain <= reltol * F) & (predicted <= reltol * F)
        F_now = torch.where(moved, F_new, F)
        low = F_now * scale <= st["abstol"]
        stuck = (mu_next > LM_MU_MAX * top) | (solved & ~moved & _unchanged(Pm, P_new))
        done = small | low | stuck
        P_now = torch.where(moved[:, None], P_new, Pm)
        if on_step is not None:
            on_step(Step(st["idx"], iters, F * scale, F_now * scale, moved, -predicted, mu, P_now))
        jevals = st["jevals"] + moved.long()  # J at a rejected point is computed here but never used
        st.update(P=P_now, F=F_now,
                  A=torch.where(moved[:, None, None], A_new, A), g=torch.where(moved[:, None], g_new, g),
                  mu=mu_next, nu=nu, iters=iters, jevals=jevals)
        stop = done | (iters >= maxit)
        if bool(stop.any()):
            finals.store(st["idx"][stop], st["P"][stop], F_now[stop] * scale, iters[stop], done[stop],
                         jevals[stop], iters[stop] + 1)  # residuals at the start and once an iteration
            st = _compact(st, ~stop)
    return finals.outcome()


METHODS = {"bfgs": bfgs, "lm": lm}


class _Curve:
    """Training and test MSE of each model at its own iteration checkpoints (`jobs.checkpoints`):
    the state the first time it reaches each (as the kernel records them: a BFGS restart that
    moves without counting an iteration does not overwrite a checkpoint)."""

    def __init__(self, points: list[int], K: int, n: int, loss_scale: float, device: torch.device,
                 test_mse: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.points = points
        self.values = torch.full((K, len(points)), math.nan, dtype=DTYPE, device=device)
        self.tests = torch.full((K, len(points)), math.nan, dtype=DTYPE, device=device)
        slot = torch.full((points[-1] + 1,), -1, dtype=torch.long)
        slot[torch.tensor(points)] = torch.arange(len(points))
        self.slot = slot.to(device)
        self.to_mse = 1.0 / (loss_scale * n)
        self.last = points[-1]
        self.test_mse = test_mse

    def record(self, index: torch.Tensor, iteration: torch.Tensor, loss: torch.Tensor, P: torch.Tensor) -> None:
        """Models `index` are at `iteration` with training loss `loss` and parameters P."""
        pos = self.slot[iteration.clamp(0, self.last)]
        hit = (pos >= 0) & (iteration <= self.last)
        hit &= torch.isnan(self.values[index, pos.clamp(min=0)])
        if bool(hit.any()):  # most iterations are no checkpoint of any model
            self.values[index[hit], pos[hit]] = loss[hit] * self.to_mse
            self.tests[index[hit], pos[hit]] = self.test_mse(P[hit])

    def on_step(self, step: Step) -> None:
        self.record(step.index, step.iteration, step.loss, step.P)

    def rows(self, final_steps: list[int], final_mse: list[float],
             final_test: list[float]) -> list[tuple[tuple[int, float, float], ...]]:
        """Per model: its checkpoints up to the iterations it used, then its final point."""
        out = []
        for k, (row, trow) in enumerate(zip(self.values.cpu().tolist(), self.tests.cpu().tolist())):
            pts = [(s, v, t) for s, v, t in zip(self.points, row, trow) if s <= final_steps[k] and not math.isnan(v)]
            if math.isfinite(final_mse[k]) and (not pts or pts[-1][0] != final_steps[k]):
                pts.append((final_steps[k], final_mse[k], final_test[k]))
            out.append(tuple(pts))
        return out


def fit_batch(jobs: Sequence[Job], data: datasets.Dataset, device: torch.device,
              *, damping: str = DEFAULT_DAMPING) -> list[Result]:
    """Train one batch of jobs sharing a code path with `bfgs` or `lm`; see sweeps.engine.fit.fit_batch.

    Hidden size, bias placement, init and the tolerances `abstol`/`reltol` may differ per model;
    `steps` (shared) is maxit; `lr` and `precision` are not used.
    """
    first = jobs[0].config
    method = METHODS[first.optimizer]
    b = batches.stack(jobs, data, device, DTYPE)
    P, mask = b.P, b.mask
    abstol = torch.tensor([j.config.abstol for j in jobs], **b.to)
    reltol = torch.tensor([j.config.reltol for j in jobs], **b.to)
    net = Net(b.hidden, first.activation, b.x, b.t, first.loss)
    n = b.x.numel()

    with torch.no_grad():
        loss0 = net.loss(P)
        # A start past the divergence line (or NaN, made +inf) is reported diverged at step 0; the
        # methods only ever lower the loss, so no model diverges later.
        ok = loss0 / (net.loss_scale * n) < DIVERGENCE_MSE
        curve = _Curve(checkpoints(first.steps), len(jobs), n, net.loss_scale, device,
                       lambda rows: batches.test_mse(b, net.model, rows))
        started = ok.nonzero().squeeze(1)
        curve.record(started, torch.zeros_like(started), loss0[started], P[started])
        if method is bfgs:  # vmmin counts the start as iteration 1
            curve.record(started, torch.ones_like(started), loss0[started], P[started])
        kwargs = {"damping": damping} if method is lm else {}
        out = method(net, P, mask, maxit=first.steps, abstol=abstol, reltol=reltol, start=ok,
                     on_step=curve.on_step, **kwargs)
    test_mse, train_mse = batches.evaluate(b, net.model, out.P)

    good = ok.cpu().tolist()
    steps = out.iterations.cpu().tolist()
    train = [t if g else math.inf for t, g in zip(train_mse.cpu().tolist(), good)]
    curves = [c if g else () for c, g in zip(curve.rows(steps, train, test_mse.cpu().tolist()), good)]
    return batches.results(b, out.P, test_mse, train_mse, steps, [None if g else 0 for g in good], curves,
                           evals=out.evals.cpu().tolist(), fevals=out.fevals.cpu().tolist())
