"""Probe speed: the SPIN paper's saga recipe against `spin-cache probe`, on the same store, side by side.

    python benchmarks/bench_probe_speed.py [--store PATH] [--keys hidden:mean:6,ffn:mean:6 | --all]
                                           [--limit N] [--out benchmarks/results/probe_speed.md]

The store (MiniLM over the bundled SST-2, all kinds and poolings) is extracted once to --store and reused.
Per (kind, pooling, layer) in --keys (default: a subset, since the paper recipe costs minutes per FFN layer on a
small CPU; --all for every layer):
  paper   benchmarks/paper_recipe.py: sklearn saga, L1 (l1_ratio=1), 16 x fit(max_iter=4) per C in the paper grid
  spin    spin_cache.loop.probe.probe_layer with the default ProbeSettings, capped to one torch/BLAS thread
Then the whole store with run_probes, default scheduler and `sync`, for the totals.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def ensure_store(path: str, limit: int | None) -> str:
    from spin_cache.data.loading import load_dataset
    from spin_cache.extract.run import run_extraction
    from spin_cache.store.activation_store import ActivationStore

    if ActivationStore.exists(path) and ActivationStore.open(path).is_complete:
        return path
    ds = load_dataset("sst2")
    if limit:
        ds = ds.subset(limit)
    run_extraction(data=ds, out=path, kinds=["hidden", "ffn"], poolings=["first", "mean", "max"], progress=False)
    return path


def main() -> None:
    import numpy as np
    import paper_recipe as pr

    from spin_cache.loop.parallel import call_limited
    from spin_cache.loop.probe import ProbeSettings, probe_layer, run_probes
    from spin_cache.store.activation_store import ActivationStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "spin-probe-speed-store"))
    ap.add_argument("--keys", default="hidden:mean:6,ffn:mean:6", help="kind:pooling:layer,... for the recipe")
    ap.add_argument("--all", action="store_true", help="every (kind, pooling, layer) of the store")
    ap.add_argument("--limit", type=int, default=None, help="rows per split when the store is extracted")
    ap.add_argument("--skip-totals", action="store_true", help="skip the whole-store run_probes timings")
    ap.add_argument("--out", default=str(HERE / "results" / "probe_speed.md"))
    args = ap.parse_args()

    store_path = ensure_store(args.store, args.limit)
    store = ActivationStore.open(store_path)
    if args.all:
        keys = store.layout.array_keys()
    else:
        keys = [(k, p, int(layer)) for k, p, layer in (s.split(":") for s in args.keys.split(","))]
    settings = ProbeSettings()
    rows = []
    for kind, pooling, layer in keys:
        t0 = time.perf_counter()
        paper = pr.probe_store(store_path, [(kind, pooling, layer)])[0]
        t_paper = time.perf_counter() - t0
        t0 = time.perf_counter()
        spin = call_limited(probe_layer, 1, store_path, kind, pooling, layer, settings)  # one thread, like saga
        t_spin = time.perf_counter() - t0
        row = {
            "key": f"{kind}/{pooling}/{layer}",
            "paper_s": t_paper,
            "paper_C": paper["C"],
            "paper_dev": paper["dev_metric"],
            "spin_s": t_spin,
            "spin_C": spin["C"],
            "spin_dev": spin["dev_metric"],
        }
        rows.append(row)
        print(
            f"{row['key']:18s} paper {t_paper:7.1f}s dev {paper['dev_metric']:.4f} (C={paper['C']:g}) | "
            f"spin {t_spin:6.2f}s dev {spin['dev_metric']:.4f} (C={spin['C']:g}) | ratio {t_paper / t_spin:.1f}x",
            flush=True,
        )
    totals = {}
    if not args.skip_totals:
        for sched in ("processes", "sync"):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run = run_probes(store_path, Path(tmp) / "p", settings, scheduler=sched, progress=False)
                totals[sched] = (time.perf_counter() - t0, float(run.probes["dev_metric"].mean()), run.probes.height)
            print(f"run_probes whole store, scheduler={sched}: {totals[sched][0]:.1f}s, {totals[sched][2]} probes")

    paper_total = sum(r["paper_s"] for r in rows)
    spin_total = sum(r["spin_s"] for r in rows)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    vers = ", ".join(f"{p} {md.version(p)}" for p in ("spin-cache", "torch", "scikit-learn", "numpy", "zarr", "dask"))
    n_rows = store.examples.height
    lines = [
        "# Probe speed: the SPIN paper's recipe against `spin-cache probe`",
        "",
        f"Command: `python benchmarks/bench_probe_speed.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: nproc {os.cpu_count()}, {cpu}; date {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Versions: {vers}, Python {sys.version.split()[0]}.",
        f"Store: MiniLM over SST-2, {n_rows} rows ({'first ' + str(args.limit) + ' per split' if args.limit else 'all'}"
        f"), {len(store.layout.array_keys())} (kind, pooling, layer) arrays, float16 on disk.",
        "",
        "Paper recipe: `LogisticRegression(l1_ratio=1.0, solver='saga', warm_start=True, max_iter=4)` fitted 16 times "
        "per C in (0.1, 0.2, 1, 10, 100), features standardised on train, best dev accuracy kept. The paper wrote "
        "`penalty='elasticnet', l1_ratio=1`; scikit-learn 1.8+ deprecates `penalty`, and `l1_ratio=1` alone is the "
        "same pure-L1 model. spin-cache: `probe_layer` with default ProbeSettings (FISTA in float32 torch, C grid "
        f"{settings.c_grid}, warm-started path), capped to one thread in this process, like the single-threaded saga.",
        "",
        "| layer | paper s | paper C | paper dev | spin-cache s | spin-cache C | spin-cache dev | time ratio "
        "| dev diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['key']} | {r['paper_s']:.1f} | {r['paper_C']:g} | {r['paper_dev']:.4f} | {r['spin_s']:.2f} | "
            f"{r['spin_C']:g} | {r['spin_dev']:.4f} | {r['paper_s'] / r['spin_s']:.1f}x | "
            f"{r['spin_dev'] - r['paper_dev']:+.4f} |"
        )
    lines += [
        f"| **total ({len(rows)} layers)** | {paper_total:.1f} |  | {np.mean([r['paper_dev'] for r in rows]):.4f} | "
        f"{spin_total:.2f} |  | {np.mean([r['spin_dev'] for r in rows]):.4f} | {paper_total / spin_total:.1f}x |  |",
        "",
    ]
    if totals:
        lines += ["Whole store with `run_probes` (every layer and pooling, reading from the store):", ""]
        for sched, (secs, dev, n) in totals.items():
            lines.append(f"- scheduler `{sched}`: {secs:.1f} s for {n} probes, mean dev accuracy {dev:.4f}")
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
