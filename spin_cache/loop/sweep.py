"""Select and integrate: for every (kind, pooling, rule value, K) fit a head on the selected neurons of the first
K layers at every C of the head grid, choose one head from their dev predictions (`SweepSettings.select`, see
spin_cache.loop.selection), report it against Base, the best single-layer probe and a random control, with an
estimate of what it will score on new data, and export it.

One Dask task per (kind, pooling) group reads the union of the columns any of its configurations needs, once
(plus, for hidden states, the last layer in full for Base), and fits every configuration from memory. When those
columns do not fit the memory budget, every fit (Base and the random control included) streams row blocks instead.

Test is read once: groups score their heads on dev only; after the choice, the chosen head alone (with Base and the
random control, the references it is compared with) is scored on test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from .. import __version__
from ..errors import InputError
from ..extract.allocator import release_free_heap
from ..fit.estimator import SpinClassifier
from ..fit.head import Head
from ..fit.metrics import METRICS, score_predictions
from ..fit.solver import HEAD_C_GRID, Design, LinearFit, Standardizer, fit_c_path, predict_design, solver_device
from ..outputs import MARKERS, finite_or_null, prepare_output_dir
from ..store.activation_store import ActivationStore
from ..store.folds import DEFAULT_FOLDS, Fold
from ..store.ordered import ORDERED_DIR, OrderedCopy, open_ordered
from ..validation import (
    FOLD_COUNT,
    FRACTIONS,
    NON_NEGATIVE_INT,
    PERCENTS,
    POSITIVE_FLOAT,
    POSITIVE_FLOATS,
    POSITIVE_INT,
    POSITIVE_INTS,
    Constraint,
    check,
)
from .parallel import check_memory_budget, check_workers, default_memory_budget, run_tasks, task_memory_budget
from .probe import IN_MEMORY_COPIES, ProbeRun, block_memory_need, check_folds, probe_folds
from .results import (
    SWEEP_SCHEMA,
    BaseResult,
    BestConfig,
    ChosenBy,
    ControlResult,
    DevPredictions,
    GroupResult,
    HeadParts,
    SweepRow,
    SweepTable,
    TableRow,
)
from .select import RULES, random_like, select
from .selection import (
    CV,
    DEFAULT_ESTIMATE_METHOD,
    DEFAULT_SELECT,
    SELECTIONS,
    Choice,
    ConfigScores,
    Estimate,
    choose,
    cross_validated_choice,
    expected_score,
    sweep_neighbourhoods,
)

# The paper's eta values plus 0.9 and 0.95: with the paper's alone, dev accuracy can peak at the grid's edge (0.8),
# where the optimum may lie beyond it; the two added values let it peak inside the grid, or show that it flattens
# (BENCHMARKS.md, "Eta and head C grids").
DEFAULT_ETAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.9, 0.95)
SWEEP_FORMAT = "spin-cache-sweep"
FOLDS_DIR = "folds"  # with --select cv: folds/<i>, fold i's probe run
SWEEP_MARKER = MARKERS["sweep"]  # sweep.json: written first, so a sweep that stops midway is still recognised
#: The rule values' option and range, per selection rule.
RULE_VALUES: dict[str, tuple[str, Constraint]] = {
    "eta": ("--eta", FRACTIONS),
    "top-k": ("--top-k", POSITIVE_INTS),
    "top-percent": ("--top-percent", PERCENTS),
}
#: `SweepSettings.select`: how the exported head is chosen from the dev predictions (spin_cache.loop.selection).
SELECT = Constraint("name", choices=SELECTIONS)
#: `SweepSettings.search`: "grid" fits every head at every C of the grid (the exact reference); "patience" stops
#: each configuration's C path once dev has not improved for `SweepSettings.patience` C values in a row.
SEARCHES = ("grid", "patience")
SEARCH = Constraint("name", choices=SEARCHES)
DEFAULT_PATIENCE = 2
#: The estimate shown next to the chosen head's dev score: the bootstrap bias-corrected estimate (bbc).
ESTIMATE_METHOD = DEFAULT_ESTIMATE_METHOD


@dataclass(frozen=True)
class SweepSettings:
    """What the sweep fits and how it chooses.

    select: the strategy that chooses the exported head among every (configuration, C)
    (spin_cache.loop.selection.SELECTIONS). "cv" by default: every configuration is also fitted in each of `folds`
    folds of the training rows (probes included, without the fold's rows) and the best out-of-fold head is chosen,
    so the choice never looks at dev (only the probe run's C per layer was chosen there) and the chosen head's dev
    score is an honest estimate; it beat the arg-max on every
    set measured (BENCHMARKS.md, "Selection strategies") and costs about 1 + 0.8 x `folds` times the sweep. The
    strategies over dev predictions ("argmax", ...) report a bootstrap bias-corrected estimate instead.

    search: "grid" (default) fits every configuration's head at every C of `c_grid`, the exact reference;
    "patience" stops a configuration's C path (ascending: strong to weak regularisation) once its dev score has not
    improved on the best so far for `patience` C values in a row, so the weak-regularisation end, the slowest fits,
    is skipped. Heads never fitted are not compared (ChosenBy.n_compared counts the heads fitted). Base and the
    random control, the references, are always fitted over the whole grid.

    folds: cross-validation folds for select "cv" (2 or more; 5 by default)."""

    rule: str = "eta"
    values: tuple[float, ...] = DEFAULT_ETAS
    c_grid: tuple[float, ...] = HEAD_C_GRID
    penalty: str = "l2"
    metric: str = "accuracy"
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    select: str = DEFAULT_SELECT
    search: str = "grid"
    patience: int = DEFAULT_PATIENCE
    folds: int = DEFAULT_FOLDS

    def check(self) -> None:
        """InputError naming the first setting out of its range (the same rules as the command line's)."""
        if self.rule not in RULES:
            raise InputError(f"selection rule {self.rule!r}: choose from {', '.join(RULES)}")
        option, rule = RULE_VALUES.get(self.rule, ("values", POSITIVE_FLOATS))
        for name, value in ((f"{option} (values)", self.values), ("--C (c_grid)", self.c_grid)):
            if isinstance(value, (str, bytes)):
                raise InputError(f"{name} {value!r}: give a sequence of numbers, not a string")
        check(f"{option} (values)", self.values, rule)
        check("--C (c_grid)", self.c_grid, POSITIVE_FLOATS)
        if self.penalty not in ("l1", "l2"):
            raise InputError(f"--head-penalty {self.penalty}: choose l1 or l2")
        if self.metric not in METRICS:
            raise InputError(f"--metric {self.metric}: choose from {', '.join(METRICS)}")
        check("max_iter", self.max_iter, POSITIVE_INT)
        check("tol", self.tol, POSITIVE_FLOAT)
        check("--seed", self.seed, NON_NEGATIVE_INT)
        check("--select (select)", self.select, SELECT)
        check("--search (search)", self.search, SEARCH)
        check("--patience (patience)", self.patience, POSITIVE_INT)
        check("--folds (folds)", self.folds, FOLD_COUNT)
        if not isinstance(self.patience, int) or isinstance(self.patience, bool):
            raise InputError(f"--patience (patience): expected an integer >= 1, got {self.patience!r}")

    @property
    def head_patience(self) -> int | None:
        """What fit_c_path's `patience` is for the configurations' heads: None (every C) unless search is
        "patience"."""
        return self.patience if self.search == "patience" else None


# ---- fitting ------------------------------------------------------------------------------------------------------


@dataclass
class _Fitted:
    """One configuration's C path: the classifier kept (the best C on dev, or the C asked for), its dev score,
    and every C's dev predictions (C ascending)."""

    classifier: SpinClassifier
    dev: float
    n_features: int
    dev_predictions: list[tuple[float, np.ndarray]] = field(default_factory=list)


def _classifier(s: SweepSettings, n_classes: int, width: int, scaler: Standardizer, c: float, fit: LinearFit,
                history: list[dict[str, Any]]) -> SpinClassifier:  # fmt: skip
    """A fitted SpinClassifier from one fit of the path, as SpinClassifier.fit would have made it."""
    clf = SpinClassifier(C=tuple(s.c_grid), penalty=s.penalty, max_iter=s.max_iter, tol=s.tol, metric=s.metric,
                         random_state=s.seed)  # fmt: skip
    clf.n_classes_, clf.classes_, clf.n_features_in_ = n_classes, np.arange(n_classes), width
    return clf.adopt_fit(scaler, c, fit, history)


def _path(train: Design, dev: Design, scaler: Standardizer, n_classes: int, s: SweepSettings,
          keep_c: float | None, patience: int | None = None, device: str | None = None) -> _Fitted:  # fmt: skip
    """Fit the C path; keep the best C on dev (SpinClassifier.fit's choice) or, given `keep_c`, that C's fit.
    `patience`: fit_c_path's early stop (None: every C). `device`: where to fit (None: the CPU)."""
    per_c: list[tuple[float, np.ndarray]] = []
    kept: dict[str, LinearFit] = {}

    def on_fit(c: float, fit: LinearFit, pred: np.ndarray) -> None:
        per_c.append((c, np.asarray(pred, dtype=_label_dtype(n_classes))))
        if keep_c is not None and c == keep_c:
            kept["fit"] = fit

    res = fit_c_path(train, dev, n_classes, s.c_grid, penalty=s.penalty, metric=s.metric, max_iter=s.max_iter,
                     tol=s.tol, on_fit=on_fit, patience=patience, device=solver_device(device))  # fmt: skip
    if keep_c is None:
        c, fit, dev_score = res.c, res.fit, res.dev
    else:
        if "fit" not in kept:
            raise InputError(f"C {keep_c!r} is not on the head grid {tuple(s.c_grid)} (or its path stopped before it)")
        c, fit = keep_c, kept["fit"]
        dev_score = next(h["dev"] for h in res.history if h["C"] == c)
    clf = _classifier(s, n_classes, train.n_features, scaler, c, fit, res.history)
    return _Fitted(clf, dev_score, train.n_features, per_c)


def _fit_in_memory(x: dict[str, np.ndarray], y: dict[str, np.ndarray], n_classes: int, s: SweepSettings,
                   keep_c: float | None = None, patience: int | None = None,
                   device: str | None = None) -> _Fitted:  # fmt: skip
    """The C path on features in memory, exactly as SpinClassifier.fit runs it, keeping every C's dev predictions."""
    scaler = Standardizer.fit(x["train"])
    train = Design.of(scaler.transform(x["train"]), y["train"])
    dev = Design.of(scaler.transform(x["dev"]), y["dev"])
    return _path(train, dev, scaler, n_classes, s, keep_c, patience, device)


def _label_dtype(n_classes: int) -> type[np.signedinteger]:
    """The smallest integer type that holds class indices 0..n_classes-1."""
    return np.int8 if n_classes <= 127 else np.int16 if n_classes <= 32767 else np.int32


def score_test(clf: SpinClassifier, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """A head's test score, from features in memory (NaN without test rows). The sweep calls it (or, streamed,
    `_StreamedColumns.test_score`) for the chosen head, Base and the random control only."""
    return clf.score(x_test, y_test) if len(y_test) else float("nan")


def _splits(store: ActivationStore) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Row masks of train/dev/test and every row's label."""
    split = store.examples["split"].to_numpy()
    labels = store.examples["label"].to_numpy().astype(np.int64)
    return {s: split == s for s in ("train", "dev", "test")}, labels


def _over_budget(store: ActivationStore, n_columns: int, memory_budget: int | None) -> bool:
    """Whether `n_columns` float32 columns of every row, with their in-memory copies, exceed the budget."""
    return memory_budget is not None and IN_MEMORY_COPIES * 4 * store.layout.n_rows * n_columns > memory_budget


class _StreamedColumns:
    """One selection's features out of core: row blocks read on demand, again on every solver pass."""

    def __init__(
        self,
        store: ActivationStore,
        ordered: OrderedCopy | None,
        kind: str,
        pooling: str,
        selection: Mapping[int, np.ndarray],
        masks: dict[str, np.ndarray],
        labels: np.ndarray,
    ) -> None:
        self.store, self.ordered, self.kind, self.pooling = store, ordered, kind, pooling
        self.masks, self.labels = masks, labels
        self.ascending = {layer: np.sort(idx) for layer, idx in selection.items()}
        self.back = {layer: np.searchsorted(self.ascending[layer], idx) for layer, idx in selection.items()}
        self.width = sum(len(v) for v in selection.values())
        self.n = {s: int(m.sum()) for s, m in masks.items()}

    def chunks(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        block_rows = self.store.layout.block_rows
        rows = np.flatnonzero(self.masks[split])
        for block in np.unique(rows // block_rows):
            part = rows[(rows // block_rows) == block]
            x = np.concatenate([_read_columns(self.store, self.ordered, self.kind, self.pooling, layer,
                                              self.ascending[layer], rows=part)[0][:, self.back[layer]]
                                for layer in sorted(self.ascending)], axis=1)  # fmt: skip
            yield x, self.labels[part]

    def design(self, split: str, scaler: Standardizer) -> Design:
        def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for x, yb in self.chunks(split):
                yield torch.as_tensor(scaler.transform(x)), torch.as_tensor(yb)

        return Design(blocks, self.n[split], self.width)

    def fit(self, n_classes: int, settings: SweepSettings, keep_c: float | None = None,
            patience: int | None = None, device: str | None = None) -> _Fitted:  # fmt: skip
        scaler = Standardizer.fit_chunks((x for x, _ in self.chunks("train")), self.width)
        fitted = _path(self.design("train", scaler), self.design("dev", scaler), scaler, n_classes, settings, keep_c,
                       patience, device)  # fmt: skip
        release_free_heap()  # the passes' freed blocks, back to the kernel: peak memory stays flat in the rows
        return fitted

    def test_score(self, clf: SpinClassifier, metric: str) -> float:
        """A head's test score over row blocks (NaN without test rows): for the chosen head, Base and the control."""
        score = design_score(self.design("test", clf.scaler_), clf, metric)
        release_free_heap()
        return score


def design_score(design: Design, clf: SpinClassifier, metric: str) -> float:
    """A fitted head's score on a design already standardised with its scaler (NaN for a design without rows)."""
    if design.n_rows == 0:
        return float("nan")
    return score_predictions(*predict_design(design, clf.coef_, clf.intercept_), metric)


def sweep_group(
    store_url: str,
    kind: str,
    pooling: str,
    saliency: dict[int, np.ndarray],
    settings: SweepSettings,
    storage_options: dict[str, Any] | None = None,
    ordered_url: str | None = None,
    memory_budget: int | None = None,
    device: str | None = None,
    fold: Fold | None = None,
) -> GroupResult:
    """One Dask task: every (value, K) configuration of one (kind, pooling) at every C, from one read of its columns.

    Columns come from the probe run's saliency-ordered copy when it holds them (a contiguous prefix read),
    else from the store. When the columns do not fit `memory_budget` bytes, every configuration is fitted on row
    blocks read on demand instead (out of core; each solver pass reads its columns again). Heads are scored on dev
    only (every C's dev predictions are sent back for the selection); Base, a reference, also on test. `device`:
    where the heads are fitted (None: the CPU). `fold`: fit on that cross-validation fold's view of the store (its
    "dev" is the fold's training rows; `saliency` must be the fold's probes'); no Base."""
    t0 = time.perf_counter()
    store = ActivationStore.open(store_url, storage_options=storage_options, count_bytes=True, fold=fold)
    layers = store.layers(kind)
    selections = {v: {layer: select(saliency[layer], settings.rule, v) for layer in layers} for v in settings.values}
    need: dict[int, set[int]] = {layer: set() for layer in layers}
    for sel in selections.values():
        for layer, idx in sel.items():
            need[layer].update(int(i) for i in idx)
    base_layer = layers[-1] if kind == "hidden" and fold is None else None
    if base_layer is not None:
        need[base_layer] = set(range(store.width(kind)))
    masks, labels = _splits(store)
    y = {s: labels[m] for s, m in masks.items()}
    n_classes = len(store.label_names)
    ordered = open_ordered(ordered_url) if ordered_url else None
    cols = {layer: np.array(sorted(need[layer]), dtype=np.int64) for layer in layers}
    streamed = _over_budget(store, sum(len(c) for c in cols.values()), memory_budget)
    # In memory, every column is standardised once, on the train rows: a configuration's columns then need no
    # statistics or copies of their own (a column's mean and scale do not depend on which others are fitted with it).
    data: dict[int, np.ndarray] = {}
    scalers: dict[int, Standardizer] = {}
    col_bytes = 0.0
    for layer in layers:
        rows_read = None if not streamed else np.arange(min(1, store.layout.n_rows))  # streamed: size only
        values, nbytes = _read_columns(store, ordered, kind, pooling, layer, cols[layer], rows=rows_read)
        col_bytes += nbytes
        if not streamed:
            scalers[layer] = Standardizer.fit(values[masks["train"]])
            data[layer] = scalers[layer].transform(values)
            del values

    def standardised(sel: Mapping[int, np.ndarray]) -> tuple[dict[str, np.ndarray], Standardizer]:
        where = {layer: np.searchsorted(cols[layer], sel[layer]) for layer in sel}
        full = np.concatenate([data[layer][:, where[layer]] for layer in sel], axis=1)
        scaler = Standardizer(np.concatenate([scalers[layer].mean[where[layer]] for layer in sel]),
                              np.concatenate([scalers[layer].scale[where[layer]] for layer in sel]))  # fmt: skip
        return {s: full[m] for s, m in masks.items()}, scaler

    def fit_config(sel: Mapping[int, np.ndarray], test: bool = False,
                   patience: int | None = None) -> tuple[_Fitted, float | None]:  # fmt: skip
        if not streamed:
            x, scaler = standardised(sel)
            fitted = _path(Design.of(x["train"], y["train"]), Design.of(x["dev"], y["dev"]), scaler, n_classes,
                           settings, None, patience, device)  # fmt: skip
            if not test:
                return fitted, None
            return fitted, design_score(Design.of(x["test"], y["test"]), fitted.classifier, settings.metric)
        source = _StreamedColumns(store, ordered, kind, pooling, sel, masks, labels)
        fitted = source.fit(n_classes, settings, patience=patience, device=device)
        return fitted, source.test_score(fitted.classifier, settings.metric) if test else None

    total = store.width(kind) * len(layers)
    mode = "streamed" if streamed else "in-memory"
    rows: list[SweepRow] = []
    predictions: list[np.ndarray] = []
    head_row: list[int] = []
    head_c: list[float] = []
    best: BestConfig | None = None
    for value, sel in selections.items():
        for k in range(1, len(layers) + 1):
            t1 = time.perf_counter()
            chosen = {layer: sel[layer] for layer in layers[:k]}
            fitted, _ = fit_config(chosen, patience=settings.head_patience)
            for c, pred in fitted.dev_predictions:
                predictions.append(pred)
                head_row.append(len(rows))
                head_c.append(c)
            n = fitted.n_features
            row = SweepRow(kind=kind, pooling=pooling, rule=settings.rule, value=float(value), k=k,
                           layers=[int(v) for v in layers[:k]], n_neurons=n, share=n / total,
                           C=fitted.classifier.C_, dev_metric=fitted.dev, test_metric=None,
                           group_bytes_read=0,  # set below, once every fit has read
                           mode=mode, seconds=time.perf_counter() - t1)  # fmt: skip
            rows.append(row)
            # Ties on dev go to fewer neurons, then to fewer layers (cheaper at prediction time).
            if best is None or (row.dev_metric, -n, -k) > (best.row.dev_metric, -best.row.n_neurons, -best.row.k):
                best = BestConfig(row, HeadParts.of(fitted.classifier), chosen)
    base = None
    if base_layer is not None:
        width = store.width(kind)
        fitted, test = fit_config({base_layer: np.arange(width)}, test=True)
        base = BaseResult(kind=kind, pooling=pooling, layer=base_layer, dev=fitted.dev,
                          test=float("nan") if test is None else test, n_neurons=width, share=width / total,
                          C=fitted.classifier.C_)  # fmt: skip
    # Streamed fits read their columns again on every solver pass: count those reads too, not only the first.
    bytes_read = (store.counter.bytes_read if store.counter else 0) + (ordered.bytes_read if ordered else 0)
    for row in rows:
        row.group_bytes_read = bytes_read
    n_dev = int(masks["dev"].sum())
    heads = DevPredictions(
        labels=np.stack(predictions) if predictions else np.zeros((0, n_dev), dtype=_label_dtype(n_classes)),
        row=np.asarray(head_row, dtype=np.int64),
        C=np.asarray(head_c, dtype=np.float64),
    )
    return GroupResult(rows=rows, heads=heads, best=best, base=base, bytes_read=bytes_read,
                       bytes_of_columns=col_bytes, seconds=time.perf_counter() - t0)  # fmt: skip


def _read_columns(
    store: ActivationStore,
    ordered: OrderedCopy | None,
    kind: str,
    pooling: str,
    layer: int,
    cols: np.ndarray,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Float32 values of `cols` (sorted neuron ids; `rows`, a sorted run, or all) and the stored bytes those
    columns occupy."""
    found = ordered.array(kind, pooling, layer) if ordered else None
    if found is not None:
        arr, neurons = found
        position = {int(n): i for i, n in enumerate(neurons)}
        if all(int(c) in position for c in cols):
            idx = np.array([position[int(c)] for c in cols], dtype=np.int64)
            span = slice(None) if rows is None else slice(int(rows[0]), int(rows[-1]) + 1)
            prefix = ordered.read(arr, span, slice(0, int(idx.max()) + 1), store.layout.block_rows)  # type: ignore[union-attr]
            if rows is not None:
                prefix = prefix[rows - rows[0]]
            values = store.decode(prefix)[:, idx]
            stored = ordered.stored_bytes(kind, pooling, layer)  # type: ignore[union-attr]
            return values, stored / arr.shape[1] * len(cols)
    values = store.read(kind, pooling, layer, columns=cols, rows=rows)
    return values, store.array_nbytes_stored(kind, pooling, layer) / store.width(kind) * len(cols)


def score_chosen(
    store_url: str,
    row: SweepRow,
    selection: Mapping[int, np.ndarray],
    c: float,
    held: HeadParts | None,
    settings: SweepSettings,
    storage_options: dict[str, Any] | None = None,
    ordered_url: str | None = None,
    device: str | None = None,
) -> tuple[HeadParts, float]:
    """The chosen head and its one test score. `held`: its classifier when its group sent it back (the group's best,
    which is the arg-max's choice); otherwise the configuration is fitted again at `c`, from memory or streamed as
    in its group, which reproduces the group's fit (the solver is deterministic)."""
    store = ActivationStore.open(store_url, storage_options=storage_options)
    ordered = open_ordered(ordered_url) if ordered_url else None
    masks, labels = _splits(store)
    n_classes = len(store.label_names)
    if row.mode == "streamed":
        source = _StreamedColumns(store, ordered, row.kind, row.pooling, selection, masks, labels)
        if held is not None:
            clf = held.classifier()
        else:
            clf = source.fit(n_classes, settings, keep_c=c, patience=settings.head_patience, device=device).classifier
        return HeadParts.of(clf), source.test_score(clf, settings.metric)
    parts = []
    for layer, idx in selection.items():
        ascending = np.sort(idx)
        values, _ = _read_columns(store, ordered, row.kind, row.pooling, layer, ascending)
        parts.append(values[:, np.searchsorted(ascending, idx)])
    full = np.concatenate(parts, axis=1)
    x = {s: full[m] for s, m in masks.items()}
    y = {s: labels[m] for s, m in masks.items()}
    if held is not None:
        clf = held.classifier()
    else:
        clf = _fit_in_memory(x, y, n_classes, settings, keep_c=c, patience=settings.head_patience,
                             device=device).classifier  # fmt: skip
    return HeadParts.of(clf), score_test(clf, x["test"], y["test"])


def random_control(
    store_url: str,
    kind: str,
    pooling: str,
    counts: Mapping[int, int],
    share: float,
    seed: int,
    settings: SweepSettings,
    storage_options: dict[str, Any] | None = None,
    memory_budget: int | None = None,
    device: str | None = None,
) -> ControlResult:
    """`counts` neurons per layer (SPIN's choice) drawn at random (seeded), fitted the same way: from memory, or on
    row blocks read on demand when its columns do not fit `memory_budget` bytes; scored on dev and test."""
    store = ActivationStore.open(store_url, storage_options=storage_options, count_bytes=True)
    chosen = random_like(dict(counts), {layer: store.width(kind) for layer in counts}, seed)
    masks, labels = _splits(store)
    n_classes = len(store.label_names)
    if _over_budget(store, sum(counts.values()), memory_budget):
        # Random neurons are rarely in the ordered copy's prefix: read them from the store.
        source = _StreamedColumns(store, None, kind, pooling, chosen, masks, labels)
        fitted = source.fit(n_classes, settings, device=device)
        test = source.test_score(fitted.classifier, settings.metric)
    else:
        parts = [store.read(kind, pooling, layer, columns=idx) for layer, idx in chosen.items()]
        full = np.concatenate(parts, axis=1)
        x = {s: full[m] for s, m in masks.items()}
        y = {s: labels[m] for s, m in masks.items()}
        fitted = _fit_in_memory(x, y, n_classes, settings, device=device)
        test = score_test(fitted.classifier, x["test"], y["test"])
    return ControlResult(
        dev=fitted.dev,
        test=test,
        n_neurons=fitted.n_features,
        share=share,
        C=fitted.classifier.C_,
        bytes_read=store.counter.bytes_read if store.counter else 0,
    )


@dataclass
class SweepResult:
    """What run_sweep made: the directory, the result table (typed; `table` is its JSON, as in summary.json) and
    sweep.parquet's rows."""

    path: Path
    summary: SweepTable
    sweep: pl.DataFrame

    @property
    def table(self) -> dict[str, Any]:
        """summary.json's "table" (NaN where summary.json has null)."""
        return self.summary.to_json()


def run_sweep(
    store_url: str,
    probes: str | Path,
    out: str | Path,
    settings: SweepSettings | None = None,
    *,
    kinds: Sequence[str] | None = None,
    poolings: Sequence[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    dashboard: str | None = None,
    device: str | None = None,
) -> SweepResult:
    """Evaluate every configuration at every C, choose one head (`settings.select`) from their dev predictions, score
    it once on test, write sweep.parquet and summary.json, and export it.

    `out` must be missing, empty or an earlier sweep (spin-cache writes nothing into a folder it did not make); its
    sweep.json is written before anything else. A `memory_budget` below one row block per running task is
    refused. `dashboard`: an address for a local cluster's Dask dashboard (default: none). `device`: where the
    heads are fitted: cpu (default), cuda, cuda:N or auto (the data is read on the CPU and copied there)."""
    solver_device(device)  # an unknown device or no CUDA: refused before any work
    run = ProbeRun(probes)
    settings = settings or SweepSettings(metric=run.settings.metric)
    settings.check()
    workers = check_workers(workers)
    if memory_budget is not None:
        memory_budget = check("--memory-budget", memory_budget, POSITIVE_INT)
    store = ActivationStore.open(store_url, storage_options=storage_options)
    run.check_store(store)
    probed = set(run.probes.select("kind", "pooling").unique().iter_rows())
    groups = [
        (k, p)
        for k in store.kinds
        for p in store.poolings
        if (k, p) in probed and (not kinds or k in kinds) and (not poolings or p in poolings)
    ]
    if not groups:
        raise InputError(f"nothing to sweep: the store has kinds {store.kinds} and poolings {store.poolings}")
    widest = max(store.width(k) for k, _ in groups)
    check_memory_budget(memory_budget, block_memory_need(store, widest), scheduler, workers)
    if settings.select == CV:
        check_folds(store, settings.folds)  # too few training rows: refused before anything is written
    out = prepare_output_dir(out, "sweep")
    fold_runs: list[ProbeRun] = []
    meta = {
        "format": SWEEP_FORMAT,
        "spin_cache_version": __version__,
        "store": str(store_url),
        "store_fingerprint": store.fingerprint,
        "probes": str(probes),
        "settings": asdict(settings),
    }
    _write_json(out / SWEEP_MARKER, meta | {"status": "incomplete"})
    (out / "summary.json").unlink(missing_ok=True)  # an earlier sweep's, no longer what this directory holds
    ordered_url = str(Path(probes).resolve() / ORDERED_DIR)
    per_task = task_memory_budget(memory_budget, scheduler, workers)
    if settings.select == CV:  # the folds' probes first (kept in OUT/folds across reruns), then every group's heads
        fold_runs = probe_folds(run, store_url, out / FOLDS_DIR, settings.folds, kinds=sorted({k for k, _ in groups}),
                                poolings=sorted({p for _, p in groups}), scheduler=scheduler, workers=workers,
                                memory_budget=memory_budget, progress=progress, storage_options=storage_options,
                                dashboard=dashboard, device=device)  # fmt: skip

    def task(source: ProbeRun, k: str, p: str) -> tuple[Any, ...]:
        # A fold's groups read the store (its probes wrote no ordered copy) through the fold's view.
        saliency = {layer: source.saliency(k, p, layer) for layer in store.layers(k)}
        ordered = ordered_url if source.fold is None else None
        return (str(store_url), k, p, saliency, settings, storage_options, ordered, per_task, device, source.fold)

    tasks = [task(source, k, p) for source in (run, *fold_runs) for k, p in groups]
    found: dict[int, GroupResult] = {}
    for i, res in run_tasks(
        sweep_group, tasks, scheduler=scheduler, workers=workers, desc="sweep", progress=progress, dashboard=dashboard
    ):
        found[i] = res
    results = [found[i] for i in range(len(groups))]
    # The choice: every head of every group, from its dev predictions alone (cv: from the folds' predictions).
    masks, labels = _splits(store)
    dev_labels = labels[masks["dev"]]
    scores, where = _config_scores(results, dev_labels, len(store.label_names), settings.metric)
    choice: Choice
    estimate: Estimate
    if settings.select == CV:
        fold_results = [[found[i] for i in range(f * len(groups), (f + 1) * len(groups))]
                        for f in range(1, len(fold_runs) + 1)]  # fmt: skip
        folds = [Fold(i, settings.folds) for i in range(settings.folds)]  # probe_folds' folds, in order
        choice, estimate = _cross_validated(store, labels, scores, results, fold_results, folds)
    else:
        choice = choose(scores, settings.select)
        estimate = expected_score(scores, settings.select, method=ESTIMATE_METHOD, seed=settings.seed)
    g, r = where[choice.index]
    c = float(scores.C[choice.index])
    group = results[g]
    row = group.rows[r]
    best = group.best
    if best is not None and (best.row.value, best.row.k, best.row.C) == (row.value, row.k, c):
        held: HeadParts | None = best.head
        selection = best.selection
    else:
        held = None
        selection = {layer: select(run.saliency(row.kind, row.pooling, layer), row.rule, row.value)
                     for layer in row.layers}  # fmt: skip
    head, test = score_chosen(str(store_url), row, selection, c, held, settings, storage_options, ordered_url, device)
    dev = score_predictions(dev_labels, scores.predictions[choice.index], settings.metric)
    row.C, row.dev_metric, row.test_metric = c, dev, test  # the chosen row describes the exported head
    chosen_by = ChosenBy.of(dev, choice.best_dev_score, choice.n_candidates, sum(len(res.rows) for res in results),
                            estimate)  # fmt: skip
    # The control runs alone, after every group: it has the whole budget.
    budget = memory_budget or default_memory_budget()
    counts = {int(layer): len(idx) for layer, idx in selection.items()}
    control = random_control(str(store_url), row.kind, row.pooling, counts, row.share, settings.seed, settings,
                             storage_options, budget, device)  # fmt: skip
    bases = [res.base for res in results if res.base is not None]
    table = _table(store, run, row, test, selection, bases, control, chosen_by)
    rows = [asdict(one) for res in results for one in res.rows]
    sweep = pl.DataFrame(rows, schema=SWEEP_SCHEMA).sort(["kind", "pooling", "value", "k"])
    sweep.write_parquet(out / "sweep.parquet")
    head_dir = out / "head"
    _export_head(store, row, selection, head, table, head_dir)
    table.head = str(head_dir)
    table.bytes_read = int(sum(res.bytes_read for res in results))
    # cv's folds read their columns from the store once per fold (all rows; they have no ordered copy)
    table.bytes_read_folds = int(sum(found[i].bytes_read for i in range(len(groups), len(tasks))))
    table.bytes_of_columns = int(sum(res.bytes_of_columns for res in results))
    _write_json(out / "summary.json", meta | {"table": table.to_json()})
    _write_json(out / SWEEP_MARKER, meta | {"status": "complete"})
    return SweepResult(out, table, sweep)


def _cross_validated(
    store: ActivationStore,
    labels: np.ndarray,
    dev: ConfigScores,
    results: Sequence[GroupResult],
    fold_results: Sequence[Sequence[GroupResult]],
    folds: Sequence[Fold],
) -> tuple[Choice, Estimate]:
    """The ``cv`` choice: every head compared on its out-of-fold predictions of the training rows (fold i's heads
    predict fold i's rows), among the heads fitted in every fold (with --search patience a C path may stop at a
    different C in a fold). `labels`: every row's label, in table order (fold i's predictions are of its "dev" rows,
    in that order)."""
    keys = _head_keys(results)
    where = {key: i for i, key in enumerate(keys)}
    per_fold: list[dict[tuple[Any, ...], np.ndarray]] = []
    fold_labels = []
    for fold, part in zip(folds, fold_results, strict=True):
        predictions = np.concatenate([res.heads.labels for res in part])
        per_fold.append(dict(zip(_head_keys(part), predictions, strict=True)))
        fold_labels.append(labels[fold.relabel(store.examples)["split"].to_numpy() == "dev"])
    common = [key for key in keys if all(key in heads for heads in per_fold)]
    if not common:
        raise InputError("--select cv: no head was fitted in every fold; use --search grid")
    heads = np.array([where[key] for key in common], dtype=np.int64)
    oof = ConfigScores(
        np.stack([np.concatenate([fold[key] for fold in per_fold]) for key in common]),
        np.concatenate(fold_labels),
        dev.n_neurons[heads],
        dev.n_layers[heads],
        dev.C[heads],
        dev.metric,
        dev.n_classes,
    )
    return cross_validated_choice(dev, oof, heads, len(folds))


def _heads(results: Sequence[GroupResult]) -> Iterator[tuple[int, int, SweepRow, float]]:
    """Every head of every group (groups in task order; within a group, configurations in their fitting order, C
    ascending): (group, row of the group, that row, the head's C)."""
    for g, res in enumerate(results):
        for r, c in zip(res.heads.row.tolist(), res.heads.C.tolist(), strict=True):
            yield g, r, res.rows[r], c


def _head_keys(results: Sequence[GroupResult]) -> list[tuple[Any, ...]]:
    """Every head as (kind, pooling, rule value, K, C), in `_heads`' order."""
    return [(row.kind, row.pooling, row.value, row.k, c) for _, _, row, c in _heads(results)]


def _config_scores(
    results: Sequence[GroupResult], dev_labels: np.ndarray, n_classes: int, metric: str
) -> tuple[ConfigScores, list[tuple[int, int]]]:
    """Every head of every group as one ConfigScores (in `_heads`' order), and where each head comes from: (group,
    row of the group)."""
    where: list[tuple[int, int]] = []
    keys: dict[str, list[Any]] = {"kind": [], "pooling": [], "value": [], "k": [], "n_neurons": [], "C": []}
    for g, r, row, c in _heads(results):
        where.append((g, r))
        for name, v in zip(keys, (row.kind, row.pooling, row.value, row.k, row.n_neurons, c), strict=True):
            keys[name].append(v)
    if not where:
        raise InputError("nothing to choose from: the sweep fitted no head")
    group, grid = sweep_neighbourhoods(keys["kind"], keys["pooling"], keys["value"], keys["k"], keys["C"])
    scores = ConfigScores(
        np.concatenate([res.heads.labels for res in results]),
        dev_labels,
        np.asarray(keys["n_neurons"]),
        np.asarray(keys["k"]),
        np.asarray(keys["C"], dtype=np.float64),
        metric,
        n_classes,
        group,
        grid,
    )
    return scores, where


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Strict JSON (a metric that does not exist, NaN for an empty test split, is written as null), atomically."""
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def _table(
    store: ActivationStore,
    run: ProbeRun,
    row: SweepRow,
    test: float,
    selection: Mapping[int, np.ndarray],
    bases: list[BaseResult],
    control: ControlResult,
    chosen_by: ChosenBy,
) -> SweepTable:
    base = max(bases, key=lambda b: b.dev) if bases else None
    probes = run.probes.sort(["dev_metric", "layer"], descending=[True, False])
    single = probes.row(0, named=True)
    single_total = store.width(single["kind"]) * len(store.layers(single["kind"]))
    return SweepTable(
        base=None
        if base is None
        else TableRow(
            dev=base.dev,
            test=base.test,
            n_neurons=base.n_neurons,
            share=base.share,
            C=base.C,
            pooling=base.pooling,
            layer=base.layer,
        ),
        best_single_layer=TableRow(
            dev=single["dev_metric"],
            test=single["test_metric"],
            n_neurons=single["n_neurons"],
            share=single["n_neurons"] / single_total,
            C=single["C"],
            kind=single["kind"],
            pooling=single["pooling"],
            layer=single["layer"],
        ),
        spin=TableRow(
            dev=row.dev_metric,
            test=test,
            n_neurons=sum(len(idx) for idx in selection.values()),
            share=row.share,
            C=row.C,
            kind=row.kind,
            pooling=row.pooling,
            rule=row.rule,
            value=row.value,
            layers=list(row.layers),
        ),
        random_control=TableRow(
            dev=control.dev,
            test=control.test,
            n_neurons=control.n_neurons,
            share=control.share,
            C=control.C,
            bytes_read=int(control.bytes_read),
        ),
        chosen_by=chosen_by,
    )


def _export_head(
    store: ActivationStore,
    row: SweepRow,
    selection: Mapping[int, np.ndarray],
    head: HeadParts,
    table: SweepTable,
    path: Path,
) -> None:
    model = store.manifest_record.model
    info = {
        "store_fingerprint": store.fingerprint,
        "model": {
            k: model.get(k)
            for k in ("name", "path", "model_type", "family", "config_sha256", "weights_sha256", "tokenizer_sha256")
        },
        "max_length": store.manifest_record.extraction["max_length"],
        "store_dtype": store.layout.dtype,
        "kind": row.kind,
        "pooling": row.pooling,
        "rule": row.rule,
        "value": row.value,
        "label_names": store.label_names,
        "metrics": table.metrics(),
        "chosen_by": table.chosen_by.to_json(),
    }
    Head(classifier=head.classifier(), selection={int(k): np.asarray(v) for k, v in selection.items()},
         info=info).save(path)  # fmt: skip


def _jsonable(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
