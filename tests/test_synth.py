"""Synthetic stores: valid and complete, planted neurons found by the probes, deterministic, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import zarr

from spin_cache.errors import InputError, StoreMismatchError
from spin_cache.store.access import array_name
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.layout import COMMITS_DIR
from spin_cache.synth import make_synthetic_store, planted_neurons

SMALL = {"n_rows": 2000, "n_layers": 3, "width": 64, "informative": {2: 4, 3: 3}, "block_rows": 512}
TINY = {"n_rows": 300, "n_layers": 2, "width": 32, "informative": {2: 3}, "block_rows": 128}


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("synth") / "small"
    make_synthetic_store(out, **SMALL)
    return str(out)


@pytest.fixture(scope="module")
def synth_probes(synth_store: str, tmp_path_factory: pytest.TempPathFactory):
    from spin_cache.loop.probe import ProbeSettings, run_probes

    return run_probes(
        synth_store, tmp_path_factory.mktemp("synth_probes"), ProbeSettings(), scheduler="sync", progress=False
    )


def raw_arrays(url: str) -> dict[str, np.ndarray]:
    store = ActivationStore.open(url)
    return {array_name(*key): store.array(*key)[:] for key in store.layout.array_keys()}


def chunk_bytes(url: str) -> dict[str, bytes]:
    root = Path(url)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "/c/" in str(p.relative_to(root)).replace("\\", "/")
    }


def test_store_is_complete_and_verifies(synth_store):
    store = ActivationStore.open(synth_store)
    assert store.is_complete
    assert store.verify() == []
    assert store.layout.n_blocks == 4  # 2000 rows in blocks of 512, the last partial
    assert len(store.committed_blocks()) == 4
    assert store.layers("hidden") == [0, 1, 2, 3]
    assert store.layers("ffn") == [1, 2, 3]
    assert store.width("hidden") == store.width("ffn") == 64
    m = store.manifest
    assert m["model"]["name"] == m["model"]["model_type"] == m["model"]["family"] == "synthetic"
    assert m["model"]["num_layers"] == 3
    assert store.label_names == ["0", "1"]
    assert m["dataset"]["rows_per_split"] == {"train": 1400, "dev": 300, "test": 300}

    ex = store.examples
    assert ex.columns == ["row", "example_id", "split", "label", "label_name", "text_sha256", "n_tokens", "truncated"]
    assert ex["row"].to_list() == list(range(2000))
    assert ex["example_id"][0] == "synth-000000" and ex["example_id"][1999] == "synth-001999"
    assert ex["split"].to_list() == ["train"] * 1400 + ["dev"] * 300 + ["test"] * 300
    per = ex.group_by("split", "label").len()
    assert per.filter(pl.col("split") == "train")["len"].to_list() == [700, 700]  # balanced in every split
    assert set(per.filter(pl.col("split") == "dev")["len"].to_list()) == {150}

    planted = planted_neurons(store)
    assert sorted(planted) == ["ffn", "hidden"]
    for kind in ("hidden", "ffn"):
        assert sorted(planted[kind]) == [2, 3]
        assert len(planted[kind][2]) == 4 and len(planted[kind][3]) == 3
        assert all(0 <= i < 64 for i in planted[kind][2] + planted[kind][3])
    assert planted["hidden"][2] != planted["ffn"][2]  # positions drawn per kind


def test_values_carry_the_planted_signal(synth_store):
    store = ActivationStore.open(synth_store)
    y = store.labels()
    planted = planted_neurons(store)
    x = store.read("hidden", "mean", 2)
    assert x.dtype == np.float32 and x.shape == (2000, 64)
    gap = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
    others = np.setdiff1d(np.arange(64), planted["hidden"][2])
    np.testing.assert_allclose(gap[planted["hidden"][2]], 2.0, atol=0.25)  # +signal vs -signal
    assert np.abs(gap[others]).max() < 0.25
    noise = store.read("hidden", "mean", 1)
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05


def test_probes_find_the_planted_neurons(synth_store, synth_probes):
    planted = planted_neurons(ActivationStore.open(synth_store))
    probes = synth_probes.probes
    assert probes.height == 7
    for row in probes.iter_rows(named=True):
        kind, layer = row["kind"], row["layer"]
        if layer in planted[kind]:
            want = sorted(planted[kind][layer])
            scores = synth_probes.scores.filter(
                (pl.col("kind") == kind) & (pl.col("layer") == layer) & (pl.col("rank") < len(want))
            )
            assert sorted(scores["neuron"].to_list()) == want, (kind, layer)
            assert row["dev_metric"] > 0.9, (kind, layer, row["dev_metric"])
        else:
            assert row["dev_metric"] < 0.65, (kind, layer, row["dev_metric"])


def test_same_arguments_give_identical_stores(tmp_path):
    a = make_synthetic_store(tmp_path / "a", **TINY)
    b = make_synthetic_store(tmp_path / "b", **TINY)
    assert a.fingerprint == b.fingerprint
    assert a.manifest["synthetic"] == b.manifest["synthetic"]
    ra, rb = raw_arrays(a.url), raw_arrays(b.url)
    assert ra.keys() == rb.keys()
    for name in ra:
        assert ra[name].dtype == np.float16
        assert ra[name].tobytes() == rb[name].tobytes(), name
    assert chunk_bytes(a.url) == chunk_bytes(b.url)
    assert a.examples.equals(b.examples)

    c = make_synthetic_store(tmp_path / "c", **(TINY | {"seed": 1}))
    assert c.fingerprint != a.fingerprint
    assert c.manifest["dataset"]["fingerprint"] != a.manifest["dataset"]["fingerprint"]
    assert c.manifest["model"]["weights_sha256"] != a.manifest["model"]["weights_sha256"]
    rc = raw_arrays(c.url)
    assert all(not np.array_equal(ra[n], rc[n]) for n in ra)
    d = make_synthetic_store(tmp_path / "d", **(TINY | {"signal": 0.5}))
    assert d.fingerprint not in (a.fingerprint, c.fingerprint)


def test_rerun_reuses_resumes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "s"
    first = make_synthetic_store(out, **TINY)
    want = raw_arrays(first.url)
    assert make_synthetic_store(out, **TINY).fingerprint == first.fingerprint  # complete: reused as is

    # Make it look interrupted: block 1 uncommitted and its data gone, status incomplete.
    group = zarr.open_group(str(out), mode="a")
    group.attrs["spin_cache"] = dict(group.attrs["spin_cache"]) | {"status": "incomplete"}
    (out / COMMITS_DIR / "block_000001.json").unlink()
    for key in first.layout.array_keys():
        (out / array_name(*key) / "c" / "1" / "0").unlink()
    assert not ActivationStore.open(str(out)).is_complete

    resumed = make_synthetic_store(out, **TINY)
    assert resumed.is_complete and resumed.verify() == []
    got = raw_arrays(resumed.url)
    assert all(got[n].tobytes() == want[n].tobytes() for n in want)

    with pytest.raises(StoreMismatchError):
        make_synthetic_store(out, **(TINY | {"seed": 7}))
    other = make_synthetic_store(out, **(TINY | {"seed": 7}), overwrite=True)
    assert other.fingerprint != first.fingerprint and other.verify() == []


def test_multiclass_bfloat16_and_float32(tmp_path):
    store = make_synthetic_store(
        tmp_path / "m", n_rows=600, n_layers=2, width=16, n_classes=3, informative={1: 3}, dtype="bfloat16"
    )
    assert store.verify() == [] and store.label_names == ["0", "1", "2"]
    assert set(store.examples.group_by("label").len()["len"].to_list()) == {200}
    planted = planted_neurons(store)
    y = store.labels()
    x = store.read("ffn", "mean", 1)[:, planted["ffn"][1]]
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])  # ≈ the ±1 class patterns
    signs = np.sign(means)
    np.testing.assert_allclose(np.abs(means), 1.0, atol=0.3)
    assert len({tuple(s) for s in signs}) == 3  # classes get distinct patterns
    assert all(len(set(signs[:, j])) == 2 for j in range(3))  # every planted neuron tells classes apart
    meta = json.loads((tmp_path / "m" / "zarr.json").read_text())
    assert meta["attributes"]["spin_cache"]["layout"]["dtype"] == "bfloat16"

    f32 = make_synthetic_store(tmp_path / "f", **(TINY | {"dtype": "float32"}))
    f16 = make_synthetic_store(tmp_path / "h", **TINY)
    a, b = f32.read("hidden", "mean", 2), f16.read("hidden", "mean", 2)
    np.testing.assert_allclose(a, b, atol=4e-3)  # same draws, rounded differently


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="no layer 0"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"informative": {"ffn": {0: 2}}}))
    with pytest.raises(InputError, match="none of the kinds"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"informative": {9: 2}}))
    with pytest.raises(InputError, match="neurons"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"informative": {1: 33}}))
    with pytest.raises(InputError, match="kinds"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"kinds": ("attn",)}))
    with pytest.raises(InputError, match="n_classes"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"n_classes": 1}))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a spin-cache store"):
        make_synthetic_store(tmp_path / "occupied", **TINY)
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"


def test_ffn_layers_of_their_own_width(tmp_path):
    """A 1B-like shape (issue 20): FFN layers wider than the hidden states, planted neurons within each width."""
    store = make_synthetic_store(tmp_path / "w", **(TINY | {"ffn_width": 88, "informative": {2: 3}}))
    assert store.verify() == []
    assert store.width("hidden") == 32 and store.width("ffn") == 88
    assert store.read("ffn", "mean", 2).shape == (300, 88)
    planted = planted_neurons(store)
    assert max(planted["ffn"][2]) < 88 and max(planted["hidden"][2]) < 32
    # the same arguments give the same store; ffn_width equal to width is the store without it
    assert make_synthetic_store(tmp_path / "w", **(TINY | {"ffn_width": 88, "informative": {2: 3}})).fingerprint == (
        store.fingerprint
    )
    plain = make_synthetic_store(tmp_path / "p", **TINY)
    assert make_synthetic_store(tmp_path / "q", **(TINY | {"ffn_width": 32})).fingerprint == plain.fingerprint
    hidden = make_synthetic_store(tmp_path / "h", **(TINY | {"kinds": ("hidden",)}))
    assert make_synthetic_store(tmp_path / "g", **(TINY | {"kinds": ("hidden",), "ffn_width": 88})).fingerprint == (
        hidden.fingerprint
    )
    with pytest.raises(InputError, match=r"0\.\.32"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"ffn_width": 88, "informative": {"hidden": {2: 40}}}))
    with pytest.raises(InputError, match="ffn_width"):
        make_synthetic_store(tmp_path / "x", **(TINY | {"ffn_width": 0}))
