"""The solver's product kernel (spin_cache.fit.products): equal to the exact products, independent of threads,
torch's products wherever it does not apply, and the solver takes the same path with it as without."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from spin_cache.fit import products
from spin_cache.fit.solver import HEAD_C_GRID, Design, fit_c_path, uses_lbfgs

from .conftest import kernel_unbuildable

HAVE_COMPILER = shutil.which("c++") is not None and shutil.which("ninja") is not None
needs_kernel = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler or ninja to build the kernel")


def _exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xd = x.double()
    return w.double() @ xd.T + b.double()[:, None], r.double() @ xd


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


@needs_kernel
def test_the_kernel_is_built_here():
    assert products.kernel() is not None


@needs_kernel
@pytest.mark.parametrize("outputs", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize(("rows", "features"), [(1, 128), (3, 133), (517, 1000), (2049, 389)])
def test_the_kernel_computes_both_products(outputs, rows, features):
    """Rows not a multiple of the rows per step, features not a multiple of the vector width: every tail path."""
    gen = torch.Generator().manual_seed(outputs * 1000 + rows)
    x = torch.randn(rows, features, generator=gen)
    w, b = torch.randn(outputs, features, generator=gen), torch.randn(outputs, generator=gen)
    r = torch.randn(outputs, rows, generator=gen)
    assert products._takes(x, w) and products._takes(x, r)
    z, g = products.logits(x, w, b), products.residual_products(r, x)
    want_z, want_g = _exact(x, w, b, r)
    assert z.shape == (outputs, rows) and g.shape == (outputs, features)
    # float32 sums: torch's own products are as far from the float64 ones
    assert _relative_error(z, want_z) < 1e-5
    assert _relative_error(g, want_g) < 1e-5


@needs_kernel
def test_results_do_not_depend_on_the_number_of_threads():
    x = torch.randn(3001, 1001)
    w, b, r = torch.randn(5, 1001), torch.randn(5), torch.randn(5, 3001)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((products.logits(x, w, b), products.residual_products(r, x)))
    finally:
        torch.set_num_threads(saved)
    for z, g in results[1:]:
        assert torch.equal(z, results[0][0]) and torch.equal(g, results[0][1])


@pytest.mark.parametrize(
    ("outputs", "features", "contiguous"),
    [(products.MAX_OUTPUTS + 1, 300, True), (5, products.MIN_FEATURES - 1, True), (5, 300, False)],
)
def test_what_the_kernel_does_not_take_goes_to_torch(outputs, features, contiguous):
    """Many classes, narrow designs and strided views: torch's products, exactly."""
    x = torch.randn(features, 700).T if not contiguous else torch.randn(700, features)
    w, b, r = torch.randn(outputs, features), torch.randn(outputs), torch.randn(outputs, 700)
    assert not products._takes(x, w)
    torch.testing.assert_close(products.logits(x, w, b), torch.addmm(b.unsqueeze(1), w, x.T), rtol=0, atol=0)
    torch.testing.assert_close(products.residual_products(r, x), r @ x, rtol=0, atol=0)


def _switched(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setenv(products.ENVIRONMENT_SWITCH, "1" if on else "0")
    products.kernel.cache_clear()


def test_the_switch_turns_the_kernel_off(monkeypatch):
    try:
        _switched(monkeypatch, False)
        assert products.kernel() is None
        x, w = torch.randn(50, 200), torch.randn(3, 200)
        assert not products._takes(x, w)
        torch.testing.assert_close(products.logits(x, w, torch.zeros(3)), w @ x.T, rtol=0, atol=0)
    finally:
        products.kernel.cache_clear()


def test_where_the_kernel_cannot_be_built_the_solver_uses_torch_and_says_so(tmp_path, monkeypatch):
    with kernel_unbuildable(monkeypatch, tmp_path, products, products.kernel, "spin_cache_products_unbuildable"):
        with pytest.warns(RuntimeWarning, match="solver's product kernel could not be built.*torch's products"):
            assert products.kernel() is None
        x, r = torch.randn(40, 256), torch.randn(2, 40)
        torch.testing.assert_close(products.residual_products(r, x), r @ x, rtol=0, atol=0)


@needs_kernel
@pytest.mark.parametrize(("n_classes", "penalty"), [(2, "l1"), (2, "l2"), (5, "l1"), (5, "l2")])
def test_the_solver_takes_the_same_path_with_the_kernel_as_without(monkeypatch, n_classes, penalty):
    """Only the products' rounding differs: the same C chosen and the same fits within float32 noise; FISTA (all but
    binary L2) even takes the same number of iterations at every C. L-BFGS-B's line search reacts to last-bit
    differences, so its iteration counts may differ."""
    gen = np.random.default_rng(n_classes)
    x = gen.standard_normal((600, 200)).astype(np.float32)
    y = (x[:, :n_classes] + 0.8 * gen.standard_normal((600, n_classes))).argmax(axis=1)
    train, dev = Design.of(x[:450], y[:450]), Design.of(x[450:], y[450:])
    grid = HEAD_C_GRID[:6] if penalty == "l2" else (0.01, 0.05, 0.2, 1.0)
    paths = {}
    try:
        for on in (True, False):
            _switched(monkeypatch, on)
            paths[on] = fit_c_path(train, dev, n_classes, grid, penalty=penalty)
    finally:
        products.kernel.cache_clear()
    with_kernel, without = paths[True], paths[False]
    assert with_kernel.c == without.c
    if not uses_lbfgs(penalty, n_classes):
        assert [h["iterations"] for h in with_kernel.history] == [h["iterations"] for h in without.history]
    np.testing.assert_allclose(with_kernel.fit.coef, without.fit.coef, rtol=1e-2, atol=1e-4)
