"""`spin-cache run CONFIG.toml`: every stage from one file, skipping what is up to date; config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spin_cache.cli import main
from spin_cache.errors import InputError
from spin_cache.pipeline import PipelineConfig, load_config


def _config(tmp_path: Path, tiny_sst2: dict[str, str], store: str) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f"""
name = "tiny"
train = "{tiny_sst2["train"]}"
dev = "{tiny_sst2["dev"]}"
test = "{tiny_sst2["test"]}"
store = "{store}"
out = "{tmp_path / "runs"}"
scheduler = "sync"

[extract]
kinds = ["hidden", "ffn"]
poolings = ["first", "mean", "max"]
block_rows = 32
batch_size = 8

[probe]
c_grid = [0.1, 1.0]

[sweep]
values = [0.1, 0.5]
c_grid = [0.1, 1.0]
"""
    )
    return cfg


def test_run_makes_every_stage_then_skips_them(tmp_path, tiny_sst2, small_store, capsys):
    cfg = _config(tmp_path, tiny_sst2, small_store)
    assert main(["run", str(cfg), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert Path(first["report"]).exists() and Path(first["report"]).suffix == ".html"
    assert first["table"]["spin"]["n_neurons"] > 0
    assert (Path(first["sweep"]) / "command.txt").read_text().startswith("spin-cache run")
    assert main(["run", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert "[extract] cache hit" in captured.err
    assert "[probe] up to date" in captured.err and "[sweep] up to date" in captured.err
    assert "SPIN (cross-validated)" in captured.out and "report:" in captured.out  # the default selection, cv
    assert first["table"]["chosen_by"]["strategy"] == "cv" and (Path(first["sweep"]) / "folds" / "4").is_dir()


def test_config_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmodle = "minilm"\n')
    with pytest.raises(InputError, match="unknown key 'modle'"):
        load_config(bad)
    bad.write_text("[sweep]\netas = [0.1]\n")
    assert main(["run", str(bad)]) == 2
    assert "[sweep] has unknown key 'etas'" in capsys.readouterr().err
    bad.write_text("[extract]\nbatch = 8\n")
    with pytest.raises(InputError, match=r"bad\.toml: \[extract\] has unknown key 'batch'"):
        load_config(bad)
    bad.write_text('[extract]\nmodel = "minilm"\n')  # set at the top level, not in [extract]
    with pytest.raises(InputError, match=r"\[extract\] has unknown key 'model'"):
        load_config(bad)
    bad.write_text("name = \n")
    assert main(["run", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


def test_every_command_documents_exit_codes_and_json(capsys):
    from spin_cache.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "exit codes:" in text, name
        assert "--json" in text, name


def test_extract_settings_check_and_normalise_every_option(tmp_path):
    from spin_cache.extract.settings import ExtractSettings
    from spin_cache.pipeline import extract_settings

    settings = ExtractSettings(kinds="hidden", poolings=["mean", "max"], out=tmp_path, batch_size="8")
    assert settings.kinds == ("hidden",) and settings.poolings == ("mean", "max")
    assert settings.out == str(tmp_path) and settings.batch_size == 8
    for bad, match in [
        ({"batch_size": 0}, "batch_size: expected an integer >= 1"),
        ({"max_length": -3}, "max_length"),
        ({"block_rows": 0}, "block_rows"),
        ({"chunk_cols": 1.5}, "chunk_cols"),
        ({"workers": 0}, "workers"),
        ({"kinds": ["attn"]}, "kinds: .*'attn'"),
        ({"poolings": ["median"]}, "poolings: .*'median'"),
        ({"dtype": "int8"}, "dtype: expected one of"),
        ({"compute_dtype": "fp8"}, "compute_dtype"),
        ({"workers": 2, "shard": (0, 2)}, "exclusive"),
        ({"shard": (2, 2)}, "between 0 and N-1"),
    ]:
        with pytest.raises(InputError, match=match):
            ExtractSettings(**bad)
    cfg = PipelineConfig(store=str(tmp_path / "s"), extract={"kinds": ["ffn"], "batch_size": 4})
    settings = extract_settings(cfg, progress=False)
    assert (settings.kinds, settings.batch_size, settings.out, settings.progress) == (
        ("ffn",),
        4,
        str(tmp_path / "s"),
        False,
    )
