"""Select and integrate: for every (kind, pooling, rule value, K) fit a head on the selected neurons of the first
K layers, choose the configuration on dev, report it against Base, the best single-layer probe and a random
control, and export the chosen head.

One Dask task per (kind, pooling) group reads the union of the columns any of its configurations needs, once
(plus, for hidden states, the last layer in full for Base), and fits every configuration from memory. When those
columns do not fit the memory budget, every fit (Base and the random control included) streams row blocks instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from .. import __version__
from ..errors import InputError
from ..extract.allocator import release_free_heap
from ..fit.estimator import SpinClassifier
from ..fit.head import Head
from ..fit.metrics import METRICS, score_predictions
from ..fit.solver import (
    HEAD_C_GRID,
    Design,
    LinearFit,
    PathResult,
    Standardizer,
    check_device,
    fit_c_path,
    predict_design,
)
from ..outputs import MARKERS, finite_or_null, prepare_output_dir
from ..store.activation_store import ActivationStore
from ..store.ordered import ORDERED_DIR, OrderedCopy, open_ordered, read_columns
from ..validation import (
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
from .probe import IN_MEMORY_COPIES, ProbeRun, block_memory_need
from .select import RULES, random_like, select

# The paper's eta values plus 0.9 and 0.95: with MiniLM/SST-2 every kind and pooling scored best on dev at 0.8, the
# grid's largest value; with 0.9 and 0.95 dev accuracy peaks inside the grid for three of six and flattens for the
# others (BENCHMARKS.md).
DEFAULT_ETAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.9, 0.95)
SWEEP_FORMAT = "spin-cache-sweep"
SWEEP_MARKER = MARKERS["sweep"]  # sweep.json: written first, so a sweep that stops midway is still recognised
#: The rule values' option and range, per selection rule.
RULE_VALUES: dict[str, tuple[str, Constraint]] = {
    "eta": ("--eta", FRACTIONS),
    "top-k": ("--top-k", POSITIVE_INTS),
    "top-percent": ("--top-percent", PERCENTS),
}


SEARCHES = ("grid", "patience")


@dataclass(frozen=True)
class SweepSettings:
    rule: str = "eta"
    values: tuple[float, ...] = DEFAULT_ETAS
    c_grid: tuple[float, ...] = HEAD_C_GRID
    penalty: str = "l2"
    metric: str = "accuracy"
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    # "grid": every (value, K) configuration (the reference); "patience": along K, a value's path stops once dev
    # has not improved for `patience` layers (fewer fits; may miss the grid's choice: bench_loop.py reports how often)
    search: str = "grid"
    patience: int = 2

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
        if self.search not in SEARCHES:
            raise InputError(f"--search {self.search}: choose from {', '.join(SEARCHES)}")
        check("--patience", self.patience, POSITIVE_INT)


@dataclass
class SweepRow:
    """One fitted configuration: a row of sweep.parquet."""

    kind: str
    pooling: str
    rule: str
    value: float
    k: int  # number of layers integrated, from the kind's first layer
    layers: list[int]
    n_neurons: int
    share: float
    C: float
    dev_metric: float
    test_metric: float
    group_bytes_read: int
    mode: str
    seconds: float
    iterations: int  # solver iterations over the whole C path
    fits: int  # fits (C values) of this configuration


@dataclass
class HeadParts:
    """A fitted classifier as its persisted parts (SpinClassifier.to_json / to_arrays shape): plain data that Dask
    tasks return cheaply; `classifier()` builds the estimator."""

    meta: dict
    arrays: dict[str, np.ndarray]

    def classifier(self) -> SpinClassifier:
        return SpinClassifier.from_parts(self.meta, self.arrays)


@dataclass
class BestConfig:
    row: SweepRow
    head: HeadParts
    selection: dict[int, np.ndarray]  # layer -> neuron ids in rank order


@dataclass
class BaseResult:
    kind: str
    pooling: str
    layer: int
    dev: float
    test: float
    n_neurons: int
    share: float
    C: float


@dataclass
class GroupResult:
    """What one (kind, pooling) task returns."""

    rows: list[SweepRow]
    best: BestConfig | None
    base: BaseResult | None
    bytes_read: int
    bytes_of_columns: float
    seconds: float


@dataclass
class ControlResult:
    dev: float
    test: float
    n_neurons: int
    share: float
    C: float
    bytes_read: int


@dataclass
class FitOutcome:
    """One configuration's C path: the chosen fit as head parts, dev/test metric, every C's fit (warm starts)."""

    head: HeadParts
    dev: float
    test: float
    n_features: int
    iterations: int
    fits: dict[float, LinearFit]


@dataclass
class GroupPlan:
    """Which neurons every configuration of one (kind, pooling) needs."""

    kind: str
    pooling: str
    layers: list[int]
    selections: dict[float, dict[int, np.ndarray]]  # value -> layer -> neurons in rank order
    columns: dict[int, np.ndarray]  # layer -> sorted union of the neurons any configuration (or Base) reads
    base_layer: int | None


@dataclass
class GroupData:
    """One group's columns, standardised once on train: z[split][layer] holds `plan.columns[layer]`'s columns."""

    z: dict[str, dict[int, np.ndarray]]
    mean: dict[int, np.ndarray]
    scale: dict[int, np.ndarray]
    y: dict[str, np.ndarray]


def _splits(store: ActivationStore) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Row masks of train/dev/test and every row's label."""
    split = store.examples["split"].to_numpy()
    labels = store.examples["label"].to_numpy().astype(np.int64)
    return {s: split == s for s in ("train", "dev", "test")}, labels


def _over_budget(store: ActivationStore, n_columns: int, memory_budget: int | None) -> bool:
    """Whether `n_columns` float32 columns of every row, with their in-memory copies, exceed the budget."""
    return memory_budget is not None and IN_MEMORY_COPIES * 4 * store.layout.n_rows * n_columns > memory_budget


def plan_group(
    store: ActivationStore, kind: str, pooling: str, saliency: dict[int, np.ndarray], settings: SweepSettings
) -> GroupPlan:
    """Every rule value's selection per layer, and the union of columns to read (the last hidden layer in full, for
    Base)."""
    layers = list(store.layers(kind))
    selections = {v: {layer: select(saliency[layer], settings.rule, v) for layer in layers} for v in settings.values}
    need: dict[int, set[int]] = {layer: set() for layer in layers}
    for sel in selections.values():
        for layer, idx in sel.items():
            need[layer].update(int(i) for i in idx)
    base_layer = layers[-1] if kind == "hidden" else None
    if base_layer is not None:
        need[base_layer] = set(range(store.width(kind)))
    columns = {layer: np.array(sorted(need[layer]), dtype=np.int64) for layer in layers}
    return GroupPlan(kind, pooling, layers, selections, columns, base_layer)


def read_group(
    store: ActivationStore,
    ordered: OrderedCopy | None,
    plan: GroupPlan,
    masks: dict[str, np.ndarray],
    labels: np.ndarray,
    streamed: bool,
) -> tuple[GroupData | None, float]:
    """Read the plan's columns once (none when streamed: only their size) and standardise them once on train.
    Returns the data and the stored bytes of the columns."""
    col_bytes = 0.0
    z: dict[str, dict[int, np.ndarray]] = {s: {} for s in masks}
    mean, scale = {}, {}
    for layer in plan.layers:
        rows_read = None if not streamed else np.arange(min(1, store.layout.n_rows))  # streamed: size only
        values, nbytes = read_columns(store, ordered, plan.kind, plan.pooling, layer, plan.columns[layer], rows_read)
        col_bytes += nbytes
        if streamed:
            continue
        scaler = Standardizer.fit(values[masks["train"]])
        mean[layer], scale[layer] = scaler.mean, scaler.scale
        for s, m in masks.items():
            z[s][layer] = scaler.transform(values[m])
        del values
    if streamed:
        return None, col_bytes
    return GroupData(z, mean, scale, {s: labels[m] for s, m in masks.items()}), col_bytes


def _head_parts(
    res: PathResult, mean: np.ndarray, scale: np.ndarray, n_classes: int, settings: SweepSettings
) -> HeadParts:
    params = {"C": tuple(settings.c_grid), "penalty": settings.penalty, "max_iter": settings.max_iter,
              "tol": settings.tol, "metric": settings.metric, "random_state": settings.seed}  # fmt: skip
    meta = {"params": params, "C_": res.c, "n_classes": n_classes, "n_features": len(mean),
            "history": res.history}  # fmt: skip
    arrays = {"mean": np.asarray(mean, np.float32), "scale": np.asarray(scale, np.float32),
              "coef": res.fit.coef.astype(np.float32), "intercept": res.fit.intercept.astype(np.float32)}  # fmt: skip
    return HeadParts(meta, arrays)


def fit_designs(
    designs: dict[str, Design],
    mean: np.ndarray,
    scale: np.ndarray,
    n_classes: int,
    settings: SweepSettings,
    warm: dict[float, LinearFit] | None = None,
) -> FitOutcome:
    """Fit the C path on standardised train rows (C on dev), score dev and test."""
    res = fit_c_path(designs["train"], designs["dev"], n_classes, settings.c_grid, penalty=settings.penalty,
                     metric=settings.metric, max_iter=settings.max_iter, tol=settings.tol,
                     warm_starts=warm)  # fmt: skip
    test = float("nan")
    if designs["test"].n_rows:
        test = score_predictions(*predict_design(designs["test"], res.fit.coef, res.fit.intercept), settings.metric)
    return FitOutcome(_head_parts(res, mean, scale, n_classes, settings), res.dev, test,
                      designs["train"].n_features, res.iterations, res.fits)  # fmt: skip


def fit_in_memory(
    data: GroupData,
    selection: dict[int, np.ndarray],
    plan: GroupPlan,
    n_classes: int,
    settings: SweepSettings,
    device: str,
    warm: dict[float, LinearFit] | None = None,
) -> FitOutcome:
    """One configuration from the group's standardised columns (layers in order, neurons in rank order)."""
    pos = {layer: np.searchsorted(plan.columns[layer], idx) for layer, idx in selection.items()}
    designs = {
        s: Design.of(np.concatenate([data.z[s][layer][:, pos[layer]] for layer in selection], axis=1), data.y[s],
                     device)
        for s in data.z
    }  # fmt: skip
    mean = np.concatenate([data.mean[layer][pos[layer]] for layer in selection])
    scale = np.concatenate([data.scale[layer][pos[layer]] for layer in selection])
    return fit_designs(designs, mean, scale, n_classes, settings, warm)


def _feature_keys(selection: dict[int, np.ndarray]) -> list[tuple[int, int]]:
    return [(layer, int(i)) for layer, idx in selection.items() for i in idx]


def transfer_warm(
    fits: dict[float, LinearFit], old: list[tuple[int, int]], new: list[tuple[int, int]]
) -> dict[float, LinearFit]:
    """A neighbouring configuration's fits as starts for this one: shared features keep their weights, new ones
    start at zero (the K+1 head is the K head padded with zeros; a larger eta adds columns inside each layer)."""
    where = {key: i for i, key in enumerate(old)}
    src = np.array([where.get(key, -1) for key in new], dtype=np.int64)
    have = src >= 0
    out = {}
    for c, fit in fits.items():
        coef = np.zeros((fit.coef.shape[0], len(new)), dtype=np.float32)
        coef[:, have] = fit.coef[:, src[have]]
        out[c] = LinearFit(coef, fit.intercept.copy(), 0, False)
    return out


def search_configs(
    plan: GroupPlan,
    fit_one: Callable[[dict[int, np.ndarray], dict[float, LinearFit] | None], FitOutcome],
    settings: SweepSettings,
    total: int,
    mode: str,
) -> tuple[list[SweepRow], BestConfig | None]:
    """Walk every rule value along K = 1 .. layers (search "grid"), or stop a value's K path once dev has not
    improved for `settings.patience` steps (search "patience"). Each fit starts from its neighbour's fits: (value,
    K-1) padded with zeros, or for K = 1 the previous value's K = 1 head."""
    rows: list[SweepRow] = []
    best: BestConfig | None = None
    prev_k1: tuple[dict[float, LinearFit], list] | None = None
    for value, sel in plan.selections.items():
        prev: tuple[dict[float, LinearFit], list] | None = prev_k1
        path_best, stale = -np.inf, 0
        for k in range(1, len(plan.layers) + 1):
            t1 = time.perf_counter()
            chosen = {layer: sel[layer] for layer in plan.layers[:k]}
            keys = _feature_keys(chosen)
            warm = transfer_warm(prev[0], prev[1], keys) if prev is not None else None
            out = fit_one(chosen, warm)
            prev = (out.fits, keys)
            if k == 1:
                prev_k1 = prev
            n = out.n_features
            row = SweepRow(plan.kind, plan.pooling, settings.rule, float(value), k, [int(v) for v in plan.layers[:k]],
                           n, n / total, float(out.head.meta["C_"]), out.dev, out.test, 0, mode,
                           time.perf_counter() - t1, out.iterations, len(out.fits))  # fmt: skip
            rows.append(row)
            # Ties on dev go to fewer neurons, then to fewer layers (cheaper at prediction time).
            if best is None or (out.dev, -n, -k) > (best.row.dev_metric, -best.row.n_neurons, -best.row.k):
                best = BestConfig(row, out.head, chosen)
            if settings.search == "patience":
                if out.dev > path_best:
                    path_best, stale = out.dev, 0
                else:
                    stale += 1
                    if stale >= settings.patience:
                        break
    return rows, best


def sweep_group(
    store_url: str,
    kind: str,
    pooling: str,
    saliency: dict[int, np.ndarray],
    settings: SweepSettings,
    storage_options: dict | None = None,
    ordered_url: str | None = None,
    memory_budget: int | None = None,
    device: str = "cpu",
) -> GroupResult:
    """One Dask task: every (value, K) configuration of one (kind, pooling), from one read of its columns.

    Columns come from the probe run's saliency-ordered copy when it holds them (a contiguous prefix read),
    else from the store; they are standardised once. When the columns do not fit `memory_budget` bytes, every
    configuration is fitted on row blocks read on demand instead (out of core; each solver pass reads its columns
    again)."""
    t0 = time.perf_counter()
    store = ActivationStore.open(store_url, storage_options=storage_options, count_bytes=True)
    plan = plan_group(store, kind, pooling, saliency, settings)
    masks, labels = _splits(store)
    n_classes = len(store.label_names)
    ordered = open_ordered(ordered_url) if ordered_url else None
    streamed = _over_budget(store, sum(len(c) for c in plan.columns.values()), memory_budget)
    data, col_bytes = read_group(store, ordered, plan, masks, labels, streamed)

    def fit_one(sel: dict[int, np.ndarray], warm: dict[float, LinearFit] | None) -> FitOutcome:
        if data is not None:
            return fit_in_memory(data, sel, plan, n_classes, settings, device, warm)
        return fit_streamed(store, ordered, kind, pooling, sel, masks, labels, n_classes, settings, device, warm)

    total = store.width(kind) * len(plan.layers)
    rows, best = search_configs(plan, fit_one, settings, total, "streamed" if streamed else "in-memory")
    base = None
    if plan.base_layer is not None:
        out = fit_one({plan.base_layer: np.arange(store.width(kind))}, None)
        base = BaseResult(kind, pooling, plan.base_layer, out.dev, out.test, store.width(kind),
                          store.width(kind) / total, float(out.head.meta["C_"]))  # fmt: skip
    # Streamed fits read their columns again on every solver pass: count those reads too, not only the first.
    bytes_read = (store.counter.bytes_read if store.counter else 0) + (ordered.bytes_read if ordered else 0)
    for row in rows:
        row.group_bytes_read = bytes_read
    return GroupResult(rows, best, base, bytes_read, col_bytes, time.perf_counter() - t0)


def fit_streamed(
    store: ActivationStore,
    ordered: OrderedCopy | None,
    kind: str,
    pooling: str,
    selection: dict[int, np.ndarray],
    masks: dict[str, np.ndarray],
    labels: np.ndarray,
    n_classes: int,
    settings: SweepSettings,
    device: str = "cpu",
    warm: dict[float, LinearFit] | None = None,
) -> FitOutcome:
    """Fit one configuration out of core: features are read row block by row block on every pass."""
    block_rows = store.layout.block_rows
    ascending = {layer: np.sort(idx) for layer, idx in selection.items()}
    back = {layer: np.searchsorted(ascending[layer], idx) for layer, idx in selection.items()}
    width = sum(len(v) for v in selection.values())

    def chunks(split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.flatnonzero(masks[split])
        for block in np.unique(rows // block_rows):
            part = rows[(rows // block_rows) == block]
            x = np.concatenate([read_columns(store, ordered, kind, pooling, layer, ascending[layer], rows=part)[0]
                                [:, back[layer]] for layer in selection], axis=1)  # fmt: skip
            yield x, labels[part]

    n = {s: int(m.sum()) for s, m in masks.items()}
    scaler = Standardizer.fit_chunks((x for x, _ in chunks("train")), width)

    def design(split: str) -> Design:
        def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for x, yb in chunks(split):
                yield torch.as_tensor(scaler.transform(x)), torch.as_tensor(yb)

        return Design(blocks, n[split], width, device)

    out = fit_designs({s: design(s) for s in masks}, scaler.mean, scaler.scale, n_classes, settings, warm)
    release_free_heap()  # the passes' freed blocks, back to the kernel: peak memory stays flat in the rows
    return out


def random_control(
    store_url: str,
    spin: BestConfig,
    seed: int,
    settings: SweepSettings,
    storage_options: dict | None = None,
    memory_budget: int | None = None,
    device: str = "cpu",
) -> ControlResult:
    """The same per-layer neuron counts as SPIN's choice, drawn at random (seeded), fitted the same way: from
    memory, or on row blocks read on demand when its columns do not fit `memory_budget` bytes."""
    store = ActivationStore.open(store_url, storage_options=storage_options, count_bytes=True)
    kind, pooling = spin.row.kind, spin.row.pooling
    counts = {int(layer): len(idx) for layer, idx in spin.selection.items()}
    chosen = random_like(counts, {layer: store.width(kind) for layer in counts}, seed)
    masks, labels = _splits(store)
    n_classes = len(store.label_names)
    if _over_budget(store, sum(counts.values()), memory_budget):
        # Random neurons are rarely in the ordered copy's prefix: read them from the store.
        out = fit_streamed(store, None, kind, pooling, chosen, masks, labels, n_classes, settings, device)
    else:
        full = np.concatenate([store.read(kind, pooling, layer, columns=idx) for layer, idx in chosen.items()], axis=1)
        scaler = Standardizer.fit(full[masks["train"]])
        designs = {s: Design.of(scaler.transform(full[m]), labels[m], device) for s, m in masks.items()}
        out = fit_designs(designs, scaler.mean, scaler.scale, n_classes, settings)
    return ControlResult(out.dev, out.test, out.n_features, spin.row.share, float(out.head.meta["C_"]),
                         store.counter.bytes_read if store.counter else 0)  # fmt: skip


@dataclass
class SweepResult:
    path: Path
    table: dict
    sweep: pl.DataFrame


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
    storage_options: dict | None = None,
    dashboard: str | None = None,
    device: str = "cpu",
) -> SweepResult:
    """Evaluate every configuration, write sweep.parquet and summary.json, and export the best head.

    `out` must be missing, empty or an earlier sweep (spin-cache writes nothing into a folder it did not make); its
    sweep.json is written before anything else. A `memory_budget` below one row block per running task is
    refused. `dashboard`: an address for a local cluster's Dask dashboard (default: none). `device`: where the
    solver runs ("cpu" or "cuda")."""
    run = ProbeRun(probes)
    settings = settings or SweepSettings(metric=run.settings.metric)
    settings.check()
    device = check_device(device)
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
    out = prepare_output_dir(out, "sweep")
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
    tasks = [
        (
            str(store_url),
            k,
            p,
            {layer: run.saliency(k, p, layer) for layer in store.layers(k)},
            settings,
            storage_options,
            ordered_url,
            per_task,
            device,
        )
        for k, p in groups
    ]
    results: list[GroupResult] = [None] * len(tasks)  # type: ignore[list-item]
    for i, res in run_tasks(
        sweep_group, tasks, scheduler=scheduler, workers=workers, desc="sweep", progress=progress, dashboard=dashboard
    ):
        results[i] = res
    rows = [asdict(row) for res in results for row in res.rows]
    bests = [res.best for res in results if res.best is not None]
    spin = max(bests, key=lambda b: (b.row.dev_metric, -b.row.n_neurons, -b.row.k))
    bases = [res.base for res in results if res.base is not None]
    # The control runs alone, after every group: it has the whole budget.
    budget = memory_budget or default_memory_budget()
    control = random_control(str(store_url), spin, settings.seed, settings, storage_options, budget, device)
    table = _table(store, run, spin, bases, control)
    sweep = pl.DataFrame(rows).sort(["kind", "pooling", "value", "k"])
    sweep.write_parquet(out / "sweep.parquet")
    head_dir = out / "head"
    _export_head(store, run, spin, settings, table, head_dir)
    table["head"] = str(head_dir)
    table["bytes_read"] = int(sum(r.bytes_read for r in results))
    table["bytes_of_columns"] = int(sum(r.bytes_of_columns for r in results))
    table["random_control"]["bytes_read"] = int(control.bytes_read)
    _write_json(out / "summary.json", meta | {"table": table})
    _write_json(out / SWEEP_MARKER, meta | {"status": "complete"})
    return SweepResult(out, table, sweep)


def _write_json(path: Path, obj: dict) -> None:
    """Strict JSON (a metric that does not exist, NaN for an empty test split, is written as null), atomically."""
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def _table(
    store: ActivationStore, run: ProbeRun, spin: BestConfig, bases: list[BaseResult], control: ControlResult
) -> dict:
    row = asdict(spin.row)
    base = asdict(max(bases, key=lambda b: b.dev)) if bases else None
    probes = run.probes.sort(["dev_metric", "layer"], descending=[True, False])
    single = probes.row(0, named=True)
    single_total = store.width(single["kind"]) * len(store.layers(single["kind"]))
    return {
        "base": None
        if base is None
        else {
            "dev": base["dev"],
            "test": base["test"],
            "n_neurons": base["n_neurons"],
            "share": base["share"],
            "pooling": base["pooling"],
            "layer": base["layer"],
            "C": base["C"],
        },
        "best_single_layer": {
            "dev": single["dev_metric"],
            "test": single["test_metric"],
            "n_neurons": single["n_neurons"],
            "share": single["n_neurons"] / single_total,
            "kind": single["kind"],
            "pooling": single["pooling"],
            "layer": single["layer"],
            "C": single["C"],
        },
        "spin": {
            "dev": row["dev_metric"],
            "test": row["test_metric"],
            "n_neurons": row["n_neurons"],
            "share": row["share"],
            "kind": row["kind"],
            "pooling": row["pooling"],
            "rule": row["rule"],
            "value": row["value"],
            "layers": row["layers"],
            "C": row["C"],
        },
        "random_control": {
            "dev": control.dev,
            "test": control.test,
            "n_neurons": control.n_neurons,
            "share": control.share,
            "C": control.C,
        },
    }


def _export_head(
    store: ActivationStore, run: ProbeRun, spin: BestConfig, settings: SweepSettings, table: dict, path: Path
) -> None:
    clf = spin.head.classifier()
    model = store.manifest["model"]
    info = {
        "store_fingerprint": store.fingerprint,
        "model": {
            k: model.get(k)
            for k in ("name", "path", "model_type", "family", "config_sha256", "weights_sha256", "tokenizer_sha256")
        },
        "max_length": store.manifest["extraction"]["max_length"],
        "store_dtype": store.layout.dtype,
        "kind": spin.row.kind,
        "pooling": spin.row.pooling,
        "rule": spin.row.rule,
        "value": spin.row.value,
        "label_names": store.label_names,
        "metrics": {k: v for k, v in table.items() if k != "head"},
    }
    Head(classifier=clf, selection={int(k): np.asarray(v) for k, v in spin.selection.items()}, info=info).save(path)


def _jsonable(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
