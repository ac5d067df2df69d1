"""The typed manifest: `Manifest.from_json(d).to_json()` gives back d byte for byte (so no existing store's manifest
hash or fingerprint changes), completing a store writes what the dict code wrote, and malformed manifests are refused
naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr

from spin_cache.errors import InputError, IntegrityError
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.manifest import MANIFEST_HASH_KEY, Manifest, manifest_hash, store_fingerprint
from spin_cache.synth import make_synthetic_store

from .test_store_format import FORMAT1, FORMAT1_ARGS


def raw_manifest(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["spin_cache"]


@pytest.fixture(scope="module")
def new_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifest") / "new"
    make_synthetic_store(out, **FORMAT1_ARGS)
    return out


@pytest.fixture(params=["format1", "new", "extracted"])
def store_path(request: pytest.FixtureRequest, new_store: Path) -> Path:
    if request.param == "format1":
        return FORMAT1
    if request.param == "new":
        return new_store
    return Path(request.getfixturevalue("small_store"))  # made by `extract` (conftest)


def test_the_round_trip_is_exact_and_keeps_hash_and_fingerprint(store_path):
    raw = raw_manifest(store_path)
    record = Manifest.from_json(raw)
    assert json.dumps(record.to_json()) == json.dumps(raw)  # keys, their order and every value
    assert record.expected_hash() == manifest_hash(raw) == raw[MANIFEST_HASH_KEY] == record.manifest_sha256
    assert record.expected_fingerprint() == store_fingerprint(raw) == raw["fingerprint"] == record.fingerprint
    store = ActivationStore.open(str(store_path))
    assert store.manifest_record == record and store.manifest == raw


def test_writing_the_record_back_leaves_zarr_json_byte_for_byte(store_path, tmp_path):
    copy = Path(shutil.copytree(store_path, tmp_path / "copy"))
    before = (copy / "zarr.json").read_bytes()
    group = zarr.open_group(str(copy), mode="a")
    group.attrs["spin_cache"] = Manifest.from_json(raw_manifest(copy)).to_json()
    assert (copy / "zarr.json").read_bytes() == before


def test_completing_writes_what_the_dict_code_wrote(new_store):
    raw = raw_manifest(new_store) | {"status": "incomplete"}
    raw.pop("run")
    run = {"finished": "now", "overflow": 0}
    old = dict(raw) | {"status": "complete", "run": run}  # what mark_complete did with dicts
    old[MANIFEST_HASH_KEY] = manifest_hash(old)
    assert json.dumps(Manifest.from_json(raw).completed(run).to_json()) == json.dumps(old)


def test_a_new_manifest_is_ordered_as_before(new_store):
    raw = raw_manifest(new_store)
    assert list(raw)[:10] == [
        "format",
        "format_version",
        "spin_cache_version",
        "status",
        "created",
        "model",
        "dataset",
        "extraction",
        "layout",
        "fingerprint",
    ]
    assert list(raw)[10:] == ["synthetic", MANIFEST_HASH_KEY, "run"]


def test_unknown_keys_and_explicit_nulls_are_kept_in_place():
    raw = raw_manifest(FORMAT1)
    edited = {"zzz_first": [1, 2]} | raw | {"run": None, "later": {"x": 1}}
    record = Manifest.from_json(edited)
    assert record.extra == {"zzz_first": [1, 2], "later": {"x": 1}} and record.run is None
    assert json.dumps(record.to_json()) == json.dumps(edited)


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        pytest.param(lambda m: m.pop("dataset"), IntegrityError, "lacks 'dataset'", id="missing"),
        pytest.param(lambda m: m.update(fingerprint=3), IntegrityError, "'fingerprint' is int", id="type"),
        pytest.param(lambda m: m.update(format_version=True), IntegrityError, "is bool", id="bool-version"),
        pytest.param(lambda m: m.update(format_version=9), InputError, "newer spin-cache", id="newer"),
        pytest.param(lambda m: m["layout"].update(n_rows="200"), IntegrityError, "layout", id="layout-type"),
        pytest.param(lambda m: m["layout"].pop("dtype"), IntegrityError, "layout is malformed", id="layout-key"),
        pytest.param(lambda m: m.update(run=[1]), IntegrityError, "'run' is list", id="run-type"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_problem(edit, error, match, tmp_path):
    raw = raw_manifest(FORMAT1)
    edit(raw)
    with pytest.raises(error, match=match):
        Manifest.from_json(raw)
    copy = Path(shutil.copytree(FORMAT1, tmp_path / "copy"))
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["spin_cache"] = raw
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(error, match=str(copy)):
        ActivationStore.open(str(copy))


def test_the_manifest_dict_is_a_copy(new_store):
    store = ActivationStore.open(str(new_store))
    d = store.manifest
    d["model"]["name"] = "changed"
    d["status"] = "incomplete"
    assert store.manifest_record.model["name"] == "synthetic" and store.is_complete
    assert store.manifest["model"]["name"] == "synthetic" and store.verify() == []
