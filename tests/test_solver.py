"""The logistic solver (issue 20): FISTA with backtracking reaches the optimum (scikit-learn's, binary and
multinomial, L1 and L2) and, at the default stopping rule, an objective no worse than the fixed-step FISTA it
replaced, along the same warm-started C path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spin_cache.fit.solver import (
    HEAD_C_GRID,
    PROBE_C_GRID,
    Design,
    LinearFit,
    _grad,
    _lipschitz,
    _objective,
    fit_logistic,
)


def _problem(n_classes: int, n: int = 600, d: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, 1] = x[:, 0] + 0.1 * x[:, 1]  # correlated columns, as neighbouring neurons are
    w = rng.standard_normal((n_classes, d)) * (rng.random(d) < 0.3)
    y = (x @ w.T + rng.gumbel(size=(n, n_classes))).argmax(axis=1)
    return x, y


def _fixed_step(data: Design, k: int, c: float, penalty: str, warm: LinearFit | None, lip: float) -> LinearFit:
    """The solver before issue 20: FISTA, step 1/L, objective every 10 iterations, the same stopping rule."""
    n_out = 1 if k == 2 else k
    lam = 1.0 / (c * data.n_rows)
    step = 1.0 / (lip + (lam if penalty == "l2" else 0.0))
    x, y = next(iter(data.blocks()))
    w = torch.zeros(n_out, data.n_features) if warm is None else torch.as_tensor(warm.coef).clone()
    b = torch.zeros(n_out) if warm is None else torch.as_tensor(warm.intercept).clone()
    w_prev, b_prev, t, prev, it = w.clone(), b.clone(), 1.0, float("inf"), 0
    for it in range(1, 301):
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        mom = (t - 1.0) / t_next
        wy, by = w + mom * (w - w_prev), b + mom * (b - b_prev)
        z = x @ wy.T + by
        if k == 2:
            r = (torch.sigmoid(z[:, 0]) - y.float()).unsqueeze(1)
        else:
            r = torch.softmax(z, dim=1)
            r[torch.arange(len(y)), y] -= 1.0
        gw, gb = r.T @ x / len(y), r.sum(0) / len(y)
        w_prev, b_prev = w, b
        if penalty == "l1":
            zz = wy - step * gw
            w = torch.sign(zz) * torch.clamp(zz.abs() - step * lam, min=0.0)
        else:
            w = wy - step * (gw + lam * wy)
        b, t = by - step * gb, t_next
        if it % 10 == 0:
            obj = _objective(data, w, b, k, lam, penalty)
            if obj > prev:
                t = 1.0
            if abs(prev - obj) <= 1e-3 * abs(obj):
                break
            prev = obj
    return LinearFit(w.numpy(), b.numpy(), it, True)


@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_objective_no_worse_than_the_fixed_step_along_the_path(n_classes, penalty):
    x, y = _problem(n_classes)
    data = Design.of(x, y)
    lip = _lipschitz(data, 1 if n_classes == 2 else n_classes)
    grid = PROBE_C_GRID if penalty == "l1" else HEAD_C_GRID
    new = old = None
    ours, theirs = [], []
    for c in sorted(grid):
        new = fit_logistic(data, n_classes, c, penalty=penalty, warm=new, lipschitz=lip)
        old = _fixed_step(data, n_classes, c, penalty, old, lip)
        lam = 1.0 / (c * len(y))
        for fit, into in ((new, ours), (old, theirs)):
            into.append(_objective(data, torch.as_tensor(fit.coef), torch.as_tensor(fit.intercept), n_classes, lam,
                                   penalty))  # fmt: skip
    ours_a, theirs_a = np.array(ours), np.array(theirs)
    # every C within float32 noise of the old objective or below it, and below it in all
    assert np.all(ours_a <= theirs_a * (1 + 2e-4)), (ours_a - theirs_a) / theirs_a
    assert ours_a.sum() < theirs_a.sum()


@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("c", [0.05, 1.0])
def test_l2_reaches_scikit_learns_optimum(n_classes, c):
    from sklearn.linear_model import LogisticRegression

    x, y = _problem(n_classes, n=300)
    ours = fit_logistic(Design.of(x, y), n_classes, c, penalty="l2", tol=1e-8, max_iter=3000)
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
    # the multinomial parameterisation is scikit-learn's (K outputs, the penalty makes it unique)
    np.testing.assert_allclose(ours.coef, ref.coef_, atol=3e-3)
    np.testing.assert_allclose(ours.intercept, ref.intercept_, atol=3e-3)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_l1_reaches_the_optimum(n_classes):
    """The L1 optimality conditions: zero weights have |gradient| <= lambda, the others gradient = -lambda sign."""
    x, y = _problem(n_classes, n=300)
    data, c = Design.of(x, y), 0.5
    fit = fit_logistic(data, n_classes, c, penalty="l1", tol=1e-8, max_iter=3000)
    gw, gb = _grad(data, torch.as_tensor(fit.coef), torch.as_tensor(fit.intercept), n_classes)
    lam, gw = 1.0 / (c * len(y)), gw.numpy()
    nz = fit.coef != 0
    assert 0 < nz.sum() < nz.size
    assert np.abs(gb.numpy()).max() < 1e-3
    assert np.abs(gw[~nz]).max() <= lam * 1.01
    np.testing.assert_allclose(gw[nz], -lam * np.sign(fit.coef[nz]), atol=1e-3)


def test_streamed_blocks_give_the_in_memory_fit():
    x, y = _problem(5, n=300, d=20)
    whole = Design.of(x, y)
    parts = [(torch.as_tensor(x[i : i + 128]), torch.as_tensor(y[i : i + 128])) for i in range(0, 300, 128)]
    streamed = Design(lambda: iter(parts), 300, x.shape[1])
    a = fit_logistic(whole, 5, 0.1, penalty="l1")
    b = fit_logistic(streamed, 5, 0.1, penalty="l1")
    assert a.iterations == b.iterations
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-4)


def test_warm_start_carries_the_step_and_saves_iterations():
    x, y = _problem(5, n=300, d=20)
    data = Design.of(x, y)
    first = fit_logistic(data, 5, 0.1, penalty="l2")
    assert 0 < first.curvature <= _lipschitz(data, 5) * 1.0001
    cold = fit_logistic(data, 5, 0.3, penalty="l2")
    warm = fit_logistic(data, 5, 0.3, penalty="l2", warm=first)
    assert warm.iterations <= cold.iterations
