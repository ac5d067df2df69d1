"""Explanations of a head's logit: exact token/layer decompositions for mean pooling, one token per neuron for max
pooling, agreement with the classifier on the model's own pooled features, and the two renderings."""

from __future__ import annotations

import re

import numpy as np
import pytest

from spin_cache.errors import InputError
from spin_cache.fit.head import Head
from spin_cache.loop.sweep import SweepSettings, run_sweep
from spin_cache.model.hooks import run_layers
from spin_cache.model.loading import load_model
from spin_cache.serve.explain import explain

from .test_report import shared_probes

TEXTS = [
    "A gorgeous, witty, seductive movie that never drags.",
    "the plot is nothing but boilerplate clichés from start to finish , and the script is a disaster",
    "Meh.",
]
HEAD_SETTINGS = SweepSettings(values=(0.5,), c_grid=(1.0,), max_iter=50)


@pytest.fixture(scope="module")
def heads(small_store, head_dir, tmp_path_factory):
    """One head per (kind, pooling) in {hidden, ffn} x {mean, max}, from the shared small probe run (hidden/mean is
    the session's head, made with the same settings)."""
    run = shared_probes(small_store, tmp_path_factory)
    base = tmp_path_factory.mktemp("explain-heads")
    out = {("hidden", "mean"): Head.load(head_dir)}
    for kind in ("hidden", "ffn"):
        for pooling in ("mean", "max"):
            if (kind, pooling) in out:
                continue
            res = run_sweep(small_store, run.path, base / f"{kind}-{pooling}", HEAD_SETTINGS, kinds=[kind],
                            poolings=[pooling], scheduler="sync", progress=False)  # fmt: skip
            head = Head.load(res.table["head"])
            assert (head.info["kind"], head.info["pooling"]) == (kind, pooling)
            out[(kind, pooling)] = head
    return out


@pytest.fixture(scope="module")
def model():
    return load_model("minilm", device="cpu")


def model_features(model, head: Head, text: str) -> np.ndarray:
    """The head's features computed the way the store computes them (run_layers and pool_many), unrounded."""
    enc = model.tokenizer([text], truncation=True, max_length=int(head.info["max_length"]), return_tensors="pt")
    kind, pooling = head.info["kind"], head.info["pooling"]
    pooled = run_layers(model, enc["input_ids"], enc["attention_mask"], (pooling,), kinds=(kind,))
    parts = [pooled[(kind, layer)][pooling].numpy()[:, idx] for layer, idx in sorted(head.selection.items())]
    return np.concatenate(parts, axis=1)


def _close(a: float, b: float, scale: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), scale, 1e-6)


@pytest.mark.parametrize("kind", ["hidden", "ffn"])
@pytest.mark.parametrize("centered", [False, True])
def test_mean_pooling_adds_up(heads, model, kind, centered):
    head = heads[(kind, "mean")]
    for text in TEXTS:
        e = explain(head, text, model=model, centered=centered)
        n_tok = len(model.tokenizer(text)["input_ids"])
        assert len(e.tokens) == len(e.token_contributions) == e.matrix.shape[0] == n_tok
        total = e.constant + e.token_contributions.sum()
        scale = float(np.abs(e.token_contributions).sum() + abs(e.constant))
        assert _close(total, e.logit, scale), (total, e.logit)
        # per layer adds up to the same, and the matrix holds both
        assert list(e.layer_contributions) == head.layers
        assert _close(e.constant + sum(e.layer_contributions.values()), e.logit, scale)
        np.testing.assert_allclose(e.matrix.sum(axis=1), e.token_contributions, rtol=1e-12, atol=1e-12)
        # the logit is the classifier's decision on the features the model gives (the store's own pooling code)
        x = model_features(model, head, text)
        np.testing.assert_allclose(e.features, x[0], rtol=1e-5, atol=1e-5)
        decision = float(np.ravel(head.classifier.decision_function(x))[0])
        assert _close(e.logit, decision, scale), (e.logit, decision)
        assert e.label == head.info["label_names"][int(decision > 0)]
        # every token takes part in a mean
        assert len(e.neuron_ids) == head.n_neurons and (e.neuron_tokens == -1).all()


@pytest.mark.parametrize("kind", ["hidden", "ffn"])
def test_max_pooling_credits_each_neuron_to_one_token(heads, model, kind):
    head = heads[(kind, "max")]
    for text in TEXTS[:2]:
        e = explain(head, text, model=model)
        # every selected neuron exactly once, in the head's feature order, credited to a real token
        want = [(layer, int(n)) for layer in head.layers for n in head.selection[layer]]
        got = list(zip(e.neuron_layers.tolist(), e.neuron_ids.tolist(), strict=True))
        assert got == want and len(set(got)) == head.n_neurons
        assert ((e.neuron_tokens >= 0) & (e.neuron_tokens < len(e.tokens))).all()
        # token contributions are the sums of their neurons' terms
        per_token = np.zeros(len(e.tokens))
        np.add.at(per_token, e.neuron_tokens, e.neuron_contributions)
        np.testing.assert_allclose(per_token, e.token_contributions, rtol=1e-12, atol=1e-12)
        scale = float(np.abs(e.neuron_contributions).sum() + abs(e.constant))
        assert _close(e.constant + e.token_contributions.sum(), e.logit, scale)
        x = model_features(model, head, text)
        assert _close(e.logit, float(np.ravel(head.classifier.decision_function(x))[0]), scale)
        # the credited token really holds the max of that neuron
        np.testing.assert_allclose(e.features, x[0], rtol=1e-5, atol=1e-5)


def test_renderings_show_the_tokens(heads, model, tmp_path):
    head = heads[("hidden", "mean")]
    e = explain(head, TEXTS[0], model=model)
    page = e.to_html()
    assert page.startswith("<!DOCTYPE html>") and not re.search(r"<script|<link|src=|url\(", page)
    for word in ("gorgeous", "witty", "seductive", "never", "drag"):
        assert f">{word}</span>" in page
    colour = e.to_terminal()
    assert "\x1b[" in colour
    plain = re.sub(r"\x1b\[[0-9;]*m", "", colour)
    assert "A gorgeous, witty, seductive movie that never drags." in plain  # the text as written, tokens rejoined
    assert "\x1b[" not in e.to_terminal(color=False) and "gorgeous[" in e.to_terminal(color=False)
    strong = e.tokens[int(np.argmax(np.abs(e.token_contributions)))]
    assert strong in plain.split("largest tokens:")[1]
    assert e.to_dict()["tokens"][1]["token"] == "A"
    # a head directory works as well as a Head, and the head's own model is found and checked by its hashes
    head.save(tmp_path / "head")
    again = explain(tmp_path / "head", TEXTS[0])
    np.testing.assert_array_equal(again.token_contributions, e.token_contributions)


def test_bad_input(heads, model, tmp_path):
    head = heads[("hidden", "mean")]
    with pytest.raises(InputError, match="non-empty"):
        explain(head, "   ", model=model)
    with pytest.raises(InputError, match=r"head\.json"):
        explain(tmp_path, "text", model=model)
    with pytest.raises(InputError, match="binary head has one logit"):
        explain(head, "text", model=model, label="0")
