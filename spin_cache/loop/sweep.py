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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import zarr

from .. import __version__
from ..errors import InputError
from ..extract.allocator import release_free_heap
from ..fit.estimator import SpinClassifier
from ..fit.head import Head
from ..fit.metrics import METRICS, score_predictions
from ..fit.solver import HEAD_C_GRID, Design, Standardizer, fit_c_path, predict_design
from ..outputs import MARKERS, finite_or_null, prepare_output_dir
from ..store.access import array_name, array_stored_bytes
from ..store.activation_store import ActivationStore
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
from .probe import (
    IN_MEMORY_COPIES,
    ORDERED_DIR,
    ProbeRun,
    block_memory_need,
    find_damaged_chunk,
    open_ordered_group,
    ordered_damage,
)
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


@dataclass
class Config:
    kind: str
    pooling: str
    value: float
    k: int  # number of layers integrated, from the kind's first layer


def _fit(x: dict[str, np.ndarray], y: dict[str, np.ndarray], n_classes: int, s: SweepSettings) -> SpinClassifier:
    clf = SpinClassifier(
        C=tuple(s.c_grid), penalty=s.penalty, max_iter=s.max_iter, tol=s.tol, metric=s.metric, random_state=s.seed
    )
    return clf.fit(x["train"], y["train"], x["dev"], y["dev"], n_classes=n_classes)


def _metrics(clf: SpinClassifier, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[float, float]:
    test = clf.score(x["test"], y["test"]) if len(y["test"]) else float("nan")
    return clf.score(x["dev"], y["dev"]), test


def _splits(store: ActivationStore) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Row masks of train/dev/test and every row's label."""
    split = store.examples["split"].to_numpy()
    labels = store.examples["label"].to_numpy().astype(np.int64)
    return {s: split == s for s in ("train", "dev", "test")}, labels


def _over_budget(store: ActivationStore, n_columns: int, memory_budget: int | None) -> bool:
    """Whether `n_columns` float32 columns of every row, with their in-memory copies, exceed the budget."""
    return memory_budget is not None and IN_MEMORY_COPIES * 4 * store.layout.n_rows * n_columns > memory_budget


def sweep_group(
    store_url: str,
    kind: str,
    pooling: str,
    saliency: dict[int, np.ndarray],
    settings: SweepSettings,
    storage_options: dict | None = None,
    ordered_url: str | None = None,
    memory_budget: int | None = None,
) -> dict:
    """One Dask task: every (value, K) configuration of one (kind, pooling), from one read of its columns.

    Columns come from the probe run's saliency-ordered copy when it holds them (a contiguous prefix read),
    else from the store. When the columns do not fit `memory_budget` bytes, every configuration is fitted on row
    blocks read on demand instead (out of core; each solver pass reads its columns again)."""
    t0 = time.perf_counter()
    store = ActivationStore.open(store_url, storage_options=storage_options, count_bytes=True)
    layers = store.layers(kind)
    selections = {v: {layer: select(saliency[layer], settings.rule, v) for layer in layers} for v in settings.values}
    need: dict[int, set[int]] = {layer: set() for layer in layers}
    for sel in selections.values():
        for layer, idx in sel.items():
            need[layer].update(int(i) for i in idx)
    base_layer = layers[-1] if kind == "hidden" else None
    if base_layer is not None:
        need[base_layer] = set(range(store.width(kind)))
    masks, labels = _splits(store)
    y = {s: labels[m] for s, m in masks.items()}
    n_classes = len(store.label_names)
    ordered = open_ordered(ordered_url) if ordered_url else None
    cols = {layer: np.array(sorted(need[layer]), dtype=np.int64) for layer in layers}
    streamed = _over_budget(store, sum(len(c) for c in cols.values()), memory_budget)
    data: dict[int, np.ndarray] = {}
    col_bytes = 0.0
    for layer in layers:
        rows_read = None if not streamed else np.arange(min(1, store.layout.n_rows))  # streamed: size only
        values, nbytes = _read_columns(store, ordered, kind, pooling, layer, cols[layer], rows=rows_read)
        col_bytes += nbytes
        if not streamed:
            data[layer] = values

    def features(sel: dict[int, np.ndarray], upto: Sequence[int]) -> dict[str, np.ndarray]:
        parts = [data[layer][:, np.searchsorted(cols[layer], sel[layer])] for layer in upto]
        full = np.concatenate(parts, axis=1)
        return {s: full[m] for s, m in masks.items()}

    def fit_config(sel: dict[int, np.ndarray], upto: Sequence[int]) -> tuple[SpinClassifier, float, float, int]:
        if not streamed:
            x = features(sel, upto)
            clf = _fit(x, y, n_classes, settings)
            return (clf, *_metrics(clf, x, y), x["train"].shape[1])
        return _fit_streamed(store, ordered, kind, pooling, {layer: sel[layer] for layer in upto}, masks, labels,
                             n_classes, settings)  # fmt: skip

    total = store.width(kind) * len(layers)
    rows: list[dict[str, Any]] = []
    best: tuple[dict[str, Any], SpinClassifier, dict[int, np.ndarray]] | None = None
    for value, sel in selections.items():
        for k in range(1, len(layers) + 1):
            t1 = time.perf_counter()
            clf, dev, test, n = fit_config(sel, layers[:k])
            row = {
                "kind": kind,
                "pooling": pooling,
                "rule": settings.rule,
                "value": float(value),
                "k": k,
                "layers": [int(v) for v in layers[:k]],
                "n_neurons": n,
                "share": n / total,
                "C": clf.C_,
                "dev_metric": dev,
                "test_metric": test,
                "group_bytes_read": 0,  # set below, once every fit has read
                "mode": "streamed" if streamed else "in-memory",
                "seconds": time.perf_counter() - t1,
            }
            rows.append(row)
            # Ties on dev go to fewer neurons, then to fewer layers (cheaper at prediction time).
            if best is None or (dev, -n, -k) > (best[0]["dev_metric"], -best[0]["n_neurons"], -best[0]["k"]):
                best = (row, clf, {layer: sel[layer] for layer in layers[:k]})
    out: dict = {"rows": rows, "best": _pack(best)}
    if base_layer is not None:
        clf, dev, test, _ = fit_config({base_layer: np.arange(store.width(kind))}, [base_layer])
        out["base"] = {
            "kind": kind,
            "pooling": pooling,
            "layer": base_layer,
            "dev": dev,
            "test": test,
            "n_neurons": store.width(kind),
            "share": store.width(kind) / total,
            "C": clf.C_,
        }
    # Streamed fits read their columns again on every solver pass: count those reads too, not only the first.
    bytes_read = (store.counter.bytes_read if store.counter else 0) + (ordered.bytes_read if ordered else 0)
    for row in rows:
        row["group_bytes_read"] = bytes_read
    out |= {"bytes_read": bytes_read, "bytes_of_columns": col_bytes, "seconds": time.perf_counter() - t0}
    return out


class OrderedCopy:
    """A probe run's saliency-ordered columns (see probe.write_ordered_columns), with read counting."""

    def __init__(self, url: str) -> None:
        from zarr.storage import LocalStore

        from ..store.access import CountingStore

        self.url = url
        self.counter = CountingStore(LocalStore(url, read_only=True))
        self.group = open_ordered_group(url, mode="r", store=self.counter)
        self._stored_bytes: dict[tuple[str, str, int], int] = {}

    @property
    def bytes_read(self) -> int:
        return self.counter.bytes_read

    def array(self, kind: str, pooling: str, layer: int) -> tuple[zarr.Array, np.ndarray] | None:
        name = array_name(kind, pooling, layer)
        if not Path(self.url, name, "zarr.json").exists():
            return None  # not in the copy (a probe that kept no column, an older run): read the store
        try:
            arr = self.group[name]
            neurons = np.asarray(arr.attrs["neurons"], dtype=np.int64)
        except Exception as exc:
            raise ordered_damage(self.url, f"{name}/zarr.json", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(arr, zarr.Array) or neurons.ndim != 1 or len(neurons) != arr.shape[1]:
            raise ordered_damage(self.url, f"{name}/zarr.json", "its metadata does not describe its columns")
        return arr, neurons

    def read(self, arr: zarr.Array, rows: slice, cols: slice, block_rows: int) -> np.ndarray:
        """arr[rows, cols]; IntegrityError naming the array and the damaged chunk when a chunk does not decode."""
        try:
            return np.asarray(arr[rows, cols])
        except Exception as exc:
            chunk = find_damaged_chunk(arr, rows, cols, block_rows)
            raise ordered_damage(self.url, arr.path, f"{type(exc).__name__}: {exc}", chunk) from None

    def stored_bytes(self, kind: str, pooling: str, layer: int) -> int:
        """Bytes on disk of one array, listed once (streamed fits ask once per block and pass)."""
        key = (kind, pooling, layer)
        if key not in self._stored_bytes:
            self._stored_bytes[key] = array_stored_bytes(self.url, array_name(kind, pooling, layer))
        return self._stored_bytes[key]


def open_ordered(url: str) -> OrderedCopy | None:
    return OrderedCopy(url) if Path(url, "zarr.json").exists() else None


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


def _fit_streamed(
    store: ActivationStore,
    ordered: OrderedCopy | None,
    kind: str,
    pooling: str,
    selection: dict[int, np.ndarray],
    masks: dict[str, np.ndarray],
    labels: np.ndarray,
    n_classes: int,
    settings: SweepSettings,
) -> tuple[SpinClassifier, float, float, int]:
    """Fit one configuration out of core: features are read row block by row block on every pass."""
    block_rows = store.layout.block_rows
    ascending = {layer: np.sort(idx) for layer, idx in selection.items()}
    back = {layer: np.searchsorted(ascending[layer], idx) for layer, idx in selection.items()}
    width = sum(len(v) for v in selection.values())

    def chunks(split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.flatnonzero(masks[split])
        for block in np.unique(rows // block_rows):
            part = rows[(rows // block_rows) == block]
            x = np.concatenate([_read_columns(store, ordered, kind, pooling, layer, ascending[layer], rows=part)[0]
                                [:, back[layer]] for layer in sorted(selection)], axis=1)  # fmt: skip
            yield x, labels[part]

    n = {s: int(m.sum()) for s, m in masks.items()}
    scaler = Standardizer.fit_chunks((x for x, _ in chunks("train")), width)

    def design(split: str) -> Design:
        def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for x, yb in chunks(split):
                yield torch.as_tensor(scaler.transform(x)), torch.as_tensor(yb)

        return Design(blocks, n[split], width)

    res = fit_c_path(design("train"), design("dev"), n_classes, settings.c_grid, penalty=settings.penalty,
                     metric=settings.metric, max_iter=settings.max_iter, tol=settings.tol)  # fmt: skip
    clf = SpinClassifier(C=tuple(settings.c_grid), penalty=settings.penalty, max_iter=settings.max_iter,
                         tol=settings.tol, metric=settings.metric, random_state=settings.seed)  # fmt: skip
    clf.n_classes_, clf.classes_, clf.n_features_in_ = n_classes, np.arange(n_classes), width
    clf.scaler_, clf.C_, clf.coef_, clf.intercept_ = scaler, res.c, res.fit.coef, res.fit.intercept
    clf.history_ = res.history

    def metric(split: str) -> float:
        if n[split] == 0:
            return float("nan")
        return score_predictions(*predict_design(design(split), res.fit.coef, res.fit.intercept), settings.metric)

    test = metric("test")
    release_free_heap()  # the passes' freed blocks, back to the kernel: peak memory stays flat in the rows
    return clf, res.dev, test, width


def _pack(best: tuple | None) -> dict | None:
    if best is None:
        return None
    row, clf, sel = best
    return {"row": row, "classifier": (clf.to_json(), clf.to_arrays()), "selection": sel}


def random_control(
    store_url: str,
    spin: dict,
    seed: int,
    settings: SweepSettings,
    storage_options: dict | None = None,
    memory_budget: int | None = None,
) -> dict:
    """The same per-layer neuron counts as SPIN's choice, drawn at random (seeded), fitted the same way: from
    memory, or on row blocks read on demand when its columns do not fit `memory_budget` bytes."""
    store = ActivationStore.open(store_url, storage_options=storage_options, count_bytes=True)
    kind, pooling = spin["row"]["kind"], spin["row"]["pooling"]
    counts = {int(layer): len(idx) for layer, idx in spin["selection"].items()}
    chosen = random_like(counts, {layer: store.width(kind) for layer in counts}, seed)
    masks, labels = _splits(store)
    n_classes = len(store.label_names)
    if _over_budget(store, sum(counts.values()), memory_budget):
        # Random neurons are rarely in the ordered copy's prefix: read them from the store.
        clf, dev, test, n = _fit_streamed(store, None, kind, pooling, chosen, masks, labels, n_classes, settings)
    else:
        parts = [store.read(kind, pooling, layer, columns=idx) for layer, idx in chosen.items()]
        full = np.concatenate(parts, axis=1)
        x = {s: full[m] for s, m in masks.items()}
        y = {s: labels[m] for s, m in masks.items()}
        clf = _fit(x, y, n_classes, settings)
        dev, test = _metrics(clf, x, y)
        n = full.shape[1]
    return {
        "dev": dev,
        "test": test,
        "n_neurons": n,
        "share": spin["row"]["share"],
        "C": clf.C_,
        "bytes_read": store.counter.bytes_read if store.counter else 0,
    }


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
) -> SweepResult:
    """Evaluate every configuration, write sweep.parquet and summary.json, and export the best head.

    `out` must be missing, empty or an earlier sweep (spin-cache writes nothing into a folder it did not make); its
    sweep.json is written before anything else. A `memory_budget` below one row block per running task is
    refused. `dashboard`: an address for a local cluster's Dask dashboard (default: none)."""
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
        )
        for k, p in groups
    ]
    results: list[dict[str, Any]] = [{} for _ in tasks]
    for i, res in run_tasks(
        sweep_group, tasks, scheduler=scheduler, workers=workers, desc="sweep", progress=progress, dashboard=dashboard
    ):
        results[i] = res
    rows = [row for res in results for row in res["rows"]]
    bests = [res["best"] for res in results if res["best"] is not None]
    spin = max(bests, key=lambda b: (b["row"]["dev_metric"], -b["row"]["n_neurons"], -b["row"]["k"]))
    bases = [res["base"] for res in results if "base" in res]
    # The control runs alone, after every group: it has the whole budget.
    budget = memory_budget or default_memory_budget()
    control = random_control(str(store_url), spin, settings.seed, settings, storage_options, budget)
    table = _table(store, run, spin, bases, control)
    sweep = pl.DataFrame(rows).sort(["kind", "pooling", "value", "k"])
    sweep.write_parquet(out / "sweep.parquet")
    head_dir = out / "head"
    _export_head(store, run, spin, settings, table, head_dir)
    table["head"] = str(head_dir)
    table["bytes_read"] = int(sum(r["bytes_read"] for r in results))
    table["bytes_of_columns"] = int(sum(r["bytes_of_columns"] for r in results))
    table["random_control"]["bytes_read"] = int(control["bytes_read"])
    _write_json(out / "summary.json", meta | {"table": table})
    _write_json(out / SWEEP_MARKER, meta | {"status": "complete"})
    return SweepResult(out, table, sweep)


def _write_json(path: Path, obj: dict) -> None:
    """Strict JSON (a metric that does not exist, NaN for an empty test split, is written as null), atomically."""
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


def _table(store: ActivationStore, run: ProbeRun, spin: dict, bases: list[dict], control: dict) -> dict:
    row = spin["row"]
    base = max(bases, key=lambda b: b["dev"]) if bases else None
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
            "dev": control["dev"],
            "test": control["test"],
            "n_neurons": control["n_neurons"],
            "share": control["share"],
            "C": control["C"],
        },
    }


def _export_head(
    store: ActivationStore, run: ProbeRun, spin: dict, settings: SweepSettings, table: dict, path: Path
) -> None:
    meta, arrays = spin["classifier"]
    clf = SpinClassifier.from_parts(meta, arrays)
    model = store.manifest["model"]
    info = {
        "store_fingerprint": store.fingerprint,
        "model": {
            k: model.get(k)
            for k in ("name", "path", "model_type", "family", "config_sha256", "weights_sha256", "tokenizer_sha256")
        },
        "max_length": store.manifest["extraction"]["max_length"],
        "store_dtype": store.layout.dtype,
        "kind": spin["row"]["kind"],
        "pooling": spin["row"]["pooling"],
        "rule": spin["row"]["rule"],
        "value": spin["row"]["value"],
        "label_names": store.label_names,
        "metrics": {k: v for k, v in table.items() if k != "head"},
    }
    Head(classifier=clf, selection={int(k): np.asarray(v) for k, v in spin["selection"].items()}, info=info).save(path)


def _jsonable(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
