"""Store formats: plain zarr lists a new (format 2) store without a warning, and a format-1 store, made before the
side files moved into `spin_cache/`, still opens, verifies, probes, sweeps, resumes, is a cache hit and is replaced by
`--overwrite` without touching anything else.

`tests/data/store_format1` is a real format-1 store, written by spin-cache before format 2 (commit 3077af0) with
`make_synthetic_store(out, **FORMAT1_ARGS)`; tests work on copies of it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from spin_cache.cli import main
from spin_cache.errors import InputError, StoreMismatchError
from spin_cache.store.access import array_name
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.layout import COMMITS_DIR, EXAMPLES_FILE, FORMAT_VERSION, SIDE_NODE
from spin_cache.store.manifest import manifest_hash
from spin_cache.synth import make_synthetic_store, planted_neurons

FORMAT1 = Path(__file__).parent / "data" / "store_format1"
FORMAT1_ARGS = {"n_rows": 200, "n_layers": 2, "width": 16, "informative": {2: 3}, "signal": 3.0, "block_rows": 64}
FORMAT1_ARGS |= {"seed": 7}


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A writable copy of the format-1 store."""
    return Path(shutil.copytree(FORMAT1, tmp_path / "old"))


def iterate_with_plain_zarr(path: Path) -> int:
    """Everything a zarr user does to look around a store: open it, list every member, draw its tree."""
    group = zarr.open_group(str(path), mode="r")
    members = list(group.members(max_depth=None))
    group.tree()
    list(group.groups())
    list(group.arrays())
    zarr.open(str(path), mode="r")
    list(zarr.open_group(str(path), mode="r", use_consolidated=False).members(max_depth=None))
    return len(members)


def test_plain_zarr_lists_a_new_store_without_a_warning(tmp_path):
    out = tmp_path / "new"
    store = make_synthetic_store(out, **FORMAT1_ARGS)
    assert store.format_version == FORMAT_VERSION == 2
    assert sorted(p.name for p in out.iterdir()) == ["ffn", "hidden", SIDE_NODE, "zarr.json"]
    assert (out / EXAMPLES_FILE).is_file() and len(list((out / COMMITS_DIR).iterdir())) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n = iterate_with_plain_zarr(out)
    assert n == 2 + 2 + 5 + 1  # the kinds' and poolings' groups, five arrays, the side node
    side = zarr.open_array(str(out / SIDE_NODE), mode="r")
    assert side.shape == (0,) and "examples.parquet" in side.attrs["spin_cache_side_files"]


def test_a_format_1_store_made_zarr_warn(old):
    """What format 2 fixes (and what keeps the fixture honest): zarr warns about format 1's side files."""
    with pytest.warns(UserWarning, match="not recognized as a component of a Zarr hierarchy"):
        iterate_with_plain_zarr(old)


def test_a_format_1_store_opens_verifies_and_reads(old):
    store = ActivationStore.open(str(old))
    assert store.format_version == 1 and store.is_complete
    assert store.side.examples == "examples.parquet" and store.side.commits == "commits"
    assert store.verify() == [] and store.reuse_problems() == []
    assert store.manifest["manifest_sha256"] == manifest_hash(store.manifest)
    assert store.examples.height == 200 and len(store.committed_blocks()) == 4
    assert store.info()["bytes_stored"]["examples"] == (old / "examples.parquet").stat().st_size
    x = store.read("hidden", "mean", 2, split="train")
    assert x.shape == (140, 16) and np.isfinite(x).all()
    group = zarr.open_group(str(old), mode="r")
    assert np.array_equal(store.decode(group[array_name("hidden", "mean", 2)][:]), store.read("hidden", "mean", 2))


def test_a_format_1_store_keeps_its_fingerprint_and_is_a_cache_hit(old, tmp_path):
    """The values are encoded as in format 1, so the fingerprint is the same: the same arguments find the old store
    (nothing is rewritten), and a new store made from them has the old store's fingerprint."""
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*")}
    hit = make_synthetic_store(old, **FORMAT1_ARGS)
    assert hit.format_version == 1 and {p: p.stat().st_mtime_ns for p in old.rglob("*")} == before
    new = make_synthetic_store(tmp_path / "new", **FORMAT1_ARGS)
    assert new.fingerprint == hit.fingerprint and new.format_version == 2
    assert np.array_equal(new.read("ffn", "mean", 2), hit.read("ffn", "mean", 2))


def test_probe_and_sweep_a_format_1_store(old, tmp_path, capsys):
    scope = ["--kinds", "hidden", "--poolings", "mean", "--C", "0.1,1", "--scheduler", "sync", "--quiet", "--json"]
    assert main(["probe", str(old), "--out", str(tmp_path / "probes"), *scope]) == 0
    probes = json.loads(capsys.readouterr().out)
    best = max(probes, key=lambda r: r["dev_metric"])
    assert best["layer"] == 2, probes  # the planted layer
    argv = ["sweep", str(old), "--probes", str(tmp_path / "probes"), "--out", str(tmp_path / "sweep")]
    assert main([*argv, "--eta", "0.1,0.5", *scope]) == 0
    assert json.loads(capsys.readouterr().out)["spin"]["dev"]
    assert planted_neurons(ActivationStore.open(str(old)))["hidden"][2]


def test_an_interrupted_format_1_store_is_finished_in_its_own_layout(old):
    group = zarr.open_group(str(old), mode="a")
    group.attrs["spin_cache"] = dict(group.attrs["spin_cache"]) | {"status": "incomplete"}
    (old / "commits" / "block_000002.json").unlink()
    store = ActivationStore.open(str(old))
    for key in store.layout.array_keys():
        (old / array_name(*key) / "c" / "2" / "0").unlink()
    done = make_synthetic_store(old, **FORMAT1_ARGS)
    assert done.is_complete and done.format_version == 1 and done.verify() == []
    assert (old / "commits" / "block_000002.json").is_file() and not (old / SIDE_NODE).exists()
    assert np.array_equal(done.read("hidden", "mean", 2), ActivationStore.open(str(FORMAT1)).read("hidden", "mean", 2))


def test_overwrite_removes_the_parts_of_either_format_and_nothing_else(old):
    (old / "notes.txt").write_text("mine")
    other = FORMAT1_ARGS | {"seed": 8}
    with pytest.raises(StoreMismatchError, match="other inputs"):
        make_synthetic_store(old, **other)
    new = make_synthetic_store(old, **other, overwrite=True)  # a format-1 store replaced by a format-2 one
    assert new.format_version == 2 and new.verify() == []
    assert sorted(p.name for p in old.iterdir()) == ["ffn", "hidden", "notes.txt", SIDE_NODE, "zarr.json"]
    again = make_synthetic_store(old, **FORMAT1_ARGS | {"kinds": ("hidden",)}, overwrite=True)
    assert again.verify() == [] and sorted(p.name for p in old.iterdir()) == [
        "hidden",
        "notes.txt",
        SIDE_NODE,
        "zarr.json",
    ]
    assert (old / "notes.txt").read_text() == "mine"


def test_a_store_of_a_newer_format_is_refused_with_advice(old):
    meta = json.loads((old / "zarr.json").read_text())
    meta["attributes"]["spin_cache"]["format_version"] = FORMAT_VERSION + 1
    (old / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"store format 3 was written by a newer spin-cache.*upgrade"):
        ActivationStore.open(str(old))
    with pytest.raises(InputError, match=r"newer spin-cache.*remove it by hand"):
        make_synthetic_store(old, **FORMAT1_ARGS, overwrite=True)
    assert (old / "examples.parquet").is_file()  # nothing removed


def test_verify_names_a_missing_side_node_and_a_resume_makes_it_again(tmp_path):
    out = tmp_path / "new"
    make_synthetic_store(out, **FORMAT1_ARGS)
    (out / SIDE_NODE / "zarr.json").unlink()
    assert any(line.startswith(f"{SIDE_NODE}/zarr.json: missing") for line in ActivationStore.open(str(out)).verify())
    # writing the examples again (a resumed extraction's repair) makes the node again, keeping the commit markers
    store = ActivationStore.open(str(out), mode="a")
    store.write_examples(store.examples)
    assert ActivationStore.open(str(out)).verify() == [] and len(list((out / COMMITS_DIR).iterdir())) == 4
