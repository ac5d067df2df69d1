"""Issue 21 item 5, predict fit to serve: token-budget batches give the fixed batches' predictions in the input
order, each model file is hashed once per Predictor, and the compute dtype follows the store (float32 on the CPU,
an explicit compute_dtype wins)."""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from spin_cache.errors import InputError
from spin_cache.fit.head import Head
from spin_cache.model import identity as identity_mod
from spin_cache.model.identity import WEIGHT_SUFFIXES
from spin_cache.serve import predict as predict_mod
from spin_cache.serve.predict import HASH_KEYS, Predictor, resolve_compute_dtype, run_predict, token_budget_batches

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the script is a disaster",
    "meh",
    "an utterly tedious and pointless film that goes on and on without a single idea worth the ticket",
    "fine",
    "the performances are strong but the story never finds its footing",
    "bad",
]


# ---- token-budget batches ----------------------------------------------------------------------------------------


def test_token_budget_gives_the_fixed_batches_predictions_in_order(head_dir, predictor):
    budget = Predictor(head_dir, device="cpu", max_tokens=40)
    lengths = [len(ids) for ids in budget.encode(TEXTS)[0]]
    batches = budget.batches(lengths)
    assert len(batches) not in (1, len(TEXTS))  # the budget really groups texts differently from batch_size=2
    fixed, by_tokens = predictor.predict_proba(TEXTS), budget.predict_proba(TEXTS)
    np.testing.assert_allclose(by_tokens, fixed, atol=1e-3)
    np.testing.assert_array_equal(budget.predict(TEXTS), predictor.predict(TEXTS))
    # input order is restored: each text alone gives its own row
    for i in (0, 3, 6):
        np.testing.assert_allclose(budget.predict_proba([TEXTS[i]])[0], by_tokens[i], atol=1e-3)


@pytest.mark.parametrize(
    ("lengths", "budget"), [([5, 9, 3, 9, 1, 7], 18), ([4] * 10, 12), ([30, 2, 2], 10), ([1], 1), ([], 8)]
)
def test_token_budget_batches_cover_every_text_once_within_budget(lengths, budget):
    batches = token_budget_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= budget or len(b) == 1  # a text longer than the budget runs alone


@pytest.mark.parametrize("bad", [0, -5, 2.5, "many", True])
def test_max_tokens_is_checked_before_any_model_work(bad, monkeypatch):
    monkeypatch.setattr(predict_mod, "Predictor", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match="max_tokens"):
        run_predict("unused-head", texts=["good"], max_tokens=bad)
    with pytest.raises(InputError, match="max_tokens"):
        token_budget_batches([3, 4], bad)


# ---- hashes computed once ----------------------------------------------------------------------------------------


def test_each_model_file_is_hashed_once_per_predictor(head_dir, monkeypatch):
    real = identity_mod._sha256_file
    hashed: Counter[str] = Counter()

    def counting(h, path):
        hashed[Path(path).name] += 1
        return real(h, path)

    monkeypatch.setattr(identity_mod, "_sha256_file", counting)
    p = Predictor(head_dir, device="cpu")
    weights = [n for n in hashed if n.endswith(WEIGHT_SUFFIXES)]
    assert weights, "no weight file was hashed"
    assert set(hashed.values()) == {1}, hashed
    assert all(p.loaded.identity[k] == p.head.info["model"][k] for k in HASH_KEYS)  # the identity checked
    hashed.clear()
    run_predict(head_dir, texts=["a fine film"], device="cpu", stdout=io.StringIO())
    assert hashed and set(hashed.values()) == {1}, hashed


# ---- compute dtype -----------------------------------------------------------------------------------------------


def _recording(head: Head, **extraction) -> Head:
    return dataclasses.replace(head, info={**head.info, "extraction": extraction, "run": {"device": "cuda:0"}})


def test_compute_dtype_on_the_cpu_is_float32_unless_asked(predictor):
    head = predictor.head
    assert predictor.compute_dtype == "float32"
    assert next(predictor.loaded.model.parameters()).dtype == torch.float32
    for recorded in ("bfloat16", "float16", "float32"):
        h = _recording(head, compute_dtype=recorded)
        assert predict_mod.store_compute(h) == (recorded, "cuda")
        assert resolve_compute_dtype(h, "cpu") == "float32"
        assert resolve_compute_dtype(h, "cpu", None) == "float32"
        assert resolve_compute_dtype(h, "cpu", "bfloat16") == "bfloat16"  # explicit wins
    assert predict_mod.store_compute(head)[0] in (None, "float32")
    with pytest.raises(InputError, match="compute_dtype 'float8'"):
        resolve_compute_dtype(head, "cpu", "float8")
    with pytest.raises(InputError, match="--compute-dtype half"):
        run_predict("unused-head", texts=["good"], compute_dtype="half")


def test_an_explicit_compute_dtype_runs_the_model_in_it(head_dir, predictor):
    half = Predictor(head_dir, device="cpu", compute_dtype="bfloat16")
    assert half.compute_dtype == "bfloat16"
    assert next(half.loaded.model.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(half.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_compute_dtype_follows_the_store(predictor):
    head = predictor.head
    want_bf16 = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    assert resolve_compute_dtype(_recording(head, compute_dtype="bfloat16"), "cuda") == want_bf16
    assert resolve_compute_dtype(_recording(head, compute_dtype="float16"), "cuda") == "float16"
    assert resolve_compute_dtype(_recording(head, compute_dtype="float32"), "cuda") == "float32"
    assert resolve_compute_dtype(head, "cuda", "float16") == "float16"
