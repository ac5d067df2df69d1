"""The model-free loop at scale (issue 20): the solvers' optimality, reuse across the grid, the pruned search, the
device option, and many classes (a synthetic 77-class store with planted neurons per class)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from spin_cache.errors import InputError
from spin_cache.fit.solver import Design, fit_c_path, fit_logistic
from spin_cache.loop.probe import ProbeSettings, run_probes
from spin_cache.loop.sweep import GroupResult, SweepRow, SweepSettings, run_sweep, sweep_group, transfer_warm
from spin_cache.synth import make_synthetic_store, planted_neurons


def _problem(n_classes: int, n: int = 600, d: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((n_classes, d)) * (rng.random(d) < 0.2)
    y = (x @ w.T + rng.gumbel(size=(n, n_classes))).argmax(axis=1)
    return x, y


@pytest.mark.parametrize("n_classes", [2, 5])
def test_l2_lbfgs_matches_sklearn(n_classes):
    from sklearn.linear_model import LogisticRegression

    x, y = _problem(n_classes)
    ours = fit_logistic(Design.of(x, y), n_classes, c=0.05, penalty="l2", tol=1e-7)
    assert ours.converged
    ref = LogisticRegression(C=0.05, tol=1e-10, max_iter=10000).fit(x, y)
    if n_classes == 2:
        np.testing.assert_allclose(ours.coef[0], ref.coef_[0], atol=2e-3)
    else:  # the softmax parameterisation is the same (K outputs, L2 makes it unique)
        np.testing.assert_allclose(ours.coef, ref.coef_, atol=2e-3)


def test_l1_fista_stops_at_the_optimum_not_on_slow_progress():
    """The stopping test is the proximal-gradient mapping: a converged fit satisfies the L1 KKT conditions."""
    import torch

    from spin_cache.fit.solver import _grad

    x, y = _problem(3, d=60)
    x[:, 1] = x[:, 0] + 0.01 * x[:, 1]  # badly conditioned
    data = Design.of(x, y)
    c = 0.5
    fit = fit_logistic(data, 3, c, penalty="l1", max_iter=20000, tol=1e-5)
    assert fit.converged
    gw, gb = _grad(data, torch.as_tensor(fit.coef), torch.as_tensor(fit.intercept), 3)
    lam = 1.0 / (c * len(y))
    gw = gw.numpy()
    nz = fit.coef != 0
    assert np.abs(gb.numpy()).max() < 1e-4
    assert np.abs(gw[~nz]).max() <= lam * 1.01 + 1e-4  # zero weights: |gradient| <= lambda
    np.testing.assert_allclose(gw[nz], -lam * np.sign(fit.coef[nz]), atol=2e-4)  # non-zero: gradient = -lam sign


def test_warm_start_transfer_pads_with_zeros():
    from spin_cache.fit.solver import LinearFit

    fit = LinearFit(np.array([[1.0, 2.0]], np.float32), np.array([0.5], np.float32), 3, True)
    out = transfer_warm({0.1: fit}, [(1, 7), (1, 3)], [(1, 7), (1, 3), (2, 0)])
    np.testing.assert_array_equal(out[0.1].coef, [[1.0, 2.0, 0.0]])
    out = transfer_warm({0.1: fit}, [(1, 7), (1, 3)], [(1, 7), (1, 9), (1, 3)])
    np.testing.assert_array_equal(out[0.1].coef, [[1.0, 0.0, 2.0]])
    x, y = _problem(2)
    cold = fit_c_path(Design.of(x, y), Design.of(x, y), 2, (0.01, 0.1), penalty="l2")
    warm = fit_c_path(Design.of(x, y), Design.of(x, y), 2, (0.01, 0.1), penalty="l2", warm_starts=cold.fits)
    assert warm.iterations < cold.iterations and warm.c == cold.c
    np.testing.assert_allclose(warm.fit.coef, cold.fit.coef, atol=1e-3)


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory):
    """77 classes, planted neurons in layer 2 (ffn): every class has its own pattern over them."""
    tmp = tmp_path_factory.mktemp("c77")
    store = make_synthetic_store(tmp / "store", n_rows=3000, n_layers=3, width=64, kinds=("ffn",),
                                 informative={2: 12}, n_classes=77, signal=3.0, seed=3)  # fmt: skip
    run = run_probes(store.url, tmp / "probe", ProbeSettings(c_grid=(0.1, 1.0)), scheduler="sync", progress=False)
    return store, run, tmp


def test_77_class_probes_rank_the_planted_neurons_first(many_classes):
    store, run, _ = many_classes
    planted = planted_neurons(store)["ffn"][2]
    top = run.scores.filter((pl.col("layer") == 2) & (pl.col("rank") < len(planted)))["neuron"].to_list()
    assert sorted(top) == sorted(planted)
    assert run.probes.filter(pl.col("layer") == 2)["dev_metric"][0] > 0.3  # chance is 1/77


def test_77_class_sweep_and_head(many_classes):
    from spin_cache.fit.head import Head

    store, run, tmp = many_classes
    settings = SweepSettings(values=(0.5, 0.9), c_grid=(0.01, 0.1))
    res = run_sweep(store.url, run.path, tmp / "sweep", settings, scheduler="sync", progress=False)
    assert res.table["spin"]["dev"] > 0.3
    assert 2 in res.table["spin"]["layers"]
    head = Head.load(res.table["head"])
    assert head.classifier.coef_.shape[0] == 77


def test_sweep_group_returns_typed_rows_and_patience_prunes(many_classes):
    store, run, _ = many_classes
    sal = {layer: run.saliency("ffn", "mean", layer) for layer in store.layers("ffn")}
    grid = SweepSettings(values=(0.3, 0.9), c_grid=(0.01, 0.1))
    full = sweep_group(store.url, "ffn", "mean", sal, grid)
    assert isinstance(full, GroupResult) and all(isinstance(r, SweepRow) for r in full.rows)
    assert len(full.rows) == 2 * len(store.layers("ffn")) and full.base is None
    pruned = sweep_group(store.url, "ffn", "mean", sal, SweepSettings(values=(0.3, 0.9), c_grid=(0.01, 0.1),
                                                                       search="patience", patience=1))  # fmt: skip
    assert len(pruned.rows) <= len(full.rows)
    assert pruned.best is not None and full.best is not None
    with pytest.raises(InputError, match="--search"):
        SweepSettings(search="random").check()


def test_device_is_checked(many_classes, tmp_path):
    store, run, _ = many_classes
    with pytest.raises(InputError, match="--device"):
        run_probes(store.url, tmp_path / "p", device="tpu", progress=False)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            run_sweep(store.url, run.path, tmp_path / "s", device="cuda", progress=False)
