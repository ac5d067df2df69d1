"""A one-file HTML report of a finished sweep: figures (PNG, also embedded as base64), the comparison table, the
store's manifest and the command lines that produced the run.

    write_report(SWEEP, OUT) -> OUT/report.html, plus OUT/probes.png, neurons.png, selection.png, early_exit.png

The page needs nothing but itself: no scripts, stylesheets, fonts or images from elsewhere. Figures are drawn with
matplotlib's Agg canvas (no pyplot, no display). Parts whose inputs are gone (a moved probe run or store) are
replaced by a note saying what is missing; a missing or invalid sweep directory is an `InputError`.

Figures:
    probes.png      probe metric per layer, one panel per kind, one colour per pooling (dev solid, test dashed)
    neurons.png     metric against neurons kept (log x): SPIN's best configuration per rule value (dev), the best
                    dev metric reachable with at most n neurons, and the chosen head, the random control, Base and
                    the best single layer (dev and test: test is read once, for these only)
    selection.png   neurons the chosen head keeps per layer (count and share of the layer), and the cumulative
                    saliency share against neurons ranked, per layer, for the chosen kind and pooling
    early_exit.png  metric using the first K layers against the share of the model's blocks that must run
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .errors import InputError, SpinCacheError
from .loop.selection import CV, METHOD_WORDS, STRATEGY_WORDS

FIGURES = ("probes", "neurons", "selection", "early_exit")
COMMAND_FILE = "command.txt"
_POOLING_COLOURS = {"first": "#1f77b4", "last": "#9467bd", "mean": "#2ca02c", "max": "#d62728"}
_OTHER_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class _Run:
    """Everything the report reads; optional parts are None with a note saying why."""

    sweep_dir: Path
    summary: dict[str, Any]
    sweep: pl.DataFrame
    probes: Any = None  # ProbeRun
    probes_dir: Path | None = None
    manifest: dict[str, Any] | None = None
    store_dir: Path | None = None
    head: Any = None  # Head
    notes: list[str] = field(default_factory=list)

    @property
    def table(self) -> dict[str, Any]:
        value: dict[str, Any] = self.summary.get("table", {})
        return value

    @property
    def metric(self) -> str:
        return str(self.summary.get("settings", {}).get("metric", "accuracy"))


# ---- loading ----------------------------------------------------------------------------------------------------


def _load(sweep_dir: Path) -> _Run:
    from .loop.sweep import SWEEP_FORMAT

    if not sweep_dir.is_dir():
        raise InputError(f"{sweep_dir}: no such sweep directory; pass the --out of a finished `spin-cache sweep`")
    summary_path = sweep_dir / "summary.json"
    if not summary_path.is_file():
        raise InputError(f"{sweep_dir}: not a finished sweep (summary.json missing); run `spin-cache sweep` first")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{summary_path}: not valid JSON ({exc}); rerun `spin-cache sweep`") from None
    if not isinstance(summary, dict) or summary.get("format") != SWEEP_FORMAT:
        raise InputError(f"{summary_path}: not a spin-cache sweep summary")
    if not isinstance(summary.get("table"), dict) or "spin" not in summary["table"]:
        raise InputError(f"{summary_path}: the summary has no result table; rerun `spin-cache sweep`")
    parquet = sweep_dir / "sweep.parquet"
    try:
        sweep = pl.read_parquet(parquet)
    except Exception as exc:
        raise InputError(f"{parquet}: missing or unreadable ({type(exc).__name__}); rerun `spin-cache sweep`") from None
    need = {"kind", "pooling", "value", "k", "layers", "n_neurons", "dev_metric", "test_metric"}
    if not need <= set(sweep.columns):
        raise InputError(f"{parquet}: missing columns {', '.join(sorted(need - set(sweep.columns)))}")
    run = _Run(sweep_dir=sweep_dir, summary=summary, sweep=sweep)
    _load_probes(run)
    _load_store(run)
    _load_head(run)
    return run


def _locate(recorded: str | None, sweep_dir: Path) -> Path | None:
    """A path recorded in the summary: as written (relative to the current directory), else beside the sweep."""
    if not recorded or "://" in str(recorded):
        return None
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [p, sweep_dir.parent / p, sweep_dir.parent / p.name]
    return next((c for c in candidates if c.exists()), None)


def _load_probes(run: _Run) -> None:
    from .loop.probe import ProbeRun

    recorded = run.summary.get("probes")
    found = _locate(recorded, run.sweep_dir)
    if found is None:
        run.notes.append(f"probe run {recorded!r} not found: the probe figure and saliency curves are left out")
        return
    try:
        run.probes = ProbeRun(found)
        run.probes_dir = found
    except (SpinCacheError, OSError) as exc:
        run.notes.append(f"probe run {found} unreadable ({exc}): the probe figure and saliency curves are left out")


def _load_store(run: _Run) -> None:
    from .store.activation_store import ActivationStore

    url = run.summary.get("store")
    target = _locate(url, run.sweep_dir) if url and "://" not in str(url) else url
    if target is None:
        run.notes.append(f"store {url!r} not found: its manifest is left out")
        return
    try:
        store = ActivationStore.open(str(target))
        run.manifest = store.manifest
        if "://" not in str(target):
            run.store_dir = Path(target)
    except Exception as exc:
        run.notes.append(f"store {url} unreadable ({type(exc).__name__}: {exc}): its manifest is left out")


def _load_head(run: _Run) -> None:
    from .fit.head import Head

    for candidate in (run.sweep_dir / "head", _locate(run.table.get("head"), run.sweep_dir)):
        if candidate is not None and (candidate / "head.json").exists():
            try:
                run.head = Head.load(candidate)
                return
            except SpinCacheError as exc:
                run.notes.append(f"head {candidate} unreadable ({exc})")
                return
    run.notes.append("the exported head was not found: the selection counts are left out")


def _num_layers(run: _Run) -> int:
    if run.manifest and run.manifest.get("model", {}).get("num_layers"):
        return int(run.manifest["model"]["num_layers"])
    deepest = [max(v) for v in run.sweep["layers"].to_list() if v]
    return max(1, max(deepest, default=1))


def _widths(run: _Run) -> dict[str, int]:
    if run.manifest:
        return {k: int(v) for k, v in run.manifest.get("layout", {}).get("widths", {}).items()}
    if run.probes is not None:
        rows = run.probes.probes.group_by("kind").agg(pl.col("n_neurons").first()).iter_rows()
        return {k: int(n) for k, n in rows}
    return {}


# ---- figures ----------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colour(pooling: str, i: int) -> str:
    return _POOLING_COLOURS.get(pooling, _OTHER_COLOURS[i % len(_OTHER_COLOURS)])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _fig_probes(run: _Run) -> Any:
    if run.probes is None:
        return None
    probes = run.probes.probes.sort(["kind", "pooling", "layer"])
    kinds = list(dict.fromkeys(probes["kind"].to_list()))
    fig = _figure(5.2 * len(kinds) + 0.8, 3.8)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    base = run.table.get("base") or {}
    for ax, kind in zip(axes, kinds, strict=True):
        sub = probes.filter(pl.col("kind") == kind)
        for i, pooling in enumerate(dict.fromkeys(sub["pooling"].to_list())):
            part = sub.filter(pl.col("pooling") == pooling)
            colour = _colour(pooling, i)
            layers = part["layer"].to_numpy()
            ax.plot(layers, part["dev_metric"].to_numpy(), "o-", color=colour, label=f"{pooling} dev")
            ax.plot(layers, part["test_metric"].to_numpy(), "s--", color=colour, alpha=0.55, label=f"{pooling} test")
        if _finite(base.get("dev")):
            ax.axhline(base["dev"], color="0.35", lw=1, ls=":", label="Base dev")
        ax.set_title(f"{kind}: probe per layer")
        ax.set_xlabel("layer")
        ax.set_ylabel(run.metric)
        ax.set_xticks(sorted(set(sub["layer"].to_list())))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return fig


def _best_row(rows: pl.DataFrame) -> dict[str, Any]:
    """The sweep's own tie-break: best dev, then fewer neurons, then fewer layers."""
    return rows.sort(["dev_metric", "n_neurons", "k"], descending=[True, False, False]).row(0, named=True)


def _fig_neurons(run: _Run) -> Any:
    sweep = run.sweep
    fig = _figure(9.5, 4.6)
    ax = fig.subplots()
    ax.scatter(sweep["n_neurons"], sweep["dev_metric"], s=9, color="0.75", label="every configuration (dev)")
    # Best dev reachable with at most n neurons (the sweep's frontier).
    frontier = sweep.sort("n_neurons").select("n_neurons", "dev_metric")
    ns, best, xs, ys = frontier["n_neurons"].to_numpy(), -np.inf, [], []
    for n, d in zip(ns, frontier["dev_metric"].to_numpy(), strict=True):
        if np.isfinite(d) and d > best:
            best = d
            xs.append(n)
            ys.append(d)
    if xs:
        ax.step([*xs, ns.max()], [*ys, ys[-1]], where="post", color="0.45", lw=1, label="best dev with ≤ n neurons")
    per_value = [_best_row(sweep.filter(pl.col("value") == v)) for v in sorted(set(sweep["value"].to_list()))]
    per_value.sort(key=lambda r: r["n_neurons"])
    n = [r["n_neurons"] for r in per_value]
    ax.plot(n, [r["dev_metric"] for r in per_value], "o-", color="#1f77b4", label="SPIN best per value (dev)")
    for r in per_value:
        ax.annotate(f"{r['value']:g}", (r["n_neurons"], r["dev_metric"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7, color="#1f77b4")  # fmt: skip
    markers = (
        ("spin", "*", "#1f77b4", "SPIN chosen", 180),
        ("random_control", "^", "#ff7f0e", "random control", 70),
        ("base", "D", "#2ca02c", "Base (last layer, all neurons)", 60),
        ("best_single_layer", "P", "#9467bd", "best single layer", 80),
    )
    for key, marker, colour, label, size in markers:
        row = run.table.get(key) or {}
        if not _finite(row.get("n_neurons")):
            continue
        if _finite(row.get("dev")):
            ax.scatter([row["n_neurons"]], [row["dev"]], marker=marker, s=size, color=colour, zorder=5,
                       edgecolor="black", linewidth=0.5, label=f"{label} (dev)")  # fmt: skip
        if _finite(row.get("test")):
            ax.scatter([row["n_neurons"]], [row["test"]], marker=marker, s=size, facecolor="white", zorder=5,
                       edgecolor=colour, linewidth=1.5, label=f"{label} (test)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("neurons kept (log scale)")
    ax.set_ylabel(run.metric)
    ax.set_title("metric against neurons kept")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _fig_selection(run: _Run) -> Any:
    spin = run.table.get("spin") or {}
    kind, pooling = spin.get("kind"), spin.get("pooling")
    if run.head is None and run.probes is None:
        return None
    fig = _figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    width = _widths(run).get(kind) if kind is not None else None
    if run.head is not None:
        counts = {int(layer): len(idx) for layer, idx in run.head.selection.items()}
        all_layers = sorted(set(counts) | set(range(min(counts), max(counts) + 1))) if counts else []
        heights = [counts.get(layer, 0) for layer in all_layers]
        bars = ax1.bar(all_layers, heights, color="#1f77b4")
        for bar, h in zip(bars, heights, strict=True):
            share = f"\n{100 * h / width:.1f}%" if width else ""
            ax1.annotate(f"{h}{share}", (bar.get_x() + bar.get_width() / 2, h), textcoords="offset points",
                         xytext=(0, 2), ha="center", va="bottom", fontsize=7)  # fmt: skip
        ax1.set_xticks(all_layers)
        ax1.set_ylim(0, max(heights, default=1) * 1.3 + 1)
        total = sum(heights)
        of = f" of {width} per layer" if width else ""
        ax1.set_title(f"selected neurons per layer ({kind}/{pooling}, {total} in all{of})", fontsize=9)
    else:
        ax1.text(0.5, 0.5, "head not found", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("neurons kept")
    if run.probes is not None and kind is not None:
        scores = run.probes.scores.filter((pl.col("kind") == kind) & (pl.col("pooling") == pooling))
        for i, layer in enumerate(sorted(set(scores["layer"].to_list()))):
            s = np.sort(scores.filter(pl.col("layer") == layer)["saliency"].to_numpy())[::-1]
            total = s.sum()
            if total <= 0:
                continue
            share = np.cumsum(s) / total
            ax2.plot(np.arange(1, len(s) + 1), share, color=f"C{i % 10}", label=f"layer {layer}")
        if spin.get("rule") == "eta" and _finite(spin.get("value")):
            ax2.axhline(spin["value"], color="black", ls=":", lw=1, label=f"eta = {spin['value']:g}")
        ax2.set_xscale("log")
        ax2.set_xlabel("neurons, most salient first (log scale)")
        ax2.set_ylabel("cumulative saliency share")
        ax2.set_title(f"saliency distribution ({kind}/{pooling} probes)", fontsize=9)
        ax2.legend(fontsize=7, ncol=2)
        ax2.grid(alpha=0.3, which="both")
    else:
        ax2.text(0.5, 0.5, "probe run not found", ha="center", va="center", transform=ax2.transAxes)
    return fig


def _fig_early_exit(run: _Run) -> Any:
    spin = run.table.get("spin") or {}
    kind, pooling = spin.get("kind"), spin.get("pooling")
    rows = run.sweep.filter((pl.col("kind") == kind) & (pl.col("pooling") == pooling))
    if rows.height == 0:
        return None
    total = _num_layers(run)
    fig = _figure(9.5, 4.2)
    ax = fig.subplots()
    values = sorted(set(rows["value"].to_list()))
    for i, value in enumerate(values):
        part = rows.filter(pl.col("value") == value).sort("k")
        x = [max(layers) / total for layers in part["layers"].to_list()]
        chosen = _finite(spin.get("value")) and math.isclose(value, spin["value"])
        colour = f"C{i % 10}"
        ax.plot(x, part["dev_metric"].to_numpy(), "o-", color=colour, lw=2 if chosen else 1,
                alpha=1 if chosen else 0.6, label=f"{spin.get('rule', 'value')} {value:g} dev")  # fmt: skip
    if spin.get("layers"):
        sx = max(spin["layers"]) / total
        ax.scatter([sx], [spin["dev"]], marker="*", s=200, color="#1f77b4", edgecolor="black", zorder=5,
                   label="SPIN chosen (dev)")  # fmt: skip
        if _finite(spin.get("test")):
            ax.scatter([sx], [spin["test"]], marker="*", s=200, facecolor="white", edgecolor="#1f77b4", zorder=5,
                       linewidth=1.5, label="SPIN chosen (test)")  # fmt: skip
    base = run.table.get("base") or {}
    if _finite(base.get("dev")):
        ax.scatter([1.0], [base["dev"]], marker="D", s=60, color="0.2", edgecolor="black", zorder=5,
                   label="Base (dev)")  # fmt: skip
    ax.set_xlim(-0.03, 1.05)
    ax.set_xlabel(f"share of the model's {total} blocks computed (deepest layer used / {total})")
    ax.set_ylabel(run.metric)
    ax.set_title(f"early exit: the first K layers of {kind}/{pooling}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


_CAPTIONS = {
    "probes": "Probe metric per layer (L1 logistic regression on one layer's pooled neurons, C chosen on dev). "
    "Solid: dev, dashed: test.",
    "neurons": "Metric against the number of neurons the head reads. Blue line: for each rule value, SPIN's "
    "configuration with the best dev metric. Grey: every configuration and the best dev metric reachable with at "
    "most n neurons. Markers: the chosen head, the random control, Base and the best single layer (filled: dev, "
    "hollow: test; test is read once, for these only).",
    "selection": "Left: neurons the chosen head keeps per layer (count and share of the layer's width). Right: "
    "cumulative share of the probe's saliency held by the most salient neurons of each layer; the selection rule "
    "keeps the shortest prefix reaching eta.",
    "early_exit": "Early exit: using the first K layers only, the model runs up to the deepest of them. x is the "
    "share of the model's blocks that must run; each line is one rule value (dev); the star is the chosen head "
    "(filled: dev, hollow: its test score, the only one read).",
}
_TITLES = {
    "probes": "(a) Probes per layer",
    "neurons": "(b) Metric against neurons kept",
    "selection": "(c) Selected neurons and saliency",
    "early_exit": "(d) Early exit",
}


# ---- commands ---------------------------------------------------------------------------------------------------


def _commands(run: _Run, given: list[str] | None) -> list[tuple[str, str]]:
    """(where from, command line): the store's, the probe run's and the sweep's command.txt, then `given`."""
    found: list[tuple[str, str]] = []
    for stage, folder in (("extract", run.store_dir), ("probe", run.probes_dir), ("sweep", run.sweep_dir)):
        if folder is None:
            continue
        path = folder / COMMAND_FILE
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                continue
            found += [(f"{stage} ({path})", line) for line in text.splitlines() if line.strip()]
    found += [("given", c) for c in (given or []) if c and c.strip()]
    return found


# ---- HTML -------------------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, list):
        return _compact_layers(v) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    return str(v)


def _compact_layers(layers: list[int]) -> str:
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(map(str, layers))


def _table_html(run: _Run) -> str:
    names = (("base", "Base"), ("best_single_layer", "Best single layer"), ("spin", "SPIN"),
             ("random_control", "Random control"))  # fmt: skip
    head = (
        f"<tr><th></th><th>dev {run.metric}</th><th>test {run.metric}</th><th>neurons</th><th>share</th>"
        "<th>details</th></tr>"
    )
    body = []
    for key, label in names:
        row = run.table.get(key)
        if not row:
            continue
        details = ", ".join(
            f"{k} {_fmt(row[k])}" for k in ("kind", "pooling", "layer", "rule", "value", "layers", "C") if k in row
        )
        share = f"{100 * row['share']:.2f}%" if _finite(row.get("share")) else "–"
        dev = _fmt(row.get("dev"))
        expected = (run.table.get("chosen_by") or {}).get("expected") if key == "spin" else None
        if _finite(expected):
            dev += f" (expected {_fmt(expected)})"
        body.append(
            f"<tr><th>{label}</th><td>{dev}</td><td>{_fmt(row.get('test'))}</td>"
            f"<td>{_fmt(row.get('n_neurons'))}</td><td>{share}</td><td>{html.escape(details)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>" + _chosen_by_html(run)


def _chosen_by_html(run: _Run) -> str:
    """How SPIN was chosen: strategy, dev score, the score to expect on new data and how many heads were compared
    (a sweep's "chosen_by"; nothing for sweeps written before it existed)."""
    chosen = run.table.get("chosen_by")
    if not isinstance(chosen, dict):
        return ""
    strategy = str(chosen.get("strategy"))
    method = str(chosen.get("expected_method"))
    words = METHOD_WORDS.get(method, method)
    se = chosen.get("expected_se")
    plus = f" ± {_pct(se)}" if _finite(se) else ""
    rule = STRATEGY_WORDS.get(strategy, "")
    return (
        f"<p id='chosen-by'><b>SPIN chosen by {html.escape(strategy)}</b> ({html.escape(rule)}) "
        f"among {_fmt(chosen.get('n_compared'))} heads ({_fmt(chosen.get('n_configurations'))} configurations at "
        f"every C; {_fmt(chosen.get('n_distinct'))} with distinct dev predictions): "
        f"<b>dev {_pct(chosen.get('chosen_dev'))} | expected {_pct(chosen.get('expected'))}{plus}</b> on new data "
        f"({html.escape(words)}). {_bias_words(chosen)} Test was read once, for the chosen head.</p>"
    )


def _bias_words(chosen: dict[str, Any]) -> str:
    """Why the expected score differs from the dev score, or (cv) why it does not."""
    if chosen.get("strategy") == CV:
        return (f"Chosen on {_fmt(chosen.get('n_resamples'))} folds of the training rows (cross-validated "
                f"{_pct(chosen.get('cv_score'))}), not on dev, so its dev score is an honest estimate.")  # fmt: skip
    return (f"The dev score of a head picked among many overstates what new data will give; here by "
            f"{_pct(chosen.get('optimism'))} points.")  # fmt: skip


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if _finite(v) else "–"


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222;
padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f4f4f4}figure{margin:8px 0 20px 0}figcaption{font-size:.85em;color:#555;max-width:1000px}
figure img{display:block;max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;font-size:.8em;overflow-x:auto;white-space:pre-wrap}
.note{color:#8a5300}.muted{color:#666;font-size:.85em}
"""


def _page(
    run: _Run, figures: dict[str, tuple[Path, bytes, tuple[int, int]] | None], commands: list[tuple[str, str]]
) -> str:
    esc = html.escape
    s = run.summary
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>spin-cache report: {esc(run.sweep_dir.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>spin-cache report — {esc(str(run.sweep_dir))}</h1>",
        f"<p class='muted'>store {esc(str(s.get('store')))} (fingerprint {esc(str(s.get('store_fingerprint'))[:16])}),"
        f" probes {esc(str(s.get('probes')))}, spin-cache {esc(str(s.get('spin_cache_version')))}</p>",
    ]
    if run.notes:
        parts.append("<ul>" + "".join(f"<li class='note'>{esc(n)}</li>" for n in run.notes) + "</ul>")
    parts += ["<h2>Results</h2>", _table_html(run)]
    parts.append(f"<p class='muted'>sweep settings: {esc(json.dumps(s.get('settings', {}), sort_keys=True))}</p>")
    for name in FIGURES:
        parts.append(f"<h2>{_TITLES[name]}</h2>")
        fig = figures.get(name)
        if fig is None:
            parts.append("<p class='note'>not drawn: its inputs are missing (see the notes above)</p>")
            continue
        path, png, (w, h) = fig
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure><img id='fig-{name}' alt='{esc(_TITLES[name])}' width='{w}' height='{h}' "
            f"src='data:image/png;base64,{data}'><figcaption>{esc(_CAPTIONS[name])} "
            f"(<code>{esc(path.name)}</code>)</figcaption></figure>"
        )
    if run.head is not None:
        sel = ", ".join(f"{layer}: {len(idx)}" for layer, idx in sorted(run.head.selection.items()))
        parts.append(f"<p class='muted'>chosen head: {run.head.n_neurons} neurons (layer: count) {esc(sel)}</p>")
    parts.append("<h2>(e) Provenance</h2><h3>Command lines</h3>")
    if commands:
        parts.append("<pre>" + "\n".join(f"# {esc(where)}\n{esc(cmd)}" for where, cmd in commands) + "</pre>")
    else:
        parts.append("<p class='note'>no command lines recorded (no command.txt beside the runs)</p>")
    parts.append("<h3>Store manifest</h3>")
    if run.manifest is not None:
        parts.append(f"<pre>{esc(json.dumps(run.manifest, indent=2, sort_keys=True, default=str))}</pre>")
    else:
        parts.append("<p class='note'>the store could not be opened; its manifest is left out</p>")
    parts.append("<h3>Sweep summary</h3>")
    parts.append(f"<pre>{esc(json.dumps(s, indent=2, sort_keys=True, default=str))}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


_PLACEHOLDER = (
    "<!doctype html><meta charset='utf-8'><title>spin-cache report</title>"
    "<p>This report is being written; if it stays like this, rerun <code>spin-cache report</code>.</p>\n"
)


def write_report(
    sweep_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, commands: list[str] | None = None
) -> Path:
    """Write OUT/report.html (self-contained) and the PNG figures beside it; return the HTML's path.

    `commands`: command lines to list besides those recorded in command.txt of the store, probe and sweep
    directories. Raises InputError for a missing or invalid sweep directory, and for an `out_dir` that is a
    file or a directory holding anything but an earlier report (spin-cache writes nothing into a folder it did not
    make); report.html is written first (a placeholder), so a report stopped midway can be rerun into.
    """
    from .outputs import prepare_output_dir

    run = _load(Path(sweep_dir))
    try:
        out = prepare_output_dir(out_dir, "report")
        target = out / "report.html"
        if not target.exists():  # the marker first: a report stopped midway is still recognised as a report
            target.write_text(_PLACEHOLDER, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--out {out_dir}: cannot write the report directory ({exc.strerror})") from None
    drawers = {"probes": _fig_probes, "neurons": _fig_neurons, "selection": _fig_selection,
               "early_exit": _fig_early_exit}  # fmt: skip
    figures: dict[str, tuple[Path, bytes, tuple[int, int]] | None] = {}
    for name in FIGURES:
        fig = drawers[name](run)
        if fig is None:
            figures[name] = None
            continue
        path = out / f"{name}.png"
        fig.savefig(path, format="png", dpi=100, facecolor="white")
        png = path.read_bytes()
        figures[name] = (path, png, _png_size(png))
    page = _page(run, figures, _commands(run, commands))
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target
