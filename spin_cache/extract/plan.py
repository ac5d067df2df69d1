"""Before the first batch: options checked, data loaded and tokenised, the manifest and the store decided."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ..data.loading import LabelledDataset, load_dataset
from ..errors import InputError, IntegrityError, StoreMismatchError
from ..model import kernels
from ..model.loading import LoadedModel, _resolve_device
from ..outputs import check_store_destination
from ..representations import KINDS, POOLINGS
from ..store.access import _fs
from ..store.activation_store import ActivationStore
from ..store.layout import STORE_DTYPES
from ..store.manifest import describe_differences, fingerprint_inputs

DEFAULT_CHUNK_COLS = 64
DEFAULT_MAX_LENGTH = 512
DEFAULT_STORES_DIR = "stores"


def resolve_compute_dtype(compute_dtype: str, device: str) -> str:
    """'auto': bfloat16 on a CUDA device that supports it, float32 elsewhere (CPU matmuls in bf16 are slow)."""
    if compute_dtype != "auto":
        return compute_dtype
    dev = _resolve_device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def _pooling_route(loaded: LoadedModel | None) -> str:
    """What pooled the activations (for the manifest): `mean` may differ in its last stored bit between the two."""
    if loaded is None:
        return "by the workers (fused kernel where each could build it)"
    float32 = next(loaded.model.parameters()).dtype == torch.float32  # the kernel takes float32 activations
    fused = loaded.device.type == "cpu" and float32 and kernels.fused_pooling() is not None
    return "fused kernel (spin_cache.model.kernels)" if fused else "torch"


def _check_options(
    kinds: Sequence[str],
    poolings: Sequence[str] | None,
    dtype: str,
    compute_dtype: str,
    batch_size: int,
    chunk_cols: int,
    block_rows: int | None,
) -> None:
    bad_kinds = [k for k in kinds if k not in KINDS]
    if not kinds or bad_kinds:
        raise InputError(f"--kinds: {bad_kinds or 'none'} not supported; choose from {', '.join(KINDS)}")
    bad_pool = [p for p in poolings or () if p not in POOLINGS]
    if bad_pool:
        raise InputError(f"--poolings: {', '.join(bad_pool)} not supported; choose from {', '.join(POOLINGS)}")
    if dtype not in STORE_DTYPES:
        raise InputError(f"--dtype {dtype}: choose from {', '.join(STORE_DTYPES)}")
    if compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"--compute-dtype {compute_dtype}: choose from auto, float32, bfloat16, float16")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if chunk_cols < 1:
        raise InputError(f"--chunk-cols {chunk_cols}: must be at least 1")
    if block_rows is not None and block_rows < 1:
        raise InputError(f"--block-rows {block_rows}: must be at least 1")


def _load_data(
    data: str | None, train: str | None, dev: str | None, test: str | None, text_column: str, label_column: str
) -> LabelledDataset:
    if train or dev or test:
        if data not in (None, "sst2"):
            raise InputError(
                "--data and --train/--dev/--test are exclusive: pass one file with a split column or one per split"
            )
        return load_dataset(None, train=train, dev=dev, test=test, text_column=text_column, label_column=label_column)
    return load_dataset(data, text_column=text_column, label_column=label_column)


def _load_tokenizer_and_config(path: Path) -> tuple[object, object]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot load the model's config or tokenizer ({exc})") from exc
    return tokenizer, config


def _is_decoder(config: object) -> bool:
    model_type = getattr(config, "model_type", "")
    if model_type in ("t5", "mt5", "umt5"):
        return False
    return bool(getattr(config, "is_decoder", False)) or model_type in (
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "phi3",
        "gpt_neox",
        "opt",
    )


def _resolve_max_length(max_length: int | None, tokenizer: object, config: object) -> int:
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


def _tokenize(
    loaded: LoadedModel, dataset: LabelledDataset, max_length: int
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
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


def _examples_table(dataset: LabelledDataset, n_tokens: np.ndarray, truncated: np.ndarray) -> pl.DataFrame:
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


def _fingerprint(partial_manifest: dict) -> str:
    from ..store.layout import canonical_hash

    return canonical_hash(fingerprint_inputs(partial_manifest))


def _repair_examples(store: ActivationStore, examples: pl.DataFrame) -> None:
    """Resuming an incomplete store: write its examples table again if it is missing or unreadable (a crash while
    the store was created). Same fingerprint, same table: it depends only on the dataset and the tokenizer."""
    try:
        store.examples  # noqa: B018 - reading it is the check
    except IntegrityError:
        store.write_examples(examples)


def _existing_store(url: str, wanted: dict, overwrite: bool, storage_options: dict | None) -> ActivationStore | None:
    """The store at `url` if there is one made from `wanted`; None where a new one may be created (nothing there,
    an empty directory, or a store with `overwrite`). Anything else at `url` is refused, never deleted."""
    fs, root = _fs(url, storage_options)
    if not check_store_destination(fs, root, url, option="--out"):
        return None
    if overwrite:
        return None
    store = ActivationStore.open(url, mode="r", storage_options=storage_options)
    if store.fingerprint != _fingerprint(wanted):
        diffs = describe_differences(fingerprint_inputs(store.manifest), fingerprint_inputs(wanted))
        raise StoreMismatchError(
            f"{url} holds a store made from other inputs ({'; '.join(diffs[:4])}); "
            "pass another --out, or --overwrite to replace it"
        )
    return store


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
