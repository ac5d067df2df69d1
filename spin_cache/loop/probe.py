"""Probe every layer of a store: one L1 logistic regression per (kind, pooling, layer), C chosen on dev,
saliency = squared weight summed over classes.

A probe run is a directory:

    run.json               store fingerprint and URL, the probe settings, status (and `fold`: see below)
    parts/*.parquet        one file per finished probe (committed as it lands; a rerun skips them)
    probes.parquet         kind, pooling, layer, C, dev_metric, test_metric, train_metric, n_nonzero, n_neurons,
                           fit_seconds
    neuron_scores.parquet  kind, pooling, layer, neuron, saliency, rank (0 = most salient in its layer)

A cross-validation fold's probe run (`probe_folds`, for the sweep's `cv` selection) has the same files, without
the ordered copy, and records its fold in run.json.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from .. import __version__
from ..errors import InputError, IntegrityError, StoreMismatchError
from ..fit.metrics import METRICS, score_predictions
from ..fit.solver import PROBE_C_GRID, Design, Standardizer, fit_c_path, predict_design, solver_device
from ..outputs import prepare_output_dir
from ..store.activation_store import ActivationStore
from ..store.folds import Fold, fold_rows
from ..store.ordered import ORDERED_DIR, open_ordered_group, write_ordered_columns
from ..validation import FOLD_COUNT, POSITIVE_FLOAT, POSITIVE_FLOATS, POSITIVE_INT, check
from .parallel import check_memory_budget, check_workers, run_tasks, task_memory_budget
from .select import rank_order

PROBE_FORMAT = "spin-cache-probes"
FOLDS_FORMAT = "spin-cache-probe-folds"  # folds.json of `probe_folds`


@dataclass(frozen=True)
class ProbeSettings:
    c_grid: tuple[float, ...] = PROBE_C_GRID
    metric: str = "accuracy"
    max_iter: int = 300
    tol: float = 1e-4

    def check(self) -> None:
        """InputError naming the first setting out of its range (the same rules as the command line's)."""
        if self.metric not in METRICS:
            raise InputError(f"--metric {self.metric}: choose from {', '.join(METRICS)}")
        if isinstance(self.c_grid, (str, bytes)):
            raise InputError(f"--C (c_grid) {self.c_grid!r}: give a sequence of numbers, not a string")
        check("--C (c_grid)", self.c_grid, POSITIVE_FLOATS)
        check("max_iter", self.max_iter, POSITIVE_INT)
        check("tol", self.tol, POSITIVE_FLOAT)


def saliency_from_coef(coef: np.ndarray) -> np.ndarray:
    """Squared weight per neuron, summed over classes (one row for binary probes, one per class otherwise)."""
    arr: np.ndarray = (np.asarray(coef, dtype=np.float64) ** 2).sum(axis=0)
    return arr


def rank_neurons(saliency: np.ndarray) -> np.ndarray:
    """Rank 0 = most salient; ties broken by the lower neuron index, so ranks are deterministic."""
    order = rank_order(saliency)
    ranks = np.empty(len(saliency), dtype=np.int64)
    ranks[order] = np.arange(len(saliency))
    return ranks


# In-memory probing holds about three float32 copies of a layer (values, standardised values, split copies).
IN_MEMORY_COPIES = 3


def block_memory_need(store: ActivationStore, width: int) -> int:
    """Bytes one task needs at the least: one row block of `width` float32 columns and its copies (streaming reads
    a block at a time, never less)."""
    return IN_MEMORY_COPIES * 4 * min(store.layout.block_rows, store.layout.n_rows) * width


def probe_layer(
    store_url: str,
    kind: str,
    pooling: str,
    layer: int,
    settings: ProbeSettings,
    storage_options: dict[str, Any] | None = None,
    ordered_url: str | None = None,
    memory_budget: int | None = None,
    device: str | None = None,
    fold: Fold | None = None,
) -> dict[str, Any]:
    """One probe (a Dask task): read the layer, standardise on train, fit the C path, score every neuron, and
    write the layer's salient columns in rank order into the run's ordered copy.

    A layer whose in-memory footprint exceeds `memory_budget` bytes is streamed in row blocks instead: one pass
    for the standardisation statistics, then every solver iteration reads the blocks again. `device`: where the
    probe is fitted (None: the CPU). `fold`: probe that cross-validation fold's view of the store."""
    t0 = time.perf_counter()
    store = ActivationStore.open(store_url, storage_options=storage_options, fold=fold)
    rows = _LayerRows(store, kind, pooling, layer)
    streamed = memory_budget is not None and rows.in_memory_bytes() > memory_budget
    if not streamed:
        rows.load()
    scaler = rows.standardizer()
    designs = {s: rows.design(s, scaler) for s in ("train", "dev", "test")}
    res = fit_c_path(designs["train"], designs["dev"], rows.n_classes, settings.c_grid, penalty="l1",
                     metric=settings.metric, max_iter=settings.max_iter, tol=settings.tol,
                     device=solver_device(device))  # fmt: skip

    def metric(split: str) -> float:
        if designs[split].n_rows == 0:
            return float("nan")
        return score_predictions(*predict_design(designs[split], res.fit.coef, res.fit.intercept), settings.metric)

    saliency = saliency_from_coef(res.fit.coef)
    if ordered_url is not None:
        keep = rank_order(saliency)[: max(1, int(np.count_nonzero(saliency)))]
        write_ordered_columns(ordered_url, store, kind, pooling, layer, keep, rows.values)
    return {
        "kind": kind,
        "pooling": pooling,
        "layer": int(layer),
        "C": float(res.c),
        "dev_metric": res.dev,
        "test_metric": metric("test"),
        "train_metric": metric("train"),
        "n_nonzero": int(np.count_nonzero(saliency)),
        "n_neurons": store.width(kind),
        "iterations": int(sum(h["iterations"] for h in res.history)),
        "mode": "streamed" if streamed else "in-memory",
        "fit_seconds": time.perf_counter() - t0,
        "saliency": saliency.astype(np.float64),
    }


class _LayerRows:
    """One layer's rows by split: loaded once, or read from the store in row blocks on every pass."""

    def __init__(self, store: ActivationStore, kind: str, pooling: str, layer: int) -> None:
        self.store, self.kind, self.pooling, self.layer = store, kind, pooling, layer
        ex = store.examples
        split = ex["split"].to_numpy()
        self.labels = ex["label"].to_numpy().astype(np.int64)
        self.rows = {s: np.flatnonzero(split == s) for s in ("train", "dev", "test")}
        self.n_classes = len(store.label_names)
        self.width = store.width(kind)
        self.values: np.ndarray | None = None

    def in_memory_bytes(self) -> int:
        return IN_MEMORY_COPIES * 4 * self.store.layout.n_rows * self.width

    def load(self) -> None:
        self.values = self.store.read(self.kind, self.pooling, self.layer)

    def chunks(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 values, labels) of a split, one shard-aligned row block at a time."""
        rows = self.rows[split]
        if self.values is not None:
            yield self.values[rows], self.labels[rows]
            return
        block_rows = self.store.layout.block_rows
        for block in np.unique(rows // block_rows):
            part = rows[(rows // block_rows) == block]
            yield self.store.read(self.kind, self.pooling, self.layer, rows=part), self.labels[part]

    def standardizer(self) -> Standardizer:
        if self.values is not None:
            return Standardizer.fit(self.values[self.rows["train"]])
        return Standardizer.fit_chunks((x for x, _ in self.chunks("train")), self.width)

    def design(self, split: str, scaler: Standardizer) -> Design:
        n = len(self.rows[split])
        if self.values is not None:
            x, y = next(self.chunks(split))
            return Design.of(scaler.transform(x), y)

        def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for x, y in self.chunks(split):
                yield torch.as_tensor(scaler.transform(x)), torch.as_tensor(y)

        return Design(blocks, n, self.width)


class ProbeRun:
    """The results of `run_probes`, read back from its directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "run.json"
        if not meta_path.exists():
            raise InputError(f"{self.path}: not a probe run (run.json missing); make one with `spin-cache probe`")
        self.meta = read_run_json(meta_path)
        if self.meta.get("format") != PROBE_FORMAT:
            raise InputError(f"{meta_path}: not a spin-cache probe run")
        if self.meta.get("status") != "complete":
            raise IntegrityError(f"{self.path}: the probe run is incomplete; rerun the same `spin-cache probe`")
        try:
            self.settings.check()
            if not isinstance(self.meta.get("store_fingerprint"), str):
                raise TypeError("no store_fingerprint")
        except (KeyError, TypeError, InputError) as exc:
            raise IntegrityError(
                f"{meta_path}: settings or store fingerprint malformed ({type(exc).__name__}: {exc}); the probe run "
                "is damaged: probe again into a new --out"
            ) from None
        self.probes = read_side_parquet(self.path / "probes.parquet", PROBE_COLUMNS)
        self.scores = read_side_parquet(self.path / "neuron_scores.parquet", SCORE_COLUMNS)

    @property
    def store_fingerprint(self) -> str:
        """The fingerprint of the store these probes were fitted on."""
        value: str = self.meta["store_fingerprint"]
        return value

    @property
    def fold(self) -> Fold | None:
        """The cross-validation fold whose view these probes were fitted on (None: the store itself)."""
        f = self.meta.get("fold")
        return None if f is None else Fold(int(f["index"]), int(f["n"]), int(f["seed"]))

    @property
    def settings(self) -> ProbeSettings:
        """The probe settings the run was made with (from run.json)."""
        s = self.meta["settings"]
        return ProbeSettings(tuple(s["c_grid"]), s["metric"], s["max_iter"], s["tol"])

    def saliency(self, kind: str, pooling: str, layer: int) -> np.ndarray:
        """One layer's saliency per neuron, in neuron order (squared probe weights summed over classes).

        Raises
        ------
        InputError
            When the run holds no scores for that (kind, pooling, layer).
        """
        sub = self.scores.filter((pl.col("kind") == kind) & (pl.col("pooling") == pooling) & (pl.col("layer") == layer))
        if sub.height == 0:
            raise InputError(f"{self.path}: no neuron scores for {kind}/{pooling}/layer {layer}")
        return sub.sort("neuron")["saliency"].to_numpy()

    def check_store(self, store: ActivationStore) -> None:
        """Raise StoreMismatchError unless `store` is the store these probes were fitted on (same fingerprint)."""
        if store.fingerprint != self.store_fingerprint:
            raise StoreMismatchError(
                f"{self.path} was probed on store {self.store_fingerprint[:16]}, not on {store.url} "
                f"({store.fingerprint[:16]}); probe this store first"
            )


PROBE_COLUMNS = ("kind", "pooling", "layer", "C", "dev_metric", "test_metric", "train_metric", "n_nonzero",
                 "n_neurons", "iterations", "mode", "fit_seconds")  # fmt: skip
SCORE_COLUMNS = ("kind", "pooling", "layer", "neuron", "saliency", "rank")


def read_run_json(path: Path) -> dict[str, Any]:
    """A probe run's run.json; IntegrityError (one line, naming the file) when it is not a JSON object."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(
            f"{path}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())}); the probe run is damaged: "
            "probe again into a new --out"
        ) from None
    if not isinstance(meta, dict):
        raise IntegrityError(f"{path}: not a JSON object; the probe run is damaged: probe again into a new --out")
    return meta


def read_side_parquet(path: Path, columns: Sequence[str], what_to_do: str | None = None) -> pl.DataFrame:
    """One of a probe run's tables; IntegrityError naming the file when it is missing, unreadable or lacks a
    column."""
    what_to_do = what_to_do or "the probe run is damaged: probe again into a new --out"
    try:
        frame = pl.read_parquet(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing; {what_to_do}") from None
    except Exception as exc:  # polars raises ComputeError, OSError, ... for a truncated or altered file
        detail = " ".join(str(exc).split())[:200]
        raise IntegrityError(f"{path}: unreadable ({type(exc).__name__}: {detail}); {what_to_do}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise IntegrityError(f"{path}: lacks column(s) {', '.join(missing)}; {what_to_do}")
    return frame


def run_probes(
    store_url: str,
    out: str | Path,
    settings: ProbeSettings | None = None,
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
    fold: Fold | None = None,
    fixed_c: Mapping[tuple[str, str, int], float] | None = None,
) -> ProbeRun:
    """Probe every (kind, pooling, layer) of the store; finished probes are kept across reruns.

    `out` must be missing, empty or an earlier probe run (spin-cache writes nothing into a folder it did not make).
    `memory_budget` (bytes, default half the machine's memory) is shared by the tasks that run at once; a
    layer that does not fit its share is streamed in row blocks (the probes table says which, column `mode`); a
    budget below one row block per running task is refused. `dashboard`: an address for a local cluster's Dask
    dashboard (default: none; see parallel.local_cluster). `device`: where the probes are fitted: cpu (default),
    cuda, cuda:N or auto (the layers are read on the CPU and copied there). `fold`: probe that cross-validation
    fold's view of the store instead (no ordered copy; see `probe_folds`). `fixed_c`: {(kind, pooling, layer): C}
    fits each layer at that C instead of choosing one on dev."""
    solver_device(device)  # an unknown device or no CUDA: refused before any work
    settings = settings or ProbeSettings()
    settings.check()
    workers = check_workers(workers)
    if memory_budget is not None:
        memory_budget = check("--memory-budget", memory_budget, POSITIVE_INT)
    store = ActivationStore.open(store_url, storage_options=storage_options, fold=fold)
    if not store.is_complete:
        raise IntegrityError(f"{store_url}: the store is incomplete; finish it with the same `spin-cache extract`")
    keys = [
        (k, p, layer)
        for k, p, layer in store.layout.array_keys()
        if (not kinds or k in kinds) and (not poolings or p in poolings)
    ]
    if not keys:
        raise InputError(f"no layers to probe: the store has kinds {store.kinds} and poolings {store.poolings}")
    widest = max(store.width(k) for k in {k for k, _, _ in keys})
    check_memory_budget(memory_budget, block_memory_need(store, widest), scheduler, workers)
    out = prepare_output_dir(out, "probe run")
    meta: dict[str, Any] = {
        "format": PROBE_FORMAT,
        "spin_cache_version": __version__,
        "store": str(store_url),
        "store_fingerprint": store.fingerprint,
        "settings": asdict(settings) | {"c_grid": list(settings.c_grid)},
        "keys": [list(k) for k in keys],
        "status": "incomplete",
    }
    if fold is not None:
        meta["fold"] = asdict(fold)
    _start_run(out, meta)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    todo = [k for k in keys if not _part_path(parts, *k).exists()]
    ordered: str | None = None
    if fold is None:  # a fold's sweep reads the store: its ordered copy would be written for nothing
        ordered = str(out.resolve() / ORDERED_DIR)
        open_ordered_group(ordered, mode="a", attributes={"store_fingerprint": store.fingerprint})
    per_task = task_memory_budget(memory_budget, scheduler, workers)
    desc = "probe" if fold is None else f"probe fold {fold.index + 1}/{fold.n}"
    tasks = [
        (
            str(store_url),
            k,
            p,
            layer,
            _at(settings, fixed_c, (k, p, layer)),
            storage_options,
            ordered,
            per_task,
            device,
            fold,
        )
        for k, p, layer in todo
    ]
    for _, result in run_tasks(
        probe_layer, tasks, scheduler=scheduler, workers=workers, desc=desc, progress=progress, dashboard=dashboard
    ):
        _write_part(parts, result)
    _combine(out, keys)
    meta["status"] = "complete"
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    return ProbeRun(out)


def probe_folds(
    run: ProbeRun,
    store_url: str,
    out: str | Path,
    n_folds: int,
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
) -> list[ProbeRun]:
    """The probes of each of `n_folds` cross-validation folds of the training rows (OUT/<i>, a probe run each; kept
    across reruns): fold i's probes are fitted without fold i's rows (spin_cache.store.folds), at the C `run` chose
    for the layer on dev, and report their score on fold i's rows as "dev".

    Why `run`'s C and not one chosen again on the fold's rows: in a layer without signal every C scores alike, so
    a fresh choice per fold draws any sparsity, and a rule value such as eta 0.9 then selects unrelated neuron sets
    in the folds and in `run` (BENCHMARKS.md, "Selection strategies": cross-validated selection lost 1.9 points of
    test accuracy that way on a synthetic set, and gained 0.6 with the run's C). One C per layer is also cheaper.
    InputError when the store has fewer training rows than folds (`check_folds`).

    OUT/folds.json records what the folds were made from (store, probe settings and C per layer, folds, kinds,
    poolings); folds made from anything else are removed and made again (they are this function's own files)."""
    store = ActivationStore.open(store_url, storage_options=storage_options)
    run.check_store(store)
    check_folds(store, n_folds)
    chosen = {
        (k, p, int(layer)): float(c)
        for k, p, layer, c in run.probes.select("kind", "pooling", "layer", "C").iter_rows()
    }
    made_from = {
        "format": FOLDS_FORMAT,
        "store_fingerprint": store.fingerprint,
        "settings": asdict(run.settings) | {"c_grid": list(run.settings.c_grid)},
        "c_per_layer": sorted([k, p, layer, c] for (k, p, layer), c in chosen.items()),
        "folds": n_folds,
        "kinds": sorted(kinds) if kinds else None,
        "poolings": sorted(poolings) if poolings else None,
    }
    out = Path(out)
    record = out / "folds.json"
    if record.exists() and _read_json_or_none(record) != made_from:
        shutil.rmtree(out)  # folds of other inputs, which only this function writes
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(made_from, indent=2))
    loop: dict[str, Any] = {"kinds": kinds, "poolings": poolings, "scheduler": scheduler, "workers": workers,
                            "memory_budget": memory_budget, "progress": progress, "storage_options": storage_options,
                            "dashboard": dashboard, "device": device}  # fmt: skip
    return [run_probes(store_url, out / str(i), run.settings, fold=Fold(i, n_folds), fixed_c=chosen, **loop)
            for i in range(n_folds)]  # fmt: skip


def check_folds(store: ActivationStore, n_folds: int) -> None:
    """InputError unless `n_folds` is a fold count (2 or more) the store's training rows can fill."""
    check("--folds", n_folds, FOLD_COUNT)
    try:
        fold_rows(store.labels(), store.examples["split"].to_numpy() == "train", n_folds, 0)
    except InputError as exc:
        raise InputError(f"{exc}, or choose on dev with --select argmax") from None


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _at(settings: ProbeSettings, fixed_c: Mapping[tuple[str, str, int], float] | None,
        key: tuple[str, str, int]) -> ProbeSettings:  # fmt: skip
    """`settings`, or with `fixed_c` the same settings with a one-value C grid: the C given for `key`'s layer."""
    return settings if fixed_c is None else replace(settings, c_grid=(fixed_c[key],))


def _start_run(out: Path, meta: dict[str, Any]) -> None:
    """Write run.json first of all the run's files: a run that stops midway is still recognised as a probe run."""
    meta_path = out / "run.json"
    if meta_path.exists():
        old = read_run_json(meta_path)
        same = all(old.get(k) == meta.get(k) for k in ("store_fingerprint", "settings", "keys", "fold"))
        if not same:
            raise StoreMismatchError(
                f"{out} holds probes made from another store or settings; pass another --out or delete it"
            )
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2))


def _part_path(parts: Path, kind: str, pooling: str, layer: int) -> Path:
    return parts / f"{kind}-{pooling}-{layer:03d}.parquet"


def _write_part(parts: Path, result: dict[str, Any]) -> None:
    saliency = result.pop("saliency")
    n = len(saliency)
    frame = pl.DataFrame(
        {
            "neuron": np.arange(n, dtype=np.int64),
            "saliency": saliency,
            "rank": rank_neurons(saliency),
        }
    ).with_columns(**{k: pl.lit(v) for k, v in result.items()})
    frame = frame.with_columns(pl.col(["layer", "n_nonzero", "n_neurons", "iterations"]).cast(pl.Int64))
    final = _part_path(parts, result["kind"], result["pooling"], result["layer"])
    tmp = final.with_suffix(".tmp")
    frame.write_parquet(tmp)
    tmp.replace(final)  # atomic: a part either exists whole or not at all


def _combine(out: Path, keys: list[tuple[str, str, int]]) -> None:
    def part(key: tuple[str, str, int]) -> pl.DataFrame:
        path = _part_path(out / "parts", *key)
        return read_side_parquet(path, (*PROBE_COLUMNS, *SCORE_COLUMNS), "delete it and rerun the same command")

    allp = pl.concat([part(k) for k in keys], how="vertical")
    probes = allp.group_by(["kind", "pooling", "layer"], maintain_order=True).first().select(PROBE_COLUMNS)
    probes.write_parquet(out / "probes.parquet")
    scores = allp.select(SCORE_COLUMNS)
    scores.write_parquet(out / "neuron_scores.parquet")
