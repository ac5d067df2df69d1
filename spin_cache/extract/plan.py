"""Before the first batch: the data loaded, the model's files read once, the manifest and the store decided."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from ..data.loading import LabelledDataset, load_dataset
from ..errors import InputError, IntegrityError, StoreMismatchError
from ..model import kernels
from ..model.adapters import DECODER_TYPES, T5_TYPES
from ..model.loading import LoadedModel, ModelFiles, read_model_files, resolve_device
from ..outputs import check_store_destination
from ..representations import default_poolings
from ..store.access import _fs
from ..store.activation_store import ActivationStore
from ..store.layout import FORMAT_VERSION
from ..store.manifest import describe_differences, fingerprint_inputs, store_fingerprint
from .settings import DEFAULT_CHUNK_COLS, DEFAULT_MAX_LENGTH, DEFAULT_STORES_DIR, ExtractSettings

__all__ = [
    "DEFAULT_CHUNK_COLS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_STORES_DIR",
    "ExtractPlan",
    "examples_table",
    "existing_store",
    "plan_extraction",
    "pooling_route",
    "repair_examples",
    "resolve_compute_dtype",
    "store_fingerprint",
    "tokenize",
    "transformers_version",
]


@dataclass
class ExtractPlan:
    """What an extraction will make, decided before any store is looked at: the settings with their defaults
    resolved, the dataset, the model's files and the manifest's model, dataset and extraction parts."""

    settings: ExtractSettings
    dataset: LabelledDataset
    files: ModelFiles
    compute_dtype: str  # resolved: never "auto"
    poolings: tuple[str, ...]
    max_length: int
    extraction: dict[str, Any]  # the manifest's extraction settings (those that change stored values)
    model_info: dict[str, Any]
    dataset_info: dict[str, Any]

    @property
    def wanted(self) -> dict[str, Any]:
        """The part of a manifest that the fingerprint is computed from."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model_info,
            "dataset": self.dataset_info,
            "extraction": self.extraction,
        }

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the store this plan makes."""
        return store_fingerprint(self.wanted)

    @property
    def url(self) -> str:
        """Where the store goes: `settings.out`, else ``stores/<first 16 hex digits of the fingerprint>``."""
        out = self.settings.out
        return out if out is not None else os.path.join(DEFAULT_STORES_DIR, self.fingerprint[:16])


def plan_extraction(settings: ExtractSettings) -> ExtractPlan:
    """Resolve the settings' defaults, load the data and read the model's files (hashed, and the tokenizer
    checked, see :func:`spin_cache.model.loading.load_tokenizer`)."""
    s = settings
    compute_dtype = resolve_compute_dtype(s.compute_dtype, s.device)
    dataset = s.data if isinstance(s.data, LabelledDataset) else _load_data(s)
    files = read_model_files(s.model, s.model_revision)
    poolings = s.poolings or default_poolings(_is_decoder(files.config))
    max_length = _resolve_max_length(s.max_length, files.tokenizer, files.config)
    rows_per_split = {split: int((dataset.splits == split).sum()) for split in ("train", "dev", "test")}
    return ExtractPlan(
        settings=s,
        dataset=dataset,
        files=files,
        compute_dtype=compute_dtype,
        poolings=tuple(poolings),
        max_length=max_length,
        extraction={
            "kinds": list(s.kinds),
            "poolings": list(poolings),
            "max_length": max_length,
            "dtype": s.dtype,
            "compute_dtype": compute_dtype,
        },
        model_info={"name": str(s.model), "path": str(files.path), **files.identity},
        dataset_info={
            "name": dataset.name,
            "fingerprint": dataset.fingerprint(),
            "n_rows": len(dataset),
            "rows_per_split": {k: v for k, v in rows_per_split.items() if v},
            "label_names": list(dataset.label_names),
            # where the rows came from (a Hugging Face dataset, its split mapping, a carved dev split)
            **({"source": dataset.source} if dataset.source else {}),
        },
    )


def resolve_compute_dtype(compute_dtype: str, device: str) -> str:
    """'auto': bfloat16 on a CUDA device that supports it, float32 elsewhere (CPU matmuls in bf16 are slow)."""
    if compute_dtype != "auto":
        return compute_dtype
    dev = resolve_device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def pooling_route(loaded: LoadedModel | None) -> str:
    """What pooled the activations, for the manifest's run info (`mean` may differ in its last stored bit
    between the fused kernel and torch); `loaded` is None when worker processes did."""
    if loaded is None:
        return "by the workers (fused kernel where each could build it)"
    float32 = next(loaded.model.parameters()).dtype == torch.float32  # the kernel takes float32 activations
    fused = loaded.device.type == "cpu" and float32 and kernels.fused_pooling() is not None
    return "fused kernel (spin_cache.model.kernels)" if fused else "torch"


def _load_data(settings: ExtractSettings) -> LabelledDataset:
    s = settings
    if s.train or s.dev or s.test:
        if s.data not in (None, "sst2"):
            raise InputError(
                "--data and --train/--dev/--test are exclusive: pass one file with a split column or one per split"
            )
        return load_dataset(
            None, train=s.train, dev=s.dev, test=s.test, text_column=s.text_column, label_column=s.label_column
        )
    return load_dataset(
        s.data,
        text_column=s.text_column,
        label_column=s.label_column,
        dev_split=s.dev_split,
        seed=s.data_seed,
        revision=s.data_revision,
    )


def _is_decoder(config: object) -> bool:
    model_type = getattr(config, "model_type", "")
    if model_type in T5_TYPES:
        return False
    return bool(getattr(config, "is_decoder", False)) or model_type in DECODER_TYPES


def _resolve_max_length(max_length: int | None, tokenizer: object, config: object) -> int:
    """The asked length, or 512 capped by the model's positions; a longer one than the model has is refused."""
    limits = [
        v
        for v in (
            getattr(config, "max_position_embeddings", None),
            getattr(config, "n_positions", None),
            getattr(tokenizer, "model_max_length", None),
        )
        if isinstance(v, int) and 0 < v < 10**7
    ]
    cap = min(limits) if limits else None
    if max_length is None:
        return min([DEFAULT_MAX_LENGTH, *([cap] if cap else [])])
    if max_length < 2:
        raise InputError(f"--max-length {max_length}: must be at least 2")
    if cap is not None and max_length > cap:
        raise InputError(f"--max-length {max_length} exceeds the model's {cap} positions; pass --max-length {cap}")
    return max_length


def tokenize(
    loaded: LoadedModel, dataset: LabelledDataset, max_length: int
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Tokenise every text with the model's tokenizer.

    Returns
    -------
    encodings
        Each example's token ids, truncated to `max_length`.
    n_tokens
        Each example's token count before truncation.
    truncated
        Whether it was truncated.
    """
    tok = loaded.tokenizer
    full = tok(list(dataset.texts), truncation=False, verbose=False)["input_ids"]
    n_tokens = np.array([len(x) for x in full], dtype=np.int64)
    truncated = n_tokens > max_length
    encodings = list(full)
    long_rows = np.flatnonzero(truncated)
    if long_rows.size:
        cut = tok([dataset.texts[i] for i in long_rows], truncation=True, max_length=max_length)["input_ids"]
        for i, ids in zip(long_rows, cut, strict=True):
            encodings[i] = ids
    empty = [i for i, ids in enumerate(encodings) if len(ids) == 0]
    if empty:
        raise InputError(f"example {dataset.ids[empty[0]]!r} tokenises to nothing; remove it or fix its text")
    return encodings, n_tokens, truncated


def examples_table(dataset: LabelledDataset, n_tokens: np.ndarray, truncated: np.ndarray) -> pl.DataFrame:
    """The store's examples table: one row per example, in the dataset's order (README, store layout)."""
    return pl.DataFrame(
        {
            "row": np.arange(len(dataset), dtype=np.int64),
            "example_id": list(dataset.ids),
            "split": [str(s) for s in dataset.splits],
            "label": dataset.labels.astype(np.int64),
            "label_name": [dataset.label_names[i] for i in dataset.labels],
            "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in dataset.texts],
            "n_tokens": n_tokens,
            "truncated": truncated,
        }
    )


def repair_examples(store: ActivationStore, examples: pl.DataFrame) -> None:
    """Resuming an incomplete store: write its examples table again if it is missing or unreadable (a crash while
    the store was created). Same fingerprint, same table: it depends only on the dataset and the tokenizer."""
    try:
        store.examples  # noqa: B018 - reading it is the check
    except IntegrityError:
        store.write_examples(examples)


def existing_store(
    url: str, wanted: dict[str, Any], overwrite: bool, storage_options: dict[str, Any] | None
) -> ActivationStore | None:
    """The store at `url` if there is one made from `wanted`; None where a new one may be created (nothing there,
    an empty directory, or a store with `overwrite`). Anything else at `url` is refused, never deleted."""
    fs, root = _fs(url, storage_options)
    if not check_store_destination(fs, root, url, option="--out"):
        return None
    if overwrite:
        return None
    store = ActivationStore.open(url, mode="r", storage_options=storage_options)
    if store.fingerprint != store_fingerprint(wanted):
        diffs = describe_differences(fingerprint_inputs(store.manifest), fingerprint_inputs(wanted))
        raise StoreMismatchError(
            f"{url} holds a store made from other inputs ({'; '.join(diffs[:4])}); "
            "pass another --out, or --overwrite to replace it"
        )
    return store


def transformers_version() -> str:
    """The installed transformers version (for the manifest's run info)."""
    import transformers

    return transformers.__version__
