"""The model-free loop at real sizes (issue 20): wall time and peak RSS of the default probe and sweep, fits per
sweep and seconds per fit, the pruned search against the grid, and spin-cache's solvers side by side with
scikit-learn on identical standardised matrices.

    python benchmarks/bench_loop.py --cases sst2 sst5 syn2 syn6 syn20 syn77 [--syn1b] [--sklearn] [--out DIR]

Cases: `sst2`/`sst5` are the stores under stores/ (MiniLM); `synK` a synthetic store at MiniLM width (hidden 384,
FFN 1,536, 6 layers, 8,544 rows, K classes, planted neurons per class); `syn1b` one at the 1B model's width
(hidden 2,048, FFN 5,632, 22 layers, 8,192 rows). Each case runs in its own process (peak RSS per case), one
thread, scheduler sync. The sweep runs twice: search "grid" (the reference) and "patience" (reported: same choice?).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

REPO = Path(__file__).resolve().parent.parent
WIDTHS = {"minilm": dict(n_layers=6, width=384, n_rows=8544), "1b": dict(n_layers=22, width=2048, n_rows=8192)}


def _store(case: str, work: Path) -> str:
    if case in ("sst2", "sst5"):
        return str(REPO / "stores" / case)
    from spin_cache.synth import make_synthetic_store

    k = 2 if case == "syn1b" else int(case[3:])
    shape = WIDTHS["1b" if case == "syn1b" else "minilm"]
    path = work / f"store-{case}"
    # hidden width = `width`; FFN width is 4x (MiniLM 1,536; the 1B model's 5,632 is 2.75x: close enough to time)
    store = make_synthetic_store(path, n_rows=shape["n_rows"], n_layers=shape["n_layers"], width=shape["width"],
                                 kinds=("hidden", "ffn"), poolings=("mean",), n_classes=k,
                                 informative={2: max(4, k // 4), 4: max(4, k // 4)}, overwrite=True)  # fmt: skip
    return store.url


def run_case(case: str, work: Path, device: str) -> dict:
    import torch

    from spin_cache.loop.probe import run_probes
    from spin_cache.loop.sweep import SweepSettings, run_sweep

    torch.set_num_threads(1)
    url = _store(case, work)
    t = time.perf_counter()
    run = run_probes(url, work / f"probe-{case}", scheduler="sync", progress=False, device=device)
    probe_s = time.perf_counter() - t
    out = {"case": case, "probe_s": probe_s, "probes": run.probes.height,
           "probe_iterations": int(run.probes["iterations"].sum())}  # fmt: skip
    for search in ("grid", "patience"):
        settings = SweepSettings(metric=run.settings.metric, search=search)
        t = time.perf_counter()
        res = run_sweep(url, run.path, work / f"sweep-{case}-{search}", settings, scheduler="sync", progress=False,
                        device=device)  # fmt: skip
        s = time.perf_counter() - t
        fits = int(res.sweep["fits"].sum())
        spin = res.table["spin"]
        base = res.table["base"] and {k: res.table["base"][k] for k in ("dev", "test", "C")}
        out[search] = {"sweep_s": s, "configs": res.sweep.height, "fits": fits, "s_per_fit": s / max(fits, 1),
                       "spin": {k: spin[k] for k in ("dev", "test", "kind", "pooling", "value", "layers", "C")},
                       "base": base}  # fmt: skip
    g, p = out["grid"]["spin"], out["patience"]["spin"]
    out["patience_same_choice"] = all(g[k] == p[k] for k in ("kind", "pooling", "value", "layers", "C"))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def side_by_side(case: str, work: Path) -> dict:
    """One head problem (ffn/mean layers 1-2, all columns) and one probe (ffn/mean layer 3), standardised once:
    spin-cache's C path against scikit-learn's (lbfgs, warm-started, for L2; liblinear for binary L1, saga
    multinomial otherwise), the same C grid, C chosen on dev; time ratio and dev accuracy."""
    import warnings

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from spin_cache.fit.solver import HEAD_C_GRID, PROBE_C_GRID, Design, Standardizer, fit_c_path
    from spin_cache.store.activation_store import ActivationStore

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    st = ActivationStore.open(_store(case, work))
    split = st.examples["split"].to_numpy()
    y = st.examples["label"].to_numpy().astype(np.int64)
    k = len(st.label_names)
    res = {}
    for name, layers, pen, grid in (("head_l2", [1, 2], "l2", HEAD_C_GRID), ("probe_l1", [3], "l1", PROBE_C_GRID)):
        x = np.concatenate([st.read("ffn", "mean", layer) for layer in layers], axis=1)
        sc = Standardizer.fit(x[split == "train"])
        xs = {s: sc.transform(x[split == s]) for s in ("train", "dev")}
        ys = {s: y[split == s] for s in ("train", "dev")}
        t = time.perf_counter()
        ours = fit_c_path(Design.of(xs["train"], ys["train"]), Design.of(xs["dev"], ys["dev"]), k, grid, penalty=pen)
        ours_s = time.perf_counter() - t
        solver = "lbfgs" if pen == "l2" else ("liblinear" if k == 2 else "saga")
        t = time.perf_counter()
        best = (-1.0, None)
        clf = LogisticRegression(l1_ratio=0.0 if pen == "l2" else 1.0, solver=solver, max_iter=1000,
                                 warm_start=solver != "liblinear", tol=1e-4)  # fmt: skip
        for c in sorted(grid):
            clf.set_params(C=c).fit(xs["train"], ys["train"])
            dev = clf.score(xs["dev"], ys["dev"])
            if dev > best[0]:
                best = (dev, c)
        sk_s = time.perf_counter() - t
        res[name] = {"d": xs["train"].shape[1], "ours_s": ours_s, "ours_dev": ours.dev, "ours_C": ours.c,
                     "sklearn": solver, "sklearn_s": sk_s, "sklearn_dev": best[0], "sklearn_C": best[1],
                     "speedup": sk_s / ours_s}  # fmt: skip
    return {"case": case, "side_by_side": res}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["sst2", "sst5", "syn2", "syn6", "syn20", "syn77"])
    ap.add_argument("--syn1b", action="store_true", help="also the 1B-width synthetic store (slow)")
    ap.add_argument("--sklearn", action="store_true", help="side by side with scikit-learn instead of the loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="/tmp/bench_loop")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        fn = side_by_side(a.one, work) if a.sklearn else run_case(a.one, work, a.device)
        print(json.dumps(fn, default=str))
        return
    cases = a.cases + (["syn1b"] if a.syn1b else [])
    for case in cases:
        cmd = [sys.executable, __file__, "--one", case, "--out", str(work), "--device", a.device]
        proc = subprocess.run(cmd + (["--sklearn"] if a.sklearn else []), capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else json.dumps(
            {"case": case, "error": proc.stderr.strip().splitlines()[-1:]})  # fmt: skip
        print(line, flush=True)


if __name__ == "__main__":
    main()
