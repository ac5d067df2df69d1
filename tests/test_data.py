"""Tests for spin_cache.data: loading and validating labelled datasets."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from spin_cache.data import loading as data_mod
from spin_cache.data.loading import SPLITS, LabelledDataset, load_dataset
from spin_cache.errors import InputError

ROWS = [
    # (split, label, text)
    ("train", "1", "a fine film"),
    ("train", "0", "a dull film"),
    ("dev", "1", "great fun"),
    ("train", "1", "lovely"),
    ("test", "0", "boring"),
    ("dev", "0", "tedious"),
]


def write_csv(path: Path, header: list[str], rows: list[list[str]], sep: str = ",") -> Path:
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_txt(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{label} {text}\n" for label, text in rows), encoding="utf-8")
    return path


def write_table(path: Path, records: list[dict]) -> Path:
    """Write records in the format given by the path's extension."""
    ext = path.suffix
    if ext in (".jsonl", ".ndjson"):
        return write_jsonl(path, records)
    if ext == ".parquet":
        pl.DataFrame(records).write_parquet(path)
        return path
    header = list(records[0])
    sep = "\t" if ext == ".tsv" else ","
    return write_csv(path, header, [[str(r[k]) for k in header] for r in records], sep=sep)


def raises_input(pattern: str):
    """pytest.raises for InputError; pair with check_one_line to check the message is one line."""
    return pytest.raises(InputError, match=pattern)


def check_one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ------------------------------------------------------------------------------------------ built-in


@pytest.fixture(scope="module")
def sst2() -> LabelledDataset:
    return load_dataset()


def test_builtin_sst2_sizes_and_labels(sst2: LabelledDataset) -> None:
    assert sst2.name == "sst2"
    assert len(sst2) == 6920 + 872 + 1821
    assert [len(sst2.split_indices(s)) for s in SPLITS] == [6920, 872, 1821]
    assert sst2.n_classes == 2
    assert sst2.label_names == ("negative", "positive")
    assert sst2.labels.dtype == np.int64
    assert set(np.unique(sst2.labels).tolist()) == {0, 1}
    assert sst2.ids[0] == "train-000000"
    assert sst2.ids[6920] == "dev-000000"
    assert sst2.ids[-1] == "test-001820"
    assert len(set(sst2.ids)) == len(sst2)
    # First line of train.txt is "1 a stirring , funny ...": text stripped, label 1.
    assert sst2.texts[0].startswith("a stirring , funny")
    assert sst2.texts[0] == sst2.texts[0].strip()
    assert sst2.labels[0] == 1
    # Row order: train, then dev, then test.
    assert list(sst2.splits[:1]) == ["train"] and sst2.splits[6920] == "dev" and sst2.splits[-1] == "test"
    np.testing.assert_array_equal(sst2.split_indices("validation"), np.arange(6920, 6920 + 872))


def test_builtin_none_is_sst2(sst2: LabelledDataset) -> None:
    assert load_dataset(None).fingerprint() == sst2.fingerprint()


def test_fingerprint_stable_and_sensitive(sst2: LabelledDataset) -> None:
    again = load_dataset("sst2")
    fp = sst2.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert again.fingerprint() == fp
    assert again == sst2
    labels = sst2.labels.copy()
    labels[5] = 1 - labels[5]
    changed = dataclasses.replace(sst2, labels=labels)
    assert changed.fingerprint() != fp
    assert changed != sst2
    assert hash(again) == hash(sst2)


def test_fingerprint_length_prefixed() -> None:
    def ds(ids: tuple[str, ...], texts: tuple[str, ...], names: tuple[str, ...] = ("a", "b")) -> LabelledDataset:
        return LabelledDataset("x", ids, texts, np.array([0, 1]), np.array(["train", "dev"]), names)

    base = ds(("a", "bc"), ("t", "u"))
    assert base.fingerprint() != ds(("ab", "c"), ("t", "u")).fingerprint()
    assert base.fingerprint() != ds(("a", "bc"), ("tu", "")).fingerprint()
    assert base.fingerprint() != ds(("a", "bc"), ("t", "u"), ("ab", "")).fingerprint()
    # The name is not part of the fingerprint.
    assert dataclasses.replace(base, name="other").fingerprint() == base.fingerprint()


def test_fingerprint_changes_with_one_label_in_files(tmp_path: Path) -> None:
    rows = [("1", "good"), ("0", "bad"), ("1", "nice")]
    a = load_dataset(train=write_txt(tmp_path / "a_train.txt", rows), dev=write_txt(tmp_path / "d.txt", rows))
    rows[2] = ("0", "nice")
    b = load_dataset(train=write_txt(tmp_path / "b_train.txt", rows), dev=tmp_path / "d.txt")
    assert a.fingerprint() != b.fingerprint()


def test_builtin_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "_builtin_dir", lambda: tmp_path / "nope")
    with raises_input(r"nope.*ships with the source checkout") as e:
        load_dataset("sst2")
    check_one_line(e)


def test_dataset_is_immutable(sst2: LabelledDataset) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        sst2.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        sst2.labels[0] = 0


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".ndjson", ".parquet"])
def test_single_file_with_split_column(tmp_path: Path, ext: str) -> None:
    records = [{"split": s, "label": int(lab), "text": t} for s, lab, t in ROWS]
    path = write_table(tmp_path / f"all{ext}", records)
    ds = load_dataset(path)
    assert ds.name == f"all{ext}"
    assert list(ds.splits) == ["train"] * 3 + ["dev"] * 2 + ["test"]
    assert ds.texts == ("a fine film", "a dull film", "lovely", "great fun", "tedious", "boring")
    assert ds.labels.tolist() == [1, 0, 1, 1, 0, 0]
    assert ds.label_names == ("0", "1")
    assert ds.ids == (
        "train-000000",
        "train-000001",
        "train-000002",
        "dev-000000",
        "dev-000001",
        "test-000000",
    )


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".txt"])
def test_separate_split_files(tmp_path: Path, ext: str) -> None:
    files = {}
    for split in SPLITS:
        rows = [(lab, t) for s, lab, t in ROWS if s == split]
        path = tmp_path / f"{split}{ext}"
        if ext == ".txt":
            write_txt(path, rows)
        else:
            write_table(path, [{"text": t, "label": lab} for lab, t in rows])
        files[split] = path
    ds = load_dataset(None, **files)
    assert ds.name == f"train{ext}+dev{ext}+test{ext}"
    assert [len(ds.split_indices(s)) for s in SPLITS] == [3, 2, 1]
    assert ds.texts[:3] == ("a fine film", "a dull film", "lovely")
    assert ds.labels.tolist() == [1, 0, 1, 1, 0, 0]
    assert ds.label_names == ("0", "1")
    # Test is optional; the default data="sst2" is ignored when split files are given.
    ds2 = load_dataset(train=files["train"], dev=files["dev"])
    assert [len(ds2.split_indices(s)) for s in SPLITS] == [3, 2, 0]


def test_string_labels_mapping_over_all_splits(tmp_path: Path) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "e", "label": " neutral "}],
    )
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "c", "label": "neutral"}, {"text": "d", "label": "pos"}])
    ds = load_dataset(train=train, dev=dev)
    assert ds.label_names == ("neg", "neutral", "pos")
    assert ds.labels.tolist() == [2, 0, 1, 1, 2]
    assert ds.n_classes == 3


def test_integer_labels_mapped_sorted(tmp_path: Path) -> None:
    records = [
        {"split": "train", "label": "7", "text": "a"},
        {"split": "train", "label": 3, "text": "b"},
        {"split": "train", "label": " 10 ", "text": "c"},
        {"split": "dev", "label": 3, "text": "d"},
    ]
    ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", records))
    assert ds.label_names == ("3", "7", "10")
    assert ds.labels.tolist() == [1, 0, 2, 0]


def test_mixed_labels_are_strings(tmp_path: Path) -> None:
    records = [
        {"split": "train", "label": 1, "text": "a"},
        {"split": "train", "label": "x", "text": "b"},
        {"split": "dev", "label": 1, "text": "c"},
    ]
    ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", records))
    assert ds.label_names == ("1", "x")
    assert ds.labels.tolist() == [0, 1, 0]


def test_split_aliases_and_case(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        ["split", "label", "text"],
        [
            ["Training", "0", "a"],
            ["train", "1", "b"],
            ["validation", "0", "c"],
            [" VAL ", "1", "d"],
            ["testing", "1", "e"],
        ],
    )
    ds = load_dataset(path)
    assert list(ds.splits) == ["train", "train", "dev", "dev", "test"]


def test_ids_from_id_column(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        ["id", "split", "label", "text"],
        [["d1", "dev", "0", "a"], ["t1", "train", "0", "b"], ["t2", "train", "1", "c"]],
    )
    ds = load_dataset(path)
    assert ds.ids == ("t1", "t2", "d1")
    # A custom id column name, integer ids in JSON Lines.
    jl = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"uid": 5, "split": "train", "label": 0, "text": "a"},
            {"uid": 6, "split": "train", "label": 1, "text": "b"},
            {"uid": 7, "split": "dev", "label": 1, "text": "c"},
        ],
    )
    assert load_dataset(jl, id_column="uid").ids == ("5", "6", "7")


def test_custom_column_names(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        ["part", "y", "sentence"],
        [["train", "0", "a"], ["train", "1", "b"], ["dev", "1", "c"]],
    )
    ds = load_dataset(path, text_column="sentence", label_column="y", split_column="part")
    assert ds.texts == ("a", "b", "c")


def test_csv_quoted_fields_and_texts_kept_as_given(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        'split,label,text\ntrain,0,"  has, comma  "\ntrain,1,"multi\nline"\ndev,1,"say ""hi"""\n',
        encoding="utf-8",
    )
    ds = load_dataset(path)
    assert ds.texts == ("  has, comma  ", "multi\nline", 'say "hi"')


def test_tsv_is_read_without_quoting(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text('split\tlabel\ttext\ntrain\t0\t"quoted" start\ntrain\t1\tb\ndev\t1\tc\n', encoding="utf-8")
    assert load_dataset(path).texts[0] == '"quoted" start'


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffsplit,label,text\r\ntrain,0,é\r\ntrain,1,b\r\ndev,1,c\r\n".encode())
    assert load_dataset(path).texts == ("é", "b", "c")
    txt = tmp_path / "train.txt"
    txt.write_bytes(b"0 one\r\n1 two\r\n")
    assert load_dataset(train=txt, dev=txt).texts[:2] == ("one", "two")


# ------------------------------------------------------------------------------------------ subset


def test_subset(sst2: LabelledDataset) -> None:
    sub = sst2.subset(5)
    assert len(sub) == 15
    assert sub.label_names == sst2.label_names
    assert sub.ids[:5] == sst2.ids[:5]
    assert sub.ids[5] == "dev-000000"
    assert sub.ids[10] == "test-000000"
    np.testing.assert_array_equal(sub.labels[:5], sst2.labels[:5])
    sub2 = sst2.subset({"train": 3, "validation": 2, "test": 0})
    assert [len(sub2.split_indices(s)) for s in SPLITS] == [3, 2, 0]
    sub3 = sst2.subset({"train": 10})
    assert [len(sub3.split_indices(s)) for s in SPLITS] == [10, 872, 1821]
    assert sst2.subset(10**9).fingerprint() == sst2.fingerprint()
    with pytest.raises(InputError, match="unknown split 'bogus'"):
        sst2.subset({"bogus": 1})
    with pytest.raises(InputError, match="integer >= 0"):
        sst2.subset(-1)


def test_split_indices_unknown(sst2: LabelledDataset) -> None:
    with pytest.raises(InputError, match="unknown split 'holdout'"):
        sst2.split_indices("holdout")


# ------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path: Path) -> None:
    with raises_input(r"imdb: file not found \(the only built-in dataset is 'sst2'\)"):
        load_dataset("imdb")
    with raises_input(r"nope\.csv: file not found") as e:
        load_dataset(tmp_path / "nope.csv")
    check_one_line(e)
    good = write_txt(tmp_path / "t.txt", [("0", "a"), ("1", "b")])
    with raises_input(r"missing_dev\.txt: file not found"):
        load_dataset(train=good, dev=tmp_path / "missing_dev.txt")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with raises_input(r"d\.xlsx: unsupported file type '\.xlsx'; use one of .*\.csv.*\.parquet") as e:
        load_dataset(path)
    check_one_line(e)


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".parquet"])
def test_missing_text_or_label_column(tmp_path: Path, ext: str) -> None:
    path = write_table(tmp_path / f"d{ext}", [{"split": "train", "label": "1", "sentence": "a"}])
    with raises_input(rf"d\{ext}: no text column 'text' \(columns present: 'split', 'label', 'sentence'\)") as e:
        load_dataset(path)
    assert "--text-column" in check_one_line(e)
    path2 = write_table(tmp_path / f"e{ext}", [{"split": "train", "y": "1", "text": "a"}])
    with raises_input(rf"e\{ext}: no label column 'label' \(columns present: 'split', 'y', 'text'\)"):
        load_dataset(path2)


def test_missing_column_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"split": "train", "label": 1, "sentence": "a"}])
    with raises_input(r"d\.jsonl: line 1: no text field 'text' \(fields present: 'split', 'label', 'sentence'\)"):
        load_dataset(path)
    path = write_jsonl(
        tmp_path / "e.jsonl", [{"split": "train", "label": 1, "text": "a"}, {"split": "train", "text": "b"}]
    )
    with raises_input(r"e\.jsonl: line 2: field 'label' is missing"):
        load_dataset(path)


def test_empty_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["split", "label", "text"], [["train", "0", "a"], ["train", "1", "   "]])
    with raises_input(r"d\.csv: line 3, column 'text': the text is empty or whitespace only") as e:
        load_dataset(path)
    check_one_line(e)
    path = write_csv(tmp_path / "e.csv", ["split", "label", "text"], [["train", "0", "a"], ["train", "1", ""]])
    with raises_input(r"e\.csv: line 3, column 'text': the text is missing"):
        load_dataset(path)
    jl = write_jsonl(tmp_path / "f.jsonl", [{"split": "train", "label": 0, "text": "\t\n "}])
    with raises_input(r"f\.jsonl: line 1, column 'text': the text is empty or whitespace only"):
        load_dataset(jl)
    pq = write_table(
        tmp_path / "g.parquet",
        [{"split": "train", "label": 0, "text": "a"}, {"split": "dev", "label": 1, "text": " "}],
    )
    with raises_input(r"g\.parquet: row 2, column 'text': the text is empty"):
        load_dataset(pq)


def test_missing_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["split", "label", "text"], [["train", "0", "a"], ["train", "", "b"]])
    with raises_input(r"d\.csv: line 3, column 'label': the label is missing") as e:
        load_dataset(path)
    check_one_line(e)
    path = write_csv(tmp_path / "e.csv", ["split", "label", "text"], [["train", "0", "a"], ["train", " ", "b"]])
    with raises_input(r"e\.csv: line 3, column 'label': the label is empty"):
        load_dataset(path)
    jl = write_jsonl(tmp_path / "f.jsonl", [{"split": "train", "label": None, "text": "a"}])
    with raises_input(r"f\.jsonl: line 1, column 'label': the label is missing"):
        load_dataset(jl)
    pq = tmp_path / "g.parquet"
    pl.DataFrame({"split": ["train", "dev"], "label": [1, None], "text": ["a", "b"]}).write_parquet(pq)
    with raises_input(r"g\.parquet: row 2, column 'label': the label is missing"):
        load_dataset(pq)


def test_csv_line_numbers_account_for_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('split,label,text\ntrain,0,"two\nlines"\ntrain,1,\n', encoding="utf-8")
    with raises_input(r"d\.csv: line 4, column 'text'"):
        load_dataset(path)


def test_empty_splits(tmp_path: Path) -> None:
    only_train = write_csv(tmp_path / "d.csv", ["split", "label", "text"], [["train", "0", "a"], ["train", "1", "b"]])
    with raises_input(r"d\.csv: the dev split has no rows") as e:
        load_dataset(only_train)
    check_one_line(e)
    only_dev = write_csv(tmp_path / "e.csv", ["split", "label", "text"], [["dev", "0", "a"], ["dev", "1", "b"]])
    with raises_input(r"e\.csv: the train split has no rows"):
        load_dataset(only_dev)
    good = write_txt(tmp_path / "good.txt", [("0", "a"), ("1", "b")])
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("")
    with raises_input(r"empty\.txt: the train file has no rows"):
        load_dataset(train=empty_txt, dev=good)
    with raises_input(r"empty\.txt: the test file has no rows"):
        load_dataset(train=good, dev=good, test=empty_txt)
    empty_jl = tmp_path / "e.jsonl"
    empty_jl.write_text("\n")
    with raises_input(r"e\.jsonl: the file has no rows"):
        load_dataset(empty_jl)
    header_only = tmp_path / "h.csv"
    header_only.write_text("label,text\n")
    with raises_input(r"h\.csv: the dev file has no rows"):
        load_dataset(train=good, dev=header_only)
    empty_csv = tmp_path / "z.csv"
    empty_csv.write_text("")
    with raises_input(r"z\.csv: the file is empty"):
        load_dataset(train=good, dev=empty_csv)
    with raises_input(r"no --dev file given; pass both --train and --dev"):
        load_dataset(train=good)
    with raises_input(r"no --train file given"):
        load_dataset(dev=good, test=good)


def test_single_file_without_split_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["label", "text"], [["0", "a"]])
    with raises_input(r"d\.csv: no split column 'split'; add a 'split' column .* or pass --train/--dev/--test") as e:
        load_dataset(path)
    check_one_line(e)
    txt = write_txt(tmp_path / "d.txt", [("0", "a")])
    with raises_input(r"d\.txt: no split column"):
        load_dataset(txt)


def test_data_file_and_split_files_conflict(tmp_path: Path) -> None:
    good = write_txt(tmp_path / "good.txt", [("0", "a"), ("1", "b")])
    with raises_input(r"either one data file with a split column or --train/--dev/--test files, not both"):
        load_dataset(tmp_path / "all.csv", train=good, dev=good)


def test_bad_split_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["split", "label", "text"], [["train", "0", "a"], ["holdout", "1", "b"]])
    with raises_input(r"d\.csv: line 3, column 'split': unknown split 'holdout'; use one of train, dev, test") as e:
        load_dataset(path)
    check_one_line(e)
    jl = write_jsonl(tmp_path / "e.jsonl", [{"split": None, "label": 0, "text": "a"}])
    with raises_input(r"e\.jsonl: line 1, column 'split': unknown split None"):
        load_dataset(jl)


def test_single_class_train(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        ["split", "label", "text"],
        [["train", "1", "a"], ["train", "1", "b"], ["dev", "0", "c"]],
    )
    with raises_input(r"d\.csv: the train split has a single class \(label '1'\)") as e:
        load_dataset(path)
    check_one_line(e)


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".txt"])
def test_undecodable_bytes(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"train{ext}"
    if ext == ".txt":
        body = b"0 fine\n1 caf\xe9 bad\n"
    elif ext == ".jsonl":
        body = b'{"text": "fine", "label": 0}\n{"text": "caf\xe9", "label": 1}\n'
    else:
        sep = b"\t" if ext == ".tsv" else b","
        body = b"label" + sep + b"text\n0" + sep + b"fine\n1" + sep + b"caf\xe9\n"
    path.write_bytes(body)
    good = write_txt(tmp_path / "good.txt", [("0", "a"), ("1", "b")])
    line = 2 if ext in (".txt", ".jsonl") else 3
    with raises_input(rf"train\{ext}: line {line} \(byte offset \d+\) is not valid UTF-8; re-save") as e:
        load_dataset(train=path, dev=good)
    check_one_line(e)


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "d.csv",
        ["id", "split", "label", "text"],
        [["a", "train", "0", "x"], ["b", "train", "1", "y"], ["a", "dev", "1", "z"]],
    )
    with raises_input(r"duplicate id 'a': .*d\.csv line 2 and .*d\.csv line 4") as e:
        load_dataset(path)
    check_one_line(e)
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"id": "k", "text": "x", "label": 0}, {"id": "m", "text": "y", "label": 1}]
    )
    dev = write_jsonl(
        tmp_path / "dev.jsonl", [{"id": "q", "text": "x", "label": 0}, {"id": "m", "text": "y", "label": 1}]
    )
    with raises_input(r"duplicate id 'm': .*train\.jsonl line 2 and .*dev\.jsonl line 2"):
        load_dataset(train=train, dev=dev)
    pq = tmp_path / "p.parquet"
    pl.DataFrame({"id": [1, 1], "split": ["train", "dev"], "label": [0, 1], "text": ["a", "b"]}).write_parquet(pq)
    with raises_input(r"duplicate id '1': .*p\.parquet row 1 and .*p\.parquet row 2"):
        load_dataset(pq)


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"split": "train", "label": 0, "text": "a"}\n{"split": "train", "label": 1, "text": \n')
    with raises_input(r"d\.jsonl: line 2 is not valid JSON") as e:
        load_dataset(path)
    check_one_line(e)
    path.write_text('{"split": "train", "label": 0, "text": "a"}\n[1, 2]\n')
    with raises_input(r"d\.jsonl: line 2 is a JSON list, not an object"):
        load_dataset(path)


def test_txt_errors(tmp_path: Path) -> None:
    good = write_txt(tmp_path / "good.txt", [("0", "a"), ("1", "b")])
    nospace = tmp_path / "nospace.txt"
    nospace.write_text("0 fine\n1\n")
    with raises_input(r"nospace\.txt: line 2: no space separating the label from the text") as e:
        load_dataset(train=nospace, dev=good)
    check_one_line(e)
    blank = tmp_path / "blank.txt"
    blank.write_text("0 fine\n\n1 ok\n")
    with raises_input(r"blank\.txt: line 2 is blank; remove it"):
        load_dataset(train=good, dev=blank)


def test_malformed_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("split,label,text\ntrain,0,a\ntrain,1,b,extra\n")
    with raises_input(r"d\.csv: cannot parse as CSV: line 3 has 4 fields but the header has 3") as e:
        load_dataset(path)
    check_one_line(e)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with raises_input(r"d\.parquet: cannot read as Parquet") as e:
        load_dataset(path)
    check_one_line(e)
