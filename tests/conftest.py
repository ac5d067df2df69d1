"""Shared fixtures: small slices of the bundled SST-2 and a small MiniLM store made once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

REPO = Path(__file__).resolve().parent.parent
SST2 = REPO / "data" / "sst2"


def write_sst2_slice(folder: Path, n_train: int, n_dev: int, n_test: int) -> dict[str, str]:
    """The first rows of each bundled SST-2 split, as `LABEL TEXT` files; returns {split: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        lines = (SST2 / f"{split}.txt").read_text().splitlines()[:n]
        path = folder / f"{split}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths[split] = str(path)
    return paths


@pytest.fixture(scope="session")
def tiny_sst2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_sst2_slice(tmp_path_factory.mktemp("tiny_sst2"), 48, 16, 16)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory, tiny_sst2: dict[str, str]) -> str:
    """A complete MiniLM store over 80 SST-2 rows, in blocks of 32 (so three blocks, the last partial)."""
    from spin_cache.extract.run import run_extraction

    out = tmp_path_factory.mktemp("stores") / "small"
    report = run_extraction(**tiny_sst2, out=str(out), block_rows=32, batch_size=8, progress=False)
    assert report.store.is_complete
    return str(out)
