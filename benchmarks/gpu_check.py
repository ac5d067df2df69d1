"""One-shot GPU check of the extraction path, on whatever GPU it finds (no network, no model files needed).

    python benchmarks/gpu_check.py [--models gpt2-small,llama-1b] [--rows 4096] [--seq 128] [--batch-size 32]
                                   [--repeats 2] [--device cuda] [--budget-s 360]
    python benchmarks/gpu_check.py --device cpu --models tiny-gpt2,tiny-llama --rows 256 --seq 32   # local smoke run

Models are built from configs with random weights at realistic sizes (throughput does not depend on the weights'
values), directly on the device in the compute dtype (bfloat16 on CUDA, float32 on the CPU, as `extract` picks);
the tokenizer is a real in-memory one (a WordLevel model over a synthetic vocabulary, pad token id 0, right
padding), so `tokenizer.pad` does what it does in extraction. Inputs are random token ids, lengths uniform in
[seq/4, seq], seeded.

1. Precision: pooled features (run_layers, every layer, kinds hidden+ffn, poolings last/mean/max) of a few rows in
   bfloat16 on the device against float32 on the CPU with the same (bf16-rounded) weights: relative Frobenius error
   per layer, the worst, and whether every value is finite.
2. Speed, alternating for --repeats rounds after a warm-up of both sides (a whole bare pass first):
   - bare forward: the same model, block rows, length-sorted batches, `tokenizer.pad` and forward call (mask,
     position ids, no KV cache: `forward_arguments`) as extraction, outputs discarded;
   - extraction: the real block phase, `spin_cache.extract.extract_blocks`, into a fresh store on local disk with
     the layout `spin-cache extract` makes (kinds hidden+ffn, poolings last/mean/max, float16, default block
     rows); afterwards every block must be committed.
   Reported: bare_seconds / extract_seconds (extraction throughput relative to the bare forward), examples/s,
   tokens/s, and where extraction's time goes (pooling on the main thread, main thread blocked on the writer
   queue, the writer thread's wall time in write_block and its MB/s).
3. Store check: a few stored rows read back and compared with a direct run_layers of the same rows.
4. A short markdown table, printed last. With $OUT set: $OUT/gpu_check.txt (this output) and $OUT/gpu_check.json.
Exit status 1 when a model failed or a check did not pass.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import torch

POOLINGS = ("last", "mean", "max")  # default_poolings(is_decoder=True): both models are decoders
MODELS = {
    "gpt2-small": ("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}),
    "llama-1b": ("llama", {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                           "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
                           "max_position_embeddings": 2048}),
    "tiny-gpt2": ("gpt2", {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256, "vocab_size": 1000,
                           "bos_token_id": 999, "eos_token_id": 999}),
    "tiny-llama": ("llama", {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                             "max_position_embeddings": 256}),
}  # fmt: skip


class _Tee(io.TextIOBase):
    """Everything printed goes to the terminal and is kept for $OUT/gpu_check.txt."""

    encoding = "utf-8"

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream
        self.kept = io.StringIO()

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.stream.flush()
        return self.kept.write(s)

    def flush(self) -> None:
        self.stream.flush()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------------
# Model, tokenizer, inputs


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModel, GPT2Config, LlamaConfig

    family, kwargs = MODELS[name]
    config = (GPT2Config if family == "gpt2" else LlamaConfig)(**kwargs)
    torch.manual_seed(0)
    with torch.device(device):  # parameters are created and initialised on the device, in `dtype`
        try:
            model = AutoModel.from_config(config, dtype=dtype)
        except TypeError:  # a transformers that knows only the older name
            model = AutoModel.from_config(config, torch_dtype=dtype)
    model.to(dtype)  # a no-op when from_config honoured the dtype
    model.eval()
    model.requires_grad_(False)
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise RuntimeError(f"{name}: random weights not finite in {bad[:3]}")
    return model


def make_tokenizer(vocab_size: int):
    """A real fast tokenizer over a synthetic vocabulary ("[PAD]" = 0, "[UNK]" = 1, "w2".."wN"), right padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1} | {f"w{i}": i for i in range(2, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", padding_side="right")


def make_encodings(rows: int, seq: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, seq // 4), seq + 1, size=rows)
    return [rng.integers(2, vocab_size, size=int(n)).tolist() for n in lengths]


def loaded_model(model: torch.nn.Module, tokenizer, device: torch.device, name: str):
    from spin_cache.model.adapters import find_adapter
    from spin_cache.model.loading import LoadedModel

    return LoadedModel(model=model, tokenizer=tokenizer, adapter=find_adapter(model), path=Path(f"<random {name}>"),
                       identity={}, device=device)  # fmt: skip


def row_bytes(adapter, dtype_bytes: int = 2) -> int:
    """Bytes of pooled output per example, as run_extraction computes them for default_block_rows."""
    return (
        (adapter.hidden_size * (adapter.num_layers + 1) + adapter.ffn_size * adapter.num_layers)
        * len(POOLINGS)
        * dtype_bytes
    )


def new_store(loaded, name: str, n_rows: int, n_tokens: list[int], folder: str, block_rows: int | None):
    """An empty store with the layout run_extraction makes for this model (hidden+ffn, last/mean/max, float16)."""
    import polars as pl

    from spin_cache.extract.run import DEFAULT_CHUNK_COLS
    from spin_cache.representations import KINDS
    from spin_cache.store.activation_store import ActivationStore
    from spin_cache.store.layout import Layout, default_block_rows
    from spin_cache.store.manifest import new_manifest

    adapter = loaded.adapter
    widths = {"hidden": adapter.hidden_size, "ffn": adapter.ffn_size}
    layers = {"hidden": list(range(adapter.num_layers + 1)), "ffn": list(range(1, adapter.num_layers + 1))}
    layout = Layout(kinds=KINDS, poolings=POOLINGS, layers=layers, widths=widths, n_rows=n_rows, dtype="float16",
                    block_rows=block_rows or default_block_rows(row_bytes(adapter)),
                    chunk_cols=DEFAULT_CHUNK_COLS)  # fmt: skip
    settings = {"kinds": list(KINDS), "poolings": list(POOLINGS), "max_length": max(n_tokens), "dtype": "float16",
                "compute_dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch.")}  # fmt: skip
    model_info = {"name": name, "path": str(loaded.path), "config_sha256": "", "weights_sha256": "",
                  "tokenizer_sha256": "", "family": adapter.family, "is_decoder": adapter.is_decoder,
                  "num_layers": adapter.num_layers}  # fmt: skip
    dataset_info = {"name": "gpu-check", "fingerprint": f"gpu-check-{n_rows}", "n_rows": n_rows,
                    "rows_per_split": {"train": n_rows}, "label_names": ["0", "1"]}  # fmt: skip
    manifest = new_manifest(model=model_info, dataset=dataset_info, extraction=settings, layout=layout)
    examples = pl.DataFrame(
        {
            "row": np.arange(n_rows, dtype=np.int64),
            "example_id": [str(i) for i in range(n_rows)],
            "split": ["train"] * n_rows,
            "label": np.arange(n_rows, dtype=np.int64) % 2,
            "label_name": [str(i % 2) for i in range(n_rows)],
            "text_sha256": [""] * n_rows,
            "n_tokens": np.asarray(n_tokens, dtype=np.int64),
            "truncated": np.zeros(n_rows, dtype=bool),
        }
    )
    return ActivationStore.create(folder, manifest, examples, overwrite=True)


# ------------------------------------------------------------------------------------------------------------
# The two timed sides


def bare_forward(loaded, encodings: list[list[int]], block_rows: int, batch_size: int) -> float:
    """bench_extract.bare_forward on the model's device: the batches and forward call of extraction, no pooling."""
    from spin_cache.model.hooks import forward_arguments

    device = loaded.device
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(encodings), block_rows):
            stop = min(start + block_rows, len(encodings))
            order = sorted(range(start, stop), key=lambda i: (-len(encodings[i]), i))
            for b0 in range(0, len(order), batch_size):
                rows = order[b0 : b0 + batch_size]
                batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, padding=True,
                                             return_tensors="pt")  # fmt: skip
                ids = batch["input_ids"].to(device, non_blocking=True)
                mask = batch["attention_mask"].to(device, non_blocking=True)
                runner, kwargs = forward_arguments(loaded, mask)
                runner(input_ids=ids, **kwargs)
    sync(device)
    return time.perf_counter() - t0


class _Probe:
    """Where extraction's time goes, from wrappers around _pool_block, the writer queue and store.write_block (a
    perf_counter call per block: no measurable cost)."""

    def __init__(self) -> None:
        self.t = {"pool": 0.0, "put_wait": 0.0, "close_wait": 0.0, "write": 0.0}
        self.raw_bytes = 0
        self.blocks = 0
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def attached(self, store):
        from spin_cache.extract import run as ex

        saved = (ex.pool_block, ex.BlockWriter.put, ex.BlockWriter.close)
        pool_block, put, close = saved
        write_block = store.write_block

        def timed(key: str, fn):
            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    with self.lock:
                        self.t[key] += time.perf_counter() - t0

            return wrapper

        def counted_write(block, arrays, info, threads=1, **options):
            with self.lock:
                self.raw_bytes += sum(a.nbytes for a in arrays.values())
                self.blocks += 1
            return timed("write", write_block)(block, arrays, info, threads, **options)

        ex.pool_block, ex.BlockWriter.put, ex.BlockWriter.close = (
            timed("pool", pool_block), timed("put_wait", put), timed("close_wait", close))  # fmt: skip
        store.write_block = counted_write  # the writer thread calls self.store.write_block
        try:
            yield self
        finally:
            ex.pool_block, ex.BlockWriter.put, ex.BlockWriter.close = saved
            del store.write_block


def extract_blocks(loaded, store, encodings: list[list[int]], batch_size: int) -> tuple[float, _Probe, object]:
    """The block phase of run_extraction, timed: every block of `store`, writer included."""
    from spin_cache.extract.run import ExtractionReport, extract_blocks

    report = ExtractionReport(store=store)
    probe = _Probe()
    with probe.attached(store):
        sync(loaded.device)
        t0 = time.perf_counter()
        extract_blocks(loaded, store, encodings, list(range(store.layout.n_blocks)), batch_size, False, report)
        sync(loaded.device)
        seconds = time.perf_counter() - t0
    return seconds, probe, report


def dir_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


# ------------------------------------------------------------------------------------------------------------
# Checks


def pooled(loaded, encodings: list[list[int]], rows: list[int]) -> dict:
    from spin_cache.model.hooks import run_layers

    batch = loaded.tokenizer.pad({"input_ids": [encodings[i] for i in rows]}, padding=True, return_tensors="pt")
    out = run_layers(loaded, batch["input_ids"], batch["attention_mask"], POOLINGS)
    return {key: {p: t.float().cpu() for p, t in per.items()} for key, per in out.items()}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def check_precision(loaded, encodings: list[list[int]], n_rows: int) -> dict:
    """bf16 on the model's device against fp32 on the CPU, same bf16-rounded weights: compute precision only."""
    model = loaded.model
    test_model = model if next(model.parameters()).dtype == torch.bfloat16 else copy.deepcopy(model).to(torch.bfloat16)
    ref_model = copy.deepcopy(test_model).to(device="cpu", dtype=torch.float32)
    rows = list(range(min(n_rows, len(encodings))))
    got = pooled(loaded if test_model is model else _with_model(loaded, test_model), encodings, rows)
    ref = pooled(_with_model(loaded, ref_model, torch.device("cpu")), encodings, rows)
    del ref_model
    per_layer: dict[str, list[float]] = {}
    finite = True
    for (kind, layer), per in got.items():
        errs = []
        for p, g in per.items():
            finite &= bool(torch.isfinite(g).all())
            errs.append(rel_err(g, ref[(kind, layer)][p]))
        per_layer.setdefault(kind, []).append(round(max(errs), 5))
    worst = max(max(v) for v in per_layer.values())
    return {"rows": len(rows), "worst": worst, "finite": finite, "per_layer_max_over_poolings": per_layer}


def _with_model(loaded, model: torch.nn.Module, device: torch.device | None = None):
    from spin_cache.model.adapters import find_adapter
    from spin_cache.model.loading import LoadedModel

    return LoadedModel(model=model, tokenizer=loaded.tokenizer, adapter=find_adapter(model), path=loaded.path,
                       identity={}, device=device or loaded.device)  # fmt: skip


def check_store(loaded, store, encodings: list[list[int]], n: int = 8) -> dict:
    """A few stored rows (first and last layer of each kind, every pooling) against a direct run_layers of the same
    rows on the same model: right rows, right columns, right values."""
    block = store.layout.n_blocks - 1  # the last block: written with every core, maybe a short one
    start, stop = store.layout.block_range(block)
    rows = list(range(start, min(stop, start + n)))
    direct = pooled(loaded, encodings, rows)
    worst = 0.0
    for kind in store.kinds:
        for layer in (store.layers(kind)[0], store.layers(kind)[-1]):
            for p in store.poolings:
                got = store.read(kind, p, layer, rows=np.asarray(rows), allow_incomplete=True)
                worst = max(worst, rel_err(torch.from_numpy(got), direct[(kind, layer)][p]))
    return {"rows": rows, "worst": worst}


# ------------------------------------------------------------------------------------------------------------


def environment(device: torch.device, tmp: str) -> dict:
    import transformers

    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tmp": tmp,
        "tmp_fs": fs_type(tmp),
        "tmp_free_gb": round(shutil.disk_usage(tmp).free / 1e9, 1),
    }
    for mod in ("zarr", "numcodecs", "polars", "tokenizers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # reported, not fatal here: the model runs say what is missing
            env[mod] = f"missing ({type(exc).__name__})"
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        env |= {"gpu": torch.cuda.get_device_name(device), "capability": torch.cuda.get_device_capability(device),
                "cuda": torch.version.cuda, "gpu_free_gib": round(free / 2**30, 1),
                "gpu_total_gib": round(total / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()}  # fmt: skip
    else:
        env["gpu"] = "none (CPU run)"
    return env


def fs_type(path: str) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    return kind


def run_model(name: str, args, device: torch.device, t_start: float) -> dict:
    from spin_cache.extract.allocator import pin_malloc_thresholds
    from spin_cache.extract.plan import resolve_compute_dtype

    res: dict = {"model": name}
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[
        resolve_compute_dtype(args.compute_dtype, str(device))
    ]
    t0 = time.perf_counter()
    model = build_model(name, device, dtype)
    vocab = model.config.vocab_size
    loaded = loaded_model(model, make_tokenizer(vocab), device, name)
    ad = loaded.adapter
    n_params = sum(p.numel() for p in model.parameters())
    per_ex = row_bytes(ad)
    res |= {"family": ad.family, "params_m": round(n_params / 1e6, 1), "layers": ad.num_layers,
            "hidden": ad.hidden_size, "ffn": ad.ffn_size, "compute_dtype": str(dtype).removeprefix("torch."),
            "attn": getattr(model.config, "_attn_implementation", "?"), "out_bytes_per_example": per_ex,
            "build_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    print(f"\n== {name}: {ad.family}, {n_params / 1e6:,.1f}M params, {ad.num_layers} layers, hidden {ad.hidden_size}, "
          f"ffn {ad.ffn_size}, {res['compute_dtype']} on {device}, attention {res['attn']} "
          f"(built in {res['build_s']}s)")  # fmt: skip
    encodings = make_encodings(args.rows, args.seq, vocab)
    lengths = [len(e) for e in encodings]
    n_tokens = sum(lengths)
    total_out = per_ex * args.rows
    print(f"rows {args.rows}, tokens {n_tokens:,} (mean {n_tokens / args.rows:.1f}, max {max(lengths)}), batch "
          f"{args.batch_size}; pooled float16 output {per_ex / 1e3:,.1f} kB per example = "
          f"{total_out / 1e9:.2f} GB per extraction ({total_out / 300e6:.1f}s at 300 MB/s)")  # fmt: skip
    res |= {"rows": args.rows, "tokens": n_tokens, "out_bytes_per_run": total_out}
    free = shutil.disk_usage(args.tmp).free
    if free < 1.2 * total_out:  # one store at a time: each round's is deleted after it
        print(f"WARNING: {args.tmp} has {free / 1e9:.1f} GB free for a store of up to {total_out / 1e9:.1f} GB")

    t0 = time.perf_counter()
    res["precision"] = prec = check_precision(loaded, encodings, args.precision_rows)
    print(f"precision ({prec['rows']} rows, bf16 on {device} vs fp32 on cpu, same weights): worst relative "
          f"error {prec['worst']:.4f}, all finite {prec['finite']} ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    for kind, errs in prec["per_layer_max_over_poolings"].items():
        print(f"  {kind} per layer: {' '.join(f'{e:.4f}' for e in errs)}")

    pin_malloc_thresholds()  # as extraction does (process-wide): both sides run with the same allocator settings
    root = tempfile.mkdtemp(prefix=f"gpu_check_{name}_", dir=args.tmp)
    try:
        # warm-up: one whole bare pass (every batch shape meets its kernels once: the first pass over new shapes
        # ran 3-5x slower on an H100), then a couple of batches of extraction (pinned buffers, writer threads)
        warm_rows = min(args.rows, 2 * args.batch_size)
        warm = new_store(loaded, name, warm_rows, lengths[:warm_rows], os.path.join(root, "warm"), args.block_rows)
        block_rows = warm.layout.block_rows
        t0 = time.perf_counter()
        bare_forward(loaded, encodings, block_rows, args.batch_size)
        bare_forward(loaded, encodings[:warm_rows], block_rows, args.batch_size)
        extract_blocks(loaded, warm, encodings[:warm_rows], args.batch_size)
        print(f"warm-up (a whole bare pass, {warm_rows} rows extracted): {time.perf_counter() - t0:.1f}s; "
              f"block rows {block_rows}, "
              f"{-(-args.rows // block_rows)} blocks")  # fmt: skip
        res["block_rows"] = block_rows
        res["n_blocks"] = -(-args.rows // block_rows)
        rounds = []
        for r in range(args.repeats):
            elapsed = time.monotonic() - t_start
            if rounds and elapsed + rounds[-1]["round_s"] > args.budget_s:
                print(f"round {r + 1}: skipped (elapsed {elapsed:.0f}s + a round {rounds[-1]['round_s']:.0f}s > "
                      f"--budget-s {args.budget_s:.0f})")  # fmt: skip
                res["skipped_rounds"] = args.repeats - r
                break
            t_round = time.perf_counter()
            rnd: dict = {}
            for side in ("bare", "extract") if r % 2 == 0 else ("extract", "bare"):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                if side == "bare":
                    rnd["bare_s"] = bare_forward(loaded, encodings, block_rows, args.batch_size)
                else:
                    folder = os.path.join(root, f"store{r}")
                    store = new_store(loaded, name, args.rows, lengths, folder, args.block_rows)
                    rnd["extract_s"], probe, report = extract_blocks(loaded, store, encodings, args.batch_size)
                    committed = store.committed_blocks()
                    rnd["blocks_committed"] = len(committed)
                    rnd["blocks_ok"] = sorted(committed) == list(range(store.layout.n_blocks)) and (
                        report.written_blocks == store.layout.n_blocks
                    )
                    rnd["overflow"] = sum(int(m.get("overflow", 0)) for m in committed.values())
                    rnd["stored_bytes"] = dir_bytes(folder)
                    rnd["raw_bytes"] = probe.raw_bytes
                    rnd["time"] = {k: round(v, 3) for k, v in probe.t.items()}
                    if r == 0:
                        res["store_check"] = check_store(loaded, store, encodings)
                    shutil.rmtree(folder, ignore_errors=True)
                if device.type == "cuda":
                    rnd[f"{side}_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            rnd["round_s"] = time.perf_counter() - t_round
            rnd["ratio"] = rnd["bare_s"] / rnd["extract_s"]
            rounds.append(rnd)
            t = rnd["time"]
            busy = max(t["write"], 1e-9)
            print(f"round {r + 1}: bare {rnd['bare_s']:.2f}s ({args.rows / rnd['bare_s']:,.0f} ex/s, "
                  f"{n_tokens / rnd['bare_s']:,.0f} tok/s) | extract {rnd['extract_s']:.2f}s "
                  f"({args.rows / rnd['extract_s']:,.0f} ex/s, {n_tokens / rnd['extract_s']:,.0f} tok/s) | "
                  f"throughput vs bare {rnd['ratio']:.3f}x | blocks {rnd['blocks_committed']}/{res['n_blocks']} "
                  f"committed")  # fmt: skip
            print(f"  extract time: pooling blocks (main thread) {t['pool']:.2f}s, blocked on the writer queue "
                  f"{t['put_wait']:.2f}s + final drain {t['close_wait']:.2f}s; writer thread in write_block "
                  f"{t['write']:.2f}s wall ({rnd['raw_bytes'] / busy / 1e6:,.0f} MB/s of float16), stored "
                  f"{rnd['stored_bytes'] / 1e6:,.0f} MB ({rnd['stored_bytes'] / max(rnd['raw_bytes'], 1):.2f}x raw), "
                  f"overflow {rnd['overflow']}"
                  + (f", peak GPU memory bare {rnd['bare_peak_gib']} GiB, extract {rnd['extract_peak_gib']} GiB"
                     if device.type == "cuda" else ""))  # fmt: skip
        res["rounds"] = rounds
        if args.profile_rows:
            profile_extraction(loaded, name, args, encodings, lengths, root)
        if "store_check" in res:
            print(f"store check: rows {res['store_check']['rows'][0]}-{res['store_check']['rows'][-1]} read back vs "
                  f"direct run_layers: worst relative error {res['store_check']['worst']:.4f}")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [r["ratio"] for r in res["rounds"]]
    bare = sum(r["bare_s"] for r in res["rounds"])
    ext = sum(r["extract_s"] for r in res["rounds"])
    t_sum = {k: sum(r["time"][k] for r in res["rounds"]) for k in res["rounds"][0]["time"]}
    res["summary"] = {
        "ratio_median": statistics.median(ratios),
        "ratio_all_seconds": bare / ext,
        "bare_ex_s": args.rows * len(ratios) / bare,
        "extract_ex_s": args.rows * len(ratios) / ext,
        "bare_tok_s": n_tokens * len(ratios) / bare,
        "extract_tok_s": n_tokens * len(ratios) / ext,
        "writer_mb_s": sum(r["raw_bytes"] for r in res["rounds"]) / max(t_sum["write"], 1e-9) / 1e6,
        "waiting_on_writer": (t_sum["put_wait"] + t_sum["close_wait"]) / ext,
        "blocks_ok": all(r["blocks_ok"] for r in res["rounds"]),
    }
    del loaded, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def profile_extraction(loaded, name: str, args, encodings: list[list[int]], lengths: list[int], root: str) -> None:
    """One more extraction of the first --profile-rows rows under cProfile: the main thread's costliest functions
    (what keeps it from feeding the device)."""
    import cProfile
    import pstats

    n = min(args.rows, args.profile_rows)
    folder = os.path.join(root, "profiled")
    store = new_store(loaded, name, n, lengths[:n], folder, args.block_rows)
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, _, _ = extract_blocks(loaded, store, encodings[:n], args.batch_size)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(16)
    body = text.getvalue()
    print(f"profile: extraction of {n} rows under cProfile took {seconds:.2f}s; by own time (every thread):")
    print(body[body.find("ncalls") :].rstrip())
    shutil.rmtree(folder, ignore_errors=True)
    if loaded.device.type != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    store = new_store(loaded, name, n, lengths[:n], folder, args.block_rows)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        seconds, _, _ = extract_blocks(loaded, store, encodings[:n], args.batch_size)
    events = prof.key_averages()

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    busy = sum(device_us(e) for e in events) / 1e6
    print(f"profile: the same extraction under torch.profiler took {seconds:.2f}s; GPU busy {busy:.2f}s "
          f"({busy / seconds:.0%}); top ops by GPU time:")  # fmt: skip
    for e in sorted(events, key=device_us, reverse=True)[:10]:
        print(f"  {e.key[:60]:60s} {device_us(e) / 1e3:9.1f} ms  {e.count:6d} calls")
    shutil.rmtree(folder, ignore_errors=True)


def check_failures(res: dict, tol: float) -> list[str]:
    if "error" in res:
        return [f"{res['model']}: {res['error']}"]
    out = []
    if not res["precision"]["finite"]:
        out.append(f"{res['model']}: non-finite pooled values")
    if res["precision"]["worst"] > tol:
        out.append(f"{res['model']}: bf16 vs fp32 error {res['precision']['worst']:.4f} > --tol {tol}")
    if not res["summary"]["blocks_ok"]:
        out.append(f"{res['model']}: not every block committed")
    if res.get("store_check", {}).get("worst", 0.0) > tol:
        out.append(f"{res['model']}: stored rows differ from run_layers ({res['store_check']['worst']:.4f})")
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| model | out kB/ex | block rows | bf16 vs fp32 worst rel. err | finite | store check | bare ex/s | "
        "extract ex/s | extract tok/s | extract vs bare (median) | writer MB/s | main waits on writer | blocks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        if "summary" not in res:
            lines.append(f"| {res['model']} | failed: {res.get('error', '?')} |" + " |" * 11)
            continue
        s = res["summary"]
        lines.append(
            f"| {res['model']} | {res['out_bytes_per_example'] / 1e3:,.1f} | {res['block_rows']} | "
            f"{res['precision']['worst']:.4f} | {res['precision']['finite']} | "
            f"{res.get('store_check', {}).get('worst', float('nan')):.4f} | {s['bare_ex_s']:,.0f} | "
            f"{s['extract_ex_s']:,.0f} | {s['extract_tok_s']:,.0f} | {s['ratio_median']:.3f}x | "
            f"{s['writer_mb_s']:,.0f} | {s['waiting_on_writer']:.0%} | {'all' if s['blocks_ok'] else 'MISSING'} |"
        )
    return "\n".join(lines)


def solver_check(device: torch.device, rows: int, width: int = 1536) -> list[dict]:
    """Issue 20 item 4: one probe C path (L1) and one head C path (L2) on a synthetic standardised problem of `rows`
    rows and `width` features, 2 and 5 classes, fitted on the CPU and on `device` (`fit_c_path(device=...)`, what
    `probe/sweep --device` run); seconds of each, the ratio, and whether both chose the same C."""
    import numpy as np

    from spin_cache.fit.solver import HEAD_C_GRID, PROBE_C_GRID, Design, fit_c_path

    out = []
    gen = np.random.default_rng(0)
    x = gen.standard_normal((rows, width)).astype(np.float32)
    for n_classes in (2, 5):
        y = (x[:, :n_classes] * 0.5 + gen.standard_normal((rows, n_classes))).argmax(axis=1)
        cut = rows * 3 // 4
        train, dev = Design.of(x[:cut], y[:cut]), Design.of(x[cut:], y[cut:])
        for penalty, grid in (("l1", PROBE_C_GRID), ("l2", HEAD_C_GRID)):
            seconds, paths = {}, {}
            for where in ("cpu", str(device)):
                fit_c_path(train, dev, n_classes, grid[:1], penalty=penalty, device=torch.device(where))  # warm-up
                sync(torch.device(where))
                t = time.perf_counter()
                paths[where] = fit_c_path(train, dev, n_classes, grid, penalty=penalty, device=torch.device(where))
                sync(torch.device(where))
                seconds[where] = time.perf_counter() - t
            cpu, gpu = paths["cpu"], paths[str(device)]
            row = {"classes": n_classes, "penalty": penalty, "rows": rows, "width": width,
                   "cpu_s": round(seconds["cpu"], 2), "device_s": round(seconds[str(device)], 2),
                   "speedup": round(seconds["cpu"] / seconds[str(device)], 2), "same_C": cpu.c == gpu.c,
                   "dev_cpu": cpu.dev, "dev_device": gpu.dev}  # fmt: skip
            print("solver: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2-small,llama-1b", help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compute-dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=128, help="longest example in tokens; lengths uniform in [seq/4, seq]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-rows", type=int, default=None, help="default: default_block_rows, as extract picks")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (bare, extract), order alternated")
    ap.add_argument("--precision-rows", type=int, default=8)
    ap.add_argument("--profile-rows", type=int, default=2048, help="rows of one extraction under cProfile (0: none)")
    ap.add_argument("--tol", type=float, default=0.05, help="largest relative error that passes")
    ap.add_argument("--budget-s", type=float, default=360, help="start no round or model past this many seconds")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the stores are written (local disk)")
    ap.add_argument("--solver-rows", type=int, default=8192,
                    help="rows of the solver check (probe and head C paths, CPU vs --device; 0: none)")  # fmt: skip
    args = ap.parse_args()
    out_dir = os.environ.get("OUT")
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    t_start = time.monotonic()
    results: list[dict] = []
    solver: list[dict] = []
    failures: list[str] = []
    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device found (use --device cpu for a local run)")
        device = torch.device(args.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        import transformers

        transformers.utils.logging.disable_progress_bar()
        env = environment(device, args.tmp)
        print("gpu_check: " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print("arguments: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))

        def dump() -> None:
            if out_dir:
                with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
                    json.dump({"environment": env, "arguments": vars(args), "results": results, "solver": solver,
                               "failures": failures, "seconds": time.monotonic() - t_start}, f, indent=1,
                              default=str)  # fmt: skip

        for name in args.models.split(","):
            name = name.strip()
            if name not in MODELS:
                raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
            if time.monotonic() - t_start > args.budget_s:
                results.append({"model": name, "error": f"skipped: past --budget-s {args.budget_s:.0f}"})
                print(f"\n== {name}: skipped (past --budget-s {args.budget_s:.0f})")
                continue
            try:
                results.append(run_model(name, args, device, t_start))
            except Exception as exc:
                traceback.print_exc(file=sys.stdout)
                results.append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            failures += check_failures(results[-1], args.tol)
            dump()
        if args.solver_rows and time.monotonic() - t_start <= args.budget_s:
            try:
                solver = solver_check(device, args.solver_rows)
            except Exception as exc:
                traceback.print_exc(file=sys.stdout)
                solver = [{"error": f"{type(exc).__name__}: {exc}"[:300]}]
            dump()
        print(f"\ntotal {time.monotonic() - t_start:.0f}s; " + ("FAILED: " + "; ".join(failures) if failures else
              "all checks passed"))  # fmt: skip
        print(f"\nGPU check on {env['gpu']}, torch {env['torch']}, transformers {env['transformers']}, "
              f"{env['date']}; rows {args.rows}, seq <= {args.seq}, batch {args.batch_size}, {args.repeats} rounds; "
              f"extract vs bare = bare seconds / extraction seconds\n")  # fmt: skip
        print(table(results))
        dump()
    finally:
        sys.stdout = tee.stream
        if out_dir:
            with open(os.path.join(out_dir, "gpu_check.txt"), "w") as f:
                f.write(tee.kept.getvalue())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
