"""Many classes through the loop (issue 20): a synthetic 77-class store with planted neurons in one layer: the
probes rank the planted neurons first, saliency sums every class's squared weights, the eta selection keeps them,
and the sweep's head has one output per class."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from spin_cache.loop.probe import ProbeSettings, run_probes, saliency_from_coef
from spin_cache.loop.select import select
from spin_cache.loop.sweep import SweepSettings, run_sweep
from spin_cache.synth import make_synthetic_store, planted_neurons


@pytest.fixture(scope="module")
def many_classes(tmp_path_factory):
    """77 classes, 12 planted neurons in ffn layer 2: every class has its own pattern over them."""
    tmp = tmp_path_factory.mktemp("c77")
    store = make_synthetic_store(tmp / "store", n_rows=3000, n_layers=3, width=64, kinds=("ffn",),
                                 informative={2: 12}, n_classes=77, signal=3.0, seed=3)  # fmt: skip
    run = run_probes(store.url, tmp / "probe", ProbeSettings(c_grid=(0.1, 1.0)), scheduler="sync", progress=False)
    return store, run, tmp


def test_saliency_sums_squared_weights_over_every_class():
    coef = np.zeros((77, 5))
    coef[3, 1], coef[70, 1], coef[0, 4] = 2.0, -1.0, 1.5
    np.testing.assert_allclose(saliency_from_coef(coef), [0.0, 5.0, 0.0, 0.0, 2.25])


def test_77_class_probes_rank_the_planted_neurons_first(many_classes):
    store, run, _ = many_classes
    planted = planted_neurons(store)["ffn"][2]
    top = run.scores.filter((pl.col("layer") == 2) & (pl.col("rank") < len(planted)))["neuron"].to_list()
    assert sorted(top) == sorted(planted)
    assert run.probes.filter(pl.col("layer") == 2)["dev_metric"][0] > 0.3  # chance is 1/77
    keep = select(run.saliency("ffn", "mean", 2), "eta", 0.9)
    assert set(keep.tolist()) <= set(planted)


def test_77_class_sweep_and_head(many_classes):
    from spin_cache.fit.head import Head

    store, run, tmp = many_classes
    settings = SweepSettings(values=(0.5, 0.9), c_grid=(0.01, 0.1))
    res = run_sweep(store.url, run.path, tmp / "sweep", settings, scheduler="sync", progress=False)
    assert res.table["spin"]["dev"] > 0.3
    assert 2 in res.table["spin"]["layers"]
    head = Head.load(res.table["head"])
    assert head.classifier.coef_.shape[0] == 77
    x = np.random.default_rng(0).standard_normal((4, head.classifier.n_features_in_)).astype(np.float32)
    proba = head.classifier.predict_proba(x)
    assert proba.shape == (4, 77)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
