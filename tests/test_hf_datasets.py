"""Hugging Face datasets as input, built here with `datasets` (no network): a DatasetDict saved to disk, ClassLabel
features, a dataset without a validation split (dev carved from train), column inference, and fingerprints equal
to the equivalent file's."""

from __future__ import annotations

import json

import pytest

datasets = pytest.importorskip("datasets")

from spin_cache.data import hf as hf_module  # noqa: E402
from spin_cache.data import load_dataset  # noqa: E402
from spin_cache.errors import InputError  # noqa: E402

TRAIN = [
    ("a gripping , funny film", 1),
    ("dull and slow", 0),
    ("an utterly charming piece of work", 1),
    ("i would not recommend it", 0),
    ("strong performances", 1),
    ("the plot is thin", 0),
    ("a delight", 1),
    ("tedious", 0),
]
DEV = [("moving and warm", 1), ("a mess", 0)]
TEST = [("wonderful", 1), ("boring", 0), ("fine work", 1)]


def _ds(rows, features=None, text="text", label="label"):
    data = {text: [t for t, _ in rows], label: [y for _, y in rows]}
    return datasets.Dataset.from_dict(data, features=features)


def _dict(**splits):
    return datasets.DatasetDict(splits)


def _jsonl(path, parts):
    with open(path, "w") as f:
        for split, rows, names in parts:
            for text, y in rows:
                f.write(json.dumps({"text": text, "label": names[y] if names else y, "split": split}) + "\n")
    return path


def test_saved_dataset_dict_loads_with_validation_as_dev(tmp_path):
    folder = tmp_path / "saved"
    _dict(train=_ds(TRAIN), validation=_ds(DEV), test=_ds(TEST)).save_to_disk(str(folder))
    ds = load_dataset(str(folder))
    assert [len(ds.split_indices(s)) for s in ("train", "dev", "test")] == [8, 2, 3]
    assert ds.label_names == ("0", "1")
    assert ds.source["kind"] == "save_to_disk"
    assert ds.source["splits"] == {"train": "train", "dev": "validation", "test": "test"}
    assert ds.source["dev_split"] is None
    # content-based fingerprint: the same rows from a JSON Lines file with a split column
    same = load_dataset(_jsonl(tmp_path / "same.jsonl", [("train", TRAIN, None), ("dev", DEV, None),
                                                          ("test", TEST, None)]))  # fmt: skip
    assert ds.fingerprint() == same.fingerprint()
    assert load_dataset(folder).fingerprint() == ds.fingerprint()  # a Path works too
    # the objects themselves give the same dataset
    obj = load_dataset(_dict(train=_ds(TRAIN), validation=_ds(DEV), test=_ds(TEST)))
    assert obj.fingerprint() == ds.fingerprint() and obj.source["kind"] == "object"


def test_class_label_names_are_kept(tmp_path):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    dd = _dict(train=_ds(TRAIN, features), validation=_ds(DEV, features))
    dd.save_to_disk(str(tmp_path / "cl"))
    ds = load_dataset(str(tmp_path / "cl"))
    assert ds.label_names == ("negative", "positive")
    assert ds.source["class_label"] == ["negative", "positive"]
    names = ["negative", "positive"]
    as_file = load_dataset(_jsonl(tmp_path / "names.jsonl", [("train", TRAIN, names), ("dev", DEV, names)]))
    assert ds.fingerprint() == as_file.fingerprint()
    # the ClassLabel's own order is kept (not sorted): the author's order of classes
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["very good", "bad"])}
    )
    ds = load_dataset(_dict(train=_ds(TRAIN, features), validation=_ds(DEV, features)))
    assert ds.label_names == ("very good", "bad")
    assert [ds.label_names[y] for y in ds.labels[:2]] == ["bad", "very good"]  # rows 0, 1: labels 1, 0


def test_no_validation_split_carves_dev_from_train(tmp_path):
    rows = [(f"text number {i} " + ("good" if i % 3 else "bad"), int(i % 3 != 0)) for i in range(60)]
    dd = _dict(train=_ds(rows), test=_ds(TEST))
    with pytest.raises(InputError, match=r"no validation split.*--dev-split") as info:
        load_dataset(dd)
    assert "\n" not in str(info.value)
    ds = load_dataset(dd, dev_split=0.25, seed=3)
    dev = ds.split_indices("dev")
    assert len(dev) == 15 and len(ds.split_indices("train")) == 45 and len(ds.split_indices("test")) == 3
    # stratified: a quarter of each class
    assert sorted(ds.labels[dev].tolist()).count(0) == 5
    assert ds.source["dev_split"] == {"fraction": 0.25, "seed": 3, "from": "train", "rows": 15, "stratified": True}
    assert ds.source["splits"]["dev"].startswith("0.25 of train")
    assert load_dataset(dd, dev_split=0.25, seed=3).fingerprint() == ds.fingerprint()  # deterministic
    assert load_dataset(dd, dev_split=0.25, seed=4).fingerprint() != ds.fingerprint()
    # saved to disk: the same
    dd.save_to_disk(str(tmp_path / "nodev"))
    assert load_dataset(str(tmp_path / "nodev"), dev_split=0.25, seed=3).fingerprint() == ds.fingerprint()
    with pytest.raises(InputError, match="only when there is none"):
        load_dataset(_dict(train=_ds(TRAIN), validation=_ds(DEV)), dev_split=0.2)
    for bad in (0, 1.5, -0.1, "x"):
        with pytest.raises(InputError, match="--dev-split"):
            load_dataset(dd, dev_split=bad)
    with pytest.raises(InputError, match="--dev-split"):
        load_dataset("sst2", dev_split=0.1)


def test_single_dataset_with_and_without_split_column():
    rows = TRAIN + DEV
    data = {"text": [t for t, _ in rows], "label": [y for _, y in rows], "split": ["train"] * 8 + ["validation"] * 2}
    ds = load_dataset(datasets.Dataset.from_dict(data))
    assert len(ds.split_indices("dev")) == 2
    plain = load_dataset(_ds(TRAIN * 3), dev_split=0.25, seed=0)
    assert len(plain.split_indices("dev")) == 6 and plain.source["splits"]["train"] == "(all rows)"


def test_column_inference_and_ambiguity():
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
         "sentiment": datasets.ClassLabel(names=["neg", "pos"])}
    )  # fmt: skip

    def glue_like(rows):
        return datasets.Dataset.from_dict(
            {"sentence": [t for t, _ in rows], "idx": list(range(len(rows))), "sentiment": [y for _, y in rows]},
            features=features,
        )

    ds = load_dataset(_dict(train=glue_like(TRAIN), validation=glue_like(DEV)))
    assert ds.source["columns"] == {"text": "sentence", "label": "sentiment"}
    assert ds.label_names == ("neg", "pos")
    pairs = {"premise": [t for t, _ in TRAIN], "hypothesis": [t for t, _ in TRAIN], "label": [y for _, y in TRAIN]}
    pair_dd = _dict(train=datasets.Dataset.from_dict(pairs), validation=datasets.Dataset.from_dict(pairs))
    with pytest.raises(InputError, match=r"cannot tell the text column.*premise, hypothesis.*--text-column") as info:
        load_dataset(pair_dd)
    assert "\n" not in str(info.value)
    assert load_dataset(pair_dd, text_column="premise").source["columns"]["text"] == "premise"
    with pytest.raises(InputError, match=r"no text column 'body'.*premise"):
        load_dataset(pair_dd, text_column="body")


def test_unlabelled_and_unknown_splits_are_left_out_and_recorded():
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])})
    unlabelled = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [-1, -1]}, features=features)
    dd = _dict(train=_ds(TRAIN, features), validation=_ds(DEV, features), test=unlabelled, unsupervised=unlabelled)
    ds = load_dataset(dd)
    assert len(ds.split_indices("test")) == 0
    assert set(ds.source["ignored_splits"]) == {"test", "unsupervised"}
    assert "test" not in ds.source["splits"]
    # a missing label among labelled rows is refused, naming the split and the row
    bad = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, -1]}, features=features)
    with pytest.raises(InputError, match=r"\[validation\]: row 2, column 'label'.*missing"):
        load_dataset(_dict(train=_ds(TRAIN, features), validation=bad))


def test_hub_names_go_to_datasets_load_dataset(monkeypatch):
    calls = []

    def fake(name, config=None, revision=None):
        calls.append((name, config, revision))
        return _dict(train=_ds(TRAIN), validation=_ds(DEV))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = load_dataset("someone/reviews:small", revision="abc123")
    assert calls == [("someone/reviews", "small", "abc123")]
    assert ds.source["kind"] == "hub"
    assert (ds.source["name"], ds.source["config"], ds.source["revision"]) == ("someone/reviews", "small", "abc123")
    assert ds.name == "someone/reviews:small"
    load_dataset("imdb")
    assert calls[-1] == ("imdb", None, None)


def test_hub_name_not_cached_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(name, config=None, revision=None):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match=r"imdb: file not found .*local cache \(HF_HUB_OFFLINE=1\)") as info:
        load_dataset("imdb")
    assert "\n" not in str(info.value)
    # file-like names stay files
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        load_dataset("nope.csv")
    assert hf_module.looks_like_hub_id("glue:sst2") and not hf_module.looks_like_hub_id("a/b/c")


def test_builtin_sst2_is_unchanged():
    ds = load_dataset("sst2")
    assert ds.source == {} and ds.name == "sst2"
