"""Cross-validated selection (`--select cv`): folds of the training rows as a view of the store, probes per fold,
and a sweep that chooses on out-of-fold predictions and never on dev."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from spin_cache.errors import InputError
from spin_cache.fit.estimator import SpinClassifier
from spin_cache.loop.probe import ProbeRun, probe_folds
from spin_cache.loop.select import select
from spin_cache.loop.selection import ConfigScores, choose, cross_validated_choice
from spin_cache.loop.sweep import SweepSettings, run_sweep
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.folds import SET_ASIDE, Fold, fold_rows

from .conftest import probed_synthetic_store

GRID = {"values": (0.5, 0.9), "c_grid": (0.05, 1.0)}


def examples(labels: list[int], splits: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"row": np.arange(len(labels)), "split": splits, "label": labels})


def test_folds_partition_the_training_rows_stratified_and_set_dev_and_test_aside() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400).tolist()
    splits = rng.choice(["train", "dev", "test"], 400, p=[0.7, 0.15, 0.15]).tolist()
    ex = examples(labels, splits)
    train = np.flatnonzero(np.asarray(splits) == "train")
    views = [Fold(i, 4).relabel(ex) for i in range(4)]
    held = [np.flatnonzero(v["split"].to_numpy() == "dev") for v in views]
    assert np.array_equal(np.sort(np.concatenate(held)), train)  # every training row held out exactly once
    for view, rows in zip(views, held, strict=True):
        split = view["split"].to_numpy()
        assert set(np.flatnonzero(split == "train")) == set(train) - set(rows)
        assert (split[np.asarray(splits) != "train"] == SET_ASIDE).all()  # neither dev nor test is read
        assert view["label"].to_list() == labels
    counts = np.array([np.bincount(np.asarray(labels)[rows], minlength=3) for rows in held])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()  # stratified by label
    again = Fold(2, 4).relabel(ex)["split"].to_list()
    assert again == views[2]["split"].to_list()  # the same (n, seed): the same rows
    assert Fold(2, 4, seed=1).relabel(ex)["split"].to_list() != again


@pytest.mark.parametrize(
    ("fold", "message"),
    [(Fold(0, 1), "2 folds or more"), (Fold(3, 3), "out of range"), (Fold(-1, 3), "whole number")],
)
def test_a_bad_fold_is_refused(fold: Fold, message: str) -> None:
    with pytest.raises(InputError, match=message):
        fold.check()


def test_more_folds_than_training_rows_is_refused() -> None:
    with pytest.raises(InputError, match="3 training rows"):
        fold_rows(np.array([0, 1, 0, 1]), np.array([True, True, True, False]), 5, 0)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return probed_synthetic_store(tmp_path_factory.mktemp("cv"), n_rows=900, n_classes=3, informative={2: 4, 3: 4})


def test_a_store_seen_through_a_fold_is_read_only_and_relabels_every_reader(probed: tuple) -> None:
    store, _, _ = probed
    view = ActivationStore.open(store.url, fold=Fold(1, 3))
    train = store.split_rows("train")
    assert set(view.split_rows("dev")) < set(train)
    assert len(view.split_rows("dev")) + len(view.split_rows("train")) == len(train)
    assert len(view.split_rows("test")) == 0
    assert np.array_equal(view.labels("dev"), store.labels()[view.split_rows("dev")])
    with pytest.raises(ValueError, match="read-only"):
        ActivationStore.open(store.url, mode="a", fold=Fold(1, 3))


def test_fold_probes_are_fitted_without_the_folds_rows_at_the_runs_c(probed: tuple, tmp_path: Path) -> None:
    store, run, _ = probed
    folds = probe_folds(run, store.url, tmp_path / "folds", 2, scheduler="sync", progress=False)
    assert [f.fold for f in folds] == [Fold(0, 2), Fold(1, 2)]
    assert [ProbeRun(tmp_path / "folds" / str(i)).fold for i in range(2)] == [Fold(0, 2), Fold(1, 2)]  # run.json
    keys = ["kind", "pooling", "layer"]
    for f in folds:
        assert f.store_fingerprint == store.fingerprint
        assert f.probes["test_metric"].is_nan().all()  # the fold's view has no test rows
        assert not (f.path / "ordered.zarr").exists()
        assert f.probes.sort(keys)["C"].to_list() == run.probes.sort(keys)["C"].to_list()  # the run's C per layer
    a, b = (f.saliency("ffn", "mean", 3) for f in folds)
    assert not np.array_equal(a, b)  # different training rows, different probes
    with pytest.raises(InputError, match="--folds: expected an integer >= 2"):
        probe_folds(run, store.url, tmp_path / "one", 1, scheduler="sync", progress=False)
    assert not (tmp_path / "one").exists()


def test_sweep_cv_chooses_the_best_out_of_fold_head_and_shows_its_dev_score(probed: tuple) -> None:
    store, run, root = probed
    res = run_sweep(store.url, run.path, root / "sweep-cv", SweepSettings(**GRID, select="cv", folds=2),
                    scheduler="sync", progress=False)  # fmt: skip
    fold_runs = [ProbeRun(root / "sweep-cv" / "folds" / str(i)) for i in range(2)]
    chosen = res.summary.chosen_by
    spin = res.summary.spin
    assert chosen.strategy == "cv" and chosen.expected_method == "holdout"
    assert chosen.expected == pytest.approx(spin.dev) and chosen.optimism == 0.0
    assert chosen.n_resamples == 2 and chosen.cv_score is not None
    # The chosen head's out-of-fold score, recomputed here fold by fold with the estimator at the chosen C:
    # fitted on the fold's other training rows (with the fold's own probes), scored on the fold's rows.
    correct = 0
    for fold_run in fold_runs:
        view = ActivationStore.open(store.url, fold=fold_run.fold)
        layers = spin.layers
        cols = [select(fold_run.saliency(spin.kind, spin.pooling, layer), spin.rule, spin.value) for layer in layers]
        parts = [view.read(spin.kind, spin.pooling, layer, columns=c) for layer, c in zip(layers, cols, strict=True)]
        x = np.concatenate(parts, axis=1)
        rows = {s: view.split_rows(s) for s in ("train", "dev")}
        clf = SpinClassifier(C=(spin.C,)).fit(x[rows["train"]], view.labels("train"))
        correct += int((clf.predict(x[rows["dev"]]) == view.labels("dev")).sum())
    n_train = len(store.split_rows("train"))
    assert chosen.cv_score == pytest.approx(correct / n_train, abs=3 / n_train)  # solver paths differ by a row or two


def test_the_cv_choice_does_not_depend_on_the_dev_rows() -> None:
    rng = np.random.default_rng(1)
    n_heads, n_train, n_dev = 12, 200, 80
    y_train, y_dev = rng.integers(0, 2, n_train), rng.integers(0, 2, n_dev)
    quality = np.linspace(0.55, 0.8, n_heads)
    oof = np.where(rng.random((n_heads, n_train)) < quality[:, None], y_train, 1 - y_train)
    dev_pred = np.where(rng.random((n_heads, n_dev)) < quality[::-1, None], y_dev, 1 - y_dev)  # dev favours others
    keys = (np.arange(n_heads) + 10, np.ones(n_heads, dtype=int), np.full(n_heads, 0.1))
    dev = ConfigScores(dev_pred, y_dev, *keys)
    heads = np.arange(n_heads)
    choice, estimate = cross_validated_choice(dev, ConfigScores(oof, y_train, *keys), heads, 5)
    assert choice.index == choose(ConfigScores(oof, y_train, *keys), "argmax").index
    assert choice.index != choose(dev, "argmax").index
    assert estimate.estimate == pytest.approx(dev.scores()[choice.index]) and estimate.optimism == 0
    shuffled = ConfigScores(dev_pred, rng.permutation(y_dev), *keys)
    assert cross_validated_choice(shuffled, ConfigScores(oof, y_train, *keys), heads, 5)[0].index == choice.index
    # The out-of-fold rows map onto dev's heads through `heads`: a permutation is followed.
    order = rng.permutation(n_heads)
    keyed = tuple(k[order] for k in keys)
    moved, _ = cross_validated_choice(dev, ConfigScores(oof[order], y_train, *keyed), order, 5)
    assert moved.index == choice.index
    with pytest.raises(InputError, match="heads"):
        cross_validated_choice(dev, ConfigScores(oof, y_train, *keys), heads[:-1], 5)


def test_bad_folds_are_refused_in_settings_cli_and_config(probed: tuple, capsys, tmp_path, monkeypatch) -> None:
    from spin_cache.cli import main
    from spin_cache.pipeline import load_config

    for bad in (1, 0, 2.5, True):
        with pytest.raises(InputError, match=r"--folds \(folds\)"):
            SweepSettings(folds=bad).check()
    store, run, _ = probed
    monkeypatch.chdir(tmp_path)
    for argv in (["sweep", store.url, "--probes", str(run.path), "--out", "o", "--folds", "1"],
                 ["run", "x.toml", "--folds", "one"]):  # fmt: skip
        assert main(argv) == 2
        err_text = capsys.readouterr().err
        assert len(err_text.strip().splitlines()) == 1 and "argument --folds" in err_text
    assert not list(tmp_path.iterdir())
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\nselect = "cv"\nfolds = 1\n')
    with pytest.raises(InputError, match=r"bad\.toml: \[sweep\] --folds \(folds\): expected an integer >= 2"):
        load_config(config)


def test_folds_of_other_inputs_are_made_again_and_too_few_rows_are_refused_up_front(probed: tuple, tmp_path) -> None:
    import json

    store, run, _ = probed
    out = tmp_path / "folds"
    first = probe_folds(run, store.url, out, 2, kinds=["ffn"], poolings=["mean"], scheduler="sync", progress=False)
    again = probe_folds(run, store.url, out, 2, kinds=["ffn"], poolings=["mean"], scheduler="sync", progress=False)
    assert [r.probes.equals(a.probes) for r, a in zip(first, again, strict=True)] == [True, True]  # kept
    third = probe_folds(run, store.url, out, 3, kinds=["ffn"], poolings=["mean"], scheduler="sync", progress=False)
    assert [r.fold for r in third] == [Fold(i, 3) for i in range(3)]  # other folds: made again, not refused
    assert json.loads((out / "folds.json").read_text())["folds"] == 3
    # A store with fewer training rows than folds: one line naming both ways out, before the sweep writes anything.
    with pytest.raises(InputError, match=r"at most that many folds, or choose on dev with --select argmax"):
        run_sweep(store.url, run.path, tmp_path / "sweep", SweepSettings(**GRID, folds=10_000), scheduler="sync",
                  progress=False)  # fmt: skip
    assert not (tmp_path / "sweep").exists()
