"""The model-free loop at real sizes (issue 20): wall time and peak RSS of the default probe and sweep, and the
solver's iteration counts, on real and synthetic stores; optionally spin-cache's solver side by side with
scikit-learn, skglm and celer (where installed) on identical standardised matrices.

    python benchmarks/bench_loop.py --cases sst2 sst5 syn2 syn6 syn20 syn77 syn1b [--sklearn] [--out DIR]

Cases: `sst2`/`sst5` are the stores under stores/ (MiniLM, hidden 384, FFN 1,536, 6 layers); `synK` a synthetic store
of K classes (hidden and FFN both `--width` wide, default 384; mean pooling; 6 layers; 8,544 rows; planted neurons
in layers 2 and 4); `syn1b` a binary synthetic store of the 1B model's shape (hidden 2,048, FFN 5,632, 22 layers,
8,192 rows, 8 planted neurons in layers 6 and 14; ~2.8 GB). Each case runs in its own process (peak RSS per case),
one thread, scheduler sync, with the pipeline's default probe and sweep settings, except that the sweep chooses by
arg-max on dev (`--select`; the default cross-validated choice fits every head again in 5 folds). `--parallel` runs
the cases at once (for a ratio under the same load).
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


#: The 1B model's shape (TinyLlama-1.1B: hidden 2,048, FFN 5,632, 22 layers), at 8,192 rows, two classes.
ONE_B_ROWS, ONE_B_LAYERS, ONE_B_HIDDEN, ONE_B_FFN = 8192, 22, 2048, 5632


def _store(case: str, work: Path, width: int) -> str:
    if case in ("sst2", "sst5"):
        return str(REPO / "stores" / case)
    from spin_cache.synth import make_synthetic_store

    if case == "syn1b":
        path = work / "store-syn1b"
        store = make_synthetic_store(path, n_rows=ONE_B_ROWS, n_layers=ONE_B_LAYERS, width=ONE_B_HIDDEN,
                                     ffn_width=ONE_B_FFN, kinds=("hidden", "ffn"), poolings=("mean",), n_classes=2,
                                     informative={6: 8, 14: 8}, signal=2.0, progress=True)  # fmt: skip
        return store.url
    k = int(case[3:])
    path = work / f"store-{case}-w{width}"
    store = make_synthetic_store(path, n_rows=8544, n_layers=6, width=width, kinds=("hidden", "ffn"),
                                 poolings=("mean",), n_classes=k, informative={2: max(4, k // 4), 4: max(4, k // 4)},
                                 signal=2.0, overwrite=True)  # fmt: skip
    return store.url


def _one_thread() -> None:
    """One torch/BLAS thread per case, also inside the loop's tasks (the sync scheduler gives each task as many
    threads as the machine has cores: on this loaded 2-core machine two OpenMP threads made a small fit up to 100x
    slower than one, which would swamp the solver's own cost)."""
    import torch

    import spin_cache.loop.parallel as parallel

    torch.set_num_threads(1)
    parallel.default_workers = lambda: 1


def run_case(case: str, work: Path, width: int, select: str = "argmax") -> dict:
    from spin_cache.loop.probe import run_probes
    from spin_cache.loop.sweep import SweepSettings, run_sweep

    _one_thread()
    url = _store(case, work, width)
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    run = run_probes(url, work / f"probe-{case}", scheduler="sync", progress=False)
    probe_s = time.perf_counter() - t
    t = time.perf_counter()
    res = run_sweep(url, run.path, work / f"sweep-{case}", SweepSettings(metric=run.settings.metric, select=select),
                    scheduler="sync", progress=False)  # fmt: skip
    sweep_s = time.perf_counter() - t
    spin = res.table["spin"]
    return {
        "case": case,
        "probe_s": round(probe_s, 1),
        "sweep_s": round(sweep_s, 1),
        "total_s": round(probe_s + sweep_s, 1),
        "probes": run.probes.height,
        "probe_iterations": int(run.probes["iterations"].sum()),
        "configs": res.sweep.height,
        "spin": {k: spin[k] for k in ("dev", "test", "kind", "pooling", "value", "layers", "C")},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _library_paths(pen: str, k: int, xs: dict, ys: dict, grid) -> dict:
    """The same C path (ascending, warm-started where the library can, C chosen on dev) with every library that
    fits this problem: scikit-learn (lbfgs for L2; liblinear for binary L1, saga multinomial), and for binary L1
    skglm (ProxNewton with working sets; alpha = 1 / (C n)) and celer (working sets; no intercept) where installed.
    {name: (seconds, best dev, its C)}."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore")
    n = len(ys["train"])
    makers = {}
    sk_solver = "lbfgs" if pen == "l2" else ("liblinear" if k == 2 else "saga")
    makers[f"scikit-learn {sk_solver}"] = lambda c, est: (est or LogisticRegression(
        l1_ratio=0.0 if pen == "l2" else 1.0, solver=sk_solver, max_iter=1000, warm_start=sk_solver != "liblinear",
        tol=1e-4)).set_params(C=c)  # fmt: skip
    if pen == "l1" and k == 2:
        try:
            from skglm import SparseLogisticRegression

            makers["skglm"] = lambda c, est: (est or SparseLogisticRegression(warm_start=True, tol=1e-4)).set_params(
                alpha=1.0 / (c * n))  # fmt: skip
        except ImportError:
            pass
        try:
            from celer import LogisticRegression as CelerLogistic

            makers["celer"] = lambda c, est: (est or CelerLogistic(penalty="l1", tol=1e-4, warm_start=True)).set_params(
                C=c)  # fmt: skip
        except ImportError:
            pass
    out = {}
    for name, make in makers.items():
        t = time.perf_counter()
        best, est = (-1.0, None), None
        for c in sorted(grid):
            est = make(c, est).fit(xs["train"], ys["train"])
            dev = est.score(xs["dev"], ys["dev"])
            if dev > best[0]:
                best = (dev, c)
        out[name] = (time.perf_counter() - t, best[0], best[1])
    return out


def side_by_side(case: str, work: Path, width: int, problems: list[str]) -> dict:
    """One head problem (ffn/mean layers 1-2, all columns) and one probe (ffn/mean layer 3), standardised once:
    spin-cache's C path against the libraries' (`_library_paths`), the same C grid, C chosen on dev; wall-time
    ratio and dev accuracy. `problems`: head_l2, probe_l1 or both."""
    import numpy as np
    import torch

    from spin_cache.fit.solver import HEAD_C_GRID, PROBE_C_GRID, Design, Standardizer, fit_c_path
    from spin_cache.store.activation_store import ActivationStore

    torch.set_num_threads(1)
    st = ActivationStore.open(_store(case, work, width))
    split = st.examples["split"].to_numpy()
    y = st.examples["label"].to_numpy().astype(np.int64)
    k = len(st.label_names)
    res = {}
    for name, layers, pen, grid in (("head_l2", [1, 2], "l2", HEAD_C_GRID), ("probe_l1", [3], "l1", PROBE_C_GRID)):
        if name not in problems:
            continue
        x = np.concatenate([st.read("ffn", "mean", layer) for layer in layers], axis=1)
        sc = Standardizer.fit(x[split == "train"])
        xs = {s: sc.transform(x[split == s]) for s in ("train", "dev")}
        ys = {s: y[split == s] for s in ("train", "dev")}
        t = time.perf_counter()
        ours = fit_c_path(Design.of(xs["train"], ys["train"]), Design.of(xs["dev"], ys["dev"]), k, grid, penalty=pen)
        ours_s = time.perf_counter() - t
        res[name] = {"d": xs["train"].shape[1], "ours_s": round(ours_s, 2), "ours_dev": ours.dev, "ours_C": ours.c}
        for lib, (secs, dev, c) in _library_paths(pen, k, xs, ys, grid).items():
            res[name][lib] = {"s": round(secs, 2), "dev": dev, "C": c, "over_ours": round(secs / ours_s, 2)}
    return {"case": case, "side_by_side": res, "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["sst2", "sst5", "syn2", "syn6", "syn20", "syn77"])
    ap.add_argument("--sklearn", action="store_true", help="side by side with scikit-learn instead of the loop")
    ap.add_argument(
        "--problems",
        nargs="+",
        default=["head_l2", "probe_l1"],
        choices=["head_l2", "probe_l1"],
        help="with --sklearn: which problems (the 5-class L1 probe's saga takes over 15 minutes)",
    )
    ap.add_argument("--parallel", action="store_true", help="run the cases at once, one process each")
    ap.add_argument("--width", type=int, default=384, help="synthetic stores' width (both kinds)")
    ap.add_argument("--out", default="/tmp/bench_loop")
    ap.add_argument("--select", default="argmax", help="the sweep's --select (default argmax, the figures in "
                    "BENCHMARKS.md; the product's default, cv, adds 5 folds: about 5x the sweep)")  # fmt: skip
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        result = (side_by_side(a.one, work, a.width, a.problems) if a.sklearn
                  else run_case(a.one, work, a.width, a.select))  # fmt: skip
        print(json.dumps(result, default=str))
        return
    procs = []
    for case in a.cases:
        cmd = [sys.executable, __file__, "--one", case, "--out", str(work), "--width", str(a.width)]
        cmd += ["--select", a.select]
        cmd += ["--sklearn", "--problems", *a.problems] if a.sklearn else []
        procs.append((case, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if not a.parallel:
            _report(*procs.pop())
    for case, proc in procs:
        _report(case, proc)


def _report(case: str, proc: subprocess.Popen) -> None:
    out, err = proc.communicate()
    lines = out.strip().splitlines()
    print(lines[-1] if proc.returncode == 0 and lines else json.dumps({"case": case, "error": err.strip()[-500:]}),
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
