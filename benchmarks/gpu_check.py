"""One-shot GPU check for the extraction path, on whatever GPU it finds (no network, no model files needed).

    python benchmarks/gpu_check.py [--models gpt2-small,llama-1b] [--rows 2048] [--seq 128] [--batch-size 32]

Models are built from configs with random weights at realistic sizes (throughput does not depend on the weights'
values); the tokenizer is the bundled MiniLM one when present, else inputs are random token ids.
1. Correctness: pooled features from the GPU in bfloat16 against float32 on the CPU, same inputs: relative error
   (Frobenius, per layer) within bf16's usual bounds, and no NaN or inf.
2. Speed: bare forward (outputs discarded) against full extraction (pooling on the GPU, packed device->host copies
   on a side stream, background writer into a Zarr store) on the same batches: ratio, examples/s, tokens/s.
3. A short table, printed last.
Needs torch, transformers, numpy; the store writing needs zarr, numcodecs, crc32c, polars (else step 2 measures
pooling + host copies without the store, and says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def build(name: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if name == "gpt2-small":
        return GPT2Model(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024))
    if name == "llama-1b":
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)  # fmt: skip
        return LlamaModel(cfg)
    raise SystemExit(f"unknown model {name}; use gpt2-small or llama-1b")


def loaded_model(model: torch.nn.Module, device: str, dtype: torch.dtype):
    from spin_cache.models import LoadedModel, find_adapter

    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model=model, tokenizer=None, adapter=find_adapter(model), path=None, identity={},
                       device=torch.device(device))  # fmt: skip


def batches(rows: int, seq: int, batch: int, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for b0 in range(0, rows, batch):
        n = min(batch, rows - b0)
        lengths = torch.randint(seq // 4, seq + 1, (n,), generator=gen)
        ids = torch.randint(5, vocab, (n, int(lengths.max())), generator=gen)
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        out.append((ids, mask))
    return out


def check_precision(model: torch.nn.Module, device: str, data: list) -> tuple[float, bool]:
    from spin_cache.models import run_layers

    cpu = loaded_model(model, "cpu", torch.float32)
    ids, mask = data[0]
    ref = run_layers(cpu, ids[:8], mask[:8], ("last", "mean", "max"))
    gpu = loaded_model(model, device, torch.bfloat16)
    got = run_layers(gpu, ids[:8], mask[:8], ("last", "mean", "max"))
    worst, finite = 0.0, True
    for key, per in ref.items():
        for pooling, r in per.items():
            g = got[key][pooling].float().cpu()
            finite &= bool(torch.isfinite(g).all())
            worst = max(worst, float((g - r).norm() / r.norm().clamp_min(1e-6)))
    return worst, finite


def time_forward(model: torch.nn.Module, device: str, data: list) -> float:
    gpu = loaded_model(model, device, torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in data:
            gpu.model(input_ids=ids.to(device, non_blocking=True), attention_mask=mask.to(device, non_blocking=True))
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_extraction(model: torch.nn.Module, device: str, data: list) -> tuple[float, str]:
    """The extraction loop of spin_cache.extract on the same batches: pooled, packed, copied, written."""
    from spin_cache import extract as ex
    from spin_cache.models import KINDS

    gpu = loaded_model(model, device, torch.bfloat16)
    adapter = gpu.adapter
    try:
        from spin_cache.store import ActivationStore, Layout, new_manifest

        tmp = tempfile.mkdtemp()
        n_rows = sum(len(ids) for ids, _ in data)
        widths = {"hidden": adapter.hidden_size, "ffn": adapter.ffn_size}
        layers = {"hidden": list(range(adapter.num_layers + 1)), "ffn": list(range(1, adapter.num_layers + 1))}
        layout = Layout(kinds=KINDS, poolings=("last", "mean", "max"), layers=layers, widths=widths, n_rows=n_rows,
                        dtype="float16", block_rows=max(len(data[0][0]), 256), chunk_cols=64)  # fmt: skip
        import polars as pl

        manifest = new_manifest(model={"config_sha256": "", "weights_sha256": "", "tokenizer_sha256": ""},
                                dataset={"fingerprint": "gpu-check", "label_names": ["0", "1"]},
                                extraction={}, layout=layout)  # fmt: skip
        store = ActivationStore.create(os.path.join(tmp, "store"), manifest, pl.DataFrame({"row": range(n_rows)}))
        mode = "full extraction into a Zarr store"
    except ImportError as exc:
        store, mode = None, f"pooling + host copies only ({exc.name} missing)"
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    writer = ex._BlockWriter(store) if store is not None else None
    keys = [(k, p, layer) for k in KINDS for p in ("last", "mean", "max") for layer in layers[k]]
    copier = ex._HostCopier(torch.device(device))
    row = 0
    block: list[np.ndarray] = []
    from spin_cache.models import run_layers

    for ids, mask in data:
        pooled = run_layers(gpu, ids.to(device, non_blocking=True), mask.to(device, non_blocking=True),
                            ("last", "mean", "max"))  # fmt: skip
        packed = torch.cat([pooled[(k, layer)][p] for k, p, layer in keys], dim=1)
        done = copier.submit(ex._to_store_dtype(packed, "float16"), np.arange(row, row + len(ids)))
        row += len(ids)
        for host in [done] if done is not None else []:
            block.append(host[0])
    block += [h for h, _ in copier.drain()]
    if writer is not None:
        full = np.concatenate(block)
        offsets = np.cumsum([0] + [widths[k[0]] for k in keys])
        for b in range(store.layout.n_blocks):
            s0, s1 = store.layout.block_range(b)
            writer.put(b, {key: full[s0:s1, offsets[j] : offsets[j + 1]] for j, key in enumerate(keys)}, {})
        writer.close()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2-small,llama-1b")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device found")
    device = "cuda"
    card = torch.cuda.get_device_name(0)
    rows = []
    for name in args.models.split(","):
        model = build(name)
        data = batches(args.rows, args.seq, args.batch_size, model.config.vocab_size)
        tokens = sum(int(m.sum()) for _, m in data)
        err, finite = check_precision(model, device, data)
        time_forward(model, device, data[:2])  # warm-up
        bare = time_forward(model, device, data)
        full, mode = time_extraction(model, device, data)
        rows.append((name, err, finite, bare, full, args.rows / full, tokens / full, mode))
        del model
        torch.cuda.empty_cache()
    print(f"\nGPU check on {card}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(
        "| model | bf16 vs fp32 rel. error | finite | bare forward s | extraction s | throughput vs bare | "
        "examples/s | tokens/s | mode |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, err, finite, bare, full, eps, tps, mode in rows:
        print(
            f"| {name} | {err:.4f} | {finite} | {bare:.2f} | {full:.2f} | {bare / full:.2f}x | {eps:,.0f} | "
            f"{tps:,.0f} | {mode} |"
        )


if __name__ == "__main__":
    main()
