"""Scale: peak memory of probe and sweep on synthetic stores of 1x, 2x and 4x a size; probe wall time with 1 and
2 workers (and threads against processes); bytes a sweep reads against the stored bytes of the columns it uses.

    python benchmarks/bench_scale.py [--rows 8000] [--width 512] [--layers 4] [--budget 16M]

Each command runs as a child process; its peak memory is the largest sum of RSS over the process and all its
descendants (Dask workers included), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of a command and its descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return time.perf_counter() - t0, peak


def spin(*args: str) -> list[str]:
    return [sys.executable, "-m", "spin_cache.cli", *args, "--quiet"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8000, help="rows of the 1x store")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--budget", default="16M", help="--memory-budget for probe and sweep (below one layer: streamed)")
    args = ap.parse_args()
    results: dict = {"rss": [], "workers": [], "bytes": None}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 2, 4):
            store = os.path.join(tmp, f"synth{scale}")
            planted = f"{args.layers}:4,{max(1, args.layers // 2)}:4"
            synth = spin("synth", "--out", store, "--rows", str(args.rows * scale), "--width", str(args.width),
                         "--layers", str(args.layers), "--kinds", "ffn", "--informative", planted)  # fmt: skip
            subprocess.run(synth, check=True)
            probes, sweep = os.path.join(tmp, f"p{scale}"), os.path.join(tmp, f"s{scale}")
            tp, rp = run_measured(spin("probe", store, "--out", probes, "--C", "0.05,0.2",
                                       "--memory-budget", args.budget, "--workers", "2"))  # fmt: skip
            ts, rs = run_measured(spin("sweep", store, "--probes", probes, "--out", sweep, "--workers", "2",
                                       "--memory-budget", args.budget, "--C", "0.01,0.1"))  # fmt: skip
            size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(store) for f in fs)
            results["rss"].append({"scale": scale, "rows": args.rows * scale, "store_bytes": size, "probe_s": tp,
                                   "probe_peak_rss": rp, "sweep_s": ts, "sweep_peak_rss": rs})  # fmt: skip
            if scale == 1:
                with open(os.path.join(sweep, "summary.json")) as f:
                    summary = json.load(f)["table"]
                results["bytes"] = {"read": summary["bytes_read"], "columns": summary["bytes_of_columns"]}
        store = os.path.join(tmp, "synth1")
        for scheduler, workers in (("sync", 1), ("processes", 1), ("processes", 2), ("threads", 2)):
            out = os.path.join(tmp, f"w-{scheduler}-{workers}")
            t, r = run_measured(spin("probe", store, "--out", out, "--C", "0.05,0.2", "--scheduler", scheduler,
                                     "--workers", str(workers)))  # fmt: skip
            results["workers"].append({"scheduler": scheduler, "workers": workers, "seconds": t, "peak_rss": r})
    print(json.dumps(results, indent=1))
    mib = 2**20
    print("\n| store | rows | stored MiB | probe s | probe peak RSS MiB | sweep s | sweep peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results["rss"]:
        print(f"| {r['scale']}x | {r['rows']} | {r['store_bytes'] / mib:.0f} | {r['probe_s']:.1f} | "
              f"{r['probe_peak_rss'] / mib:.0f} | {r['sweep_s']:.1f} | {r['sweep_peak_rss'] / mib:.0f} |")  # fmt: skip
    base = results["workers"][0]["seconds"]
    print("\n| scheduler | workers | probe s | vs sync | peak RSS MiB |\n|---|---|---|---|---|")
    for r in results["workers"]:
        print(f"| {r['scheduler']} | {r['workers']} | {r['seconds']:.1f} | {base / r['seconds']:.2f}x | "
              f"{r['peak_rss'] / mib:.0f} |")  # fmt: skip
    b = results["bytes"]
    print(
        f"\nsweep (1x): read {b['read'] / mib:.2f} MiB for {b['columns'] / mib:.2f} MiB of columns used "
        f"({b['read'] / b['columns']:.2f}x)"
    )


if __name__ == "__main__":
    main()
