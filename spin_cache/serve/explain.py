"""Explain one prediction of an exported head: how much each token (and each layer) adds to the explained logit.

The head is linear in standardised pooled features, so with w the explained class's weights, mu/s the scaler and
a[t, j] the activation of selected neuron j at token t,

    logit = b + sum_j w_j (x_j - mu_j) / s_j = constant + sum_j (w_j / s_j) x_j,   constant = b - sum_j w_j mu_j / s_j

and the pooled feature x_j splits over tokens exactly:

    mean   x_j = sum_t a[t, j] / n          token t gets (w_j / s_j) a[t, j] / n for every j
    max    x_j = a[t*(j), j]                the token t*(j) that gave the max gets the whole (w_j / s_j) x_j
    first  x_j = a[0, j]                    the first token gets everything
    last   x_j = a[n - 1, j]                the last token gets everything

Grouping j by layer gives per-layer contributions; the (token, layer) matrix holds both. Token contributions plus the
constant add up to the logit. With `centered=True` the training mean is moved from the constant into the tokens
(mean: each token gets (w_j / s_j)(a[t, j] - mu_j) / n; max/first/last: the chosen token gets w_j (x_j - mu_j) / s_j)
and the constant is b: a token is then credited relative to an average training text.

Activations are read by :func:`spin_cache.model.hooks.forward_with_hooks`, like every other reading (block
outputs / FFN down-projection inputs), in float32 and unrounded; `logit` is the classifier's own decision on the
pooled float32 features (the store rounds to float16, so `spin-cache predict` may differ in the last digits).
Multi-class heads explain the logit of the predicted class (or of `label`); binary heads their single logit.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..fit.head import Head
from ..model.hooks import forward_with_hooks
from ..model.loading import LoadedModel
from ..representations import KINDS, POOLINGS
from .predict import Predictor, check_head_fits, check_model_identity


@dataclass
class Explanation:
    """Where one text's logit comes from. Arrays are float64; token i of `tokens` is row i everywhere."""

    text: str
    tokens: list[str]  # the text each token covers (special tokens as the tokenizer writes them)
    gaps: list[str]  # the text between the previous token and this one (spaces), for rendering
    token_contributions: np.ndarray  # (n_tokens,)
    layers: list[int]
    layer_contributions: dict[int, float]
    matrix: np.ndarray  # (n_tokens, n_layers): token_contributions = matrix.sum(1), per layer = matrix.sum(0)
    constant: float
    logit: float  # the classifier's decision for the explained class on the float32 features
    label: str  # the predicted label
    explained_label: str  # whose logit is explained (the predicted one unless asked otherwise)
    probabilities: dict[str, float]
    kind: str
    pooling: str
    centered: bool
    # one entry per (selected neuron, token it is credited to): for max/first/last exactly one per neuron,
    # for mean one per neuron with token -1 (spread evenly over the tokens)
    neuron_layers: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    neuron_ids: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    neuron_tokens: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    neuron_contributions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    features: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))

    @property
    def total(self) -> float:
        """constant + the sum of token contributions (equals `logit` up to float rounding)."""
        return float(self.constant + self.token_contributions.sum())

    def to_dict(self) -> dict[str, Any]:
        """The explanation as plain JSON-ready values (tokens with their contributions, per-layer sums)."""
        return {
            "text": self.text,
            "label": self.label,
            "explained_label": self.explained_label,
            "logit": self.logit,
            "constant": self.constant,
            "probabilities": self.probabilities,
            "kind": self.kind,
            "pooling": self.pooling,
            "centered": self.centered,
            "tokens": [
                {"token": t, "contribution": float(c)}
                for t, c in zip(self.tokens, self.token_contributions, strict=True)
            ],
            "layers": {str(k): v for k, v in self.layer_contributions.items()},
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def _scale(self) -> float:
        m = float(np.abs(self.token_contributions).max()) if len(self.token_contributions) else 0.0
        return m if m > 0 else 1.0

    def to_terminal(self, color: bool = True, top: int = 8) -> str:
        """The text with each token's background green (raises the logit) or red (lowers it), stronger for
        larger contributions; then the numbers. `color=False` writes the contribution after each token."""
        scale = self._scale()
        pieces = []
        for tok, gap, c in zip(self.tokens, self.gaps, self.token_contributions, strict=True):
            sep = gap
            if color:
                a = min(1.0, abs(c) / scale)
                fade = int(255 - (175 if c >= 0 else 200) * a)
                r, g, b = (fade, 255, fade) if c >= 0 else (255, fade, fade)
                pieces.append(f"{sep}\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{tok}\x1b[0m")
            else:
                pieces.append(f"{sep}{tok}[{c:+.3g}]")
        lines = [
            f"label {self.label} (p = {self.probabilities.get(self.label, float('nan')):.3f}); explained: logit of "
            f"{self.explained_label} = {self.logit:+.4f} = constant {self.constant:+.4f} + tokens "
            f"{float(self.token_contributions.sum()):+.4f}   [{self.kind}/{self.pooling} pooling"
            f"{', centered' if self.centered else ''}]",
            "".join(pieces).lstrip(),
        ]
        if color:
            lines.append(
                "\x1b[48;2;80;255;80m\x1b[38;2;0;0;0m raises \x1b[0m "
                "\x1b[48;2;255;55;55m\x1b[38;2;0;0;0m lowers \x1b[0m"
            )
        order = [
            i for i in np.argsort(-np.abs(self.token_contributions), kind="stable")[:top] if self.token_contributions[i]
        ]
        lines.append(
            "largest tokens: " + ", ".join(f"{self.tokens[i]!r} {self.token_contributions[i]:+.4f}" for i in order)
        )
        lines.append("per layer: " + ", ".join(f"{k}: {v:+.4f}" for k, v in self.layer_contributions.items()))
        return "\n".join(lines)

    def to_html(self) -> str:
        """A small self-contained page: the coloured text (hover for numbers) and per-token and per-layer tables."""
        esc = html.escape
        scale = self._scale()
        spans = []
        for tok, gap, c in zip(self.tokens, self.gaps, self.token_contributions, strict=True):
            a = min(1.0, abs(c) / scale) * 0.85
            colour = f"rgba(0,170,0,{a:.3f})" if c >= 0 else f"rgba(220,0,0,{a:.3f})"
            sep = esc(gap)
            spans.append(f"{sep}<span class='tok' style='background:{colour}' title='{c:+.5f}'>{esc(tok)}</span>")
        token_rows = "".join(
            f"<tr><td>{i}</td><td>{esc(t)}</td><td>{c:+.5f}</td></tr>"
            for i, (t, c) in enumerate(zip(self.tokens, self.token_contributions, strict=True))
        )
        layer_rows = "".join(f"<tr><td>{k}</td><td>{v:+.5f}</td></tr>" for k, v in self.layer_contributions.items())
        probs = ", ".join(f"{esc(k)}: {v:.3f}" for k, v in self.probabilities.items())
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>spin-cache explanation</title><style>"
            "body{font-family:Helvetica,Arial,sans-serif;max-width:900px;margin:24px auto;padding:0 16px;color:#222}"
            ".text{font-size:1.3em;line-height:2em;white-space:pre-wrap}.tok{padding:2px 1px;border-radius:3px}"
            "table{border-collapse:collapse;margin:8px 16px 8px 0;float:left}td,th{border:1px solid #ccc;"
            "padding:2px 8px;font-size:.85em}.muted{color:#666;font-size:.9em}</style></head><body>"
            f"<h1>Predicted: {esc(self.label)}</h1><p class='muted'>probabilities {probs}. Explained: the logit of "
            f"{esc(self.explained_label)} = {self.logit:+.5f} = constant {self.constant:+.5f} + the sum of the "
            f"token contributions {float(self.token_contributions.sum()):+.5f} ({esc(self.kind)} neurons, "
            f"{esc(self.pooling)} pooling{', centered on the training mean' if self.centered else ''}). "
            "Green raises the logit, red lowers it.</p>"
            f"<p class='text'>{''.join(spans).lstrip()}</p>"
            "<table><tr><th>#</th><th>token</th><th>contribution</th></tr>"
            f"{token_rows}</table><table><tr><th>layer</th><th>contribution</th></tr>{layer_rows}</table>"
            "</body></html>\n"
        )


# ---- the model side -------------------------------------------------------------------------------------------


def _loaded_for(head: Head, model: LoadedModel | str | os.PathLike[str] | None, device: str) -> LoadedModel:
    """The head's model, loaded once; pass a LoadedModel to reuse one. Either way its content hashes must equal
    the head's (a head that records none is refused) and the head's layers and neurons must lie inside it; a
    relative model hint in the head resolves against the head's folder (see predict.resolve_head_model)."""
    if isinstance(model, LoadedModel):
        check_model_identity(head, model.identity, model.path)
        check_head_fits(head, model)
        return model
    return Predictor(head, None if model is None else str(model), device=device).loaded


def token_activations(
    loaded: LoadedModel, input_ids: torch.Tensor, kind: str, layers: list[int]
) -> dict[int, np.ndarray]:
    """Per-token activations (n_tokens, width) of one unpadded text at `layers` of `kind`, float32.

    Same modules as `run_layers`: hidden layer 0 = the first block's input, l < L = block l's output, L = the
    model's output; ffn layer l = the input of block l's FFN down projection. Stops after the deepest layer.
    """
    adapter = loaded.adapter
    num_layers = adapter.num_layers
    want = set(layers)
    deepest = max(layers)
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; choose hidden or ffn")
    lowest = 0 if kind == "hidden" else 1
    if min(layers) < lowest or deepest > num_layers:
        raise InputError(f"the head reads {kind} layers {layers}, but the model has layers {lowest}..{num_layers}")
    mask = torch.ones_like(input_ids, dtype=torch.long)
    found: dict[int, torch.Tensor] = {}

    def keep(_kind: str, layer: int, states: torch.Tensor) -> None:
        found[layer] = states[0].detach().to(torch.float32).cpu().clone()

    forward_with_hooks(loaded, input_ids, mask, keep, kinds=(kind,), upto=deepest, layers=want)
    missing = sorted(want - set(found))
    if missing:
        raise RuntimeError(f"no {kind} activations were seen for layers {missing}")
    return {layer: found[layer].numpy() for layer in layers}


def _tokenize(loaded: LoadedModel, text: str, max_length: int) -> tuple[torch.Tensor, list[str], list[str]]:
    tok = loaded.tokenizer
    offsets = None
    try:
        enc = tok(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):
        enc = tok(text, truncation=True, max_length=max_length)
    ids = list(enc["input_ids"])
    if not ids:
        raise InputError("the text gives no tokens; pass a non-empty text")
    raw = tok.convert_ids_to_tokens(ids)
    tokens, gaps, prev_end, prev_special = [], [], 0, False
    for i, piece in enumerate(raw):
        if offsets is not None and offsets[i][1] > offsets[i][0]:
            start, end = offsets[i]
            tokens.append(text[start:end])
            gap = text[prev_end:start] if start >= prev_end else ""
            gaps.append(gap or (" " if prev_special else ""))
            prev_end, prev_special = max(prev_end, end), False
        else:  # a special token, or a tokenizer without offsets: tokens apart
            tokens.append(str(piece))
            gaps.append(" " if i else "")
            prev_special = True
    return torch.tensor([ids], dtype=torch.long), tokens, gaps


# ---- the attribution ------------------------------------------------------------------------------------------


def explain(
    head: Head | str | os.PathLike[str],
    text: str,
    *,
    model: LoadedModel | str | os.PathLike[str] | None = None,
    device: str = "cpu",
    label: str | int | None = None,
    centered: bool = False,
) -> Explanation:
    """Split the head's logit for `text` into per-token and per-layer contributions plus a constant.

    `head`: a Head or a head directory. `model`: None (the head's model, checked by hashes), a model name or
    directory, or a `LoadedModel` to reuse across calls. `label`: explain this class's logit instead of the
    predicted one (multi-class heads only). `centered`: credit tokens relative to the training mean.
    """
    head = head if isinstance(head, Head) else Head.load(head)
    if not isinstance(text, str) or not text.strip():
        raise InputError("give a non-empty text to explain (--text)")
    info = head.info
    kind, pooling = info.get("kind"), info.get("pooling")
    if pooling not in POOLINGS:
        raise InputError(f"the head's pooling {pooling!r} cannot be explained; expected first, last, mean or max")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(f"the head's kind {kind!r} cannot be explained; expected hidden or ffn")
    loaded = _loaded_for(head, model, device)
    input_ids, tokens, gaps = _tokenize(loaded, text, int(info.get("max_length", 512)))
    layers = head.layers
    acts = token_activations(loaded, input_ids, kind, layers)
    n_tok = input_ids.shape[1]

    # Pooled features as pool_many computes them (float32), then the classifier's own decision.
    parts = []
    for layer in layers:
        chosen = torch.from_numpy(acts[layer][:, np.asarray(head.selection[layer], dtype=np.int64)])
        if pooling == "mean":
            parts.append((chosen.sum(dim=0, dtype=torch.float32) / n_tok).numpy())
        elif pooling == "max":
            parts.append(chosen.amax(dim=0).numpy())
        else:
            parts.append(chosen[0 if pooling == "first" else n_tok - 1].numpy())
    features = np.concatenate(parts).astype(np.float32)[None, :]
    clf = head.classifier
    # one logit for a binary head, one per class otherwise (whether decision_function returns (n,) or (n, 1))
    scores = np.atleast_1d(clf.decision_function(features)[0])
    probs = clf.predict_proba(features)[0]
    names = list(info.get("label_names") or [str(i) for i in range(clf.n_classes_)])
    predicted = int(scores[0] > 0) if scores.shape[0] == 1 else int(np.argmax(scores))
    row = _explained_row(label, predicted, names, scores.shape[0])

    coef = np.asarray(clf.coef_, dtype=np.float64)[row]
    mu = np.asarray(clf.scaler_.mean, dtype=np.float64)
    s = np.asarray(clf.scaler_.scale, dtype=np.float64)
    w = coef / s
    constant = float(clf.intercept_[row]) - (0.0 if centered else float(np.dot(w, mu)))

    matrix = np.zeros((n_tok, len(layers)))
    n_layers, n_ids, n_toks, n_contrib = [], [], [], []
    offset = 0
    for li, layer in enumerate(layers):
        idx = np.asarray(head.selection[layer], dtype=np.int64)
        a = acts[layer][:, idx].astype(np.float64)  # (T, n_l)
        wl, ml = w[offset : offset + len(idx)], mu[offset : offset + len(idx)]
        offset += len(idx)
        if pooling == "mean":
            per = ((a - ml) if centered else a) * wl / n_tok  # (T, n_l)
            matrix[:, li] = per.sum(axis=1)
            terms, where = per.sum(axis=0), np.full(len(idx), -1)
        else:
            if pooling == "max":
                where = np.argmax(a, axis=0)  # the first token holding the max
            else:
                where = np.full(len(idx), 0 if pooling == "first" else n_tok - 1)
            x = a[where, np.arange(len(idx))]
            terms = ((x - ml) if centered else x) * wl
            np.add.at(matrix[:, li], where, terms)
        n_layers.append(np.full(len(idx), layer))
        n_ids.append(idx)
        n_toks.append(where)
        n_contrib.append(terms)
    per_token = matrix.sum(axis=1)
    return Explanation(
        text=text,
        tokens=tokens,
        gaps=gaps,
        token_contributions=per_token,
        layers=list(layers),
        layer_contributions={layer: float(matrix[:, i].sum()) for i, layer in enumerate(layers)},
        matrix=matrix,
        constant=constant,
        logit=float(scores[row]),
        label=names[predicted],
        explained_label=names[row] if scores.shape[0] > 1 else names[1 if len(names) > 1 else 0],
        probabilities={n: float(p) for n, p in zip(names, probs, strict=False)},
        kind=str(kind),
        pooling=str(pooling),
        centered=centered,
        neuron_layers=np.concatenate(n_layers).astype(np.int64),
        neuron_ids=np.concatenate(n_ids).astype(np.int64),
        neuron_tokens=np.concatenate(n_toks).astype(np.int64),
        neuron_contributions=np.concatenate(n_contrib),
        features=features[0],
    )


def _explained_row(label: str | int | None, predicted: int, names: list[str], n_out: int) -> int:
    """Which row of coef_ to explain: binary heads have one (the logit of the second label)."""
    if n_out == 1:
        if label is not None and str(label) not in (names[-1], "1", str(len(names) - 1)):
            raise InputError(
                f"a binary head has one logit, that of {names[-1]!r} (negative means {names[0]!r}); leave the label out"
            )
        return 0
    if label is None:
        return predicted
    if str(label) in names:
        return names.index(str(label))
    if isinstance(label, int) and 0 <= label < n_out:
        return label
    raise InputError(f"label {label!r}: choose from {', '.join(names)}")
