"""Predict throughput: `Predictor.predict` (early exit at the head's deepest layer) against a full forward of the
same model and against a transformers `pipeline("text-classification")`, same texts, same batch size, one run.

    python benchmarks/bench_predict.py [--head HEAD] [--n 512] [--batch-size 32] [--repeats 3]
                                       [--max-tokens T] [--exit-layers 4] [--device cpu] [--work DIR]
                                       [--out FILE.md]

Without --head a real head is made once under --work (reused afterwards): MiniLM over the first 240/80/80 rows of
the bundled SST-2 splits (hidden and ffn, mean pooling), one probe run and a sweep over two etas. The texts are the
first --n sentences of the bundled SST-2 test split. Three timings, interleaved per repeat (median reported):

  predict    Predictor.predict(texts): tokenize, sort by length, run the model up to the head's deepest layer with
             hooks, pool the head's neurons, round like the store, apply the head
  full       the same tokenization and the same length-sorted batches through the whole model (the same loaded
             module and dtype, no hooks): what predict would cost without the early exit
  pipeline   transformers.pipeline("text-classification") over an AutoModelForSequenceClassification built from
             the same weights (random classification head), batch_size the same, texts in input order

  exit@K     (--exit-layers) Predictor.features with the head's selection cut to layers <= K: the model cost
             of predict for a head whose deepest layer is K (the demo's MiniLM/SST-2 head ends at layer 4; the small
             head made here may select every layer, when predict itself gains nothing from the exit)

Ratios against predict (texts per second): full shows the early-exit gain of this head, exit@K that of a head
ending at K, pipeline the gain over a plain transformers classifier at the same batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
SST2 = HERE.parent / "data" / "sst2"


def sst2_texts(split: str, n: int) -> list[str]:
    """The first `n` texts of a bundled SST-2 split (`LABEL TEXT` lines)."""
    lines = (SST2 / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    return [line.split(" ", 1)[1] for line in lines[:n] if " " in line]


def ensure_head(work: Path) -> Path:
    """A real MiniLM/SST-2 head under `work` (made once: extract, probe, sweep on a few hundred rows)."""
    from spin_cache.extract.run import run_extraction
    from spin_cache.loop.probe import ProbeSettings, run_probes
    from spin_cache.loop.sweep import SweepSettings, run_sweep

    head = work / "sweep" / "head"
    if (head / "head.json").is_file():
        return head
    work.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in (("train", 240), ("dev", 80), ("test", 80)):
        lines = (SST2 / f"{split}.txt").read_text(encoding="utf-8").splitlines()[:n]
        path = work / f"{split}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        splits[split] = str(path)
    store = str(work / "store")
    t0 = time.perf_counter()
    run_extraction(**splits, out=store, kinds=["hidden", "ffn"], poolings=["mean"], progress=False)
    run = run_probes(store, work / "probes", ProbeSettings(c_grid=(0.1, 1.0), max_iter=100), progress=False)
    settings = SweepSettings(values=(0.5, 0.9), c_grid=(0.1, 1.0), max_iter=100)
    res = run_sweep(store, run.path, work / "sweep", settings, progress=False)
    print(f"head made in {time.perf_counter() - t0:.0f} s: {res.table['head']}", file=sys.stderr)
    return Path(res.table["head"])


def main() -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    from spin_cache.serve.predict import Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", default=None, help="an exported head (default: make one under --work)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "spin-bench-predict"))
    ap.add_argument("--n", type=int, default=512, help="SST-2 test sentences to classify (default 512)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=None, help="predict with a token budget instead")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exit-layers", default="4", help="also time features for heads cut at these layers ('' none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    head = Path(args.head) if args.head else ensure_head(Path(args.work))
    texts = sst2_texts("test", args.n)
    predictor = Predictor(
        head, device=args.device, batch_size=args.batch_size, max_tokens=args.max_tokens, compute_dtype="auto"
    )
    loaded = predictor.loaded
    tok, dev, bs = loaded.tokenizer, loaded.device, args.batch_size

    def run_predict() -> None:
        predictor.predict(texts)

    def run_full() -> None:
        encodings, _ = predictor.encode(texts)
        with torch.inference_mode():
            for rows in predictor.batches([len(ids) for ids in encodings]):
                batch = tok.pad({"input_ids": [encodings[i] for i in rows]}, padding=True, return_tensors="pt")
                out = loaded.model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev))
                out.last_hidden_state.float().cpu()

    clf_model = AutoModelForSequenceClassification.from_pretrained(
        loaded.path, num_labels=len(predictor.label_names), dtype=next(loaded.model.parameters()).dtype
    )
    clf_model.eval()
    clf = pipeline("text-classification", model=clf_model, tokenizer=tok, device=dev, batch_size=bs)
    pipe_kw = {"truncation": True, "max_length": predictor.max_length}

    def run_pipeline() -> None:
        clf(texts, **pipe_kw)

    runs = {"predict": run_predict, "full": run_full, "pipeline": run_pipeline}
    from spin_cache.fit.head import Head

    for k in [int(v) for v in args.exit_layers.split(",") if v.strip()]:
        h = predictor.head
        cut = Head(classifier=h.classifier, selection={la: i for la, i in h.selection.items() if la <= k}, info=h.info)
        if not cut.selection or k >= h.deepest_layer:
            continue
        cut_predictor = object.__new__(Predictor)
        cut_predictor.__dict__.update(predictor.__dict__, head=cut)

        def run_cut(p: Predictor = cut_predictor) -> None:
            p.features(texts)

        runs[f"exit@{k}"] = run_cut
    for fn in runs.values():  # warm-up (allocator, kernels, the pipeline's first batch)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rate = {k: len(texts) / statistics.median(v) for k, v in times.items()}

    lengths = [len(ids) for ids in predictor.encode(texts)[0]]
    batching = f"max_tokens={args.max_tokens}" if args.max_tokens else f"batch_size={bs}"
    info = predictor.head.info
    lines = [
        f"head: {info.get('kind')}/{info.get('pooling')}, layers {predictor.head.layers} of "
        f"{loaded.adapter.num_layers} (early exit after layer {predictor.head.deepest_layer}), "
        f"{predictor.head.n_neurons} neurons; compute dtype {predictor.compute_dtype}; store dtype "
        f"{predictor.store_dtype}",
        f"texts: {len(texts)} SST-2 test sentences, {np.mean(lengths):.1f} tokens on average (max {max(lengths)}); "
        f"{batching}; {args.repeats} interleaved repeats, median; device {dev}, torch threads "
        f"{torch.get_num_threads()}; {platform.machine()}, {os.cpu_count()} cores",
        "",
        "| run | texts/s | against predict | seconds per repeat |",
        "|---|---|---|---|",
    ]
    for name in runs:
        ratio = "" if name == "predict" else f"{rate[name] / rate['predict']:.2f}x the texts/s"
        secs = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(f"| {name} | {rate[name]:.0f} | {ratio} | {secs} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
