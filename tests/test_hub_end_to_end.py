"""A Hugging Face dataset and a hub-style model id, end to end and offline, from a locally built cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SST2

pytestmark = pytest.mark.slow
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache holding the bundled MiniLM as `local-org/minilm` at one commit."""
    from spin_cache.model.identity import resolve_model_path

    repo = root / "models--local-org--minilm"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(resolve_model_path("minilm"), snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def _dataset_dict(folder: Path) -> Path:
    """SST-2 rows as a DatasetDict with ClassLabel names and a `validation` split, saved with save_to_disk."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    splits = {}
    for name, file, n in (("train", "train", 64), ("validation", "dev", 24), ("test", "test", 24)):
        rows = [line.split(" ", 1) for line in (SST2 / f"{file}.txt").read_text().splitlines()[:n]]
        splits[name] = datasets.Dataset.from_dict(
            {"sentence": [t for _, t in rows], "label": [int(lab) for lab, _ in rows]}, features=features
        )
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "spin_cache.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_hf_dataset_and_hub_model_id_end_to_end_offline(tmp_path):
    env = os.environ | {"HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub")), "HF_HUB_OFFLINE": "1"}
    data = _dataset_dict(tmp_path / "sst2-dataset")
    store, probes, sweep = tmp_path / "store", tmp_path / "probes", tmp_path / "sweep"
    _run(["extract", "--model", "local-org/minilm", "--data", str(data), "--out", str(store), "--kinds", "hidden",
          "--poolings", "mean", "--quiet"], env, tmp_path)  # fmt: skip
    manifest = json.loads((store / "zarr.json").read_text())["attributes"]["spin_cache"]
    assert manifest["model"]["repo_id"] == "local-org/minilm" and manifest["model"]["revision"] == COMMIT
    assert manifest["dataset"]["label_names"] == ["neg", "pos"]
    assert manifest["dataset"]["rows_per_split"] == {"train": 64, "dev": 24, "test": 24}
    _run(["probe", str(store), "--out", str(probes), "--C", "0.1,1", "--scheduler", "sync", "--quiet"], env, tmp_path)
    _run(["sweep", str(store), "--probes", str(probes), "--out", str(sweep), "--eta", "0.5,0.9", "--C", "0.01,0.1",
          "--scheduler", "sync", "--quiet"], env, tmp_path)  # fmt: skip
    out = _run(["predict", str(sweep / "head"), "--text", "a gripping , funny film", "--quiet"], env, tmp_path)
    prediction = json.loads(out.stdout.splitlines()[0])
    assert prediction["label"] in ("neg", "pos")


def test_a_hub_id_missing_from_the_offline_cache_is_one_line(tmp_path):
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "empty-hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "spin_cache.cli", "extract", "--model", "nobody/nothing", "--out",
                           str(tmp_path / "s")], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nobody/nothing" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
