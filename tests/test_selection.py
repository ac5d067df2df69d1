"""Selection strategies and the honest estimate (spin_cache.loop.selection) on small constructed matrices."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from spin_cache.errors import InputError
from spin_cache.fit.metrics import score_predictions
from spin_cache.loop.selection import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    ConfigScores,
    argmax,
    binomial_se,
    bootstrap_counts,
    choose,
    expected_score,
    one_se,
    stack_configs,
    sweep_neighbourhoods,
)
from tests.conftest import probed_synthetic_store, sweep_probed

ROOT = Path(__file__).resolve().parents[1]


def correct_pattern(n: int, n_correct: int, seed: int) -> np.ndarray:
    """A 0/1 'is correct' vector with exactly n_correct ones at seeded positions."""
    hits = np.zeros(n, dtype=np.int64)
    hits[np.random.default_rng(seed).choice(n, n_correct, replace=False)] = 1
    return hits


def binary_scores(hits: list[np.ndarray], neurons, layers, cs, metric: str = "accuracy") -> ConfigScores:
    """Binary labels all 1: a configuration predicts 1 where it is correct, 0 elsewhere."""
    n = len(hits[0])
    return ConfigScores(
        np.stack(hits),
        np.ones(n, dtype=np.int64),
        np.asarray(neurons),
        np.asarray(layers),
        np.asarray(cs, dtype=float),
        metric,
    )


def test_argmax_takes_the_best_and_breaks_ties_to_fewer_neurons_layers_then_smaller_c():
    n = 100
    a = correct_pattern(n, 80, 0)
    b = correct_pattern(n, 80, 1)
    low = correct_pattern(n, 70, 2)
    s = binary_scores([low, a, b, a, b], [5, 50, 40, 40, 40], [1, 3, 4, 2, 2], [0.1, 1.0, 1.0, 1.0, 0.01])
    ch = argmax(s)
    assert ch.index == 4  # 80%: 40 neurons beat 50; of the 40-neuron ones, 2 layers beat 4; then C 0.01 beats 1.0
    assert ch.dev_score == pytest.approx(0.8) and ch.best_dev_score == pytest.approx(0.8)
    assert ch.n_candidates == 4 and ch.n_configurations == 5 and ch.threshold == pytest.approx(0.8)
    # Equal complexity and equal score: the first configuration.
    assert argmax(binary_scores([a, a], [3, 3], [1, 1], [1.0, 1.0])).index == 0


def test_one_se_prefers_the_simpler_near_tie_over_a_lucky_argmax():
    """The arg-max is a big configuration one row-noise ahead of a far smaller one; one_se takes the small one,
    and not the clearly worse, smallest configuration."""
    n = 200
    lucky = correct_pattern(n, 172, 0)  # 86.0%, 1500 neurons over 6 layers
    simple = correct_pattern(n, 168, 1)  # 84.0%, 40 neurons over 2 layers: 2 points behind, within one SE
    tiny = correct_pattern(n, 150, 2)  # 75.0%, 4 neurons: far outside
    mid = correct_pattern(n, 170, 3)  # 85.0%, 300 neurons
    s = binary_scores([lucky, simple, tiny, mid], [1500, 40, 4, 300], [6, 2, 1, 3], [0.01, 0.01, 0.01, 0.01])
    se = float(binomial_se(0.86, n))
    assert 0.02 < se < 0.025
    assert argmax(s).index == 0
    ch = one_se(s)
    assert ch.index == 1 and ch.dev_score == pytest.approx(0.84)
    assert ch.threshold == pytest.approx(0.84) and ch.n_candidates == 3  # lowest admitted: 0.84 >= 0.86 - se
    assert choose(s, "one_se") == ch


def test_one_se_breaks_ties_on_layers_then_smaller_c_then_higher_score():
    n = 400
    top = correct_pattern(n, 360, 0)  # 90%
    near = correct_pattern(n, 356, 1)  # 89%, within SE (1.5 points)
    nearer = correct_pattern(n, 358, 2)
    s = binary_scores(
        [top, near, near, nearer, nearer], [100, 30, 30, 30, 30], [4, 3, 2, 2, 2], [1.0, 0.1, 0.1, 0.001, 0.001]
    )
    assert one_se(s).index == 3  # 30 neurons; 2 layers; C 0.001 (index 3 and 4 identical: the first)
    s2 = binary_scores([top, near, nearer], [100, 30, 30], [4, 2, 2], [1.0, 0.1, 0.1])
    assert one_se(s2).index == 2  # equal complexity: the higher dev score


def test_nothing_reads_test_rows():
    """ConfigScores has no place for test rows, and the benchmark's protocol chooses and estimates from dev' alone:
    scrambling every test' prediction changes the test' scores and nothing else."""
    fields = {f.name for f in dataclasses.fields(ConfigScores)}
    assert fields == {"predictions", "labels", "n_neurons", "n_layers", "C", "metric", "n_classes", "group", "grid"}
    spec = importlib.util.spec_from_file_location("bench_selection", ROOT / "benchmarks" / "bench_selection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    n_dev, n_test, m = 120, 200, 30
    y = rng.integers(0, 2, n_dev + n_test)
    quality = rng.uniform(0.6, 0.9, m)
    pred = np.where(rng.random((m, n_dev + n_test)) < quality[:, None], y, 1 - y)
    data = {
        "predictions": pred,
        "labels": y,
        "base": np.arange(m) < 3,
        "n_neurons": rng.integers(1, 500, m),
        "kind": np.full(m, "ffn"),
        "pooling": np.full(m, "mean"),
        "value": np.repeat([0.1, 0.3, 0.5, 0.8, 0.9], 6),
        "k": np.tile(np.arange(1, 7), 5),
        "C": np.full(m, 0.01),
        "n_classes": 2,
    }
    dev, test = np.arange(n_dev), np.arange(n_dev, n_dev + n_test)
    names = list(STRATEGIES)
    before = bench.evaluate_split(data, dev, test, names, ["bbc", "tt"], n_boot=50)
    scrambled = dict(data, predictions=pred.copy())
    scrambled["predictions"][:, test] = rng.integers(0, 2, (m, n_test))
    after = bench.evaluate_split(scrambled, dev, test, names, ["bbc", "tt"], n_boot=50)
    for name in names:
        for key in ("dev", "n_neurons", "k", "C", "candidates", "est_bbc", "est_tt"):
            assert before[name][key] == after[name][key]
    assert any(before[name]["test"] != after[name]["test"] for name in names)


def noise_configs(m: int, n: int, p: float, seed: int) -> ConfigScores:
    """m independent configurations, each correct on every row with probability p: all equally good."""
    rng = np.random.default_rng(seed)
    hits = (rng.random((m, n)) < p).astype(np.int64)
    return binary_scores(list(hits), rng.integers(1, 1000, m), rng.integers(1, 7, m), rng.choice([0.01, 1.0], m))


def test_the_bootstrap_estimate_removes_the_winners_curse():
    s = noise_configs(m=300, n=400, p=0.7, seed=0)
    est = expected_score(s, "argmax", method="bbc", n_boot=300)
    assert est.apparent > 0.75  # the best of 300 equal configurations looks 5+ points better than it is
    assert abs(est.estimate - 0.7) < 0.015
    assert est.optimism == pytest.approx(est.apparent - est.estimate)
    assert est.n_configurations == 300 and est.n_distinct == 300 and est.n_rows == 400
    for method in ("optimism", "tt"):
        other = expected_score(s, "argmax", method=method)
        assert other.estimate < est.apparent - 0.02  # every method corrects downwards
    json.dumps(est.to_json())


def test_one_configuration_has_no_selection_bias():
    hits = correct_pattern(300, 240, 0)
    s = binary_scores([hits], [10], [1], [1.0])
    assert expected_score(s, "argmax", method="tt").estimate == pytest.approx(0.8)
    assert expected_score(s, "one_se", method="optimism", n_boot=400).estimate == pytest.approx(0.8, abs=0.005)
    assert expected_score(s, "argmax", method="bbc", n_boot=400).estimate == pytest.approx(0.8, abs=0.01)


def test_estimates_are_deterministic_and_seeded():
    s = noise_configs(m=40, n=150, p=0.6, seed=1)
    a = expected_score(s, "one_se", seed=3, n_boot=100)
    assert a == expected_score(s, "one_se", seed=3, n_boot=100)
    assert a.estimate != expected_score(s, "one_se", seed=4, n_boot=100).estimate
    assert expected_score(s, n_boot=20).strategy == DEFAULT_STRATEGY == "argmax"
    assert expected_score(s, n_boot=20).method == "bbc"


def test_weighted_scores_equal_scores_on_repeated_rows():
    rng = np.random.default_rng(0)
    n, m, k = 60, 7, 4
    labels = rng.integers(0, k, n)
    pred = rng.integers(0, k, (m, n))
    for metric in ("accuracy", "macro_f1"):
        s = ConfigScores(pred, labels, np.arange(1, m + 1), np.ones(m), np.ones(m), metric, n_classes=k)
        plain = s.scores()
        for i in range(m):
            assert plain[i] == pytest.approx(score_predictions(labels, pred[i], metric))
        counts = bootstrap_counts(n, 3, seed=0)
        assert counts.sum(axis=0).tolist() == [n, n, n]
        weighted = s.scores(counts)
        for b in range(3):
            rows = np.repeat(np.arange(n), counts[:, b].astype(int))
            for i in range(m):
                assert weighted[i, b] == pytest.approx(score_predictions(labels[rows], pred[i, rows], metric))
        assert s.restrict(np.arange(10)).n_rows == 10
    est = expected_score(
        ConfigScores(pred, labels, np.arange(1, m + 1), np.ones(m), np.ones(m), "macro_f1"), "argmax", n_boot=30
    )
    assert 0.0 <= est.estimate <= 1.0


def test_stack_configs_and_strategy_names():
    s = stack_configs([np.array([1, 0, 1]), np.array([1, 1, 1])], np.array([1, 1, 1]), [3, 4], [1, 1], [0.1, 0.1])
    assert s.n_configurations == 2 and argmax(s).index == 1
    assert set(STRATEGIES) >= {"argmax", "one_se"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"predictions": np.zeros(3)}, "predictions: need a 2-D"),
        ({"predictions": np.full((2, 3), 0.5)}, "whole number"),
        ({"predictions": np.zeros((2, 0))}, "at least one configuration"),
        ({"labels": np.zeros(4)}, "4 dev labels"),
        ({"n_neurons": np.array([1])}, "n_neurons: 1 values for 2"),
        ({"n_neurons": np.array([0, 1])}, "at least one neuron"),
        ({"C": np.array([0.0, 1.0])}, "above 0"),
        ({"C": "1,2"}, "C: give"),
        ({"metric": "auc"}, "metric 'auc'"),
        ({"labels": np.array([0, -1, 0])}, "0 or more"),
        ({"n_classes": 0}, "n_classes 0"),
        ({"labels": np.array([0, 3, 0]), "n_classes": 2}, "go up to 3"),
    ],
)
def test_bad_input_is_one_line(kwargs, fragment):
    args = {
        "predictions": np.zeros((2, 3), dtype=int),
        "labels": np.zeros(3, dtype=int),
        "n_neurons": np.array([1, 2]),
        "n_layers": np.array([1, 1]),
        "C": np.array([1.0, 1.0]),
    }
    with pytest.raises(InputError, match=fragment) as err:
        ConfigScores(**(args | kwargs))
    assert "\n" not in str(err.value)


def test_bad_strategy_method_and_resamples():
    s = binary_scores([correct_pattern(10, 5, 0)], [1], [1], [1.0])
    with pytest.raises(InputError, match="strategy 'best'"):
        choose(s, "best")
    with pytest.raises(InputError, match="estimate method 'cv'"):
        expected_score(s, method="cv")
    with pytest.raises(InputError, match="n_boot 0"):
        expected_score(s, n_boot=0)
    with pytest.raises(InputError, match="folds 11"):
        expected_score(s, method="tt", folds=11)
    with pytest.raises(InputError, match="ConfigScores"):
        choose(np.zeros((2, 2)))  # type: ignore[arg-type]


def test_one_se_paired_judges_the_difference_on_the_same_rows():
    """B is A minus 4 correct rows (a consistent, paired loss of 2 points: outside the paired window, inside the
    binomial one); C errs on unrelated rows with the same 84%: inside both windows."""
    n = 200
    a = correct_pattern(n, 172, 0)
    b = a.copy()
    b[np.flatnonzero(a)[:4]] = 0
    c = np.roll(a, 37)
    c[np.flatnonzero(c)[:4]] = 0
    s = binary_scores([a, b, c], [1500, 40, 100], [6, 2, 2], [0.01, 0.01, 0.01])
    assert s.scores().tolist() == pytest.approx([0.86, 0.84, 0.84])
    assert one_se(s).index == 1
    ch = choose(s, "one_se_paired")
    assert ch.index == 2 and ch.n_candidates == 2 and ch.threshold == pytest.approx(0.84)


def test_smoothed_prefers_a_plateau_to_an_isolated_spike():
    """Along one grid axis: a lone spike at position 0 (its neighbour is poor) against a broad plateau at 2-4."""
    n = 400
    rates = [0.86, 0.70, 0.84, 0.85, 0.84, 0.80]
    hits = [correct_pattern(n, int(r * n), i) for i, r in enumerate(rates)]
    s = ConfigScores(np.stack(hits), np.ones(n, dtype=int), np.full(6, 10), np.ones(6, dtype=int), np.ones(6),
                     group=np.zeros(6, dtype=int), grid=np.arange(6)[:, None])  # fmt: skip
    assert argmax(s).index == 0
    ch = choose(s, "smoothed")
    assert ch.index == 3 and ch.dev_score == pytest.approx(0.85)
    dense = s.neighbourhood.toarray()
    assert dense[0].tolist() == pytest.approx([0.5, 0.5, 0, 0, 0, 0])
    assert dense[3].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0])
    # Different groups are never neighbours.
    apart = dataclasses.replace(s, group=np.arange(6))
    assert np.allclose(apart.neighbourhood.toarray(), np.eye(6))
    assert expected_score(s, "smoothed", n_boot=50).n_configurations == 6


def test_smoothed_needs_a_grid_and_grid_is_checked():
    s = binary_scores([correct_pattern(10, 5, 0)], [1], [1], [1.0])
    with pytest.raises(InputError, match="needs the configurations' group and grid"):
        choose(s, "smoothed")
    with pytest.raises(InputError, match="give both"):
        dataclasses.replace(s, group=np.zeros(1))
    two = binary_scores([correct_pattern(10, 5, 0)] * 2, [1, 1], [1, 1], [1.0, 1.0])
    with pytest.raises(InputError, match="share a group and a grid position"):
        dataclasses.replace(two, group=np.zeros(2), grid=np.zeros((2, 1)))
    with pytest.raises(InputError, match="one group and one grid row"):
        dataclasses.replace(two, group=np.zeros(3), grid=np.zeros((3, 1)))


def test_sweep_neighbourhoods_link_rule_values_only():
    kinds = ["ffn"] * 6 + ["hidden"]
    poolings = ["mean"] * 7
    values = [0.5, 0.8, 0.9, 0.8, 0.9, 0.9, 0.9]
    ks = [1, 1, 1, 2, 2, 1, 1]
    cs = [0.01, 0.01, 0.01, 0.01, 0.01, 0.1, 0.01]
    group, grid = sweep_neighbourhoods(kinds, poolings, values, ks, cs)
    assert grid[:, 0].tolist() == [0, 1, 2, 1, 2, 2, 2]
    s = stack_configs([np.array([1, 0])] * 7, np.array([1, 1]), [1] * 7, ks, cs)
    s = dataclasses.replace(s, group=group, grid=grid)
    linked = s.neighbourhood.toarray() > 0
    assert np.flatnonzero(linked[1]).tolist() == [0, 1, 2]  # eta 0.8, K 1: eta 0.5 and 0.9 at the same K and C
    assert np.flatnonzero(linked[3]).tolist() == [3, 4]  # K 2: not linked to K 1
    assert np.flatnonzero(linked[5]).tolist() == [5]  # another C
    assert np.flatnonzero(linked[6]).tolist() == [6]  # another kind


# ---- the sweep chooses through selection (issue 23): a small synthetic store, no model ------------------------------

SWEEP_GRID = {"values": (0.1, 0.3, 0.5, 0.8, 0.95), "c_grid": (0.001, 0.01, 0.1, 1.0)}


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """A synthetic store (planted signal in two layers, dev and test of different sizes) and its probe run."""
    root = tmp_path_factory.mktemp("selection-sweep")
    return probed_synthetic_store(root, n_rows=500, poolings=("mean", "max"), split_shares=(0.6, 0.25, 0.15), seed=3)


def _sweep(synth_run, name: str, **settings):
    return sweep_probed(synth_run, name, SWEEP_GRID, **settings)


@pytest.fixture(scope="module")
def swept_argmax(synth_run):
    return _sweep(synth_run, "argmax", select="argmax")


def _previous_choice(store, run, sweep) -> dict:
    """The sweep's choice before issue 23: each configuration's best C on dev, then the best dev score over
    configurations in the sweep's order (groups as the store lists kinds and poolings, rule values as given, K
    ascending), ties to fewer neurons, then fewer layers, then the first."""
    import polars as pl

    probed = set(run.probes.select("kind", "pooling").unique().iter_rows())
    groups = [(k, p) for k in store.kinds for p in store.poolings if (k, p) in probed]
    order = {g: i for i, g in enumerate(groups)}
    values = {v: i for i, v in enumerate(SWEEP_GRID["values"])}
    rows = sweep.with_columns(
        pl.struct("kind", "pooling").map_elements(lambda s: order[(s["kind"], s["pooling"])], return_dtype=pl.Int64)
        .alias("_g"),
        pl.col("value").replace_strict(values, return_dtype=pl.Int64).alias("_v"),
    ).sort("_g", "_v", "k")  # fmt: skip
    best = None
    for row in rows.iter_rows(named=True):
        if best is None or (row["dev_metric"], -row["n_neurons"], -row["k"]) > (
            best["dev_metric"], -best["n_neurons"], -best["k"]
        ):  # fmt: skip
            best = row
    assert best is not None
    return best


def _dev_score_of_head(store, head) -> float:
    x = np.concatenate([store.read(head.info["kind"], head.info["pooling"], layer, columns=idx, split="dev")
                        for layer, idx in sorted(head.selection.items())], axis=1)  # fmt: skip
    y = store.examples.filter(store.examples["split"] == "dev")["label"].to_numpy()
    return score_predictions(y, head.classifier.predict(x))


def test_sweep_argmax_reproduces_the_previous_choice(synth_run, swept_argmax):
    from spin_cache.fit.head import Head

    store, run, _ = synth_run
    spin = swept_argmax.table["spin"]
    old = _previous_choice(store, run, swept_argmax.sweep)
    assert (spin["kind"], spin["pooling"], spin["value"], spin["layers"], spin["C"], spin["dev"]) == (
        old["kind"], old["pooling"], old["value"], old["layers"], old["C"], old["dev_metric"]
    )  # fmt: skip
    assert spin["dev"] == swept_argmax.sweep["dev_metric"].max()
    head = Head.load(swept_argmax.table["head"])
    assert spin["C"] == head.classifier.C_ and head.n_neurons == spin["n_neurons"] == old["n_neurons"]
    assert _dev_score_of_head(store, head) == spin["dev"]


def test_one_se_picks_a_simpler_or_equal_head_and_exports_what_it_chose(synth_run, swept_argmax):
    from spin_cache.fit.head import Head

    store, _, _ = synth_run
    chosen = _sweep(synth_run, "one_se", select="one_se")
    a, s = swept_argmax.table, chosen.table
    assert (s["spin"]["n_neurons"], len(s["spin"]["layers"]), s["spin"]["C"]) <= (
        a["spin"]["n_neurons"], len(a["spin"]["layers"]), a["spin"]["C"]
    )  # fmt: skip
    by = s["chosen_by"]
    assert by["strategy"] == "one_se" and by["best_dev"] == a["spin"]["dev"]
    assert by["chosen_dev"] == s["spin"]["dev"] >= by["best_dev"] - binomial_se(by["best_dev"], by["n_dev_rows"])
    # The exported head (refitted when it was not its group's best) is the head that was scored on dev.
    head = Head.load(s["head"])
    assert head.info["chosen_by"]["strategy"] == "one_se" and s["spin"]["C"] == head.classifier.C_
    assert _dev_score_of_head(store, head) == s["spin"]["dev"]
    row = chosen.sweep.filter(chosen.sweep["test_metric"].is_not_null()).row(0, named=True)
    assert (row["value"], row["layers"], row["C"], row["dev_metric"], row["test_metric"]) == (
        s["spin"]["value"], s["spin"]["layers"], s["spin"]["C"], s["spin"]["dev"], s["spin"]["test"]
    )  # fmt: skip


def test_the_estimate_and_heads_compared_in_summary_head_and_report(synth_run, swept_argmax, tmp_path):
    from spin_cache.fit.head import Head
    from spin_cache.report import write_report

    summary = json.loads((swept_argmax.path / "summary.json").read_text())
    by = summary["table"]["chosen_by"]
    n_configs = swept_argmax.sweep.height
    assert by["n_configurations"] == n_configs and by["n_compared"] == n_configs * len(SWEEP_GRID["c_grid"])
    assert by["strategy"] == "argmax" == summary["settings"]["select"] and by["expected_method"] == "bbc"
    assert by["chosen_dev"] == summary["table"]["spin"]["dev"]
    assert 0.0 < by["expected"] <= by["chosen_dev"] and by["optimism"] == pytest.approx(
        by["chosen_dev"] - by["expected"]
    )
    for key, kind in (("n_compared", int), ("n_distinct", int), ("expected", float), ("expected_se", float)):
        assert isinstance(by[key], kind)
    head = Head.load(summary["table"]["head"])
    assert head.info["chosen_by"] == by
    page = write_report(swept_argmax.path, tmp_path / "report").read_text(encoding="utf-8")
    assert "id='chosen-by'" in page and "SPIN chosen by argmax" in page
    assert f"expected {100 * by['expected']:.2f}" in page and f"among {by['n_compared']} heads" in page


def test_the_printed_table_shows_dev_expected_and_heads_compared(synth_run, capsys, tmp_path):
    from spin_cache.cli import main

    store, run, _ = synth_run
    code = main(["sweep", store.url, "--probes", str(run.path), "--out", str(tmp_path / "s"), "--eta", "0.3,0.9",
                 "--C", "0.01,0.1", "--select", "one_se_paired", "--scheduler", "sync"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    by = json.loads((tmp_path / "s" / "summary.json").read_text())["table"]["chosen_by"]
    assert "SPIN (one_se_paired on dev)" in out
    assert f"dev {100 * by['chosen_dev']:.2f} | expected {100 * by['expected']:.2f}" in out
    assert f"({by['n_compared']} heads compared" in out


def test_test_is_read_once(synth_run, monkeypatch, tmp_path):
    """Only the chosen head, Base (none here: no hidden states) and the random control see the test rows: every
    prediction goes through solver.decision, so count the calls over exactly the test rows."""
    import spin_cache.fit.estimator as estimator
    import spin_cache.fit.solver as solver

    store, _, _ = synth_run
    n_test = int((store.examples["split"] == "test").sum())
    assert n_test not in {int((store.examples["split"] == s).sum()) for s in ("train", "dev")}
    calls: list[int] = []
    real = solver.decision

    def counted(x, coef, intercept):
        calls.append(len(x))
        return real(x, coef, intercept)

    monkeypatch.setattr(solver, "decision", counted)
    monkeypatch.setattr(estimator, "decision", counted)
    result = _sweep(synth_run, "read-once")
    assert calls.count(n_test) == 2  # the chosen head and the random control
    assert result.sweep["test_metric"].is_not_null().sum() == 1
    assert (
        result.sweep.filter(result.sweep["test_metric"].is_not_null())["dev_metric"].item()
        == (result.table["spin"]["dev"])
    )


def test_bad_select_is_refused_in_settings_cli_and_config(synth_run, capsys, tmp_path, monkeypatch):
    from spin_cache.cli import main
    from spin_cache.loop.sweep import SweepSettings
    from spin_cache.pipeline import load_config

    with pytest.raises(InputError, match="--select") as err:
        SweepSettings(select="best").check()
    assert "one of argmax, one_se, one_se_paired, smoothed" in str(err.value)
    store, run, _ = synth_run
    monkeypatch.chdir(tmp_path)
    for argv in (["sweep", store.url, "--probes", str(run.path), "--out", "o", "--select", "best"],
                 ["run", "x.toml", "--select", "dev"]):  # fmt: skip
        assert main(argv) == 2
        err_text = capsys.readouterr().err
        assert len(err_text.strip().splitlines()) == 1 and "argument --select" in err_text
    assert not list(tmp_path.iterdir())
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\nselect = "lucky"\n')
    with pytest.raises(InputError, match=r"bad\.toml: \[sweep\] --select \(select\): expected one of"):
        load_config(config)
    config.write_text('[sweep]\nselect = "one_se"\n')
    assert load_config(config).sweep["select"] == "one_se"
