"""The sweep's search (issue 20, item 3): the exact grid by default, or each head's C path stopped early on dev
(`--search patience`); fit_c_path's `patience` on tiny designs, the sweep on a small synthetic store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spin_cache.errors import InputError
from spin_cache.fit import solver
from spin_cache.fit.solver import HEAD_C_GRID, Design, fit_c_path
from tests.conftest import probed_synthetic_store, sweep_probed

GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def _designs(seed: int = 0, n_train: int = 40, n_dev: int = 200, width: int = 60) -> tuple[Design, Design]:
    """Few training rows and many noise features beside one informative one: dev falls as regularisation weakens."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        x = rng.standard_normal((n, width)).astype(np.float32)
        x[:, 0] += 1.2 * (2 * y - 1)
        return x, y

    (xt, yt), (xd, yd) = rows(n_train), rows(n_dev)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    return Design.of((xt - mean) / std, yt), Design.of((xd - mean) / std, yd)


def _path(train: Design, dev: Design, **kw):
    fitted: list[tuple[float, np.ndarray, np.ndarray]] = []
    res = fit_c_path(train, dev, 2, GRID, penalty="l2", on_fit=lambda c, fit, pred: fitted.append((c, fit.coef, pred)),
                     **kw)  # fmt: skip
    return res, fitted


def _expected_stop(devs: list[float], patience: int) -> int:
    """How many C values a path with these dev scores (the full grid's) fits under `patience`."""
    best, stale = -np.inf, 0
    for i, d in enumerate(devs):
        if d > best:
            best, stale = d, 0
        else:
            stale += 1
            if stale >= patience:
                return i + 1
    return len(devs)


def test_no_patience_is_the_exact_grid():
    train, dev = _designs()
    default, fits_default = _path(train, dev)
    none, fits_none = _path(train, dev, patience=None)
    assert [h["C"] for h in default.history] == [h["C"] for h in none.history] == sorted(GRID)
    assert [c for c, _, _ in fits_none] == sorted(GRID)
    assert default.history == none.history and (default.c, default.dev) == (none.c, none.dev)
    for (_, a, pa), (_, b, pb) in zip(fits_default, fits_none, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)) and np.array_equal(pa, pb)
    # A patience longer than the grid fits every C too, and the same fits.
    long, _fits_long = _path(train, dev, patience=len(GRID))
    assert long.history == default.history


def test_a_falling_dev_score_stops_the_path_after_patience_falls():
    train, dev = _designs(seed=1, n_train=30, width=200)
    full, fits_full = _path(train, dev)
    devs = [h["dev"] for h in full.history]
    assert devs[-1] < max(devs)  # the design does what it is for: weak regularisation loses on dev
    for patience in (1, 2, 3):
        res, fits = _path(train, dev, patience=patience)
        n = _expected_stop(devs, patience)
        assert n < len(GRID) or patience == 3  # dev: .62 .62 .62 .63 .615 .61 .605
        assert [c for c, _, _ in fits] == [h["C"] for h in res.history] == sorted(GRID)[:n]
        assert res.history == full.history[:n]  # the same fits, in the same order, up to the stop
        for (_, a, _), (_, b, _) in zip(fits, fits_full, strict=False):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
        assert res.dev == max(devs[:n]) and res.c == full.history[devs.index(max(devs[:n]))]["C"]


def test_patience_counts_ties_as_no_improvement(monkeypatch):
    """Scripted dev scores: 0.5, 0.7 (best), 0.6, 0.7 (a tie), 0.65, 0.8, ...: patience 2 stops after the tie,
    patience 3 one C later, patience 4 fits every C."""
    train, dev = _designs()
    script = [0.5, 0.7, 0.6, 0.7, 0.65, 0.8, 0.1]
    for patience, n in ((2, 4), (3, 5), (4, 7)):
        scores = iter(script)
        monkeypatch.setattr(solver, "score_predictions", lambda *a, _s=scores: next(_s))
        res, fits = _path(train, dev, patience=patience)
        assert len(fits) == n and [h["dev"] for h in res.history] == script[:n]
        assert res.c == sorted(GRID)[5 if n > 5 else 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_patience_is_refused_by_the_solver(bad):
    train, dev = _designs()
    with pytest.raises(ValueError, match="patience"):
        fit_c_path(train, dev, 2, GRID, penalty="l2", patience=bad)


# ---- the sweep: a small synthetic store, no model ------------------------------------------------------------------

SWEEP_GRID = {"values": (0.1, 0.3, 0.5, 0.8, 0.95), "c_grid": (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)}


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """A synthetic store (planted signal in two layers, few training rows so weak regularisation overfits) and its
    probe run."""
    root = tmp_path_factory.mktemp("search-sweep")
    return probed_synthetic_store(root, n_rows=400, poolings=("mean",), split_shares=(0.4, 0.35, 0.25), seed=5)


def _sweep(synth_run, name: str, **settings):
    # The arg-max: the patience path's choice is compared with the grid's on dev.
    return sweep_probed(synth_run, name, SWEEP_GRID, **({"select": "argmax"} | settings))


def test_patience_sweep_fits_fewer_heads_and_records_its_search(synth_run):
    grid = _sweep(synth_run, "grid")
    again = _sweep(synth_run, "grid-patience-5", patience=5)  # patience is ignored by the exact grid
    pat = _sweep(synth_run, "patience", search="patience", patience=1)
    summaries = {name: json.loads((res.path / "summary.json").read_text()) for name, res in
                 (("grid", grid), ("again", again), ("patience", pat))}  # fmt: skip
    assert summaries["grid"]["settings"]["search"] == "grid" and summaries["grid"]["settings"]["patience"] == 2
    assert summaries["patience"]["settings"]["search"] == "patience"
    assert summaries["patience"]["settings"]["patience"] == 1
    n_configs = grid.sweep.height
    by_grid, by_pat = grid.table["chosen_by"], pat.table["chosen_by"]
    assert by_grid["n_compared"] == n_configs * len(SWEEP_GRID["c_grid"]) == again.table["chosen_by"]["n_compared"]
    assert by_pat["n_configurations"] == n_configs and n_configs <= by_pat["n_compared"] < by_grid["n_compared"]
    drop = ["seconds", "group_bytes_read"]
    assert grid.sweep.drop(drop).equals(again.sweep.drop(drop)) and grid.table["spin"] == again.table["spin"]
    # Each configuration's patience path is a prefix of the grid's: its best C is no larger, its dev no better, and
    # the same C means the same head.
    for g, p in zip(grid.sweep.iter_rows(named=True), pat.sweep.iter_rows(named=True), strict=True):
        assert (g["value"], g["k"]) == (p["value"], p["k"])
        assert p["C"] <= g["C"] and p["dev_metric"] <= g["dev_metric"]
        if p["C"] == g["C"]:
            assert p["dev_metric"] == g["dev_metric"]
    assert pat.table["spin"]["dev"] <= grid.table["spin"]["dev"]
    assert pat.table["random_control"] == grid.table["random_control"]  # the reference keeps the whole grid


def test_patience_refits_a_chosen_head_that_was_not_its_groups_best(synth_run):
    """one_se may choose a head that is not its group's best: it is refitted along the same stopped path."""
    from spin_cache.fit.head import Head

    store, _, _ = synth_run
    res = _sweep(synth_run, "patience-one-se", search="patience", patience=1, select="one_se")
    head = Head.load(res.table["head"])
    assert res.table["spin"]["C"] == head.classifier.C_
    x = np.concatenate([store.read(head.info["kind"], head.info["pooling"], layer, columns=idx, split="dev")
                        for layer, idx in sorted(head.selection.items())], axis=1)  # fmt: skip
    y = store.examples.filter(store.examples["split"] == "dev")["label"].to_numpy()
    assert float((head.classifier.predict(x) == y).mean()) == pytest.approx(res.table["spin"]["dev"])


def test_bad_search_or_patience_is_refused_in_settings_cli_and_config(synth_run, capsys, tmp_path, monkeypatch):
    from spin_cache.cli import main
    from spin_cache.loop.sweep import SweepSettings
    from spin_cache.pipeline import load_config

    with pytest.raises(InputError, match=r"--search \(search\): expected one of grid, patience"):
        SweepSettings(search="halving").check()
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(InputError, match=r"--patience \(patience\)"):
            SweepSettings(search="patience", patience=bad).check()
    store, run, _ = synth_run
    monkeypatch.chdir(tmp_path)
    base = ["sweep", store.url, "--probes", str(run.path), "--out", "o"]
    for argv, option in (([*base, "--search", "halving"], "--search"), ([*base, "--patience", "0"], "--patience"),
                         (["run", "x.toml", "--search", "best"], "--search"),
                         (["run", "x.toml", "--patience", "0"], "--patience")):  # fmt: skip
        assert main(argv) == 2
        err_text = capsys.readouterr().err
        assert len(err_text.strip().splitlines()) == 1 and f"argument {option}" in err_text
    assert not list(tmp_path.iterdir())
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\nsearch = "halving"\n')
    with pytest.raises(InputError, match=r"bad\.toml: \[sweep\] --search \(search\): expected one of"):
        load_config(config)
    config.write_text('[sweep]\nsearch = "patience"\npatience = 0\n')
    with pytest.raises(InputError, match=r"bad\.toml: \[sweep\] --patience \(patience\): expected an integer"):
        load_config(config)
    config.write_text('[sweep]\nsearch = "patience"\npatience = 3\n')
    assert load_config(config).sweep == {"search": "patience", "patience": 3}


def test_run_options_override_the_config(tmp_path, monkeypatch):
    import spin_cache.pipeline as pipeline
    from spin_cache.cli import main

    seen = {}

    def fake(cfg, **kw):
        seen.update(cfg.sweep)
        return {"table": {}, "report": "r"}

    monkeypatch.setattr(pipeline, "run_pipeline", fake)
    config = tmp_path / "c.toml"
    config.write_text('[sweep]\nsearch = "grid"\npatience = 3\n')
    assert main(["run", str(config), "--search", "patience", "--json"]) == 0
    assert seen == {"search": "patience", "patience": 3}
    assert main(["run", str(config), "--patience", "4", "--json"]) == 0
    assert seen == {"search": "grid", "patience": 4}


def test_help_says_the_default_is_the_exact_grid(capsys):
    from spin_cache.cli import main

    assert main(["sweep", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Default grid, the exact grid" in text and "slowest fits" in text and "never fitted are not compared" in text
    assert tuple(sorted(HEAD_C_GRID)) == HEAD_C_GRID  # the path runs strong to weak regularisation
