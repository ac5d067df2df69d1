"""Adapters for current model families, each on a tiny random model built here from its config class (nothing
downloaded): layer count and sizes, pooling that left and right padding do not change, hidden states equal to
the model's own, and the FFN hook point (the input of the down projection: the activation's output, gated where
the family is gated)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import transformers
from torch import nn

from spin_cache.errors import InputError
from spin_cache.model.adapters import ADAPTERS, find_adapter, supported_model_types
from spin_cache.model.hooks import run_layers
from spin_cache.model.loading import LoadedModel
from spin_cache.model.pooling import pool
from spin_cache.representations import POOLINGS

LENGTHS = [5, 9, 2, 7]
VOCAB = 100


def _bert_like(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BERT-style: the intermediate module (dense + activation) on the attention output."""
    inter = block.intermediate
    return inter.intermediate_act_fn(inter.dense(x))


def _gated(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mlp = block.mlp
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def _modernbert(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    value, gate = block.mlp.Wi(x).chunk(2, dim=-1)
    return block.mlp.act(value) * gate


def _phi3(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up = block.mlp.gate_up_proj(x).chunk(2, dim=-1)
    return up * block.mlp.activation_fn(gate)


@dataclass
class Family:
    """A tiny model of one family and how to compute its FFN activation independently of the adapter."""

    family: str
    model_class: str
    config_class: str
    config: dict
    is_decoder: bool
    hidden: int
    ffn: int
    mlp_input: str  # the block's submodule whose input x the FFN reads
    activation: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (block, x) -> the FFN activation
    layers: str  # where the blocks lie on the model
    pad_id: int = 0
    after: bool = False  # x is the output of `mlp_input` (not its input)

    def build(self) -> nn.Module:
        model_cls = getattr(transformers, self.model_class, None)
        config_cls = getattr(transformers, self.config_class, None)
        if model_cls is None or config_cls is None:
            pytest.skip(f"{self.model_class} is not in transformers {transformers.__version__}")
        torch.manual_seed(0)
        config = config_cls(**self.config)
        config._attn_implementation = "eager"
        return model_cls(config)


_DEC = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "max_position_embeddings": 64}

FAMILIES = {
    "deberta-v2": Family(
        "deberta-v2", "DebertaV2Model", "DebertaV2Config",
        dict(_DEC, num_attention_heads=2, intermediate_size=44, relative_attention=True, position_buckets=16,
             pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0),
        False, 32, 44, "attention", lambda b, x: _bert_like(b, x), "encoder.layer",
    ),
    # DeBERTa-v2 with absolute position embeddings as well (position_biased_input): positions from the mask
    "deberta-v2-absolute": Family(
        "deberta-v2", "DebertaV2Model", "DebertaV2Config",
        dict(_DEC, num_attention_heads=2, intermediate_size=44, relative_attention=True, position_buckets=16,
             pos_att_type=["p2c", "c2p"], position_biased_input=True, pad_token_id=0),
        False, 32, 44, "attention", lambda b, x: _bert_like(b, x), "encoder.layer",
    ),
    "modernbert": Family(
        "modernbert", "ModernBertModel", "ModernBertConfig",
        dict(_DEC, num_attention_heads=2, intermediate_size=40, local_attention=8, global_attn_every_n_layers=2,
             pad_token_id=0),
        False, 32, 40, "mlp", _modernbert, "layers",
    ),
    "mpnet": Family(
        "mpnet", "MPNetModel", "MPNetConfig",
        dict(_DEC, num_attention_heads=2, intermediate_size=44, pad_token_id=1),
        False, 32, 44, "intermediate", lambda b, x: b.intermediate.intermediate_act_fn(b.intermediate.dense(x)),
        "encoder.layer", pad_id=1,  # positions come from the pad token (as in RoBERTa): pad with it
    ),
    "gpt-neox": Family(
        "gpt-neox", "GPTNeoXModel", "GPTNeoXConfig",
        dict(_DEC, num_attention_heads=4, intermediate_size=48, rotary_pct=0.5),
        True, 32, 48, "mlp", lambda b, x: b.mlp.act(b.mlp.dense_h_to_4h(x)), "layers",
    ),
    "opt": Family(
        "opt", "OPTModel", "OPTConfig",
        dict(_DEC, num_attention_heads=2, ffn_dim=48, word_embed_proj_dim=32, pad_token_id=1),
        True, 32, 48, "final_layer_norm", lambda b, x: b.activation_fn(b.fc1(x)), "decoder.layers", pad_id=1,
        after=True,  # the FFN reads the final layer norm's output, flattened to (batch * tokens, hidden)
    ),
    "phi": Family(
        "phi", "PhiModel", "PhiConfig",
        dict(_DEC, num_attention_heads=4, intermediate_size=48, partial_rotary_factor=0.5),
        True, 32, 48, "mlp", lambda b, x: b.mlp.activation_fn(b.mlp.fc1(x)), "layers",
    ),
    "phi3": Family(
        "phi3", "Phi3Model", "Phi3Config",
        dict(_DEC, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, pad_token_id=0),
        True, 32, 48, "mlp", _phi3, "layers",
    ),
    "gemma": Family(
        "gemma", "GemmaModel", "GemmaConfig",
        dict(_DEC, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48),
        True, 32, 48, "mlp", _gated, "layers",
    ),
    "gemma2": Family(
        "gemma", "Gemma2Model", "Gemma2Config",
        dict(_DEC, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48, sliding_window=4),
        True, 32, 48, "mlp", _gated, "layers",
    ),
    "gemma3": Family(
        "gemma", "Gemma3TextModel", "Gemma3TextConfig",
        dict(_DEC, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48, sliding_window=4),
        True, 32, 48, "mlp", _gated, "layers",
    ),
    "falcon": Family(
        "falcon", "FalconModel", "FalconConfig",
        dict(_DEC, num_attention_heads=4, ffn_hidden_size=48),
        True, 32, 48, "mlp", lambda b, x: b.mlp.act(b.mlp.dense_h_to_4h(x)), "h",
    ),
    # Falcon-RW style: ALiBi instead of rotary positions
    "falcon-alibi": Family(
        "falcon", "FalconModel", "FalconConfig",
        dict(_DEC, num_attention_heads=4, ffn_hidden_size=48, alibi=True, new_decoder_architecture=False,
             multi_query=False, parallel_attn=False, bias=True),
        True, 32, 48, "mlp", lambda b, x: b.mlp.act(b.mlp.dense_h_to_4h(x)), "h",
    ),
}  # fmt: skip


def _loaded(model: nn.Module) -> LoadedModel:
    model.eval().requires_grad_(False)
    adapter = find_adapter(model)
    return LoadedModel(model=model, tokenizer=None, adapter=adapter, path=None, identity={}, device=torch.device("cpu"))


def _padded(lengths: list[int], total: int, side: str, pad_id: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), total), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), total), dtype=torch.long)
    for row, n in enumerate(lengths):
        seq = torch.randint(3, VOCAB, (n,), generator=gen)
        sl = slice(0, n) if side == "right" else slice(total - n, total)
        ids[row, sl] = seq
        mask[row, sl] = 1
    return ids, mask


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 2e-5) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _get(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _hooks(model: nn.Module) -> set[tuple[str, int]]:
    return {(name, id(h)) for name, m in model.named_modules() for h in (*m._forward_hooks.values(),
                                                                        *m._forward_pre_hooks.values())}  # fmt: skip


# the hooks on each model right after its adapter was found, before any forward pass (by id of the model)
HOOKS_AT_LOAD: dict[int, set[tuple[str, int]]] = {}


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny(request) -> tuple[Family, nn.Module, LoadedModel]:
    fam = FAMILIES[request.param]
    model = fam.build()
    loaded = _loaded(model)
    HOOKS_AT_LOAD[id(model)] = _hooks(model)
    return fam, model, loaded


def test_adapter_finds_every_block(tiny):
    fam, model, loaded = tiny
    ad = loaded.adapter
    assert (ad.family, ad.is_decoder, ad.num_layers, ad.hidden_size, ad.ffn_size) == (
        fam.family, fam.is_decoder, 2, fam.hidden, fam.ffn,
    )  # fmt: skip
    assert model.config.model_type in ADAPTERS[ad.family][0]
    assert list(ad.blocks) == list(_get(model, fam.layers))
    assert ad.model_type == model.config.model_type


def test_pooling_under_left_and_right_padding(tiny):
    fam, _, loaded = tiny
    right = run_layers(loaded, *_padded(LENGTHS, 9, "right", fam.pad_id), POOLINGS)
    others = {
        "more right padding": run_layers(loaded, *_padded(LENGTHS, 12, "right", fam.pad_id), POOLINGS),
        "left padding": run_layers(loaded, *_padded(LENGTHS, 9, "left", fam.pad_id), POOLINGS),
        "more left padding": run_layers(loaded, *_padded(LENGTHS, 13, "left", fam.pad_id), POOLINGS),
    }
    assert set(right) == {("hidden", i) for i in range(3)} | {("ffn", i) for i in range(1, 3)}
    for key, pooled in right.items():
        width = fam.hidden if key[0] == "hidden" else fam.ffn
        for p in POOLINGS:
            assert pooled[p].shape == (len(LENGTHS), width)
            assert torch.isfinite(pooled[p]).all()
            for what, other in others.items():
                try:
                    _close(other[key][p], pooled[p], atol=5e-5)
                except AssertionError as exc:
                    raise AssertionError(f"{key} {p} differs under {what}: {exc}") from None


@pytest.mark.parametrize("side", ["right", "left"])
def test_hidden_states_and_ffn_hook_point(tiny, side):
    fam, model, loaded = tiny
    ids, mask = _padded(LENGTHS, 9, side, fam.pad_id)
    result = run_layers(loaded, ids, mask, POOLINGS)

    # the FFN activation, computed from the MLP's input by the family's own formula
    computed: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(_get(model, fam.layers)):

        def hook(module, args, *output, i=i, block=block):
            x = output[0] if fam.after else args[0]
            computed[i + 1] = fam.activation(block, x).detach().clone().view(*ids.shape, -1)

        module = _get(block, fam.mlp_input)
        handles.append(module.register_forward_hook(hook) if fam.after else module.register_forward_pre_hook(hook))
    kwargs = {}
    if loaded.adapter.needs_position_ids:
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs)
    finally:
        for h in handles:
            h.remove()
    if fam.mlp_input == "attention":  # BERT-like blocks: the FFN reads the attention module's output
        computed.clear()
        handles = [
            block.intermediate.register_forward_hook(
                lambda m, a, o, i=i: computed.__setitem__(i + 1, o.detach().clone())
            )
            for i, block in enumerate(_get(model, fam.layers))
        ]
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, **kwargs)
        finally:
            for h in handles:
                h.remove()
    assert set(computed) == {1, 2}
    for layer in (1, 2):
        for p in POOLINGS:
            _close(result[("ffn", layer)][p], pool(computed[layer], mask, p))

    # hidden layers 0..L-1 are output_hidden_states; layer L is the model's output (after any final norm)
    assert len(out.hidden_states) == 3
    for layer in (0, 1):
        for p in POOLINGS:
            _close(result[("hidden", layer)][p], pool(out.hidden_states[layer], mask, p))
    for p in POOLINGS:
        _close(result[("hidden", 2)][p], pool(out.last_hidden_state, mask, p))

    early = run_layers(loaded, ids, mask, POOLINGS, upto_layer=1)
    assert set(early) == {("hidden", 0), ("hidden", 1), ("ffn", 1)}
    for key, pooled in early.items():
        for p in POOLINGS:
            _close(pooled[p], result[key][p])


def test_no_hook_is_left_on_the_model(tiny):
    """Hooks live only for one pass of the hooked forward: finding the adapter leaves none (OPT's flattened FFN
    input is viewed back by the hooked forward itself) and a pass leaves none behind. (transformers adds hooks of
    its own when other tests ask the model for its hidden states: those are there before and after.)"""
    fam, model, loaded = tiny
    assert not HOOKS_AT_LOAD[id(model)]
    before = _hooks(model)
    run_layers(loaded, *_padded(LENGTHS, 9, "right", fam.pad_id), POOLINGS)
    assert _hooks(model) == before


def test_every_family_is_listed():
    types = supported_model_types()
    for model_type in ("deberta-v2", "modernbert", "mpnet", "gpt_neox", "opt", "phi", "phi3", "gemma", "gemma2",
                       "gemma3", "gemma3_text", "falcon"):  # fmt: skip
        assert model_type in types


@pytest.mark.parametrize(
    ("model_class", "config_class", "config", "runner"),
    [
        ("OPTForCausalLM", "OPTConfig", dict(_DEC, num_attention_heads=2, ffn_dim=48, word_embed_proj_dim=32),
         "model"),
        ("GemmaForCausalLM", "GemmaConfig", dict(_DEC, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                 intermediate_size=48), "model"),
        ("FalconForCausalLM", "FalconConfig", dict(_DEC, num_attention_heads=4, ffn_hidden_size=48), "transformer"),
        ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_DEC, num_attention_heads=4, intermediate_size=48),
         "gpt_neox"),
        ("DebertaV2ForSequenceClassification", "DebertaV2Config", dict(_DEC, num_attention_heads=2,
                                                                       intermediate_size=44), "deberta"),
    ],
)  # fmt: skip
def test_models_with_a_head_run_their_base(model_class, config_class, config, runner):
    fam = Family("", model_class, config_class, config, True, 32, 48, "", _gated, "")
    model = fam.build()
    loaded = _loaded(model)
    assert loaded.adapter.runner is getattr(model, runner)
    ids, mask = _padded(LENGTHS, 9, "left", 0)
    assert set(run_layers(loaded, ids, mask, ["mean"], kinds=["ffn"])) == {("ffn", 1), ("ffn", 2)}


def test_multimodal_gemma3_runs_its_text_model():
    if not hasattr(transformers, "Gemma3Model"):
        pytest.skip(f"Gemma 3 is not in transformers {transformers.__version__}")
    text = dict(_DEC, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48, sliding_window=4)
    vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)  # fmt: skip
    torch.manual_seed(0)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    model = transformers.Gemma3Model(config)
    loaded = _loaded(model)
    assert loaded.adapter.family == "gemma" and loaded.adapter.runner is model.language_model
    assert loaded.adapter.num_layers == 2
    ids, mask = _padded(LENGTHS, 9, "right", 0)
    result = run_layers(loaded, ids, mask, ["mean"])
    with torch.no_grad():
        out = model.language_model(input_ids=ids, attention_mask=mask)
    _close(result[("hidden", 2)]["mean"], pool(out.last_hidden_state, mask, "mean"))


def test_deberta_v2_convolution_after_the_first_block():
    """deberta-v2-xlarge and up: hidden layer 1 is read after the convolution, as output_hidden_states[1]."""
    fam = FAMILIES["deberta-v2"]
    conv = Family(**{**fam.__dict__, "config": dict(fam.config, conv_kernel_size=3, conv_act="gelu")})
    model = conv.build()
    assert model.encoder.conv is not None
    loaded = _loaded(model)
    assert loaded.adapter.num_layers == 2 and loaded.adapter.blocks[0] is model.encoder.conv
    for side in ("right", "left"):
        ids, mask = _padded(LENGTHS, 9, side, 0)
        result = run_layers(loaded, ids, mask, POOLINGS)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                        output_hidden_states=True)  # fmt: skip
        for layer in range(3):
            for p in POOLINGS:
                _close(result[("hidden", layer)][p], pool(out.hidden_states[layer], mask, p))
        early = run_layers(loaded, ids, mask, ["mean"], upto_layer=1)
        _close(early[("hidden", 1)]["mean"], result[("hidden", 1)]["mean"])


def test_opt_with_a_projected_output_is_refused():
    model = transformers.OPTModel(
        transformers.OPTConfig(**dict(_DEC, num_attention_heads=2, ffn_dim=48, word_embed_proj_dim=16))
    )
    with pytest.raises(InputError, match="word_embed_proj_dim"):
        find_adapter(model)
