"""The fused pooling kernel (spin_cache.model.kernels): built here, equal to torch's pooling, independent of threads,
and an extraction without it gives the same store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from spin_cache.extract.run import run_extraction
from spin_cache.model import kernels
from spin_cache.model.hooks import pool_layers_into, run_layers
from spin_cache.model.loading import load_model
from spin_cache.model.pooling import MaskPooler
from spin_cache.representations import POOLINGS
from spin_cache.store.activation_store import ActivationStore

from .conftest import kernel_unbuildable

HAVE_COMPILER = shutil.which("c++") is not None and shutil.which("ninja") is not None
ULP = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 2**-20}  # relative, with bits to spare


def _mask(lengths: list[int], tokens: int, side: str) -> torch.Tensor:
    positions = torch.arange(tokens)
    mask = (positions < torch.tensor(lengths)[:, None]).long()
    return mask.flip(1) if side == "left" else mask


def _columns(width: int, margin: int = 3) -> dict[str, int]:
    return {p: margin + i * width for i, p in enumerate(POOLINGS)}


def test_the_kernel_is_built_where_a_compiler_and_ninja_are():
    assert (kernels.fused_pooling() is not None) == HAVE_COMPILER


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler or ninja: torch pools instead")
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_pooling_equals_torch_and_touches_only_its_columns(side, dtype):
    gen = torch.Generator().manual_seed(3)
    lengths = [13, 13, 9, 1, 4, 13, 7]
    width = 300  # not a multiple of the kernel's 256 columns per task
    states = torch.randn(len(lengths), 13, width, generator=gen) - 2.0
    mask = _mask(lengths, 13, side)
    states[mask == 0] = 50.0  # padding that leaked into any pooling would show
    expected = MaskPooler(mask, POOLINGS)(states)
    spans = kernels.token_spans(mask)
    assert spans is not None and kernels.can_pool_into(states, torch.empty(1, 1, dtype=dtype))
    columns = _columns(width)
    out = torch.full((len(lengths), 3 + 4 * width + 5), 7.0, dtype=dtype)
    assert kernels.pool_into(states, *spans, out, columns) == 0
    for pooling, column in columns.items():
        got, want = out[:, column : column + width], expected[pooling].to(dtype)
        if pooling == "mean":  # summed token by token instead of by a matmul: the last bit may differ
            torch.testing.assert_close(got.float(), want.float(), rtol=ULP[dtype], atol=0)
        else:
            assert torch.equal(got, want), pooling
    untouched = torch.cat([out[:, :3], out[:, -5:]], dim=1)
    assert torch.equal(untouched, torch.full_like(untouched, 7.0))


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler or ninja: torch pools instead")
def test_fused_pooling_gives_the_same_bits_on_any_number_of_threads():
    """Extraction changes the model's threads while the writer works; a store must not depend on that."""
    gen = torch.Generator().manual_seed(5)
    lengths = list(range(32, 0, -1))
    states = torch.randn(32, 32, 1536, generator=gen)
    spans = kernels.token_spans(_mask(lengths, 32, "right"))
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = torch.empty(32, 4 * 1536, dtype=torch.float16)
            kernels.pool_into(states, *spans, out, _columns(1536, margin=0))
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0].view(torch.int16), o.view(torch.int16)) for o in outs[1:])


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler or ninja: torch pools instead")
def test_non_finite_real_values_are_reported_and_padding_is_not_read():
    states = torch.randn(3, 5, 8)
    mask = _mask([5, 3, 2], 5, "right")
    states[1, 4] = float("nan")  # padding: ignored
    states[2, 3] = float("inf")
    spans = kernels.token_spans(mask)
    out = torch.empty(3, 32, dtype=torch.float16)
    assert kernels.pool_into(states, *spans, out, _columns(8, 0)) == 0
    states[0, 2, 1] = float("nan")  # a real token: the caller must redo the batch
    assert kernels.pool_into(states, *spans, out, {"max": 0}) > 0
    states[0, 2, 1] = 1e6  # finite in float32, beyond float16
    assert kernels.pool_into(states, *spans, out, {"first": 0, "max": 8}) == 1
    assert kernels.pool_into(states, *spans, out.float(), {"max": 8}) == 0


def test_spans_of_real_tokens_and_masks_the_kernel_cannot_take():
    starts, stops = kernels.token_spans(_mask([4, 2, 1], 4, "left"))
    assert starts.tolist() == [0, 2, 3] and stops.tolist() == [4, 4, 4]
    starts, stops = kernels.token_spans(_mask([4, 2, 1], 4, "right"))
    assert starts.tolist() == [0, 0, 0] and stops.tolist() == [4, 2, 1]
    gaps = _mask([4, 2, 1], 4, "right")
    gaps[0, 2] = 0
    assert kernels.token_spans(gaps) is None
    assert kernels.token_spans(_mask([4, 0, 1], 4, "right")) is None  # no real token: refused by MaskPooler
    assert not kernels.can_pool_into(torch.zeros(1, 2, 4, dtype=torch.bfloat16), torch.zeros(1, 4))


def test_the_torch_route_writes_the_same_columns():
    """MaskPooler.pool_into: what pool_layers_into uses where the kernel does not apply."""
    gen = torch.Generator().manual_seed(9)
    mask = _mask([6, 6, 4], 6, "right")
    mask[0, 2] = 0
    states = torch.randn(3, 6, 16, generator=gen)
    for values in (states, states.to(torch.bfloat16)):
        expected = MaskPooler(mask, POOLINGS)(values)
        out = torch.empty(3, 64, dtype=torch.float16)
        assert MaskPooler(mask, POOLINGS, check_finite=False).pool_into(values, out, _columns(16, 0)) == 0
        for pooling, column in _columns(16, 0).items():
            assert torch.equal(out[:, column : column + 16], expected[pooling].to(torch.float16)), pooling
    out = torch.empty(3, 64, dtype=torch.float16)
    states[1, 1, 3] = 1e6
    assert MaskPooler(mask, ("max",), check_finite=False).pool_into(states, out, {"max": 0}) == 1
    states[2, 5] = float("nan")  # padding leaks into the unchecked mean: reported, so the caller redoes the batch
    assert MaskPooler(mask, ("mean",), check_finite=False).pool_into(states, out, {"mean": 0}) > 0


def test_an_extraction_without_the_kernel_stores_the_same_values(tmp_path, tiny_sst2, monkeypatch):
    """The torch route (no compiler, or SPIN_CACHE_FUSED_POOLING=0) and the kernel's give the same store: first
    and max bit for bit, mean within a float16 ulp."""
    stores = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(kernels.ENVIRONMENT_SWITCH, switch)
        kernels.fused_pooling.cache_clear()
        assert (kernels.fused_pooling() is not None) == (switch == "1" and HAVE_COMPILER)
        out = tmp_path / f"fused-{switch}"
        run_extraction(
            train=tiny_sst2["train"], dev=tiny_sst2["dev"], out=str(out), block_rows=32, batch_size=8, progress=False
        )
        stores[switch] = ActivationStore.open(str(out))
    kernels.fused_pooling.cache_clear()
    without, with_ = stores["0"], stores["1"]
    assert without.fingerprint == with_.fingerprint
    for kind in without.kinds:
        for pooling in without.poolings:
            for layer in without.layers(kind):
                a = without.read(kind, pooling, layer).astype(np.float32)
                b = with_.read(kind, pooling, layer).astype(np.float32)
                if pooling == "mean":
                    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6, err_msg=f"{kind}/{pooling}/{layer}")
                else:
                    np.testing.assert_array_equal(a, b, err_msg=f"{kind}/{pooling}/{layer}")


def test_where_the_kernel_cannot_be_built_torch_pools_and_the_user_is_told(tmp_path, monkeypatch):
    with kernel_unbuildable(monkeypatch, tmp_path, kernels, kernels.fused_pooling, "spin_cache_pool_unbuildable"):
        with pytest.warns(RuntimeWarning, match="could not be built.*pooling with torch instead"):
            assert kernels.fused_pooling() is None
        assert not kernels.can_pool_into(torch.zeros(1, 1, 4), torch.zeros(1, 4, dtype=torch.float16))


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_pool_layers_into_writes_what_run_layers_returns(compute):
    """float32 activations go through the kernel, bfloat16 ones (no kernel for them) through torch."""
    loaded = load_model("minilm", device="cpu", dtype=compute)
    batch = loaded.tokenizer(["a gripping, funny film", "dull.", "not for me"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = run_layers(loaded, ids, mask, ("first", "mean", "max"))
    columns, at = {}, 0
    for key, pooled in expected.items():
        columns[key] = {}
        for pooling, values in pooled.items():
            columns[key][pooling] = at
            at += values.shape[1]
    out = torch.empty(3, at, dtype=torch.float16)
    assert pool_layers_into(loaded, ids, mask, columns, out) == 0
    for key, pooled in expected.items():
        for pooling, values in pooled.items():
            got, want = out[:, columns[key][pooling] :][:, : values.shape[1]].float(), values.half().float()
            if pooling == "mean" and compute == torch.float32:
                torch.testing.assert_close(got, want, rtol=ULP[torch.float16], atol=1e-6)
            else:
                assert torch.equal(got, want), (key, pooling)
