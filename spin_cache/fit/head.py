"""The exported head: the classifier, the selected neurons per layer and the model's identity, as
`head.json` + `head.safetensors`, both checksummed."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from .. import __version__
from ..errors import InputError, IntegrityError
from ..outputs import finite_or_null
from .estimator import SpinClassifier

HEAD_FORMAT = "spin-cache-head"
HEAD_FILES = ("head.json", "head.safetensors")
#: The head.json key holding the sha256 of every head file (head.json's own: over its canonical JSON without this key).
CHECKSUMS_KEY = "checksums"
_META_KEYS = ("format", "spin_cache_version", "classifier", "layers", CHECKSUMS_KEY)
REEXPORT = "export the head again with `spin-cache sweep STORE --probes RUN --out SWEEP`"


def canonical_meta_sha256(meta: dict[str, Any]) -> str:
    """sha256 of head.json's content without its checksums: sorted keys, no whitespace, ASCII. Whitespace and key
    order may change (a reformatted file still loads); any changed value, key or array shape does not."""
    body = {k: v for k, v in meta.items() if k != CHECKSUMS_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Head:
    """A fitted SpinClassifier plus what it reads: kind, pooling and per-layer neuron indices of a store.

    `info` holds the store fingerprint, the model's identity and hashes, label names and metric history.
    Feature order: layers ascending, within a layer the indices in the order stored. `source` is the folder a
    loaded head came from (relative model hints resolve against it); None for a head built in memory.
    """

    classifier: SpinClassifier
    selection: dict[int, np.ndarray]  # layer -> neuron indices
    info: dict[str, Any]
    source: Path | None = field(default=None, compare=False, repr=False)

    @property
    def layers(self) -> list[int]:
        """The layers the head reads, ascending."""
        return sorted(self.selection)

    @property
    def deepest_layer(self) -> int:
        """The deepest layer the head reads (how far a forward pass must run); 0 when it selects nothing."""
        return max(self.selection) if self.selection else 0

    @property
    def n_neurons(self) -> int:
        """How many neurons the head reads, over all its layers (its number of features)."""
        return int(sum(len(v) for v in self.selection.values()))

    @property
    def chosen_by(self) -> dict[str, Any] | None:
        """How the sweep chose this head (head.json's "chosen_by": strategy, chosen_dev, expected, expected_method,
        n_compared, ...; see spin_cache.loop.results.ChosenBy); None for a head exported without one (by an older
        spin-cache)."""
        value = self.info.get("chosen_by")
        return value if isinstance(value, dict) else None

    @property
    def name(self) -> str:
        """How messages name this head: its folder, or "the head" for one built in memory."""
        return str(self.source) if self.source is not None else "the head"

    def save(self, path: str | Path) -> None:
        """Write head.safetensors and head.json (with the sha256 of both, see :data:`CHECKSUMS_KEY`), each file
        replaced atomically, the arrays first."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"classifier.{k}": v for k, v in self.classifier.to_arrays().items()}
        arrays |= {f"selection.layer_{layer:03d}": np.asarray(idx, np.int64) for layer, idx in self.selection.items()}
        blob = save_safetensors({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        meta = {
            "format": HEAD_FORMAT,
            "spin_cache_version": __version__,
            "classifier": self.classifier.to_json(),
            "layers": self.layers,
            **self.info,
        }
        meta = json.loads(
            json.dumps(finite_or_null(meta), allow_nan=False)
        )  # the hash is over what a reader will parse (keys as strings, lists)
        meta[CHECKSUMS_KEY] = {
            "head.json": canonical_meta_sha256(meta),
            "head.safetensors": hashlib.sha256(blob).hexdigest(),
        }
        _write_atomic(folder / "head.safetensors", blob)
        _write_atomic(folder / "head.json", json.dumps(meta, indent=2, sort_keys=True, allow_nan=False).encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Head:
        """Read a head directory, checking both files' sha256 and every value before it is used.

        Raises InputError (not a head directory), IntegrityError (a changed or damaged file, a head written
        before checksums, selection indices that are negative, repeated or do not match the classifier).
        """
        folder = Path(path)
        meta_path, arr_path = folder / "head.json", folder / "head.safetensors"
        for p in (meta_path, arr_path):
            if not p.is_file():
                raise InputError(f"{p}: missing; a head directory holds head.json and head.safetensors")
        try:
            meta = json.loads(meta_path.read_bytes())
            blob = arr_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{meta_path}: unreadable ({type(exc).__name__}: {exc}); {REEXPORT}") from None
        if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise InputError(f"{meta_path}: not a spin-cache head (format {str(fmt)[:40]!r})")
        _check_checksums(meta_path, arr_path, meta, blob)
        _check_head_meta(meta_path, meta)
        try:
            arrays = load_safetensors(blob)
        except Exception as exc:  # the checksum matched: a head written damaged
            raise IntegrityError(f"{arr_path}: unreadable ({type(exc).__name__}); {REEXPORT}") from None
        try:
            clf = SpinClassifier.from_parts(
                meta["classifier"], {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("classifier.")}
            )
            selection = {layer: arrays[f"selection.layer_{layer:03d}"] for layer in meta["layers"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"{folder}: head.json and head.safetensors do not match (missing {exc!s}); {REEXPORT}"
            ) from None
        _check_arrays(folder, clf, selection)
        info = {k: v for k, v in meta.items() if k not in _META_KEYS}
        return cls(classifier=clf, selection=selection, info=info, source=folder.resolve())

    def check_fits(self, num_layers: int, width: int) -> None:
        """Refuse a head whose layers or neuron indices lie outside a model with `num_layers` layers of `width`
        neurons (of the head's kind): IntegrityError naming the head and the layer."""
        kind = self.info.get("kind")
        lowest = 1 if kind == "ffn" else 0
        for layer in self.layers:
            if not lowest <= layer <= num_layers:
                raise IntegrityError(
                    f"{self.name}: selects {kind} layer {layer}, but the model has {kind} layers "
                    f"{lowest}..{num_layers}; {REEXPORT}"
                )
            idx = self.selection[layer]
            if len(idx) and int(idx.max()) >= width:
                raise IntegrityError(
                    f"{self.name}: layer {layer} selects neuron {int(idx.max())}, but the model's {kind} layers have "
                    f"{width} neurons (0..{width - 1}); {REEXPORT}"
                )


def _check_checksums(meta_path: Path, arr_path: Path, meta: dict[str, Any], blob: bytes) -> None:
    sums = meta.get(CHECKSUMS_KEY)
    if sums is None:
        # Written before checksums (spin-cache 0.1.0): nothing proves it is the head that was exported, and a
        # warning would let any damaged head through; re-exporting costs one sweep.
        raise IntegrityError(f"{meta_path}: written without checksums by an older spin-cache; {REEXPORT}")
    if not isinstance(sums, dict) or not all(isinstance(sums.get(n), str) for n in HEAD_FILES):
        raise IntegrityError(f"{meta_path}: the {CHECKSUMS_KEY!r} block is damaged; {REEXPORT}")
    if canonical_meta_sha256(meta) != sums["head.json"]:
        raise IntegrityError(f"{meta_path}: changed since it was exported (sha256 differs); {REEXPORT}")
    if hashlib.sha256(blob).hexdigest() != sums["head.safetensors"]:
        raise IntegrityError(f"{arr_path}: changed or damaged since it was exported (sha256 differs); {REEXPORT}")


def _check_arrays(folder: Path, clf: SpinClassifier, selection: dict[int, np.ndarray]) -> None:
    """Selection indices are non-negative, distinct integers (a negative one would wrap around), and the arrays
    have the shapes the classifier needs. Upper bounds need the model: :meth:`Head.check_fits`."""
    for layer, idx in selection.items():
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) == 0:
            raise IntegrityError(
                f"{folder}: layer {layer}'s selection is not a list of neuron indices ({idx.dtype}, shape "
                f"{idx.shape}); {REEXPORT}"
            )
        if int(idx.min()) < 0:
            raise IntegrityError(f"{folder}: layer {layer} selects neuron {int(idx.min())} (negative); {REEXPORT}")
        if len(np.unique(idx)) != len(idx):
            raise IntegrityError(f"{folder}: layer {layer} selects a neuron twice; {REEXPORT}")
    # A bare classifier (SpinClassifier.save) has no selection: its arrays must agree with its n_features.
    n = sum(len(v) for v in selection.values()) if selection else clf.n_features_in_
    n_out = 1 if clf.n_classes_ == 2 else clf.n_classes_
    shapes = {
        "n_features": (clf.n_features_in_, n),
        "coef": (tuple(clf.coef_.shape), (n_out, n)),
        "intercept": (tuple(clf.intercept_.shape), (n_out,)),
        "mean": (tuple(clf.scaler_.mean.shape), (n,)),
        "scale": (tuple(clf.scaler_.scale.shape), (n,)),
    }
    for what, (got, want) in shapes.items():
        if got != want:
            raise IntegrityError(
                f"{folder}: classifier {what} is {got}, but the selection has {n} neurons ({want} expected); {REEXPORT}"
            )


def _check_head_meta(meta_path: Path, meta: dict[str, Any]) -> None:
    """Refuse a crafted head.json before any of its values is used: layers are non-negative integers (they name
    arrays), kind and pooling are the known words, the classifier block is a JSON object."""
    from ..representations import KINDS, POOLINGS

    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(type(x) is int and 0 <= x < 10_000 for x in layers):
        raise IntegrityError(f"{meta_path}: 'layers' must be a list of layer numbers, got {str(layers)[:40]!r}")
    for key, allowed in (("kind", KINDS), ("pooling", POOLINGS)):
        if key in meta and meta[key] not in allowed:
            raise IntegrityError(f"{meta_path}: {key} {str(meta[key])[:40]!r} is not one of {', '.join(allowed)}")
    if not isinstance(meta.get("classifier"), dict):
        raise IntegrityError(f"{meta_path}: no 'classifier' block; {REEXPORT}")
