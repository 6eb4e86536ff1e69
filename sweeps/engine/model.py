"""The batched 1-H-1 network y = w2 · act(w1·x + b1) + b2, with closed-form gradients.

K models are stacked in one parameter matrix P of shape [K, 3H+1], laid out per row as
`[w1 (H) | b1 (H) | w2 (H) | b2 (1)]`, H being the largest hidden size in the batch. A mask of the
same shape is 1 for a model's own parameters and 0 for hidden units beyond its size and for biases
its placement excludes: those entries start at 0, get zero gradient, and so stay 0. Each model's
forward pass, loss and gradient involve only its own row, so models never mix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import Config, has_hidden_bias, has_output_bias

Act = Callable[[torch.Tensor], torch.Tensor]
DAct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_grad(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * _INV_SQRT2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT2PI


def _softplus_grad(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # torch's own formula, e/(e+1) with e = exp(z), so results match torch to the last bit.
    e = torch.exp(z)
    return torch.where(z > 20.0, 1.0, e / (e + 1.0))


# Each activation: forward f(z), and its derivative given z and a = f(z) (whichever is cheaper).
# softplus follows torch's default threshold (beta=1, threshold=20: linear above 20).
ACTIVATIONS: dict[str, tuple[Act, DAct]] = {
    "relu": (torch.relu, lambda z, a: (a > 0).to(a.dtype)),
    "tanh": (torch.tanh, lambda z, a: 1.0 - a * a),
    "sigmoid": (torch.sigmoid, lambda z, a: a * (1.0 - a)),
    "gelu": (torch.nn.functional.gelu, _gelu_grad),
    "softplus": (torch.nn.functional.softplus, _softplus_grad),
    "sin": (torch.sin, lambda z, a: torch.cos(z)),
}


@dataclass(frozen=True)
class Layout:
    """Column slices of P for hidden size H."""

    hidden: int

    @property
    def width(self) -> int:
        return 3 * self.hidden + 1

    @property
    def w1(self) -> slice:
        return slice(0, self.hidden)

    @property
    def b1(self) -> slice:
        return slice(self.hidden, 2 * self.hidden)

    @property
    def w2(self) -> slice:
        return slice(2 * self.hidden, 3 * self.hidden)

    @property
    def b2(self) -> slice:
        return slice(3 * self.hidden, 3 * self.hidden + 1)


def init_one(config: Config, seed: int) -> torch.Tensor:
    """Initial parameters of one model in its own layout (float64, CPU), from its own seed.

    All four blocks are always drawn, in a fixed order, so a seed gives the same weights whatever
    the bias placement; excluded biases are then zeroed.
    """
    h = config.hidden
    gen = torch.Generator().manual_seed(seed)

    def uniform(n: int, bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * bound

    if config.init == "torch":
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias alike.
        w1, b1 = uniform(h, 1.0), uniform(h, 1.0)
        w2, b2 = uniform(h, 1.0 / math.sqrt(h)), uniform(1, 1.0 / math.sqrt(h))
    elif config.init == "nnet":
        # nnet's default `rang = 0.7`: every weight U(-0.7, 0.7).
        w1, b1, w2, b2 = uniform(h, 0.7), uniform(h, 0.7), uniform(h, 0.7), uniform(1, 0.7)
    elif config.init == "normal":
        # The question's torch.randn.
        w1, b1, w2, b2 = (torch.randn(n, generator=gen, dtype=torch.float64) for n in (h, h, h, 1))
    else:
        raise ValueError(f"unknown init {config.init!r}")
    if not has_hidden_bias(config.bias):
        b1 = torch.zeros_like(b1)
    if not has_output_bias(config.bias):
        b2 = torch.zeros_like(b2)
    return torch.cat([w1, b1, w2, b2])


def mask_one(config: Config) -> torch.Tensor:
    """1 for the model's trainable parameters in its own layout, 0 for excluded biases."""
    h = config.hidden
    ones, zeros = torch.ones(h, dtype=torch.float64), torch.zeros(h, dtype=torch.float64)
    b1 = ones if has_hidden_bias(config.bias) else zeros
    b2 = torch.ones(1, dtype=torch.float64) if has_output_bias(config.bias) else torch.zeros(1, dtype=torch.float64)
    return torch.cat([ones, b1, ones, b2])


def bias_lr_factor(config: Config) -> torch.Tensor:
    """Per-parameter learning-rate factor in the model's own layout: `bias_copies` on biases.

    k zero-initialised copies of a bias receive identical gradients and optimizer states, so
    their sum moves k times as far per step as one bias would: one bias with k times the rate.
    """
    h, k = config.hidden, float(config.bias_copies)
    return torch.cat([torch.ones(h, dtype=torch.float64), torch.full((h,), k, dtype=torch.float64),
                      torch.ones(h, dtype=torch.float64), torch.full((1,), k, dtype=torch.float64)])


def pad(flat: torch.Tensor, hidden: int, to_hidden: int) -> torch.Tensor:
    """A model's own-layout vector placed into the layout of a larger hidden size (zeros elsewhere)."""
    out = torch.zeros(Layout(to_hidden).width, dtype=flat.dtype)
    own, big = Layout(hidden), Layout(to_hidden)
    for name in ("w1", "b1", "w2"):
        out[getattr(big, name)][:hidden] = flat[getattr(own, name)]
    out[big.b2] = flat[own.b2]
    return out


def unpad(row: torch.Tensor, hidden: int, from_hidden: int) -> torch.Tensor:
    """The inverse of `pad`: a model's own-layout vector out of a padded row."""
    big = Layout(from_hidden)
    return torch.cat([row[getattr(big, n)][:hidden] for n in ("w1", "b1", "w2")] + [row[big.b2]])


def runs(names: Sequence[str]) -> list[tuple[str, slice]]:
    """Contiguous runs of equal names: [(name, rows)]. A batch is sorted so that each optimizer
    covers one run of rows, and gets one op per run instead of one per model."""
    out: list[tuple[str, slice]] = []
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            out.append((names[start], slice(start, i)))
            start = i
    return out


class BatchModel:
    """K stacked 1-H-1 networks sharing one activation and one training set.

    `x` and `t` are the (already scaled) inputs and the targets, shape [N], on the batch's device
    and dtype. `reduction` is "sum" (the question's and nnet's loss) or "mean", for the whole batch
    or one per model. `compiled` runs the training step through torch.compile (see
    `compiled_sse_and_grad`): the same arithmetic, fused.
    """

    def __init__(self, hidden: int, activation: str, x: torch.Tensor, t: torch.Tensor,
                 reduction: str | Sequence[str], compiled: bool = False) -> None:
        self.layout = Layout(hidden)
        self.activation = activation
        self.act, self.dact = ACTIVATIONS[activation]
        self.compiled = compiled
        self.x = x
        self.t = t
        n = x.numel()
        if isinstance(reduction, str):
            self.scale: float | torch.Tensor = 2.0 if reduction == "sum" else 2.0 / n
            self.per_n: float | torch.Tensor = 1.0 if reduction == "sum" else 1.0 / n
        else:
            sums = [r == "sum" for r in reduction]
            self.per_n = torch.tensor([1.0 if s else 1.0 / n for s in sums], dtype=x.dtype, device=x.device)
            self.scale = torch.tensor([[2.0 if s else 2.0 / n] for s in sums], dtype=x.dtype, device=x.device)

    def predict(self, P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Network outputs [K, len(x)] at inputs x (already scaled)."""
        return forward(P, x, self.act)[2]

    def sse(self, P: torch.Tensor) -> torch.Tensor:
        """Sum of squared errors on the training set, per model [K]."""
        r = self.predict(P, self.x) - self.t
        return (r * r).sum(1)

    def loss(self, P: torch.Tensor) -> torch.Tensor:
        """The training loss per model [K] (sum or mean of squared errors)."""
        return self.sse(P) * self.per_n

    def sse_and_grad(self, P: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SSE per model [K] and the masked gradient of the loss w.r.t. P [K, D]."""
        fn = compiled_sse_and_grad(self.activation) if self.compiled else sse_and_grad
        return fn(P, mask, self.x, self.t, self.scale, self.act, self.dact)


def forward(P: torch.Tensor, x: torch.Tensor, act: Act) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward pass every method shares: pre-activations z and activations a [K, H, N], and
    outputs y [K, N]. The hidden size comes from P's shape (one compiled graph serves all)."""
    h = (P.shape[1] - 1) // 3
    # z[k, h, n] = w1[k, h] * x[n] + b1[k, h]; n innermost keeps every op contiguous.
    z = torch.addcmul(P[:, h:2 * h, None], P[:, :h, None], x[None, None, :])
    a = act(z)
    y = torch.baddbmm(P[:, None, 3 * h:], P[:, None, 2 * h:3 * h], a).squeeze(1)
    return z, a, y


def sse_and_grad(P: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                 scale: float | torch.Tensor, act: Act, dact: DAct) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's SSE [K] and masked loss gradient [K, D], in closed form (the hot path).

    The hidden size comes from P's shape, so a compiled version serves every hidden size.
    """
    h = (P.shape[1] - 1) // 3
    w2 = P[:, 2 * h:3 * h]
    z, a, y = forward(P, x, act)
    r = y - t  # [K, N]
    sse = (r * r).sum(1)
    g = scale * r  # dLoss/dy
    # dLoss/dz[k, h, n] = w2[k, h] * g[k, n] * act'(z)
    dz = (w2[:, :, None] * g[:, None, :]) * dact(z, a)
    grad = torch.cat(
        [
            torch.matmul(dz, x),  # w1: sum_n dz * x
            dz.sum(2),  # b1
            torch.bmm(a, g[:, :, None]).squeeze(2),  # w2: sum_n a * g
            g.sum(1, keepdim=True),  # b2
        ],
        dim=1,
    )
    return sse, grad * mask


@functools.cache
def compiled_sse_and_grad(activation: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`sse_and_grad` fused by torch.compile (one graph per activation, any K, H, N)."""
    import torch._dynamo

    # Activations, dtypes and loss scalings each add a graph; the default limit of 8 would
    # silently fall back to eager for the rest.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(sse_and_grad, dynamic=True)


def predict_params(params: Sequence[float], hidden: int, activation: str, x: torch.Tensor,
                   shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Redraw one fitted model from its stored own-layout parameters at raw inputs x."""
    P = torch.as_tensor(list(params), dtype=torch.float64)[None, :]
    model = BatchModel(hidden, activation, x, x, "sum")
    return model.predict(P, (x.to(torch.float64) - shift) / scale)[0]
