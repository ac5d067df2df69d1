"""Classify new text with an exported head: run the model only up to the deepest selected layer (early exit),
pool only the head's kind and pooling, and apply the head to the selected neurons.

`Predictor` binds a head to its model (found from the head's hint, checked by content hashes, each model file
hashed once) and runs it in the compute dtype the store was extracted with (see :func:`resolve_compute_dtype`).
Texts are sorted by length and batched by count (`batch_size`) or by a padded-token budget (`max_tokens`).
`iter_texts` reads an input file in batches (bounded memory), `predict_to` classifies a stream of texts and writes
each batch's predictions as it goes, and `run_predict` is the whole `spin-cache predict` command as one call.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from ..errors import InputError, IntegrityError, StoreMismatchError
from ..extract.settings import COMPUTE_DTYPES
from ..fit.head import REEXPORT, Head
from ..model.hooks import run_layers
from ..model.identity import DEFAULT_MODEL, model_identity, resolve_model_path
from ..model.loading import (
    TORCH_DTYPES,
    LoadedModel,
    ModelFiles,
    load_model,
    resolve_device,
)
from ..outputs import check_output_file
from ..representations import KINDS, POOLINGS
from ..validation import POSITIVE_INT, check

HASH_KEYS = ("config_sha256", "weights_sha256", "tokenizer_sha256")
FORMATS = ("jsonl", "csv", "json")
SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
#: Texts read and classified together: the unit of length sorting, writing and memory (with max_length).
CHUNK_ROWS = 512


# ---- the head's model ------------------------------------------------------------------------------------------


def _model_info(head: Head) -> dict[str, Any]:
    wanted = head.info.get("model")
    if not isinstance(wanted, dict) or not all(isinstance(wanted.get(k), str) and wanted[k] for k in HASH_KEYS):
        raise IntegrityError(f"{head.name}: head.json records no content hashes of its model; {REEXPORT}")
    return wanted


def check_model_identity(head: Head, identity: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a model whose config, weights or tokenizer hashes differ from those recorded in the head
    (StoreMismatchError), or a head that records none (IntegrityError)."""
    wanted = _model_info(head)
    differ = [k for k in HASH_KEYS if identity.get(k) != wanted[k]]
    if differ:
        raise StoreMismatchError(
            f"{path}: this model's {', '.join(differ)} differ from the head's model ({wanted.get('name')}); "
            "pass the model the store was extracted with (--model)"
        )


def _hint_candidates(head: Head, wanted: dict[str, Any]) -> list[str]:
    """Where the head's model may be: its recorded path, then its name. A relative path or name resolves against
    the head's own folder, never against the current directory; a name that is no folder there is a hub id (or
    the bundled model)."""
    out: list[str] = []
    for key in ("path", "name"):
        value = wanted.get(key)
        if not isinstance(value, str) or not value:
            continue
        p = Path(value).expanduser()
        if p.is_absolute():
            out.append(str(p))
        elif head.source is not None and (head.source / p).is_dir():
            out.append(str(head.source / p))
        elif key == "name" and (value == DEFAULT_MODEL or not p.exists()):
            out.append(value)
    return list(dict.fromkeys(out))


def resolve_head_model(head: Head, model: str | os.PathLike[str] | None = None) -> Path:
    """The model directory for `head`, checked by content hashes.

    `model` (the user's --model) resolves as given; without it the head's hint is tried (see
    :func:`_hint_candidates`), the first candidate whose hashes match is used. Raises StoreMismatchError when a
    model is found but differs, InputError when none is found.
    """
    return _resolve_head_model(head, model)[0]


def _resolve_head_model(head: Head, model: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """:func:`resolve_head_model` plus the checked identity (hashes) of the model found, so that the files are
    hashed once: the caller loads the model from this identity (ModelFiles), never hashing again."""
    wanted = _model_info(head)
    if model is not None:
        path = resolve_model_path(str(model))
        identity = model_identity(path)
        check_model_identity(head, identity, path)
        return path, identity
    mismatch: StoreMismatchError | None = None
    for candidate in _hint_candidates(head, wanted):
        try:
            path = resolve_model_path(candidate)
        except InputError:
            continue
        identity = model_identity(path)
        try:
            check_model_identity(head, identity, path)
        except StoreMismatchError as exc:
            mismatch = mismatch or exc
            continue
        return path, identity
    if mismatch is not None:
        raise mismatch
    raise InputError(
        f"{head.name}: its model {wanted.get('name')!r} (recorded at {wanted.get('path')}) is not found; pass the "
        "model directory with --model"
    )


def check_head_fits(head: Head, loaded: LoadedModel) -> None:
    """Refuse a head whose layers or neuron indices lie outside the loaded model (IntegrityError)."""
    adapter = loaded.adapter
    width = adapter.ffn_size if head.info.get("kind") == "ffn" else adapter.hidden_size
    head.check_fits(adapter.num_layers, width)


def _recorded(info: dict[str, Any], key: str, section: str) -> Any:
    """A value the head records from its store, flat (``info[key]``) or under the manifest's section
    (``info[section][key]``, e.g. ``extraction.compute_dtype``, ``run.device``); None when absent."""
    value = info.get(key)
    if value is None and isinstance(info.get(section), dict):
        value = info[section].get(key)
    return value


def store_compute(head: Head) -> tuple[str | None, str | None]:
    """The compute dtype the head's store was extracted in and the device kind it ran on ("cpu", "cuda"), as
    the head records them; None for what it does not record."""
    dtype = _recorded(head.info, "compute_dtype", "extraction")
    device = _recorded(head.info, "device", "run")
    kind = str(device).split(":")[0].split()[-1] if isinstance(device, str) and device.strip() else None
    return (dtype if dtype in TORCH_DTYPES else None), kind


def resolve_compute_dtype(head: Head, device: torch.device | str, compute_dtype: str | None = "auto") -> str:
    """The dtype the model runs in for `head` on `device`.

    An explicit `compute_dtype` ("float32", "bfloat16", "float16") is used as given, on any device. "auto" (or
    None) follows the store: on CUDA the dtype the store was extracted in (bfloat16 or float16 when it was
    extracted so, which makes the features match those the head was trained on; float32 when the head records
    none, or records bfloat16 on a GPU without bfloat16); on the CPU always float32 (CPU matmuls in half
    precision are slow, and float32 differs from a half-precision extraction by less than the store's rounding
    of bfloat16/float16 values does).
    """
    choice = "auto" if compute_dtype is None else str(compute_dtype)
    if choice not in COMPUTE_DTYPES:
        raise InputError(f"compute_dtype {compute_dtype!r}: choose {', '.join(COMPUTE_DTYPES)}")
    if choice != "auto":
        return choice
    dev = resolve_device(device)
    if dev.type != "cuda":
        return "float32"
    recorded, _ = store_compute(head)
    if recorded == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "float32"
    return recorded or "float32"


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` sorted longest first (ties by position), cut into batches whose padded size (rows x
    the longest row) stays within `max_tokens`; a text longer than the budget is a batch of its own."""
    max_tokens = int(check("max_tokens", max_tokens, POSITIVE_INT))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _head_settings(head: Head) -> tuple[str, str, int, list[str]]:
    info = head.info
    kind, pooling, max_length, names = (info.get(k) for k in ("kind", "pooling", "max_length", "label_names"))
    n_classes = head.classifier.n_classes_
    problems = [
        ("kind", kind not in KINDS),
        ("pooling", pooling not in POOLINGS),
        ("max_length", type(max_length) is not int or max_length < 1),
        (
            "label_names",
            not isinstance(names, list) or len(names) != n_classes or not all(isinstance(n, str) for n in names),
        ),
    ]
    bad = [key for key, wrong in problems if wrong]
    if bad:
        raise IntegrityError(f"{head.name}: head.json has no valid {', '.join(bad)}; {REEXPORT}")
    return str(kind), str(pooling), int(max_length), list(names)  # type: ignore[arg-type]


# ---- the predictor ---------------------------------------------------------------------------------------------


@dataclass
class Classified:
    """Predictions for a list of texts: class probabilities, token counts before truncation, truncation flags."""

    probabilities: np.ndarray  # (n, n_classes) float64
    n_tokens: np.ndarray  # (n,) int64: tokens of the whole text, special tokens included
    truncated: np.ndarray  # (n,) bool: n_tokens > max_length, the model saw the first max_length tokens


class Predictor:
    """A head bound to its model. Refuses a model whose files differ from those the head was trained on, and a
    head that does not fit the model (layers or neuron indices out of range).

    The model's files are hashed once: the identity checked against the head is the one the model is loaded
    with. `compute_dtype` ("auto": follow the store, see :func:`resolve_compute_dtype`; on the CPU float32)
    is the dtype the model runs in; the pooled values are rounded to the store's dtype either way. Texts are
    sorted by length and run `batch_size` at a time, or, with `max_tokens`, in batches of at most `max_tokens`
    padded tokens (rows x longest row; `batch_size` is then not used); results come back in the input order.
    """

    def __init__(
        self,
        head: Head | str | os.PathLike[str],
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        batch_size: int = 32,
        max_tokens: int | None = None,
        compute_dtype: str | None = "auto",
    ) -> None:
        self.batch_size = int(check("batch_size", batch_size, POSITIVE_INT))
        self.max_tokens = None if max_tokens is None else int(check("max_tokens", max_tokens, POSITIVE_INT))
        if compute_dtype is not None and compute_dtype not in COMPUTE_DTYPES:
            raise InputError(f"compute_dtype {compute_dtype!r}: choose {', '.join(COMPUTE_DTYPES)}")
        self.head = head if isinstance(head, Head) else Head.load(head)
        self.kind, self.pooling, self.max_length, self._label_names = _head_settings(self.head)
        path, identity = _resolve_head_model(self.head, model)
        dev = resolve_device(device)
        self.compute_dtype = resolve_compute_dtype(self.head, dev, compute_dtype)
        # the files loaded are the files checked: the model loads from the identity just checked (hashed once)
        files = ModelFiles.at(path, identity)
        self.loaded = load_model(files, device=str(dev), dtype=TORCH_DTYPES[self.compute_dtype])
        check_head_fits(self.head, self.loaded)
        self.store_dtype = self.head.info.get("store_dtype", "float16")

    @property
    def label_names(self) -> list[str]:
        """The class names in class order (a copy of the head's: changing it changes nothing)."""
        return list(self._label_names)

    def encode(self, texts: Sequence[str], *, first: int = 1) -> tuple[list[list[int]], np.ndarray]:
        """Token ids of each text cut to the head's max_length (as extraction cuts them), and the token count of
        the whole text. An empty or whitespace-only text is refused, named by its position (`first` = the number
        of texts[0])."""
        for i, t in enumerate(texts, start=first):
            if not isinstance(t, str):
                raise InputError(f"text {i} is a {type(t).__name__}, not a string; pass texts as strings")
            if not t.strip():
                raise InputError(f"text {i} is empty (or only whitespace); remove it or give a text to classify")
        tok = self.loaded.tokenizer
        encodings = list(tok(list(texts), truncation=False, verbose=False)["input_ids"])
        n_tokens = np.array([len(ids) for ids in encodings], dtype=np.int64)
        long_rows = np.flatnonzero(n_tokens > self.max_length)
        if long_rows.size:
            cut = tok([texts[i] for i in long_rows.tolist()], truncation=True, max_length=self.max_length)["input_ids"]
            for i, ids in zip(long_rows.tolist(), cut, strict=True):
                encodings[i] = list(ids)
        for i, ids in enumerate(encodings):
            if not ids:
                raise InputError(f"text {first + i} gives no tokens; remove it or give a text to classify")
        return encodings, n_tokens

    def _features(self, encodings: list[list[int]], on_batch: Callable[[int], Any] | None = None) -> np.ndarray:
        tok = self.loaded.tokenizer
        out = np.empty((len(encodings), self.head.n_neurons), dtype=np.float32)
        for rows in self.batches([len(ids) for ids in encodings]):
            batch = tok.pad({"input_ids": [encodings[i] for i in rows]}, padding=True, return_tensors="pt")
            pooled = run_layers(
                self.loaded,
                batch["input_ids"],
                batch["attention_mask"],
                (self.pooling,),
                kinds=(self.kind,),
                upto_layer=self.head.deepest_layer,
            )
            parts = [
                pooled[(self.kind, layer)][self.pooling].float().cpu().numpy()[:, idx]
                for layer, idx in sorted(self.head.selection.items())
            ]
            out[rows] = _round_like_store(np.concatenate(parts, axis=1), self.store_dtype)
            if on_batch is not None:
                on_batch(len(rows))
        return out

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """The batches texts of these token counts run in: indices sorted longest first, cut by `max_tokens`
        (see :func:`token_budget_batches`) or else every `batch_size` texts."""
        if self.max_tokens is not None:
            return token_budget_batches(lengths, self.max_tokens)
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        return [order[b0 : b0 + self.batch_size] for b0 in range(0, len(order), self.batch_size)]

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The head's input for each text: its selected neurons, rounded as the store rounds them."""
        return self._features(self.encode(texts)[0])

    def classify(
        self, texts: Sequence[str], *, first: int = 1, on_batch: Callable[[int], Any] | None = None
    ) -> Classified:
        """Probabilities plus, per text, its token count and whether it was truncated to max_length."""
        encodings, n_tokens = self.encode(texts, first=first)
        probs = self.head.classifier.predict_proba(self._features(encodings, on_batch))
        return Classified(probs, n_tokens, n_tokens > self.max_length)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities of each text, shape (len(texts), n_classes), columns in `label_names` order; texts
        are cut to the head's max_length as in `classify`. InputError for an empty text, named by its position."""
        return self.head.classifier.predict_proba(self.features(texts))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The predicted class of each text, shape (len(texts),): the head's class labels (for a head exported by a
        sweep, indices into `label_names`). InputError for an empty text, named by its position."""
        return self.head.classifier.predict(self.features(texts))


def _round_like_store(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    return values


# ---- reading texts ---------------------------------------------------------------------------------------------


def _empty(path: Path, where: str) -> InputError:
    return InputError(f"{path}: {where} has an empty text; remove it or fill it in")


def _as_text(value: Any, path: Path, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _empty(path, where)
    if isinstance(value, (dict, list)):
        raise InputError(f"{path}: {where} holds a {type(value).__name__}, not a text; pass --text-column")
    return value if isinstance(value, str) else str(value)


def _no_column(path: Path, column: str, names: Iterable[str]) -> InputError:
    return InputError(f"{path}: no column {column!r} (columns: {', '.join(names)}); pass --text-column")


def _txt_rows(p: Path) -> Iterator[str]:
    with p.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{p}: line {i} is not UTF-8 text ({exc.reason} at byte {exc.start} of the line); re-save it as "
                    "UTF-8"
                ) from None
            if i == 1:
                line = line.removeprefix("\ufeff")
            yield _as_text(line.rstrip("\r\n"), p, f"line {i}")


def _jsonl_rows(p: Path, column: str) -> Iterator[str]:
    with p.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError:
                raise InputError(f"{p}: line {i} is not UTF-8 text; re-save it as UTF-8") from None
            except ValueError as exc:
                raise InputError(f"{p}: line {i} is not a JSON object ({exc}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise InputError(f"{p}: line {i} is not a JSON object; one JSON object per line")
            if column not in row:
                raise InputError(f"{p}: line {i} has no {column!r} key (keys: {', '.join(row)}); pass --text-column")
            yield _as_text(row[column], p, f"line {i}")


def _csv_rows(p: Path, column: str, tsv: bool, block_rows: int) -> Iterator[str]:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t" if tsv else ",", newlines_in_values=True)
    read = pacsv.ReadOptions(block_size=1 << 20)
    try:
        names = pacsv.open_csv(p, read_options=read, parse_options=parse).schema.names
        if column not in names:
            raise _no_column(p, column, names)
        convert = pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()})
        reader = pacsv.open_csv(p, read_options=read, parse_options=parse, convert_options=convert)
        row = 0
        for batch in reader:
            for value in batch.column(0).to_pylist():
                row += 1
                yield _as_text(value, p, f"row {row}")
    except (pa.ArrowException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "re-save it as UTF-8" if "UTF8" in detail or "UTF-8" in detail else "check the file"
        raise InputError(f"{p}: cannot be read as {'TSV' if tsv else 'CSV'} ({detail[:160]}); {hint}") from None


def _parquet_rows(p: Path, column: str, block_rows: int) -> Iterator[str]:
    import pyarrow as pa
    from pyarrow import parquet as pq

    try:
        source = pq.ParquetFile(p)
        names = source.schema_arrow.names
        if column not in names:
            raise _no_column(p, column, names)
        row = 0
        for batch in source.iter_batches(batch_size=block_rows, columns=[column]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield _as_text(value, p, f"row {row}")
    except (pa.ArrowException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: cannot be read as Parquet ({detail[:160]}); check the file") from None


def iter_texts(
    path: str | os.PathLike[str], text_column: str = "text", *, batch_rows: int = CHUNK_ROWS
) -> Iterator[list[str]]:
    """Texts to classify, in lists of up to `batch_rows`, read with bounded memory.

    .txt: one text per line; .csv/.tsv/.jsonl/.ndjson/.parquet: the `text_column` column. An empty or
    whitespace-only text is refused naming its line (.txt, .jsonl) or data row (.csv, .tsv, .parquet); so is a
    file with no texts. Errors come as the reading reaches them: :func:`count_texts` checks a whole file first.
    """
    batch_rows = int(check("batch_rows", batch_rows, POSITIVE_INT))
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory; pass a file of texts")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        rows = _txt_rows(p)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(p, text_column, suffix == ".tsv", batch_rows)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(p, text_column)
    elif suffix == ".parquet":
        rows = _parquet_rows(p, text_column, batch_rows)
    else:
        raise InputError(f"{p}: unsupported file type {suffix!r}; use .txt, .csv, .tsv, .jsonl or .parquet")
    seen = False
    while batch := list(itertools.islice(rows, batch_rows)):
        seen = True
        yield batch
    if not seen:
        raise InputError(f"{p}: no texts to classify")


def count_texts(path: str | os.PathLike[str], text_column: str = "text") -> int:
    """Read a whole input file once (bounded memory) and return its number of texts: every row is checked
    before any model work, and the count sizes the progress bar."""
    return sum(len(batch) for batch in iter_texts(path, text_column))


def read_texts(path: str | os.PathLike[str], text_column: str = "text") -> list[str]:
    """All texts of a file in one list (see :func:`iter_texts`; prefer it for large files)."""
    return [t for batch in iter_texts(path, text_column) for t in batch]


# ---- writing predictions ---------------------------------------------------------------------------------------


def _records(
    texts: Sequence[str],
    probs: np.ndarray,
    label_names: Sequence[str],
    n_tokens: Sequence[int] | None,
    truncated: Sequence[bool] | None,
) -> Iterator[dict[str, Any]]:
    labels = probs.argmax(axis=1)
    for i, (t, k, row) in enumerate(zip(texts, labels, probs, strict=True)):
        rec = {
            "text": t,
            "label": label_names[k],
            "label_id": int(k),
            "probabilities": {n: round(float(p), 6) for n, p in zip(label_names, row, strict=True)},
        }
        if n_tokens is not None and truncated is not None:
            rec |= {"n_tokens": int(n_tokens[i]), "truncated": bool(truncated[i])}
        yield rec


def format_predictions(
    texts: Sequence[str],
    probs: np.ndarray,
    label_names: Sequence[str],
    fmt: str,
    *,
    n_tokens: Sequence[int] | None = None,
    truncated: Sequence[bool] | None = None,
    header: bool = True,
) -> str:
    """JSON Lines (one object per text) or CSV (text, label, label_id, one probability column per class, then
    n_tokens and truncated when given; the header row unless `header=False`)."""
    records = _records(texts, probs, label_names, n_tokens, truncated)
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "csv":
        extra = n_tokens is not None and truncated is not None
        buf = io.StringIO()
        writer = csv.writer(buf)
        if header:
            names = ["text", "label", "label_id", *[f"p_{n}" for n in label_names]]
            writer.writerow(names + (["n_tokens", "truncated"] if extra else []))
        for r in records:
            row = [r["text"], r["label"], r["label_id"], *[f"{p:.6f}" for p in r["probabilities"].values()]]
            writer.writerow(row + ([r["n_tokens"], str(r["truncated"]).lower()] if extra else []))
        return buf.getvalue()
    raise InputError(f"--format {fmt}: choose jsonl or csv")


@dataclass
class PredictSummary:
    """What a prediction run did: texts classified and how many were cut to the head's max_length."""

    n_texts: int
    n_truncated: int
    max_length: int

    def warning(self) -> str | None:
        """One line for stderr when texts were truncated, else None."""
        if not self.n_truncated:
            return None
        return (
            f"warning: {self.n_truncated} of {self.n_texts} texts were longer than the head's max_length "
            f'({self.max_length} tokens) and were cut to it; their predictions say "truncated": true'
        )


def predict_to(
    predictor: Predictor,
    texts: Iterable[str],
    out: TextIO,
    fmt: str = "jsonl",
    *,
    progress: bool = False,
    total: int | None = None,
    head_name: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> PredictSummary:
    """Classify `texts` (any iterable, consumed `chunk_rows` at a time) and write each chunk's predictions to
    `out` as soon as they are made (flushed per chunk).

    `fmt`: "jsonl" (one object per text), "csv" (a header, then one row per text) or "json" (one object
    ``{"head", "chosen_by", "predictions": [...], "n_texts", "n_truncated"}``, streamed; "chosen_by" is how the sweep
    chose the head, when its head.json says). Every prediction carries
    ``n_tokens`` and ``truncated``. `progress` shows a tqdm bar on stderr (texts; `total` if known). An empty
    text is refused naming its position (1-based); nothing is written before the first chunk is classified.
    """
    from tqdm.auto import tqdm

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose {', '.join(FORMATS)}")
    chunk_rows = int(check("chunk_rows", chunk_rows, POSITIVE_INT))
    names = predictor.label_names
    stream = iter(texts)
    n = n_truncated = 0
    bar = tqdm(total=total, desc="predict", unit="text", disable=not progress, file=sys.stderr, smoothing=0.1)
    try:
        while chunk := list(itertools.islice(stream, chunk_rows)):
            got = predictor.classify(chunk, first=n + 1, on_batch=bar.update)
            kw: dict[str, Any] = {"n_tokens": got.n_tokens, "truncated": got.truncated}
            if fmt == "json":
                head = head_name if head_name is not None else predictor.head.name
                chosen = predictor.head.chosen_by
                how = f', "chosen_by": {json.dumps(chosen)}' if chosen else ""
                lead = '{"head": ' + json.dumps(head) + how + ', "predictions": [' if n == 0 else ", "
                body = ", ".join(json.dumps(r) for r in _records(chunk, got.probabilities, names, **kw))
                out.write(lead + body)
            else:
                out.write(format_predictions(chunk, got.probabilities, names, fmt, header=n == 0, **kw))
            out.flush()
            n += len(chunk)
            n_truncated += int(got.truncated.sum())
    finally:
        bar.close()
    if n == 0:
        raise InputError("no texts to classify")
    if fmt == "json":
        out.write(f'], "n_texts": {n}, "n_truncated": {n_truncated}}}\n')
        out.flush()
    return PredictSummary(n_texts=n, n_truncated=n_truncated, max_length=predictor.max_length)


def output_format(fmt: str | None, out: str | os.PathLike[str] | None, as_json: bool = False) -> str:
    """--format, or from --out's suffix (.csv: csv, else jsonl); --json without --out: one JSON object."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"--format {fmt}: choose {', '.join(FORMATS)}")
        return fmt
    if out is not None:
        return "csv" if str(out).lower().endswith(".csv") else "jsonl"
    return "json" if as_json else "jsonl"


def run_predict(
    head: Head | str | os.PathLike[str],
    *,
    texts: Sequence[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    text_column: str = "text",
    model: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    fmt: str | None = None,
    as_json: bool = False,
    device: str = "auto",
    batch_size: int = 32,
    max_tokens: int | None = None,
    compute_dtype: str | None = "auto",
    progress: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> PredictSummary:
    """`spin-cache predict` as one call: check everything that can be checked before loading the model, then
    stream predictions to `out` (or `stdout`) and say on `stderr` how many texts were truncated.

    `max_tokens` batches by a padded-token budget instead of `batch_size`; `compute_dtype` ("auto" follows the
    store on CUDA, float32 on the CPU) is the dtype the model runs in (see :class:`Predictor`).

    Order: `batch_size`, `max_tokens`, `compute_dtype` and the format; `out`'s folder
    (outputs.check_output_file); the texts (`texts` one by one, or every row of `data` read once, bounded
    memory); the head and its model (hashes); then the work.
    `out` is written to a hidden ``.NAME.partial`` beside it as predictions come and renamed at the end, so a
    failed or interrupted run leaves no half file and keeps an earlier one. `stdout`/`stderr` default to
    sys.stdout/sys.stderr at call time.
    """
    batch_size = int(check("batch_size", batch_size, POSITIVE_INT))
    if max_tokens is not None:
        max_tokens = int(check("max_tokens", max_tokens, POSITIVE_INT))
    if compute_dtype is not None and compute_dtype not in COMPUTE_DTYPES:
        raise InputError(f"--compute-dtype {compute_dtype}: choose {', '.join(COMPUTE_DTYPES)}")
    fmt = output_format(fmt, out, as_json)
    out_path = check_output_file(out, option="--out") if out is not None else None
    if (texts is None) == (data is None):
        raise InputError("give texts to classify (--text) or a file of them (--data), one of the two")
    if texts is not None:
        texts = list(texts)
        if not texts:
            raise InputError("no texts to classify; pass --text or --data")
        for i, t in enumerate(texts, start=1):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"--text number {i} is empty (or only whitespace); give a text to classify")
        total: int = len(texts)
        source: Iterable[str] = texts
    else:
        assert data is not None
        total = count_texts(data, text_column)
        source = itertools.chain.from_iterable(iter_texts(data, text_column))
    predictor = Predictor(
        head, model, device=device, batch_size=batch_size, max_tokens=max_tokens, compute_dtype=compute_dtype
    )
    name = str(head) if not isinstance(head, Head) else head.name
    kw = {"progress": progress, "total": total, "head_name": name}
    if out_path is None:
        summary = predict_to(predictor, source, stdout or sys.stdout, fmt, **kw)  # type: ignore[arg-type]
    else:
        partial = out_path.with_name(f".{out_path.name}.partial")
        try:
            with partial.open("w", encoding="utf-8", newline="") as f:
                summary = predict_to(predictor, source, f, fmt, **kw)  # type: ignore[arg-type]
            os.replace(partial, out_path)
        finally:
            partial.unlink(missing_ok=True)
    message = summary.warning()
    if message:
        print(message, file=stderr or sys.stderr)
    return summary
