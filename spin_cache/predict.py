"""Classify new text with an exported head: run the model only up to the deepest selected layer (early exit),
pool only the head's kind and pooling, and apply the head to the selected neurons."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from .errors import InputError, StoreMismatchError
from .head import Head
from .models import load_model, model_identity, resolve_model_path, run_layers

HASH_KEYS = ("config_sha256", "weights_sha256", "tokenizer_sha256")


class Predictor:
    """A head bound to its model. Refuses a model whose files differ from those the head was trained on."""

    def __init__(
        self, head: Head | str | os.PathLike, model: str | None = None, *, device: str = "auto", batch_size: int = 32
    ) -> None:
        self.head = head if isinstance(head, Head) else Head.load(head)
        info = self.head.info
        wanted = info["model"]
        path = resolve_model_path(model or wanted.get("path") or wanted["name"])
        identity = model_identity(path)
        differ = [k for k in HASH_KEYS if identity.get(k) != wanted.get(k)]
        if differ:
            raise StoreMismatchError(
                f"{path}: this model's {', '.join(differ)} differ from the head's model ({wanted.get('name')}); "
                "pass the model the store was extracted with (--model)"
            )
        self.loaded = load_model(str(path), device=device)
        self.batch_size = batch_size
        self.kind = info["kind"]
        self.pooling = info["pooling"]
        self.max_length = int(info["max_length"])
        self.store_dtype = info.get("store_dtype", "float16")

    @property
    def label_names(self) -> list[str]:
        return list(self.head.info["label_names"])

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The head's input for each text: its selected neurons, rounded as the store rounds them."""
        tok = self.loaded.tokenizer
        enc = tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
        out = np.empty((len(enc), self.head.n_neurons), dtype=np.float32)
        for b0 in range(0, len(order), self.batch_size):
            rows = order[b0 : b0 + self.batch_size]
            batch = tok.pad({"input_ids": [enc[i] for i in rows]}, padding=True, return_tensors="pt")
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
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.head.classifier.predict_proba(self.features(texts))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.head.classifier.predict(self.features(texts))


def _round_like_store(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    return values


def read_texts(path: str | os.PathLike, text_column: str = "text") -> list[str]:
    """Texts to classify: .txt (one per line), or .csv/.tsv/.jsonl/.parquet with a text column."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".txt":
            texts = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
        elif suffix in (".csv", ".tsv"):
            frame = pl.read_csv(p, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
            texts = _column(frame, text_column, p)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pl.read_ndjson(p)
            texts = _column(frame, text_column, p)
        elif suffix == ".parquet":
            texts = _column(pl.read_parquet(p), text_column, p)
        else:
            raise InputError(f"{p}: unsupported file type {suffix!r}; use .txt, .csv, .tsv, .jsonl or .parquet")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from exc
    for i, t in enumerate(texts, start=1):
        if t is None or not str(t).strip():
            raise InputError(f"{p}: row {i} has an empty text; remove it or fill it in")
    if not texts:
        raise InputError(f"{p}: no texts to classify")
    return [str(t) for t in texts]


def _column(frame: pl.DataFrame, column: str, path: Path) -> list:
    if column not in frame.columns:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(frame.columns)}); pass --text-column")
    return frame[column].to_list()


def format_predictions(texts: Sequence[str], probs: np.ndarray, label_names: Sequence[str], fmt: str) -> str:
    """JSON Lines (one object per text) or CSV (text, label, then one probability column per class)."""
    labels = probs.argmax(axis=1)
    if fmt == "jsonl":
        lines = [
            json.dumps(
                {"text": t, "label": label_names[k], "label_id": int(k),
                 "probabilities": {n: round(float(p), 6) for n, p in zip(label_names, row, strict=True)}}
            )
            for t, k, row in zip(texts, labels, probs, strict=True)
        ]  # fmt: skip
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["text", "label", "label_id", *[f"p_{n}" for n in label_names]])
        for t, k, row in zip(texts, labels, probs, strict=True):
            writer.writerow([t, label_names[k], int(k), *[f"{p:.6f}" for p in row]])
        return buf.getvalue()
    raise InputError(f"--format {fmt}: choose jsonl or csv")
