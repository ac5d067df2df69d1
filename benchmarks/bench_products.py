"""The solver's product kernel (spin_cache/fit/products.py) against torch's products, side by side in one process.

    python benchmarks/bench_products.py                    # products, then C paths, one thread
    python benchmarks/bench_products.py --threads 2 --rows 8544

1. Products: ``W X^T + b`` and ``R X`` for 1-8 outputs on designs of SST's training rows and head/probe widths,
   the kernel and torch (MKL) alternated, best of `--repeats` means; plus each one's error against float64.
2. C paths: `fit_c_path` over the head grid (L2) and the probe grid (L1) on a synthetic standardised design with
   2 and 5 classes, with the kernel and with SPIN_CACHE_SOLVER_KERNEL=0, alternated; time ratio, iterations and the
   chosen C of each (the same iterations show the solver took the same path).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def _best_mean(fn, repeats: int, inner: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best * 1e3


def products_table(rows: int, widths: list[int], outputs: list[int], repeats: int) -> list[dict]:
    from spin_cache.fit import products

    assert products.kernel() is not None, "the kernel could not be built here"
    out = []
    for width in widths:
        x = torch.randn(rows, width)
        for k in outputs:
            w, b, r = torch.randn(k, width), torch.randn(k), torch.randn(k, rows)
            exact_z = w.double() @ x.double().T + b.double()[:, None]
            exact_g = r.double() @ x.double()
            kernel_ok = products._takes(x, w)

            def torch_fwd(w=w, b=b, x=x):
                return torch.mv(x, w[0]).unsqueeze(0) + b[0] if w.shape[0] == 1 else torch.addmm(b[:, None], w, x.T)

            def torch_bwd(r=r, x=x):
                return (r[0] @ x).unsqueeze(0) if r.shape[0] == 1 else r @ x

            row = {"rows": rows, "width": width, "outputs": k, "kernel_takes": kernel_ok,
                   "torch_fwd_ms": _best_mean(torch_fwd, repeats),
                   "torch_bwd_ms": _best_mean(torch_bwd, repeats)}  # fmt: skip
            if kernel_ok:
                module = products.kernel()
                row["kernel_fwd_ms"] = _best_mean(lambda m=module, x=x, w=w, b=b: m.logits(x, w, b), repeats)
                row["kernel_bwd_ms"] = _best_mean(lambda m=module, r=r, x=x: m.residual_products(r, x), repeats)
                row["speedup"] = (row["torch_fwd_ms"] + row["torch_bwd_ms"]) / (
                    row["kernel_fwd_ms"] + row["kernel_bwd_ms"]
                )
                row["kernel_rel_err"] = max(
                    float((module.logits(x, w, b).double() - exact_z).abs().max() / exact_z.abs().max()),
                    float((module.residual_products(r, x).double() - exact_g).abs().max() / exact_g.abs().max()),
                )
            row["torch_rel_err"] = max(
                float((torch_fwd().double() - exact_z).abs().max() / exact_z.abs().max()),
                float((torch_bwd().double() - exact_g).abs().max() / exact_g.abs().max()),
            )
            print(
                json.dumps({k2: float(f"{v:.4g}") if isinstance(v, float) else v for k2, v in row.items()}), flush=True
            )
            out.append(row)
    return out


def c_paths(rows: int, width: int, repeats: int) -> list[dict]:
    from spin_cache.fit import products
    from spin_cache.fit.solver import HEAD_C_GRID, PROBE_C_GRID, Design, fit_c_path

    gen = np.random.default_rng(0)
    # correlated columns, as neurons are: a low-rank part plus noise
    x = (gen.standard_normal((rows, 64)) @ gen.standard_normal((64, width)) * 0.3
         + gen.standard_normal((rows, width))).astype(np.float32)  # fmt: skip
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    out = []
    for n_classes in (2, 5):
        y = (x[:, :n_classes] * 0.3 + gen.standard_normal((rows, n_classes))).argmax(axis=1)
        cut = rows * 4 // 5
        train, dev = Design.of(x[:cut], y[:cut]), Design.of(x[cut:], y[cut:])
        for penalty, grid in (("l2", HEAD_C_GRID), ("l1", PROBE_C_GRID)):
            seconds: dict[str, float] = {"kernel": float("inf"), "torch": float("inf")}
            paths = {}
            for _ in range(repeats):
                for name in ("kernel", "torch"):
                    os.environ[products.ENVIRONMENT_SWITCH] = "1" if name == "kernel" else "0"
                    products.kernel.cache_clear()
                    t = time.perf_counter()
                    paths[name] = fit_c_path(train, dev, n_classes, grid, penalty=penalty)
                    seconds[name] = min(seconds[name], time.perf_counter() - t)
            row = {"classes": n_classes, "penalty": penalty, "rows": rows, "width": width,
                   "kernel_s": round(seconds["kernel"], 2), "torch_s": round(seconds["torch"], 2),
                   "speedup": round(seconds["torch"] / seconds["kernel"], 2),
                   "iterations": [sum(h["iterations"] for h in paths[n].history) for n in ("kernel", "torch")],
                   "C": [paths[n].c for n in ("kernel", "torch")]}  # fmt: skip
            print(json.dumps(row), flush=True)
            out.append(row)
    os.environ.pop(products.ENVIRONMENT_SWITCH, None)
    products.kernel.cache_clear()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=8544, help="SST-2/SST-5's training rows")
    ap.add_argument("--widths", default="130,384,1536,3072")
    ap.add_argument("--outputs", default="1,2,3,5,6,8")
    ap.add_argument("--path-width", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-paths", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps({"threads": a.threads, "load": os.getloadavg()[0], "torch": torch.__version__}), flush=True)
    products_table(a.rows, [int(v) for v in a.widths.split(",")], [int(v) for v in a.outputs.split(",")], a.repeats)
    if not a.skip_paths:
        c_paths(a.rows, a.path_width, max(1, a.repeats - 1))


if __name__ == "__main__":
    main()
