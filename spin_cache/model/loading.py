"""Load a frozen model and its tokenizer, refusing tokenizers that cannot read plain text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from spin_cache.devices import resolve_device
from spin_cache.errors import InputError

from .adapters import T5_TYPES, Adapter, find_adapter
from .identity import DEFAULT_MODEL, hub_revision, model_identity, resolve_model_path, tokenizer_files

# a plain sentence every usable tokenizer maps to known tokens (checked when a tokenizer is loaded)
#: The model and stored dtypes, by name.
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_TOKENIZER_PROBE = "The film was a gripping, funny and moving story about two old friends."


@dataclass
class LoadedModel:
    """A frozen model ready for :func:`spin_cache.model.hooks.run_layers`."""

    model: torch.nn.Module  # eval mode, requires_grad False
    tokenizer: PreTrainedTokenizerBase  # with a pad token (decoders: pad = eos when missing)
    adapter: Adapter
    path: Path
    identity: dict[str, Any]
    device: torch.device


@dataclass(frozen=True)
class ModelFiles:
    """What is read from a model directory before its weights: enough to plan an extraction and fingerprint it.

    Built by :func:`read_model_files`; :func:`load_model` takes one so that the files are hashed and the
    tokenizer and config loaded once per extraction.
    """

    path: Path
    identity: dict[str, Any]  # see model_identity
    tokenizer: PreTrainedTokenizerBase  # checked and padded, see load_tokenizer
    config: PretrainedConfig

    @classmethod
    def at(cls, path: Path, identity: dict[str, Any]) -> ModelFiles:
        """The files of the model directory `path` whose `identity` (hashes) was just computed: its tokenizer
        (checked, see :func:`load_tokenizer`) and config are loaded here."""
        return cls(path=path, identity=identity, tokenizer=load_tokenizer(path), config=load_config(path))


def read_model_files(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, revision: str | None = None) -> ModelFiles:
    """Resolve a model (a hub id at `revision`), hash its files and load its tokenizer (checked, see
    :func:`load_tokenizer`) and config. A model from the hub cache also records its repo id and commit."""
    path = resolve_model_path(str(name_or_path), revision)
    identity = model_identity(path)
    commit = hub_revision(path)
    if commit is not None:
        identity = identity | {"repo_id": str(name_or_path), "revision": commit}
    return ModelFiles.at(path, identity)


def load_config(path: Path) -> PretrainedConfig:
    """The model directory's config (offline); InputError naming the directory when it cannot be read."""
    from transformers import AutoConfig

    try:
        config: PretrainedConfig = AutoConfig.from_pretrained(path, local_files_only=True)
        return config
    except Exception as exc:
        raise InputError(f"cannot read the model config in {path}: {type(exc).__name__}: {exc}") from None


def load_model(
    model: str | os.PathLike[str] | ModelFiles = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a model and its tokenizer from a local directory (or the local HF cache), frozen, in eval mode.

    Parameters
    ----------
    model
        A model name or directory (see :func:`resolve_model_path`), or the :class:`ModelFiles` already read from
        one (nothing is hashed or loaded twice then).
    device
        ``"auto"`` picks cuda when available.
    dtype
        The dtype the weights are loaded in.

    T5-family models load as encoder-only models. The tokenizer is loaded (and checked, see
    :func:`load_tokenizer`) before the weights.
    """
    from transformers import AutoModel, PreTrainedModel

    if isinstance(model, ModelFiles):
        files = model
        dev = resolve_device(device)
    else:
        # the device is checked after the files are hashed and before the tokenizer is loaded
        path = resolve_model_path(str(model))
        identity = model_identity(path)
        dev = resolve_device(device)
        files = ModelFiles.at(path, identity)
    path, config = files.path, files.config
    model_type = getattr(config, "model_type", None)
    if model_type in T5_TYPES:
        import transformers

        encoders: dict[str, type[PreTrainedModel]] = {
            "t5": transformers.T5EncoderModel,
            "mt5": transformers.MT5EncoderModel,
            "umt5": transformers.UMT5EncoderModel,
        }
        cls: type[PreTrainedModel] | type[AutoModel] = encoders[model_type]
    else:
        cls = AutoModel
    try:
        module: torch.nn.Module = cls.from_pretrained(path, config=config, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise InputError(f"cannot load the model in {path}: {type(exc).__name__}: {exc}") from None
    module.eval()
    module.requires_grad_(False)
    adapter = find_adapter(module)
    module.to(dev)
    return LoadedModel(
        model=module, tokenizer=files.tokenizer, adapter=adapter, path=path, identity=files.identity, device=dev
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a model directory's tokenizer (offline), checked, with a pad token (pad = eos, else unk, if missing).

    Refuses (InputError) a directory without tokenizer files and a tokenizer that maps a plain English sentence
    to unknown or special tokens only (an empty or wrong vocabulary): either would turn every text into the same
    few ids and every extracted activation into garbage. :func:`load_model` loads its tokenizer here; so should
    any other code that tokenizes for a model.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(str(name_or_path))
    tokenizer_files(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        message = _one_line(f"{type(exc).__name__}: {exc}")
        raise InputError(f"cannot load the tokenizer in {path}: {message}; check its tokenizer files") from None
    _check_tokenizer_knows_words(tokenizer, path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise InputError(f"the tokenizer in {path} has no pad, eos or unk token to pad batches with")
    return tokenizer


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_tokenizer_knows_words(tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Refuse a tokenizer under which a plain sentence is nothing but unknown (or special) tokens."""
    try:
        ids = list(tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    except Exception as exc:
        message = _one_line(f"{type(exc).__name__}: {exc}")
        raise InputError(
            f"the tokenizer in {path} cannot tokenize a plain sentence ({message}); check its tokenizer files"
        ) from None
    unknown = set(tokenizer.all_special_ids)
    if tokenizer.unk_token_id is not None:
        unknown.add(tokenizer.unk_token_id)
    if all(i in unknown for i in ids):
        got = "no tokens" if not ids else f"unknown tokens only ({tokenizer.convert_ids_to_tokens(ids[0])!r})"
        raise InputError(
            f"the tokenizer in model directory {path} maps a plain English sentence to {got}: its vocabulary "
            f"({len(tokenizer)} tokens) is empty or wrong; copy the model's own tokenizer files into the directory"
        )
