"""The L1/L2 logistic-regression solvers used by probes and heads, on standardised features: FISTA (L1 probes,
multi-class heads) and scipy's L-BFGS-B (binary L2 heads), each where it measured faster (BENCHMARKS.md).

C has scikit-learn's meaning: minimise ||w||_1 (or ||w||^2 / 2) + C * sum(logloss), so the paper's grid (0.1, 0.2,
1, 10, 100) means the same thing here as in the paper's scikit-learn recipe."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InputError
from . import products
from .metrics import score_predictions
from .whitening import Whitening, worth_whitening

PAPER_C_GRID = (0.1, 0.2, 1.0, 10.0, 100.0)
# The paper's grid plus three stronger values: on MiniLM/SST-2, 20 of 39 probes chose the paper grid's smallest C
# (0.1), i.e. the optimum lay below the grid; with these added, C = 0.05 is chosen most (BENCHMARKS.md).
PROBE_C_GRID = (0.01, 0.02, 0.05, *PAPER_C_GRID)
# Heads see hundreds of correlated neurons from several layers and want stronger L2 regularisation (same source);
# 0.0001 was added when the best dev configuration chose 0.0003, the grid's smallest value.
HEAD_C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0)


@dataclass
class Standardizer:
    """Mean and scale from the training split; constant features get scale 1 (they carry nothing)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        """Column means and standard deviations of `x` (rows, features), computed in float64."""
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        std[~np.isfinite(std) | (std < 1e-12)] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @classmethod
    def fit_chunks(cls, chunks: Iterable[np.ndarray], width: int) -> Standardizer:
        """The same statistics in one pass over row blocks (out of core)."""
        total = np.zeros(width)
        squares = np.zeros(width)
        n = 0
        for x in chunks:
            x64 = np.asarray(x, dtype=np.float64)
            total += x64.sum(axis=0)
            squares += (x64 * x64).sum(axis=0)
            n += len(x64)
        mean = total / max(n, 1)
        std = np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0))
        std[std < 1e-12] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """`x` centred and scaled with the training statistics, as float32."""
        arr: np.ndarray = ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32, copy=False)
        return arr


@dataclass
class LinearFit:
    coef: np.ndarray  # (n_outputs, n_features): 1 output for binary, K for multi-class
    intercept: np.ndarray  # (n_outputs,)
    iterations: int
    converged: bool
    curvature: float = 0.0  # the last accepted local Lipschitz estimate (backtracking); a warm start begins there


class Design:
    """Rows (standardised features and labels) for the solver: one in-memory block, or row blocks produced on
    demand by `blocks()` (out of core: each pass over the data reads them again, memory stays one block).
    `device`: where the blocks' tensors live, and so where the solver fits (see :meth:`to`)."""

    def __init__(
        self,
        blocks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        n_rows: int,
        n_features: int,
        device: torch.device | None = None,
    ) -> None:
        self.blocks = blocks
        self.n_rows = n_rows
        self.n_features = n_features
        self.device = device if device is not None else torch.device("cpu")

    @classmethod
    def of(cls, x: np.ndarray | torch.Tensor, y: np.ndarray) -> Design:
        """An in-memory design: one block of float32 features `x` (rows, features) and integer labels `y`."""
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
        return cls(lambda: [(xt, yt)], int(xt.shape[0]), int(xt.shape[1]))

    def to(self, device: torch.device) -> Design:
        """This design on `device`: an in-memory one copied there once, a streamed one block by block as it is
        read. The same design when it is there already."""
        if device == self.device:
            return self
        first = self.blocks()
        if isinstance(first, list):
            moved = [(x.to(device), y.to(device)) for x, y in first]
            return Design(lambda: moved, self.n_rows, self.n_features, device)
        source = self.blocks
        return Design(lambda: ((x.to(device), y.to(device)) for x, y in source()), self.n_rows, self.n_features, device)


def solver_device(device: str | None) -> torch.device | None:
    """The torch device a `device` name asks the solver to fit on (None: the designs' own, the CPU), through
    spin_cache.devices.resolve_device: InputError for an unknown name or CUDA where there is none."""
    if device is None:
        return None
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: the solver fits on cpu, cuda, cuda:N or auto")
    return dev


def _lipschitz(data: Design, n_outputs: int) -> float:
    """Upper bound of the mean-logloss gradient's Lipschitz constant (power iteration for ||X||_2^2)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(data.n_features, generator=gen).to(data.device)  # drawn on the CPU: the same on any device
    v /= v.norm()
    sigma2 = 1.0
    no_intercept = torch.zeros(1, device=data.device)
    for _ in range(30):
        w = torch.zeros_like(v)
        for x, _ in data.blocks():
            w += products.residual_products(products.logits(x, v.unsqueeze(0), no_intercept), x)[0]
        sigma2 = float(w.norm())
        if sigma2 == 0:
            return 1.0
        v = w / sigma2
    factor = 0.25 if n_outputs == 1 else 0.5
    # + 1 column of ones for the intercept; 1.05 covers power-iteration error.
    return 1.05 * factor * (sigma2 + data.n_rows) / data.n_rows


def _block_loss(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Summed logloss of one block from its logits, laid out (n_outputs, rows) as `_logits` returns them."""
    if n_classes == 2:
        return torch.nn.functional.binary_cross_entropy_with_logits(z[0], y.to(z.dtype), reduction="sum")
    return torch.logsumexp(z, dim=0).sum() - z.gather(0, y.unsqueeze(0)).sum()


def _logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits transposed, (n_outputs, rows): a softmax over the first axis of a (K, n) array runs along contiguous
    rows (20x faster on the CPU than over the 5 columns of an (n, 5) array), and the matrix products take X as
    stored (spin_cache.fit.products: the skinny products of few outputs)."""
    return products.logits(x, w, b)


def _loss_and_grad(
    blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], n_rows: int, w: torch.Tensor, b: torch.Tensor, n_classes: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The mean logloss (binary: sigmoid on one output; else softmax) over the row `blocks` and its gradient with
    respect to the weights and the intercepts, one pass over the rows."""
    loss = 0.0
    gw = torch.zeros_like(w)
    gb = torch.zeros_like(b)
    for x, y in blocks:
        block_loss, r = _loss_grad(_logits(x, w, b), y, n_classes)
        loss += float(block_loss)
        gw += products.residual_products(r, x)
        gb += r.sum(dim=1)
    return loss / n_rows, gw / n_rows, gb / n_rows


def _grad(data: Design, w: torch.Tensor, b: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the mean logloss over the design's row blocks (weights, intercepts)."""
    _, gw, gb = _loss_and_grad(data.blocks(), data.n_rows, w, b, n_classes)
    return gw, gb


def _objective(data: Design, w: torch.Tensor, b: torch.Tensor, k: int, lam: float, pen: str) -> float:
    loss = sum(float(_block_loss(_logits(x, w, b), y, k)) for x, y in data.blocks()) / data.n_rows
    reg = w.abs().sum() if pen == "l1" else 0.5 * (w * w).sum()
    return float(loss + lam * reg)


def _loss_grad(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed logloss of one block and its gradient with respect to the logits, both from (n_outputs, rows) logits."""
    if n_classes == 2:
        r = torch.sigmoid(z[0]) - y.to(z.dtype)
        return _block_loss(z, y, n_classes), r.unsqueeze(0)
    r = torch.softmax(z, dim=0)
    loss = -(r.gather(0, y.unsqueeze(0)).clamp_min(1e-30).log()).sum()
    r.scatter_add_(0, y.unsqueeze(0), torch.full((1, len(y)), -1.0, dtype=r.dtype, device=r.device))
    return loss, r


def _passes(data: Design, n_classes: int) -> Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """The design's blocks, one pass per call: an in-memory design's once for all (binary labels as floats), a
    streamed design's read again on every pass."""
    binary = n_classes == 2
    first = data.blocks()
    if isinstance(first, list):
        kept = [(x, y.to(torch.float32) if binary else y) for x, y in first]
        return lambda: kept
    return lambda: ((x, y.to(torch.float32) if binary else y) for x, y in data.blocks())


def fit_logistic(
    data: Design,
    n_classes: int,
    c: float,
    *,
    penalty: str = "l1",
    max_iter: int = 300,
    tol: float = 1e-4,
    warm: LinearFit | None = None,
    lipschitz: float | None = None,
    whitening: Whitening | None = None,
) -> LinearFit:
    """Minimise mean logloss + lam * penalty with lam = 1 / (C * n). Binary L2 problems by scipy's L-BFGS-B
    (:func:`_fit_lbfgs`), everything else by FISTA with backtracking and restarts (:func:`_fit_fista`): chosen by
    measurement on the sweep's heads (BENCHMARKS.md, Loop at scale), where L-BFGS-B reached a lower objective in
    less time on binary heads (a sweep group 1.29x faster) but not on 5-class ones (0.95x). Multi-class L2 heads
    run FISTA on whitened coordinates when given `whitening` (:func:`whitening_for` makes it; fit_c_path does, once
    per path): the same optimum in a fraction of the iterations.
    """
    if uses_lbfgs(penalty, n_classes):
        return _fit_lbfgs(data, n_classes, c, max_iter=max_iter, tol=tol, warm=warm)
    return _fit_fista(data, n_classes, c, penalty=penalty, max_iter=max_iter, tol=tol, warm=warm, lipschitz=lipschitz,
                      whitening=whitening)  # fmt: skip


def uses_lbfgs(penalty: str, n_classes: int) -> bool:
    """Whether :func:`fit_logistic` fits this problem with L-BFGS-B (binary L2) rather than FISTA."""
    return penalty == "l2" and n_classes == 2


def whitening_for(data: Design, penalty: str, n_classes: int) -> Whitening | None:
    """The whitening FISTA fits this design's L2 multi-class heads on (spin_cache.fit.whitening), or None where the
    problem is not one (L1, binary) or the design is too wide to decompose cheaply."""
    if penalty != "l2" or uses_lbfgs(penalty, n_classes) or not worth_whitening(data.n_rows, data.n_features):
        return None
    return Whitening.of(data.blocks, data.n_rows)


def _fit_fista(
    data: Design,
    n_classes: int,
    c: float,
    *,
    penalty: str,
    max_iter: int,
    tol: float,
    warm: LinearFit | None,
    lipschitz: float | None,
    whitening: Whitening | None = None,
) -> LinearFit:
    """FISTA with backtracking and restarts (the L1 probes, multi-class heads; any penalty).

    The step is the local one (Beck and Teboulle's backtracking, tried 10% longer at every iteration and halved
    when the sufficient-decrease test fails), never shorter than 1 / `lipschitz`, the global bound: once fitted,
    the logloss is far flatter than that bound (most on many classes, whose bound is 0.5 ||X||^2 / n), so the
    steps are several times longer. The logits are linear in the weights, so those of FISTA's extrapolated point
    come from the last two iterates' logits for free: an iteration costs one product with X forwards (the new
    iterate's logits, which also give its objective) and one backwards (the gradient), as a fixed step did.
    Stopping is unchanged: the objective's relative change over 10 iterations at most 10 * tol (checked every
    10 iterations, from iteration 20 on); the momentum restarts when the objective rises.

    `whitening` (L2 only): iterate on whitened coordinates (spin_cache.fit.whitening), where the penalty of each
    coordinate has its own weight and the logloss's curvature is at most 0.5 (1.05 x 0.5 x 2 with the intercept).
    There the same stopping rate is checked every 5 iterations (change over 5 at most 5 * tol, from iteration 10):
    whitened fits are within ~1e-5 of their optimum by iteration 10 at strong regularisation (BENCHMARKS.md)."""
    n, d = data.n_rows, data.n_features
    n_out = 1 if n_classes == 2 else n_classes
    lam = 1.0 / (c * n)
    if whitening is not None and penalty != "l2":
        raise ValueError("whitening: only L2 penalties stay separable on whitened coordinates")
    # On whitened coordinates X P has unit second moments: ||X P||^2 = n, so the bound needs no power iteration.
    l_max = (1.05 * (0.25 if n_out == 1 else 0.5) * 2.0) if whitening else (lipschitz or _lipschitz(data, n_out))
    to_weights = whitening.weights if whitening is not None else (lambda v: v)
    # The L2 penalty's weight per coordinate: lam everywhere, or lam / s_j on whitened coordinates
    lam_of: float | torch.Tensor = lam / whitening.variances if whitening is not None else lam
    if warm is not None and warm.coef.shape == (n_out, d):
        w = torch.as_tensor(warm.coef, dtype=torch.float32).clone().to(data.device)
        b = torch.as_tensor(warm.intercept, dtype=torch.float32).clone().to(data.device)
        if whitening is not None:
            w = whitening.coordinates(w)
    else:
        w = torch.zeros(n_out, d if whitening is None else whitening.rank, device=data.device)
        b = torch.zeros(n_out, device=data.device)

    def penalty_of(v: torch.Tensor) -> float:
        """lam times the penalty of (possibly whitened) weights `v`."""
        return lam * float(v.abs().sum()) if penalty == "l1" else float(0.5 * (lam_of * v * v).sum())

    rows = _passes(data, n_classes)

    def forward(v: torch.Tensor, c0: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        """Every block's logits at (v, c0) and the mean logloss there."""
        zs, loss = [], 0.0
        wv = to_weights(v)
        for x, y in rows():
            z = _logits(x, wv, c0)
            zs.append(z)
            loss += float(_block_loss(z, y, n_classes))
        return zs, loss / n

    zx, loss_x = forward(w, b)
    obj = loss_x + penalty_of(w)
    w_prev, b_prev, zx_prev = w, b, zx
    check_obj = float("inf")  # as with a fixed step: the first test compares iterations 10 and 20
    every = 10 if whitening is None else 5
    t = 1.0
    # The first tests of sufficient decrease set the step (a warm start begins at its fit's)
    step_l = min(warm.curvature, l_max) if warm is not None and warm.curvature > 0 else l_max / 8.0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        mom = (t - 1.0) / t_next
        wy, by = w + mom * (w - w_prev), b + mom * (b - b_prev)
        gw, gb = torch.zeros(n_out, d, device=data.device), torch.zeros_like(b)  # gradient on the features
        loss_y = 0.0
        for (x, y), z1, z0 in zip(rows(), zx, zx_prev, strict=True):
            lb, r = _loss_grad(z1 + mom * (z1 - z0) if mom else z1, y, n_classes)
            loss_y += float(lb)
            gw += products.residual_products(r, x)
            gb += r.sum(dim=1)
        loss_y, gw, gb = loss_y / n, gw / n, gb / n
        if whitening is not None:
            gw = whitening.gradient(gw)
        step_l = max(step_l * 0.9, 1e-6 * l_max)
        while True:
            if penalty == "l1":
                zw = wy - gw / step_l
                w_new = torch.sign(zw) * torch.clamp(zw.abs() - lam / step_l, min=0.0)
            else:
                w_new = (wy - gw / step_l) / (1.0 + lam_of / step_l)
            b_new = by - gb / step_l
            zx_new, loss_new = forward(w_new, b_new)
            dw, db = w_new - wy, b_new - by
            model = loss_y + float(
                (gw * dw).sum() + (gb * db).sum() + 0.5 * step_l * ((dw * dw).sum() + (db * db).sum())
            )
            if loss_new <= model + 1e-6 * abs(loss_y) or step_l >= l_max:
                break
            step_l = min(2.0 * step_l, l_max)
        obj_new = loss_new + penalty_of(w_new)
        w_prev, b_prev, zx_prev = w, b, zx
        w, b, zx = w_new, b_new, zx_new
        # Adaptive restart keeps FISTA monotone in practice; a rise within float32 noise is none (streamed row
        # blocks sum in another order: their fits must take the same decisions as in memory)
        t = 1.0 if obj_new > obj + 1e-6 * abs(obj) else t_next
        obj = obj_new
        if it % every == 0:
            if abs(check_obj - obj) <= tol * max(abs(obj), 1e-12) * every:
                converged = True
                break
            check_obj = obj
    return LinearFit(to_weights(w).cpu().numpy().copy(), b.cpu().numpy().copy(), it, converged, step_l)


def _fit_lbfgs(data: Design, n_classes: int, c: float, *, max_iter: int, tol: float,
               warm: LinearFit | None) -> LinearFit:  # fmt: skip
    """The L2 objective (mean logloss + ||w||^2 / (2 C n)) by scipy's L-BFGS-B, the loss and its gradient from
    torch (and the product kernel) on the design's device, one pass over the rows per evaluation. It stops as
    scikit-learn's lbfgs solver does: the gradient's largest entry at most `tol`, or a relative reduction of the
    objective below 64 float64 epsilons, or `max_iter` iterations. The intercept is not penalised."""
    import scipy.optimize
    from threadpoolctl import threadpool_limits

    n, d = data.n_rows, data.n_features
    n_out = 1 if n_classes == 2 else n_classes
    lam = 1.0 / (c * n)
    rows = _passes(data, n_classes)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(theta.astype(np.float32)).reshape(n_out, d + 1).to(data.device)
        w, b = t[:, :d].contiguous(), t[:, d].contiguous()
        loss, gw, gb = _loss_and_grad(rows(), n, w, b, n_classes)
        grad = torch.cat([gw + lam * w, gb.unsqueeze(1)], dim=1)
        return loss + 0.5 * lam * float((w * w).sum()), grad.cpu().numpy().astype(np.float64).ravel()

    theta0 = np.zeros((n_out, d + 1))
    if warm is not None and warm.coef.shape == (n_out, d):
        theta0[:, :d], theta0[:, d] = warm.coef, warm.intercept
    # L-BFGS-B's own work is a few vector operations on the d x outputs parameters per step: one BLAS thread (more
    # threads cost more than they save, and under load a multi-threaded BLAS call of 1 ms stalls every step)
    with threadpool_limits(limits=1, user_api="blas"):
        res = scipy.optimize.minimize(objective, theta0.ravel(), jac=True, method="L-BFGS-B",
                                      options={"maxiter": max_iter, "gtol": tol, "ftol": 64 * np.finfo(float).eps,
                                               "maxls": 50})  # fmt: skip
    theta = res.x.reshape(n_out, d + 1)
    # A line search that cannot improve on float32 noise ends the run as well (scipy reports it as a failure)
    converged = bool(res.success) or res.nit < max_iter
    return LinearFit(theta[:, :d].astype(np.float32), theta[:, d].astype(np.float32), int(res.nit), converged)


def predict_design(data: Design, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) over every block of `data`."""
    ys, preds = [], []
    for x, y in data.blocks():
        preds.append(predict_labels(decision(x.cpu().numpy(), coef, intercept)))
        ys.append(y.cpu().numpy())
    return np.concatenate(ys), np.concatenate(preds)


def decision(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Logits (rows, n_outputs) of a linear model: one column for binary, one per class otherwise."""
    return np.asarray(x, dtype=np.float32) @ coef.T.astype(np.float32) + intercept.astype(np.float32)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities (rows, n_classes) from `decision`'s logits: sigmoid for one column, softmax otherwise."""
    if scores.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-scores[:, 0].astype(np.float64)))
        return np.stack([1.0 - p1, p1], axis=1)
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    arr: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return arr


def predict_labels(scores: np.ndarray) -> np.ndarray:
    """Class indices from `decision`'s logits (a positive logit is class 1 for binary)."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.int64)
    arr: np.ndarray = scores.argmax(axis=1).astype(np.int64)
    return arr


@dataclass
class PathResult:
    """One C path: the fit chosen on dev and the metric history of every C."""

    c: float
    fit: LinearFit
    dev: float
    history: list[dict[str, Any]] = field(default_factory=list)


def fit_c_path(
    train: Design,
    dev: Design,
    n_classes: int,
    c_grid: Sequence[float] = PAPER_C_GRID,
    *,
    penalty: str = "l1",
    metric: str = "accuracy",
    max_iter: int = 300,
    tol: float = 1e-4,
    on_fit: Callable[[float, LinearFit, np.ndarray], None] | None = None,
    patience: int | None = None,
    device: torch.device | None = None,
) -> PathResult:
    """Fit every C in increasing order (warm starts: strong to weak regularisation), keep the best on dev.

    Features must already be standardised. Ties on dev go to the smaller C (the sparser, simpler model).
    `on_fit` (optional; the sweep's selection, issue 23): called after each C with (C, its fit, its predicted labels
    on `dev`), in the order fitted; it changes nothing in the path.
    `patience` (optional; the sweep's `--search patience`, issue 20): stop the path once the dev score has not
    improved on the best so far for `patience` C values in a row, skipping the weakest regularisation (the slowest
    fits); `history` then holds only the C values fitted. None (the default): every C, the exact path.
    `device` (optional): where to fit (the train design is moved there: in memory once, streamed block by block; dev
    stays where it is, as its predictions are made with numpy); the fits come back as numpy arrays. None: where the
    designs are.
    """
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience: expected an integer >= 1 or None, got {patience!r}")
    if device is not None:
        train = train.to(device)
    # Once per path: the whitening of multi-class L2 heads, else FISTA's step bound (L-BFGS-B needs neither)
    whitening = whitening_for(train, penalty, n_classes)
    lip = None
    if whitening is None and not uses_lbfgs(penalty, n_classes):
        lip = _lipschitz(train, 1 if n_classes == 2 else n_classes)
    warm = None
    best: PathResult | None = None
    history = []
    stale = 0  # C values in a row whose dev score did not improve on the best so far
    for c in sorted(c_grid):
        fit = fit_logistic(train, n_classes, c, penalty=penalty, max_iter=max_iter, tol=tol, warm=warm, lipschitz=lip,
                           whitening=whitening)  # fmt: skip
        warm = fit
        dev_labels, dev_pred = predict_design(dev, fit.coef, fit.intercept)
        dev_score = score_predictions(dev_labels, dev_pred, metric)
        if on_fit is not None:  # issue 23: the sweep keeps every C's dev predictions
            on_fit(c, fit, dev_pred)
        history.append(
            {
                "C": c,
                "dev": dev_score,
                "nonzero": int(np.count_nonzero(np.abs(fit.coef).sum(axis=0))),
                "iterations": fit.iterations,
            }
        )
        if best is None or dev_score > best.dev:
            best = PathResult(c=c, fit=fit, dev=dev_score)
            stale = 0
        else:
            stale += 1
            if patience is not None and stale >= patience:
                break
    assert best is not None
    best.history = history
    return best
